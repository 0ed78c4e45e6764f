package e2e

import (
	"bufio"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/homeport/homeport/config"
	"github.com/homeport/homeport/internal/leak"
)

// transfer is a large echo round trip through a tunnel, running in the
// background: size bytes there and back at once, compared by sha256.
type transfer struct {
	size int64
	back atomic.Int64 // bytes read back so far
	done chan error
}

// startTransfer sends size bytes through addr to an echo target and
// reads them back, in the background.
func startTransfer(t *testing.T, addr string, size int64) *transfer {
	t.Helper()
	x := &transfer{size: size, done: make(chan error, 1)}
	c := dial(t, addr)
	c.SetDeadline(time.Now().Add(5 * time.Minute))
	sent := make(chan [32]byte, 1)
	go func() {
		h := sha256.New()
		src := io.TeeReader(io.LimitReader(rand.NewChaCha8([32]byte{9}), size), h)
		if _, err := io.Copy(c, src); err != nil {
			sent <- [32]byte{}
			return
		}
		c.CloseWrite()
		sent <- [32]byte(h.Sum(nil))
	}()
	go func() {
		h := sha256.New()
		buf := make([]byte, 64<<10)
		var err error
		for {
			var n int
			n, err = c.Read(buf)
			h.Write(buf[:n])
			x.back.Add(int64(n))
			if err != nil {
				break
			}
		}
		if !errors.Is(err, io.EOF) {
			c.Close()
			<-sent
			x.done <- fmt.Errorf("after %d of %d bytes back: %w", x.back.Load(), size, err)
			return
		}
		if want := <-sent; x.back.Load() != size || [32]byte(h.Sum(nil)) != want {
			x.done <- fmt.Errorf("got %d of %d bytes back, or a different sha256", x.back.Load(), size)
			return
		}
		x.done <- nil
	}()
	return x
}

// waitBack waits until n bytes have come back, or the transfer ended.
func (x *transfer) waitBack(t *testing.T, n int64) {
	t.Helper()
	waitFor(t, 60*time.Second, fmt.Sprintf("%d bytes of the transfer back", n), func() bool { return x.back.Load() >= n })
}

// wait waits for the end of the transfer and fails the test unless every
// byte came back intact.
func (x *transfer) wait(t *testing.T) {
	t.Helper()
	select {
	case err := <-x.done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Minute):
		t.Fatal("transfer not done in 5 minutes")
	}
}

// transferSize is what a transfer across a reload carries: four stream
// windows, so that it is in flight when the reload comes midway.
func transferSize() int64 { return 16 << 20 }

// TestReloadAddTunnel: a reload adds a tunnel while 16 MiB go through
// another one. The transfer completes intact on the session it started
// on (the agent connects once), and the new tunnel serves at once.
func TestReloadAddTunnel(t *testing.T) { forEachTransport(t, testReloadAddTunnel) }

