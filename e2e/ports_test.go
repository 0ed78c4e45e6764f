package e2e

import (
	"net"
	"strings"
	"testing"
	"time"

	"github.com/homeport/homeport/agent"
	"github.com/homeport/homeport/config"
	"github.com/homeport/homeport/internal/leak"
	"github.com/homeport/homeport/tunnel"
)

// Tokens of the tenants in these tests.
const (
	aliceToken = "alice-token-0123456789"
	bobToken   = "bob-token-0123456789ab"
	carolToken = "carol-token-0123456789"
)

// resultOf returns the result for the named tunnel.
func resultOf(t *testing.T, results []tunnel.TunnelResult, name string) tunnel.TunnelResult {
	t.Helper()
	for _, r := range results {
		if r.Name == name {
			return r
		}
	}
	t.Fatalf("no result for tunnel %s in %+v", name, results)
	return tunnel.TunnelResult{}
}

// tenantAgent starts an agent with token and id.
func tenantAgent(t *testing.T, r *relayHandle, token, id string, tunnels ...config.Tunnel) *agentHandle {
	cfg := agentConfig(r, tunnels...)
	cfg.Token, cfg.ID = token, id
	return startAgent(t, cfg)
}

// TestPortOwnership: a port listed for a token is that token's alone,
// whether or not its agent is connected; a port no token lists, released
// by one token's agent, stays reserved to that token for port_reserve:
// another token's agent is refused and told until when, and an agent of
// the first token (another id too) gets it back at once.
func TestPortOwnership(t *testing.T) { forEachTransport(t, testPortOwnership) }

func testPortOwnership(t *testing.T, tr string) {
	leak.Check(t)
	carolTarget := serve(t, echo)
	bobTarget := serve(t, func(c *net.TCPConn) { c.Write([]byte("bob's login page")) })
	listed, shared := freePort(t), freePort(t)
	r := startRelayOver(t, tr, func(c *config.Relay) {
		c.Tokens = []config.Token{
			{Name: "alice", Secret: aliceToken, Ports: config.PortRanges{{Lo: listed, Hi: listed}}},
			{Name: "bob", Secret: bobToken},
			{Name: "carol", Secret: carolToken},
		}
		c.PortReserve = time.Hour
	})

	// Alice's port is hers even while no agent of hers is connected.
	b := tenantAgent(t, r, bobToken, "bob-pc", tcpTunnel("listed", listed, bobTarget))
	res := resultOf(t, b.waitAny(10*time.Second).Results, "listed")
	if res.Code != tunnel.CodePortNotAllowed || !contains(res.Message, "in the ports of another token", `token "bob" lists no ports`) {
		t.Fatalf("bob asking for alice's port: %v: %s", res.Code, res.Message)
	}
	b.stop()

	// Carol's agent holds a port no token lists, and drops.
	c := tenantAgent(t, r, carolToken, "carol-pc", tcpTunnel("rdp", shared, carolTarget))
	c.waitSession(10 * time.Second)
	expectEcho(t, publicAddr(shared))
	c.stop()
	expectClosed(t, publicAddr(shared), 5*time.Second)

	// Bob's agent is refused the port while it is reserved to carol.
	b = tenantAgent(t, r, bobToken, "bob-pc", tcpTunnel("rdp", shared, bobTarget))
	res = resultOf(t, b.waitAny(10*time.Second).Results, "rdp")
	if res.Code != tunnel.CodePortReserved || !contains(res.Message, "reserved for another token's agent", "until", "port_reserve") {
		t.Fatalf("bob asking for carol's released port: %v: %s", res.Code, res.Message)
	}
	expectClosed(t, publicAddr(shared), 5*time.Second)

	// Carol's other computer takes it at once; her visitors reach her.
	c2 := tenantAgent(t, r, carolToken, "carol-laptop", tcpTunnel("rdp", shared, carolTarget))
	c2.waitSession(10 * time.Second)
	expectEcho(t, publicAddr(shared))
}

// TestTokenQuotas: a token's agents get at most max_tunnels tunnels in all,
// and at most max_agents agent ids log in; the refusals say which quota,
// and a new session of an id already in does not count twice.
func TestTokenQuotas(t *testing.T) { forEachTransport(t, testTokenQuotas) }

