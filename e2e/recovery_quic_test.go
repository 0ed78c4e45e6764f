//go:build unix

package e2e

import (
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/homeport/homeport/config"
	"github.com/homeport/homeport/internal/leak"
)

// TestMakeBeforeBreakQUIC: as TestMakeBeforeBreak, over QUIC: the
// agent's UDP flow to the relay stalls while a new one (a new socket) gets
// through. The relay's heartbeat stops arriving; after 3 s the agent opens
// a new session beside the stalled one, long before the idle timeout.
func TestMakeBeforeBreakQUIC(t *testing.T) {
	leak.Check(t)
	ka := config.Session{KeepAlive: 10 * time.Second, KeepAliveTimeout: 10 * time.Second, StreamWindow: 4 << 20}
	target := serve(t, echo)
	r := startRelayOver(t, config.TransportQUIC, func(c *config.Relay) { c.Session = ka })
	fwd := startUDPFwd(t, r.addr)
	var mu sync.Mutex
	stalled := map[netip.AddrPort]bool{}
	fwd.onPacket(func(_ udpFwdDir, client netip.AddrPort, _ int, b []byte) []byte {
		mu.Lock()
		defer mu.Unlock()
		if stalled[client] {
			return nil
		}
		return b
	})
	port := freePort(t)
	cfg := agentConfig(r, tcpTunnel("echo", port, target))
	cfg.Relay = fwd.addr()
	cfg.Session = ka
	a := startAgent(t, cfg)
	a.waitSession(10 * time.Second)
	expectEcho(t, publicAddr(port))

	time.Sleep(4 * time.Second)
	if contains(a.logs.String(), "relay silent") {
		t.Fatalf("agent found a healthy QUIC link silent\nagent log:\n%s", a.logs)
	}

	mu.Lock()
	for _, c := range fwd.clients() {
		stalled[c] = true
	}
	mu.Unlock()
	start := time.Now()
	a.waitSession(8 * time.Second)
	t.Logf("new session %v after the flow stalled", time.Since(start).Round(time.Millisecond))
	expectEcho(t, publicAddr(port))
	if !contains(r.logs.String(), "replaced by a newer one; its open connections go on") {
		t.Fatalf("relay did not retire the stalled session\nrelay log:\n%s", r.logs)
	}
}
