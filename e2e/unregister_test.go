package e2e

import (
	"net"
	"testing"
	"time"

	"github.com/homeport/homeport/internal/leak"
	"github.com/homeport/homeport/tunnel"
)

// TestRelayUnregister speaks to the relay directly: Unregister closes the
// named tunnels of the session and answers for each, CodeUnknownTunnel for
// a name the session does not have; the session and its other tunnel go
// on.
func TestRelayUnregister(t *testing.T) { forEachTransport(t, testRelayUnregister) }

func testRelayUnregister(t *testing.T, tr string) {
	leak.Check(t)
	r := startRelayOver(t, tr, nil)
	p1, p2 := freePort(t), freePort(t)
	ctx := t.Context()
	sess := loginAs(ctx, t, r, tr, "raw", 0)
	ctrl, err := sess.OpenStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ask := func(m tunnel.Message) *tunnel.RegisterResult {
		t.Helper()
		if err := tunnel.WriteMessage(ctrl, m); err != nil {
			t.Fatal(err)
		}
		var res tunnel.RegisterResult
		if err := tunnel.ReadInto(ctrl, tunnel.MaxFrameSize, &res); err != nil {
			t.Fatal(err)
		}
		return &res
	}
	res := ask(&tunnel.Register{Tunnels: []tunnel.TunnelRequest{{Name: "a", Protocol: tunnel.ProtoTCP, RemotePort: p1}, {Name: "b", Protocol: tunnel.ProtoTCP, RemotePort: p2}}})
	if res.Results[0].Code != tunnel.CodeOK || res.Results[1].Code != tunnel.CodeOK {
		t.Fatalf("register: %+v", res)
	}
	res = ask(&tunnel.Unregister{Names: []string{"a", "nope"}})
	if len(res.Results) != 2 || res.Results[0] != (tunnel.TunnelResult{Name: "a", Code: tunnel.CodeOK}) ||
		res.Results[1].Name != "nope" || res.Results[1].Code != tunnel.CodeUnknownTunnel {
		t.Fatalf("unregister: %+v", res)
	}
	if _, err := net.DialTimeout("tcp", publicAddr(p1), time.Second); err == nil {
		t.Fatal("port of the closed tunnel still accepts")
	}
	if len(r.srv.Status().Tunnels) != 1 {
		t.Fatalf("relay lists %+v", r.srv.Status().Tunnels)
	}
	// The session goes on: a's port can be registered again.
	res = ask(&tunnel.Register{Tunnels: []tunnel.TunnelRequest{{Name: "a", Protocol: tunnel.ProtoTCP, RemotePort: p1}}})
	if res.Results[0].Code != tunnel.CodeOK {
		t.Fatalf("register again: %+v", res)
	}
}