func testTokenQuotas(t *testing.T, tr string) {
	leak.Check(t)
	target := serve(t, echo)
	r := startRelayOver(t, tr, func(c *config.Relay) {
		c.MaxTunnels = 3
		c.Tokens = []config.Token{{Name: "default", Secret: testToken, MaxAgents: 2}}
	})
	p := []uint16{freePort(t), freePort(t), freePort(t), freePort(t)}
	a1 := tenantAgent(t, r, testToken, "pc-1", tcpTunnel("t0", p[0], target), tcpTunnel("t1", p[1], target))
	a1.waitSession(10 * time.Second)
	a2 := tenantAgent(t, r, testToken, "pc-2", tcpTunnel("t2", p[2], target), tcpTunnel("t3", p[3], target))
	si := a2.waitAny(10 * time.Second)
	if res := resultOf(t, si.Results, "t2"); res.Code != tunnel.CodeOK {
		t.Fatalf("third tunnel: %v: %s", res.Code, res.Message)
	}
	res := resultOf(t, si.Results, "t3")
	if res.Code != tunnel.CodeQuota || !contains(res.Message, `token "default" holds 3 tunnels, its max_tunnels`) {
		t.Fatalf("fourth tunnel: %v: %s", res.Code, res.Message)
	}
	expectClosed(t, publicAddr(p[3]), 5*time.Second)
	for _, port := range p[:3] {
		expectEcho(t, publicAddr(port))
	}

	// A third id is refused at login, and tries again.
	a3 := tenantAgent(t, r, testToken, "pc-3", tcpTunnel("t9", freePort(t), target))
	waitFor(t, 10*time.Second, "third agent id refused", func() bool {
		return contains(a3.logs.String(), "relay refused this agent for now; retrying", "quota reached", `token \"default\" has 2 agent ids logged in, its max_agents`)
	})
	waitFor(t, 5*time.Second, "relay log of the refusal", func() bool {
		return contains(r.logs.String(), "agent login refused", "max_agents")
	})

	// Once the first agent leaves, the third gets in and the second gets
	// its fourth tunnel, each without any change.
	a1.stop()
	a3.waitSession(20 * time.Second)
	waitFor(t, 20*time.Second, "the fourth tunnel", func() bool {
		open, _ := probe(publicAddr(p[3]), time.Second)
		return open
	})
	expectEcho(t, publicAddr(p[3]))
	if n := strings.Count(a3.logs.String(), `level=ERROR msg="relay refused this agent for now`); n != 1 {
		t.Errorf("third agent logged its refusal %d times at level error, want once\n%s", n, a3.logs)
	}
}

// TestRefusalMessages: a port outside allow_ports is refused naming
// allow_ports and its ranges, not the token; a port outside a token's own
// ports names the token and its ports.
func TestRefusalMessages(t *testing.T) { forEachTransport(t, testRefusalMessages) }

func testRefusalMessages(t *testing.T, tr string) {
	leak.Check(t)
	target := serve(t, echo)
	r := startRelayOver(t, tr, func(c *config.Relay) {
		c.AllowPorts = config.PortRanges{{Lo: 1024, Hi: 65535}}
		c.Tokens = []config.Token{
			{Name: "default", Secret: testToken},
			{Name: "alice", Secret: aliceToken, Ports: config.PortRanges{{Lo: 5000, Hi: 5010}}},
		}
	})
	a := startAgent(t, agentConfig(r, tcpTunnel("web", 80, target)))
	res := resultOf(t, a.waitAny(10*time.Second).Results, "web")
	want := "port 80 is outside the relay's allow_ports (1024-65535); to use it, add it to allow_ports in the relay's configuration"
	if res.Code != tunnel.CodePortNotAllowed || res.Message != want {
		t.Errorf("port 80: %v: %q\nwant %q", res.Code, res.Message, want)
	}
	waitFor(t, 5*time.Second, "agent log of the refusal", func() bool { return contains(a.logs.String(), "allow_ports (1024-65535)") })

	b := tenantAgent(t, r, aliceToken, "alice-pc", tcpTunnel("game", 6000, target))
	res = resultOf(t, b.waitAny(10*time.Second).Results, "game")
	want = `port 6000 is not in the ports of token "alice" (5000-5010); to use it, add it to that token's ports in the relay's configuration`
	if res.Code != tunnel.CodePortNotAllowed || res.Message != want {
		t.Errorf("port 6000: %v: %q\nwant %q", res.Code, res.Message, want)
	}
}

// TestRetryPortInUse: a tunnel refused because another program holds its
// port is asked for again on the same session, with backoff, and is ready
// once the program lets go; the refusal is logged once, not at every try.
func TestRetryPortInUse(t *testing.T) { forEachTransport(t, testRetryPortInUse) }

