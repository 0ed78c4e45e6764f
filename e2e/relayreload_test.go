package e2e

import (
	"strings"
	"testing"
	"time"

	"github.com/homeport/homeport/config"
	"github.com/homeport/homeport/internal/leak"
	"github.com/homeport/homeport/tunnel"
)

// TestRelayReload: a reload that adds a token, removes another and changes
// the visitor limits leaves a 16 MiB transfer of an untouched agent whole,
// without a reconnect; ends the removed token's agent at once; lets the
// new token's agent in. A broken configuration changes nothing.
func TestRelayReload(t *testing.T) { forEachTransport(t, testRelayReload) }

func testRelayReload(t *testing.T, tr string) {
	leak.Check(t)
	const (
		alice = "alice-secret-0123456789abcdef"
		bob   = "bob-secret-0123456789abcdef00"
		carol = "carol-secret-0123456789abcdef"
	)
	pa, pb, pc := freePort(t), freePort(t), freePort(t)
	tokens := func(secrets ...string) []config.Token {
		var out []config.Token
		for _, s := range secrets {
			name := strings.SplitN(s, "-", 2)[0]
			out = append(out, config.Token{Name: name, Secret: s})
		}
		return out
	}
	r := startRelayOver(t, tr, func(c *config.Relay) { c.Tokens = tokens(alice, bob) })
	target := serve(t, echo)
	start := func(secret, id string, port uint16) *agentHandle {
		cfg := agentConfig(r, tcpTunnel("web", port, target))
		cfg.Token, cfg.ID = secret, id
		h := startAgent(t, cfg)
		h.waitSession(20 * time.Second)
		return h
	}
	a := start(alice, "a", pa)
	b := start(bob, "b", pb)

	size := transferSize()
	// A transfer through an untouched agent; the reload comes midway.
	x := startTransfer(t, publicAddr(pa), size)
	x.waitBack(t, size/2)
	next := r.cfg
	next.Tokens = tokens(alice, carol)
	next.Guard.VisitorRate = 1000
	id := r.id
	id.Tokens = next.Tokens
	changes, restart, err := r.srv.Reload(next, id)
	if err != nil || len(restart) != 0 {
		t.Errorf("reload: %v (restart only: %v)", err, restart)
	}
	t.Logf("reload changed: %s", strings.Join(changes, "; "))
	x.wait(t)
	if n := strings.Count(a.logs.String(), `msg="connected to relay"`); n != 1 {
		t.Fatalf("the untouched agent connected %d times, want once:\n%s", n, a.logs)
	}
	// Bob's token is gone: his session ends, and he is told why.
	waitFor(t, 10*time.Second, "the removed token's agent to be cut", func() bool {
		for _, ag := range r.srv.Status().Agents {
			if ag.Token == "bob" {
				return false
			}
		}
		return strings.Contains(b.logs.String(), `token \"bob\" was removed from the relay's configuration`)
	})
	expectClosed(t, publicAddr(pb), 10*time.Second)
	// Carol's is new: her agent gets in.
	start(carol, "c", pc)
	expectEcho(t, publicAddr(pc))

	// A broken configuration (two tokens with one port) changes nothing.
	bad := r.cfg
	bad.Tokens = []config.Token{{Name: "alice", Secret: alice, Ports: config.PortRanges{{Lo: pa, Hi: pa}}}, {Name: "carol", Secret: carol, Ports: config.PortRanges{{Lo: pa, Hi: pa}}}}
	id = r.id
	id.Tokens = bad.Tokens
	if _, _, err := r.srv.Reload(bad, id); err == nil || !strings.Contains(err.Error(), "both list ports") {
		t.Fatalf("a broken reload: %v", err)
	}
	expectEcho(t, publicAddr(pa))
	expectEcho(t, publicAddr(pc))
	var names []string
	for _, ag := range r.srv.Status().Agents {
		names = append(names, ag.Token)
	}
	if strings.Join(names, ",") != "alice,carol" {
		t.Fatalf("agents after a refused reload: %v", names)
	}
}

// TestRelayReloadShrinksPorts: a reload that takes a port away from a
// token cuts that token's agent, which comes back and is refused that one
// tunnel in words; its other tunnel serves again.
func TestRelayReloadShrinksPorts(t *testing.T) {
	const secret = "alice-secret-0123456789abcdef"
	pa, pb := freePort(t), freePort(t)
	r := startRelay(t, func(c *config.Relay) {
		c.Tokens = []config.Token{{Name: "alice", Secret: secret, Ports: config.PortRanges{{Lo: pa, Hi: pa}, {Lo: pb, Hi: pb}}}}
	})
	target := serve(t, echo)
	cfg := agentConfig(r, tcpTunnel("keep", pa, target), tcpTunnel("lose", pb, target))
	cfg.Token = secret
	a := startAgent(t, cfg)
	a.waitSession(20 * time.Second)

	next := r.cfg
	next.Tokens = []config.Token{{Name: "alice", Secret: secret, Ports: config.PortRanges{{Lo: pa, Hi: pa}}}}
	id := r.id
	id.Tokens = next.Tokens
	if _, _, err := r.srv.Reload(next, id); err != nil {
		t.Fatal(err)
	}
	si := a.waitAny(30 * time.Second) // the agent's next session
	for _, res := range si.Results {
		switch res.Name {
		case "keep":
			if res.Code != tunnel.CodeOK {
				t.Errorf("tunnel keep: %v %s", res.Code, res.Message)
			}
		case "lose":
			if res.Code != tunnel.CodePortNotAllowed || !strings.Contains(res.Message, `is not in the ports of token "alice"`) {
				t.Errorf("tunnel lose: %v %s", res.Code, res.Message)
			}
		}
	}
	if !strings.Contains(a.logs.String(), "the relay's configuration changed") {
		t.Errorf("the agent was not told why its session ended:\n%s", a.logs)
	}
	expectEcho(t, publicAddr(pa))
	expectClosed(t, publicAddr(pb), 10*time.Second)
}