func testReloadAddTunnel(t *testing.T, tr string) {
	leak.Check(t)
	target := serve(t, echo)
	r := startRelayOver(t, tr, nil)
	bulk, web := freePort(t), freePort(t)
	cfg := agentConfig(r, tcpTunnel("bulk", bulk, target))
	a := startAgent(t, cfg)
	a.waitSession(10 * time.Second)

	size := transferSize()
	x := startTransfer(t, publicAddr(bulk), size)
	x.waitBack(t, size/8)

	cfg.Tunnels = append(slices.Clone(cfg.Tunnels), tcpTunnel("web", web, target))
	ch, err := a.reload(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(ch.Added, []string{"web"}) || len(ch.Removed)+len(ch.Changed)+len(ch.NewSession) != 0 {
		t.Fatalf("changes: %+v", ch)
	}
	if x.back.Load() == size {
		t.Fatal("the transfer ended before the reload: nothing shown")
	}
	expectEcho(t, publicAddr(web))
	x.wait(t)

	if n := strings.Count(a.logs.String(), "connected to relay"); n != 1 {
		t.Fatalf("agent connected %d times, want once\nagent log:\n%s", n, a.logs)
	}
	if !contains(a.logs.String(), `msg="tunnel ready" tunnel=web`) || !contains(r.logs.String(), `msg="tunnel registered"`, "tunnel=web") {
		t.Fatalf("no registration of web logged\nagent log:\n%s\nrelay log:\n%s", a.logs, r.logs)
	}
	st := a.agent.Status()
	if len(st.Tunnels) != 2 || st.Tunnels[1].Name != "web" || st.Tunnels[1].State != "up" || st.Tunnels[1].Accepted != 1 {
		t.Fatalf("agent status tunnels: %+v", st.Tunnels)
	}
}

// TestReloadRemoveTunnel: a reload removes one tunnel and moves another to
// a new port. The relay closes the removed tunnel's public port and no
// longer lists it, while a connection open on it goes on to its end; the
// moved tunnel serves on its new port only; the third one is untouched.
func TestReloadRemoveTunnel(t *testing.T) { forEachTransport(t, testReloadRemoveTunnel) }

func testReloadRemoveTunnel(t *testing.T, tr string) {
	leak.Check(t)
	target := serve(t, echo)
	r := startRelayOver(t, tr, nil)
	keep, gone, moved, movedTo := freePort(t), freePort(t), freePort(t), freePort(t)
	cfg := agentConfig(r, tcpTunnel("keep", keep, target), tcpTunnel("gone", gone, target), tcpTunnel("moved", moved, target))
	a := startAgent(t, cfg)
	a.waitSession(10 * time.Second)

	c := dial(t, publicAddr(gone))
	rd := bufio.NewReader(c)
	line := func(s string) {
		t.Helper()
		if _, err := fmt.Fprintln(c, s); err != nil {
			t.Fatal(err)
		}
		got, err := rd.ReadString('\n')
		if err != nil || got != s+"\n" {
			t.Fatalf("echo of %q: %q, %v", s, got, err)
		}
	}
	line("before the reload")

	next := cfg
	next.Tunnels = []config.Tunnel{tcpTunnel("keep", keep, target), tcpTunnel("moved", movedTo, target)}
	ch, err := a.reload(next)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(ch.Removed, []string{"gone"}) || !slices.Equal(ch.Changed, []string{"moved"}) || len(ch.Added) != 0 {
		t.Fatalf("changes: %+v", ch)
	}
	expectClosed(t, publicAddr(gone), 10*time.Second)
	expectClosed(t, publicAddr(moved), 10*time.Second)
	expectEcho(t, publicAddr(movedTo))
	expectEcho(t, publicAddr(keep))
	names := func() []string {
		var out []string
		for _, ts := range r.srv.Status().Tunnels {
			out = append(out, ts.Name)
		}
		slices.Sort(out)
		return out
	}
	if got := names(); !slices.Equal(got, []string{"keep", "moved"}) {
		t.Fatalf("relay lists tunnels %v", got)
	}
	for _, ts := range r.srv.Status().Tunnels {
		if ts.Name == "moved" && ts.Port != movedTo {
			t.Fatalf("moved is on port %d, want %d", ts.Port, movedTo)
		}
	}
	if !contains(r.logs.String(), `msg="tunnel closed by the agent"`, "tunnel=gone") {
		t.Fatalf("relay log:\n%s", r.logs)
	}

	// The connection on the removed tunnel goes on to its end.
	line("after the reload")
	c.CloseWrite()
	if rest, err := io.ReadAll(rd); err != nil || len(rest) != 0 {
		t.Fatalf("end of the open connection: %q, %v", rest, err)
	}
	if n := strings.Count(a.logs.String(), "connected to relay"); n != 1 {
		t.Fatalf("agent connected %d times, want once\nagent log:\n%s", n, a.logs)
	}
	var agentNames []string
	for _, ts := range a.agent.Status().Tunnels {
		agentNames = append(agentNames, ts.Name)
	}
	if !slices.Equal(agentNames, []string{"keep", "moved"}) {
		t.Fatalf("agent lists tunnels %v", agentNames)
	}
}

// TestReloadChangeTarget: a reload points a tunnel at another target. New
// visitors reach the new one; a connection open before stays on the old.
func TestReloadChangeTarget(t *testing.T) { forEachTransport(t, testReloadChangeTarget) }

func testReloadChangeTarget(t *testing.T, tr string) {
	leak.Check(t)
	// Each target says who it is, then echoes.
	named := func(name string) string {
		return serve(t, func(c *net.TCPConn) {
			fmt.Fprintln(c, name)
			echo(c)
		})
	}
	oldT, newT := named("old"), named("new")
	r := startRelayOver(t, tr, nil)
	port := freePort(t)
	cfg := agentConfig(r, tcpTunnel("web", port, oldT))
	a := startAgent(t, cfg)
	a.waitSession(10 * time.Second)

	who := func(c net.Conn, rd *bufio.Reader) string {
		t.Helper()
		s, err := rd.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(s)
	}
	c := dial(t, publicAddr(port))
	rd := bufio.NewReader(c)
	if w := who(c, rd); w != "old" {
		t.Fatalf("before the reload: reached %q", w)
	}

	cfg.Tunnels = []config.Tunnel{tcpTunnel("web", port, newT)}
	if _, err := a.reload(cfg); err != nil {
		t.Fatal(err)
	}
	c2 := dial(t, publicAddr(port))
	if w := who(c2, bufio.NewReader(c2)); w != "new" {
		t.Fatalf("after the reload: reached %q", w)
	}
	// The old connection still reaches the old target.
	fmt.Fprintln(c, "still here")
	if s, err := rd.ReadString('\n'); err != nil || s != "still here\n" {
		t.Fatalf("old connection: %q, %v", s, err)
	}
	// A target change is the agent's own: the relay did not close the
	// port.
	if contains(r.logs.String(), "tunnel closed by the agent") || strings.Count(r.logs.String(), `msg="tunnel registered"`) != 1 {
		t.Fatalf("relay log:\n%s", r.logs)
	}
}

// TestReloadRefused: a configuration with mistakes is refused as a whole:
// the error names each one, and the running configuration stays in force
// (the tunnel it would add is not opened, the one it would remove still
// serves).
func TestReloadRefused(t *testing.T) { forEachTransport(t, testReloadRefused) }

func testReloadRefused(t *testing.T, tr string) {
	leak.Check(t)
	target := serve(t, echo)
	r := startRelayOver(t, tr, nil)
	web, extra := freePort(t), freePort(t)
	cfg := agentConfig(r, tcpTunnel("web", web, target))
	a := startAgent(t, cfg)
	a.waitSession(10 * time.Second)
	before := a.agent.Status()

	bad := cfg
	bad.Token = ""
	bad.Tunnels = []config.Tunnel{
		tcpTunnel("extra", extra, target),
		tcpTunnel("extra", freePort(t), target),
		tcpTunnel("broken", freePort(t), "no-port-here"),
	}
	_, err := a.reload(bad)
	if err == nil {
		t.Fatal("broken configuration accepted")
	}
	for _, want := range []string{`token: empty`, `tunnel "extra": duplicate name`, `tunnel "broken": target "no-port-here"`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not say %q:\n%v", want, err)
		}
	}
	expectEcho(t, publicAddr(web))
	expectClosed(t, publicAddr(extra), time.Second)
	after := a.agent.Status()
	if len(after.Tunnels) != 1 || after.Tunnels[0].Name != "web" || after.Tunnels[0].Target != before.Tunnels[0].Target {
		t.Fatalf("agent status after a refused reload: %+v", after.Tunnels)
	}
	if contains(r.logs.String(), "tunnel closed by the agent") || strings.Count(r.logs.String(), `msg="tunnel registered"`) != 1 {
		t.Fatalf("relay log:\n%s", r.logs)
	}
}