func testRetryPortInUse(t *testing.T, tr string) {
	leak.Check(t)
	target := serve(t, echo)
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	port := uint16(taken.Addr().(*net.TCPAddr).Port)
	r := startRelayOver(t, tr, nil)
	other := freePort(t)
	a := startAgent(t, agentConfig(r, tcpTunnel("rdp", port, target), tcpTunnel("web", other, target)))
	si := a.waitAny(10 * time.Second)
	if res := resultOf(t, si.Results, "rdp"); res.Code != tunnel.CodePortInUse {
		t.Fatalf("rdp: %v: %s", res.Code, res.Message)
	}
	expectEcho(t, publicAddr(other))
	// Let the agent try a few times while the port is held.
	waitFor(t, 20*time.Second, "three refusals at the relay", func() bool {
		return strings.Count(r.logs.String(), "tunnel refused") >= 3
	})
	st := tunnelStatus(t, a, "rdp")
	if st.State != agent.TunnelRetrying || st.Code != tunnel.CodePortInUse || !contains(st.Message, "in use by another program") || st.NextRetry.IsZero() {
		t.Errorf("status while refused: %+v", st)
	}
	taken.Close()
	waitFor(t, 20*time.Second, "rdp tunnel ready", func() bool {
		return tunnelStatus(t, a, "rdp").State == agent.TunnelUp
	})
	expectEcho(t, publicAddr(port))
	expectEcho(t, publicAddr(other))
	logs := a.logs.String()
	if n := strings.Count(logs, "tunnel refused by relay"); n != 1 {
		t.Errorf("refusal logged %d times, want once\n%s", n, logs)
	}
	if !contains(logs, `msg="tunnel ready" tunnel=rdp`) {
		t.Errorf("agent did not log the tunnel ready\n%s", logs)
	}
	if n := strings.Count(logs, "connected to relay"); n != 1 {
		t.Errorf("agent connected %d times, want once: the tunnel should come on the same session", n)
	}
}

// tunnelStatus is the agent's status of the named tunnel.
func tunnelStatus(t *testing.T, a *agentHandle, name string) agent.Registration {
	t.Helper()
	for _, st := range a.agent.Registrations() {
		if st.Name == name {
			return st
		}
	}
	t.Fatalf("no status for tunnel %s", name)
	return agent.Registration{}
}

// TestDuplicateIDLeaves: a second agent started with the same id takes
// the tunnels over; the first waits for it to leave without taking them
// back (the relay refuses its standby logins meanwhile), says why, and
// is back within seconds once the duplicate stops.
func TestDuplicateIDLeaves(t *testing.T) { forEachTransport(t, testDuplicateIDLeaves) }

func testDuplicateIDLeaves(t *testing.T, tr string) {
	leak.Check(t)
	mine := serve(t, echo)
	theirs := serve(t, func(c *net.TCPConn) { c.Write([]byte("duplicate")) })
	r := startRelayOver(t, tr, nil)
	port := freePort(t)
	orig := startAgent(t, agentConfig(r, tcpTunnel("rdp", port, mine)))
	orig.waitSession(10 * time.Second)
	expectEcho(t, publicAddr(port))

	dup := startAgent(t, agentConfig(r, tcpTunnel("rdp", port, theirs)))
	dup.waitSession(10 * time.Second)
	waitFor(t, 10*time.Second, "the original to say why it stopped", func() bool {
		return contains(orig.logs.String(), "another agent with this agent's id took over; waiting for it to leave; give each agent its own id", "id=home-pc", "from 127.0.0.1:")
	})
	// The original asks, and is refused, while the duplicate is there;
	// the duplicate keeps the id.
	waitFor(t, 20*time.Second, "two standby logins refused", func() bool {
		return strings.Count(r.logs.String(), "agent id in use") >= 2
	})
	if contains(dup.logs.String(), "took over") {
		t.Fatalf("the duplicate lost the id to the waiting agent\nduplicate log:\n%s", dup.logs)
	}
	select {
	case <-orig.sessions:
		t.Fatal("the original took the id back while the duplicate was there")
	default:
	}
	got, err := roundTrip(publicAddr(port), nil)
	if err != nil || string(got) != "duplicate" {
		t.Fatalf("visitor while the duplicate holds the id: %q, %v", got, err)
	}

	dup.stop()
	left := time.Now()
	orig.waitSession(20 * time.Second)
	t.Logf("original back %v after the duplicate left", time.Since(left).Round(time.Millisecond))
	expectEcho(t, publicAddr(port))
	if !contains(orig.logs.String(), "the other agent with this agent's id has left") {
		t.Errorf("original did not say it serves again\n%s", orig.logs)
	}
}
