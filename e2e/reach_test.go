package e2e

import (
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/homeport/homeport/internal/leak"
	"github.com/homeport/homeport/internal/testenv"
	"github.com/homeport/homeport/tunnel"
)

// TestCheckReach: the agent asks the relay to check a port mapping's
// outside address. The relay connects only to the address it sees the
// agent's session come from: a listening port there is reachable, a
// closed one is not, another address is refused (a carrier's NAT would
// show that way), and it answers at most one check at a time per session
// and a bounded number in a window.
func TestCheckReach(t *testing.T) { forEachTransport(t, testCheckReach) }

func testCheckReach(t *testing.T, tr string) {
	leak.Check(t)
	r := startRelayOver(t, tr, nil)
	h := startAgent(t, agentConfig(r, tcpTunnel("web", freePort(t), "127.0.0.1:9")))
	h.waitSession(10 * time.Second)
	ctx := t.Context()
	// The session serves a moment after it registered.
	waitFor(t, 10*time.Second, "the session to serve", func() bool {
		_, err := h.agent.CheckReach(ctx, netip.MustParseAddrPort("127.0.0.2:1"))
		return err == nil
	})

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan struct{}, 64)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
			accepted <- struct{}{}
		}
	}()
	open := netip.MustParseAddrPort(ln.Addr().String())
	closed := netip.AddrPortFrom(open.Addr(), freePort(t))

	for _, tc := range []struct {
		name string
		addr netip.AddrPort
		code tunnel.Code
		want string
	}{
		{"listening", open, tunnel.CodeOK, ""},
		{"closed", closed, tunnel.CodeDialFailed, "refused"},
		{"another address", netip.AddrPortFrom(netip.MustParseAddr("127.0.0.2"), open.Port()), tunnel.CodeNotAllowed, "the relay sees this agent at 127.0.0.1, not at 127.0.0.2"},
	} {
		res, err := h.agent.CheckReach(ctx, tc.addr)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if res.Code != tc.code || !strings.Contains(res.Message, tc.want) || res.Addr != tc.addr.String() {
			t.Errorf("%s: %+v, want %v containing %q", tc.name, res, tc.code, tc.want)
		}
	}
	// The check's connection was made before its answer came; the accept
	// loop may run later on a busy machine.
	select {
	case <-accepted:
	case <-time.After(testenv.Deadline(10 * time.Second)):
		t.Error("the relay's check made no connection to the listening port")
	}

	// The window's budget: 30 checks, of which 2 were spent above (the
	// refused address costs none).
	var quota *tunnel.ReachResult
	for i := 0; i < 40 && quota == nil; i++ {
		res, err := h.agent.CheckReach(ctx, open)
		if err != nil {
			t.Fatal(err)
		}
		if res.Code == tunnel.CodeQuota {
			quota = res
			if i != 28 {
				t.Errorf("quota after %d more checks, want 28", i)
			}
		}
	}
	if quota == nil || !strings.Contains(quota.Message, "at most 30 checks in 10m0s") {
		t.Fatalf("no quota: %+v", quota)
	}
	// The session carries on.
	if st := r.srv.Status(); len(st.Agents) != 1 {
		t.Fatalf("relay lists %d agents", len(st.Agents))
	}
}
