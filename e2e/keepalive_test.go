package e2e

import (
	"errors"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/homeport/homeport/config"
	"github.com/homeport/homeport/internal/leak"
	"github.com/homeport/homeport/internal/testenv"
)

// freezeProxy forwards TCP connections to a target. Frozen, it stops
// forwarding in both directions without closing anything, as a network
// that silently drops every packet would: no FIN and no RST reach either
// side, not even when one side closes its end. It can also stall only the
// connections open now (a link stuck behind backed-off retransmissions,
// while new connections get through), and swallow the first connections
// made to it (a connection attempt whose packets were lost).
type freezeProxy struct {
	t      *testing.T
	ln     net.Listener
	target string

	mu         sync.Mutex
	frozen     bool
	stallBelow int           // connections numbered below this are stalled
	next       int           // number of the next connection
	swallow    int           // connections left to swallow
	changed    chan struct{} // closed and replaced on every change
	closed     bool
	conns      map[net.Conn]struct{}
	wg         sync.WaitGroup
}

// startFreezeProxy listens on 127.0.0.1 and forwards to target until the
// test ends; then it closes every connection it made.
func startFreezeProxy(t *testing.T, target string) *freezeProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &freezeProxy{t: t, ln: ln, target: target, conns: map[net.Conn]struct{}{}, changed: make(chan struct{})}
	p.wg.Add(1)
	go p.acceptLoop()
	t.Cleanup(p.close)
	return p
}

func (p *freezeProxy) addr() string { return p.ln.Addr().String() }

// change applies f under the lock and wakes the waiting copies.
func (p *freezeProxy) change(f func()) {
	p.mu.Lock()
	defer p.mu.Unlock()
	f()
	close(p.changed)
	p.changed = make(chan struct{})
}

// freeze stops all forwarding, on open and on new connections.
func (p *freezeProxy) freeze() { p.change(func() { p.frozen = true }) }

// thaw resumes forwarding; what was held back flows on.
func (p *freezeProxy) thaw() { p.change(func() { p.frozen = false }) }

// stallOpen stops forwarding for good on the connections open now; new
// ones are forwarded.
func (p *freezeProxy) stallOpen() { p.change(func() { p.stallBelow = p.next }) }

// swallowNext makes the proxy accept the next n connections and then
// neither forward nor close them.
func (p *freezeProxy) swallowNext(n int) { p.change(func() { p.swallow = n }) }

// pass blocks while connection id may not forward; it reports false once
// the proxy is closed.
func (p *freezeProxy) pass(id int) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	for (p.frozen || id < p.stallBelow) && !p.closed {
		ch := p.changed
		p.mu.Unlock()
		<-ch
		p.mu.Lock()
	}
	return !p.closed
}

// track registers c, or closes it and reports false when the proxy is
// closed.
func (p *freezeProxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		c.Close()
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *freezeProxy) untrack(cs ...net.Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range cs {
		c.Close()
		delete(p.conns, c)
	}
}

// admit numbers a new connection, or reports that it is to be swallowed.
func (p *freezeProxy) admit() (id int, swallow bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.swallow > 0 {
		p.swallow--
		return 0, true
	}
	p.next++
	return p.next - 1, false
}

func (p *freezeProxy) acceptLoop() {
	defer p.wg.Done()
	for {
		down, err := p.ln.Accept()
		if err != nil {
			return
		}
		if !p.track(down) {
			return
		}
		id, swallow := p.admit()
		if swallow {
			continue // closed with the proxy
		}
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			up, err := net.DialTimeout("tcp", p.target, 5*time.Second)
			if err != nil {
				p.untrack(down)
				return
			}
			if !p.track(up) {
				p.untrack(down)
				return
			}
			var once sync.Once
			end := func() { once.Do(func() { p.untrack(down, up) }) }
			p.wg.Add(2)
			go p.copy(id, up, down, end)
			go p.copy(id, down, up, end)
		}()
	}
}

// copy forwards src to dst. Whatever it reads while the proxy is frozen,
// data or the end of the stream, it holds until the proxy thaws; any end
// closes both connections.
func (p *freezeProxy) copy(id int, dst, src net.Conn, end func()) {
	defer p.wg.Done()
	defer end()
	buf := make([]byte, 32<<10)
	for {
		n, rerr := src.Read(buf)
		if !p.pass(id) {
			return
		}
		if n > 0 {
			if _, err := dst.Write(buf[:n]); err != nil {
				return
			}
		}
		if rerr != nil {
			return
		}
	}
}

// close stops the proxy and closes every connection it holds.
func (p *freezeProxy) close() {
	p.ln.Close()
	p.change(func() {
		p.closed = true
		for c := range p.conns {
			c.Close()
		}
	})
	p.wg.Wait()
}

// TestKeepaliveDeadPeer: the network between agent and relay silently
// drops everything. The session keepalive lets the relay free the public
// port and drop the visitors of the dead session, and the agent notice and
// reconnect by itself once the network is back.
func TestKeepaliveDeadPeer(t *testing.T) {
	leak.Check(t)
	ka := config.Session{KeepAlive: 300 * time.Millisecond, KeepAliveTimeout: 600 * time.Millisecond, StreamWindow: 4 << 20}
	var targets atomic.Int32 // target connections open
	target := serve(t, func(c *net.TCPConn) {
		targets.Add(1)
		defer targets.Add(-1)
		echo(c)
	})
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

	// A healthy idle session outlives many keepalive rounds.
	time.Sleep(5 * ka.KeepAlive)
	select {
	case <-a.sessions:
		t.Fatalf("agent reconnected over a healthy link\nagent log:\n%s", a.logs)
	default:
	}
	if contains(a.logs.String(), "session lost") || contains(r.logs.String(), "agent session down") {
		t.Fatalf("healthy session dropped\nagent log:\n%s\nrelay log:\n%s", a.logs, r.logs)
	}

	// A visitor in the middle of a conversation when the network dies.
	c := dial(t, publicAddr(port))
	if _, err := c.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 5)
	if _, err := c.Read(buf); err != nil {
		t.Fatal(err)
	}

	px.freeze()
	frozen := time.Now()
	expectClosed(t, publicAddr(port), 5*time.Second)
	t.Logf("relay freed the public port %v after the network died", time.Since(frozen).Round(time.Millisecond))
	waitFor(t, 5*time.Second, "relay log of the dead session", func() bool {
		return contains(r.logs.String(), "agent session down")
	})
	waitFor(t, 5*time.Second, "agent noticing the dead session", func() bool {
		return contains(a.logs.String(), "session lost; reconnecting")
	})
	t.Logf("agent noticed %v after the network died", time.Since(frozen).Round(time.Millisecond))
	// Both ends of the visitor's conversation are let go.
	c.SetReadDeadline(time.Now().Add(testenv.Deadline(5 * time.Second)))
	if _, err := c.Read(buf); errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatal("visitor connection of the dead session still open")
	}
	waitFor(t, 5*time.Second, "agent closing its target connection", func() bool { return targets.Load() == 0 })

	px.thaw()
	thawed := time.Now()
	a.waitSession(10 * time.Second)
	t.Logf("agent back %v after the network came back", time.Since(thawed).Round(time.Millisecond))
	expectEcho(t, publicAddr(port))
}
