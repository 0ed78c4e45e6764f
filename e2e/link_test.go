package e2e

import (
	"errors"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/homeport/homeport/agent"
	"github.com/homeport/homeport/config"
	"github.com/homeport/homeport/internal/leak"
	"github.com/homeport/homeport/internal/testenv"
)

// The agent's link to its relay says each change of its state in one log
// line (msg="relay link" from=… to=… cause=…). These tests drive real
// sessions through the changes and follow those lines.

// step is one change of the link's state.
type step struct{ from, to, cause string }

func (s step) String() string { return fmt.Sprintf("%s→%s (%s)", s.from, s.to, s.cause) }

var linkLine = regexp.MustCompile(`msg="relay link" .*from=(\S+) to=(\S+) cause=(\S+)`)

// linkSteps are the changes of the link's state in the agent's log.
func linkSteps(logs string) []step {
	var out []step
	for _, line := range strings.Split(logs, "\n") {
		if m := linkLine.FindStringSubmatch(line); m != nil {
			out = append(out, step{m[1], m[2], m[3]})
		}
	}
	return out
}

// linkFollower reads an agent's link changes in order.
type linkFollower struct {
	t    *testing.T
	a    *agentHandle
	seen int // steps read
}

// expect waits up to d for the next steps to be want, in order, and
// fails at the first one that differs.
func (f *linkFollower) expect(d time.Duration, want ...step) {
	f.t.Helper()
	deadline := time.Now().Add(testenv.Deadline(d))
	for len(want) > 0 {
		steps := linkSteps(f.a.logs.String())
		for len(want) > 0 && f.seen < len(steps) {
			if got := steps[f.seen]; got != want[0] {
				f.t.Fatalf("link step %d: %v, want %v\nagent log:\n%s", f.seen, got, want[0], f.a.logs)
			}
			f.seen++
			want = want[1:]
		}
		if len(want) == 0 {
			return
		}
		if time.Now().After(deadline) {
			f.t.Fatalf("timed out waiting for link step %v\nagent log:\n%s", want[0], f.a.logs)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// skip waits up to d for a step to s, passing over the steps before it,
// each of which must be among while.
func (f *linkFollower) skip(d time.Duration, s step, while ...step) {
	f.t.Helper()
	deadline := time.Now().Add(testenv.Deadline(d))
	for {
		steps := linkSteps(f.a.logs.String())
		for ; f.seen < len(steps); f.seen++ {
			got := steps[f.seen]
			if got == s {
				f.seen++
				return
			}
			ok := false
			for _, w := range while {
				ok = ok || got == w
			}
			if !ok {
				f.t.Fatalf("link step %d: %v, want %v\nagent log:\n%s", f.seen, got, s, f.a.logs)
			}
		}
		if time.Now().After(deadline) {
			f.t.Fatalf("timed out waiting for link step %v\nagent log:\n%s", s, f.a.logs)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// linkState is the link's state in the agent's status.
func linkState(a *agentHandle) string { return a.agent.Status().Sessions[0].Link }

// cut closes every connection the proxy carries, both ends, as a link
// that died with a reset would.
func (p *freezeProxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		c.Close()
	}
}

var (
	stepStart     = step{"stopped", "connecting", "start"}
	stepUp        = step{"connecting", "serving", "session_up"}
	stepDown      = step{"serving", "backing_off", "session_down"}
	stepRetry     = step{"backing_off", "connecting", "backoff_over"}
	stepRefused   = step{"connecting", "backing_off", "connect_failed"}
	stepSilent    = step{"serving", "replacing", "link_silent"}
	stepReloaded  = step{"serving", "replacing", "reload"}
	stepReplaced  = step{"replacing", "serving", "replacement_ready"}
	stepStopped   = step{"serving", "stopped", "context_done"}
	stepFirstStop = step{"connecting", "stopped", "refused"}
)

// TestLinkKilledReconnects: the link to the relay dies with a reset; the
// link backs off, connects again and serves, and the status says so.
func TestLinkKilledReconnects(t *testing.T) {
	leak.Check(t)
	target := serve(t, echo)
	r := startRelay(t, nil)
	px := startFreezeProxy(t, r.addr)
	port := freePort(t)
	cfg := agentConfig(r, tcpTunnel("echo", port, target))
	cfg.Relay = px.addr()
	cfg.Transport = config.TransportTCP // the proxy carries TCP only
	a := startAgent(t, cfg)
	f := &linkFollower{t: t, a: a}
	f.expect(10*time.Second, stepStart, stepUp)
	a.waitSession(10 * time.Second)
	if st := linkState(a); st != "serving" {
		t.Fatalf("status says the link is %q, want serving", st)
	}
	expectEcho(t, publicAddr(port))

	px.cut()
	f.expect(10*time.Second, stepDown, stepRetry, stepUp)
	a.waitSession(10 * time.Second)
	expectEcho(t, publicAddr(port))
	var b strings.Builder
	a.agent.Status().WriteText(&b)
	if !contains(b.String(), "serving") {
		t.Errorf("agent status does not name the link's state:\n%s", b.String())
	}

	a.stop()
	f.expect(15*time.Second, stepStopped)
}

// TestLinkSilentReplaced: the link stalls; the link opens a new session
// beside the silent one, serves on it, and lets the old one go without
// ever backing off.
func TestLinkSilentReplaced(t *testing.T) {
	leak.Check(t)
	ka := config.Session{KeepAlive: 10 * time.Second, KeepAliveTimeout: 10 * time.Second, StreamWindow: 4 << 20}
	target := serve(t, echo)
	r := startRelay(t, func(c *config.Relay) { c.Session = ka })
	px := startFreezeProxy(t, r.addr)
	port := freePort(t)
	cfg := agentConfig(r, tcpTunnel("echo", port, target))
	cfg.Relay = px.addr()
	cfg.Transport = config.TransportTCP
	cfg.Session = ka
	a := startAgent(t, cfg)
	f := &linkFollower{t: t, a: a}
	f.expect(10*time.Second, stepStart, stepUp)
	a.waitSession(10 * time.Second)

	px.stallOpen()
	f.expect(10*time.Second, stepSilent, stepReplaced)
	expectEcho(t, publicAddr(port))
	// The old session retires: its end is logged (the relay closed it,
	// or this end did once it carried nothing), and the link serves on.
	waitFor(t, 30*time.Second, "the old session's end", func() bool {
		return contains(a.logs.String(), `msg="relay session down"`)
	})
	expectEcho(t, publicAddr(port))
	if st := linkState(a); st != "serving" {
		t.Fatalf("status says the link is %q, want serving\nagent log:\n%s", st, a.logs)
	}
	if steps := linkSteps(a.logs.String()); len(steps) != f.seen {
		t.Fatalf("link changed again after the replacement: %v\nagent log:\n%s", steps[f.seen:], a.logs)
	}
}

// TestLinkBacksOffWhileRefused: the relay refuses the agent for now (its
// token's max_agents is reached); the link backs off and tries again,
// logging the refusal once, until the other agent leaves.
func TestLinkBacksOffWhileRefused(t *testing.T) {
	leak.Check(t)
	target := serve(t, echo)
	r := startRelay(t, func(c *config.Relay) {
		c.Tokens = []config.Token{{Name: "default", Secret: testToken, MaxAgents: 1}}
	})
	first := startAgent(t, agentConfig(r, tcpTunnel("one", freePort(t), target)))
	first.waitSession(10 * time.Second)

	cfg := agentConfig(r, tcpTunnel("two", freePort(t), target))
	cfg.ID = "other-pc"
	cfg.ReconnectMax = 500 * time.Millisecond
	a := startAgent(t, cfg)
	f := &linkFollower{t: t, a: a}
	f.expect(10*time.Second, stepStart, stepRefused, stepRetry, stepRefused)
	if st := a.agent.Status().Sessions[0]; st.Link != "backing_off" && st.Link != "connecting" || !contains(st.Error, "max_agents") {
		t.Fatalf("status while refused: %+v", st)
	}
	first.stop()
	f.skip(20*time.Second, stepUp, stepRetry, stepRefused)
	a.waitSession(10 * time.Second)
	if n := strings.Count(a.logs.String(), `level=ERROR msg="relay refused this agent for now`); n != 1 {
		t.Errorf("refusal logged %d times at level error, want once\n%s", n, a.logs)
	}
	// The rounds of backing off after the first are logged at level
	// debug: they would fill the log while the relay is away.
	if n := len(regexp.MustCompile(`level=INFO msg="relay link" .*to=backing_off`).FindAllString(a.logs.String(), -1)); n != 1 {
		t.Errorf("backing off logged %d times at level info, want once\n%s", n, a.logs)
	}
}

// TestLinkRefusedFirst: a token the relay does not know stops the link
// at the first attempt, and Run says why.
func TestLinkRefusedFirst(t *testing.T) {
	leak.Check(t)
	r := startRelay(t, nil)
	cfg := agentConfig(r, tcpTunnel("echo", freePort(t), "127.0.0.1:9"))
	cfg.Token = "not-the-relays-token-0123456789"
	a := startAgent(t, cfg)
	select {
	case err := <-a.done:
		a.done <- err // for the cleanup
		if !errors.Is(err, agent.ErrRejected) {
			t.Fatalf("Run: %v, want ErrRejected", err)
		}
	case <-time.After(testenv.Deadline(15 * time.Second)):
		t.Fatal("Run did not end")
	}
	f := &linkFollower{t: t, a: a}
	f.expect(time.Second, stepStart, stepFirstStop)
	if st := linkState(a); st != "stopped" {
		t.Fatalf("status says the link is %q, want stopped", st)
	}
}

// TestLinkReloadReplaces: a reload with another token makes a new
// session beside the old one, which hands over its tunnels.
func TestLinkReloadReplaces(t *testing.T) {
	leak.Check(t)
	const other = "other-token-0123456789abcdef"
	target := serve(t, echo)
	r := startRelay(t, func(c *config.Relay) {
		c.Tokens = append(c.Tokens, config.Token{Name: "other", Secret: other})
	})
	port := freePort(t)
	cfg := agentConfig(r, tcpTunnel("echo", port, target))
	a := startAgent(t, cfg)
	f := &linkFollower{t: t, a: a}
	f.expect(10*time.Second, stepStart, stepUp)
	a.waitSession(10 * time.Second)
	expectEcho(t, publicAddr(port))

	cfg.Token = other
	if _, err := a.reload(cfg); err != nil {
		t.Fatal(err)
	}
	f.expect(10*time.Second, stepReloaded, stepReplaced)
	a.waitSession(10 * time.Second)
	expectEcho(t, publicAddr(port))
}
