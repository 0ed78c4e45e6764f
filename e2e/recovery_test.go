package e2e

import (
	"bytes"
	"context"
	"io"
	"net"
	"testing"
	"time"

	"github.com/homeport/homeport/config"
	"github.com/homeport/homeport/internal/leak"
	"github.com/homeport/homeport/tunnel"
)

// TestMakeBeforeBreak: the agent's link to the relay stalls (nothing
// arrives either way, nothing is closed) while new connections would get
// through, as after an outage that left both TCP ends with backed-off
// retransmissions. The agent, hearing nothing for suspectAfter (3 s),
// opens a new session beside the stalled one instead of waiting for the
// keepalive (20 s here), and new visitors are served by it.
func TestMakeBeforeBreak(t *testing.T) {
	leak.Check(t)
	ka := config.Session{KeepAlive: 10 * time.Second, KeepAliveTimeout: 10 * time.Second, StreamWindow: 4 << 20}
	target := serve(t, echo)
	r := startRelay(t, func(c *config.Relay) { c.Session = ka })
	px := startFreezeProxy(t, r.addr)
	port := freePort(t)
	cfg := agentConfig(r, tcpTunnel("echo", port, target))
	cfg.Relay = px.addr()
	cfg.Transport = config.TransportTCP // the proxy carries TCP only
	cfg.Session = ka
	a := startAgent(t, cfg)
	a.waitSession(10 * time.Second)
	expectEcho(t, publicAddr(port))

	// A healthy idle session is never replaced: the relay answers the
	// agent's pings every second.
	time.Sleep(4 * time.Second)
	if contains(a.logs.String(), "relay silent") {
		t.Fatalf("agent found a healthy link silent\nagent log:\n%s", a.logs)
	}

	px.stallOpen()
	stalled := time.Now()
	// Well before the keepalive could declare the old session dead.
	a.waitSession(8 * time.Second)
	t.Logf("new session %v after the link stalled", time.Since(stalled).Round(time.Millisecond))
	expectEcho(t, publicAddr(port))
	t.Logf("new visitors served %v after the link stalled", time.Since(stalled).Round(time.Millisecond))
	if !contains(r.logs.String(), "replaced by a newer one") {
		t.Fatalf("relay did not retire the stalled session\nrelay log:\n%s", r.logs)
	}
	if contains(a.logs.String(), "another agent") {
		t.Fatalf("agent took its own new session for another agent\nagent log:\n%s", a.logs)
	}
	// The agent keeps serving after the stalled session is gone.
	for range 3 {
		expectEcho(t, publicAddr(port))
	}
}

// TestRedialWhileAttemptHangs: the agent's first connection attempt gets
// no answer at all (its packets lost); a fresh attempt a second later
// connects, long before the first one's handshake timeout.
func TestRedialWhileAttemptHangs(t *testing.T) {
	leak.Check(t)
	target := serve(t, echo)
	r := startRelay(t, nil)
	px := startFreezeProxy(t, r.addr)
	px.swallowNext(1)
	port := freePort(t)
	cfg := agentConfig(r, tcpTunnel("echo", port, target))
	cfg.Relay = px.addr()
	cfg.Transport = config.TransportTCP
	cfg.HandshakeTimeout = 20 * time.Second
	start := time.Now()
	a := startAgent(t, cfg)
	a.waitSession(10 * time.Second)
	t.Logf("session up %v after the start, the first attempt still hanging", time.Since(start).Round(time.Millisecond))
	expectEcho(t, publicAddr(port))
}