// TestReloadNewSession: a reload that changes the agent's id needs a new
// session: it is made beside the old one, whose open connection goes on
// to its end, and then serves the tunnels.
func TestReloadNewSession(t *testing.T) { forEachTransport(t, testReloadNewSession) }

func testReloadNewSession(t *testing.T, tr string) {
	leak.Check(t)
	target := serve(t, echo)
	r := startRelayOver(t, tr, nil)
	port := freePort(t)
	cfg := agentConfig(r, tcpTunnel("web", port, target))
	a := startAgent(t, cfg)
	a.waitSession(10 * time.Second)
	c := dial(t, publicAddr(port))
	rd := bufio.NewReader(c)
	fmt.Fprintln(c, "before")
	if s, err := rd.ReadString('\n'); err != nil || s != "before\n" {
		t.Fatalf("echo: %q, %v", s, err)
	}

	cfg.ID = "home-pc-2"
	ch, err := a.reload(cfg)
	if err != nil || !slices.Equal(ch.NewSession, []string{"id"}) {
		t.Fatalf("changes %+v, %v", ch, err)
	}
	a.waitAny(20 * time.Second)
	waitFor(t, 20*time.Second, "the new session serving the tunnel", func() bool {
		for _, ag := range r.srv.Status().Agents {
			if ag.ID == "home-pc-2" {
				for _, ts := range r.srv.Status().Tunnels {
					if ts.Name == "web" && ts.Agent == "home-pc-2" {
						return true
					}
				}
			}
		}
		return false
	})
	expectEcho(t, publicAddr(port))
	fmt.Fprintln(c, "after")
	if s, err := rd.ReadString('\n'); err != nil || s != "after\n" {
		t.Fatalf("old connection after the new session: %q, %v\nagent log:\n%s", s, err, a.logs)
	}
	c.CloseWrite()
	if rest, err := io.ReadAll(rd); err != nil || len(rest) != 0 {
		t.Fatalf("end of the open connection: %q, %v", rest, err)
	}
	if st := a.agent.Status(); st.ID != "home-pc-2" {
		t.Fatalf("status id %q", st.ID)
	}
}
