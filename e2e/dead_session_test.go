package e2e

import (
	"io"
	"net"
	"testing"
	"time"

	"github.com/homeport/homeport/config"
)

// TestDeadSessionAbortsVisitors: when the session carrying a visitor's
// connection dies, the relay treats that as an error, not as a clean end
// of stream, and lets the visitor's connection go at once.
func TestDeadSessionAbortsVisitors(t *testing.T) {
	ka := config.Session{KeepAlive: 300 * time.Millisecond, KeepAliveTimeout: 600 * time.Millisecond, StreamWindow: 4 << 20}
	// The target sends half of its answer, then stalls.
	target := serve(t, func(c *net.TCPConn) {
		c.Write([]byte("HTTP/1.0 200 OK\r\n\r\nfirst half of the body, "))
		io.Copy(io.Discard, c)
	})
	r := startRelay(t, func(c *config.Relay) { c.Session = ka })
	px := startFreezeProxy(t, r.addr)
	port := freePort(t)
	cfg := agentConfig(r, tcpTunnel("web", port, target))
	cfg.Relay = px.addr()
	cfg.Transport = config.TransportTCP
	cfg.Session = ka
	a := startAgent(t, cfg)
	a.waitSession(10 * time.Second)

	c := dial(t, publicAddr(port))
	c.Write([]byte("GET / HTTP/1.0\r\n\r\n"))
	buf := make([]byte, 64)
	if _, err := c.Read(buf); err != nil {
		t.Fatal(err)
	}
	px.freeze()
	defer px.thaw()
	waitFor(t, 5*time.Second, "relay noticing the dead session", func() bool {
		return contains(r.logs.String(), "agent session down")
	})
	// The visitor keeps its socket open, as a client waiting for the rest
	// of the answer would.
	waitFor(t, 5*time.Second, "relay ending the visitor connection with an error", func() bool {
		return contains(r.logs.String(), `msg="visitor connection"`) && !contains(r.logs.String(), "err=<nil>")
	})
}