// testRetiredKeepsConnections: a session of the same agent that logs in
// saying it replaces the current one make-before-break (as the agent does
// when the relay went silent) takes the ports; a connection still open on
// the old session goes on to its end, and the old session closes after it.
func testRetiredKeepsConnections(t *testing.T, tr string) {
	leak.Check(t)
	target := serve(t, echo)
	r := startRelayOver(t, tr, nil)
	port := freePort(t)
	cfg := agentConfig(r, tcpTunnel("echo", port, target))
	old := startAgent(t, cfg)
	old.waitSession(10 * time.Second)

	c := dial(t, publicAddr(port))
	say := func(msg string) {
		t.Helper()
		if _, err := c.Write([]byte(msg)); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, []byte(msg)) {
			t.Fatalf("open connection: got %q, %v\nrelay log:\n%s", got, err, r.logs)
		}
	}
	say("before")

	// The newer session, made by hand: it registers the tunnel and
	// answers its visitors itself.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sess := loginAs(ctx, t, r, tr, cfg.ID, tunnel.FlagReplacing)
	ctrl, err := sess.OpenStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	reg := &tunnel.Register{Tunnels: []tunnel.TunnelRequest{{Name: "echo", Protocol: tunnel.ProtoTCP, RemotePort: port}}}
	var res tunnel.RegisterResult
	if err := tunnel.WriteMessage(ctrl, reg); err != nil {
		t.Fatal(err)
	}
	if err := tunnel.ReadInto(ctrl, tunnel.MaxFrameSize, &res); err != nil || res.Results[0].Code != tunnel.CodeOK {
		t.Fatalf("register on the newer session: %+v, %v\nrelay log:\n%s", res, err, r.logs)
	}
	visitor, err := net.DialTimeout("tcp", publicAddr(port), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer visitor.Close()
	st, err := sess.AcceptStream(ctx)
	if err != nil {
		t.Fatalf("new visitors do not reach the newer session: %v", err)
	}
	st.Close()

	say("after the replacement")
	if contains(old.logs.String(), "replaced by a newer session") {
		t.Fatalf("replaced session ended with a connection open\nold agent log:\n%s", old.logs)
	}
	c.CloseWrite()
	if rest, err := io.ReadAll(c); err != nil || len(rest) != 0 {
		t.Fatalf("end of the open connection: %q, %v", rest, err)
	}
	waitFor(t, 5*time.Second, "old session closed after its last connection", func() bool {
		return contains(old.logs.String(), "replaced by a newer session")
	})
}

func TestRetiredKeepsConnections(t *testing.T) { forEachTransport(t, testRetiredKeepsConnections) }

// loginAs authenticates to the relay as agent id with flags and returns
// the session.
func loginAs(ctx context.Context, t *testing.T, r *relayHandle, tr, id string, flags tunnel.HelloFlags) tunnel.Session {
	t.Helper()
	conf, err := tunnel.PinnedTLSConfig(r.id.Fingerprint)
	if err != nil {
		t.Fatal(err)
	}
	c, err := transportFor(tr).Dial(ctx, r.addr, conf)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Handshake(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := tunnel.Authenticate(c, []byte(testToken), id, "test", flags); err != nil {
		t.Fatal(err)
	}
	sess, err := c.Mux(tunnel.DefaultSessionConfig())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sess.Close() })
	return sess
}

// TestRelayRestartsInARow: the relay is stopped and started again five
// times, each time half a second after the agent is back. A session that
// the relay's end cut is retried as fast as an unreachable relay, however
// short it was: the agent comes back within a second each time instead of
// backing off as if the relay were turning it away.
func TestRelayRestartsInARow(t *testing.T) {
	leak.Check(t)
	target := serve(t, echo)
	r := startRelay(t, nil)
	port := freePort(t)
	cfg := agentConfig(r, tcpTunnel("echo", port, target))
	cfg.ReconnectMax = 30 * time.Second // the default: what a growing back-off would reach
	a := startAgent(t, cfg)
	a.waitSession(10 * time.Second)
	rcfg := r.cfg
	rcfg.Listen = r.addr
	for i := range 5 {
		time.Sleep(500 * time.Millisecond)
		r.stop()
		r = runRelay(t, rcfg, r.id)
		back := time.Now()
		a.waitSession(5 * time.Second)
		took := time.Since(back)
		t.Logf("restart %d: agent back %v after the relay", i+1, took.Round(time.Millisecond))
		if took > 1500*time.Millisecond {
			t.Errorf("restart %d: agent back only %v after the relay, want within a second or so", i+1, took.Round(time.Millisecond))
		}
	}
	expectEcho(t, publicAddr(port))
}
