//go:build unix

package e2e

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/homeport/homeport/config"
	"github.com/homeport/homeport/internal/leak"
	"github.com/homeport/homeport/internal/testenv"
)

// udpFwdPoll bounds every blocking read of the forwarder, so that its
// loops notice the end of the test even without the close of a socket.
const udpFwdPoll = 100 * time.Millisecond

// udpFwdBuffer is the kernel buffer size asked for the forwarder's sockets,
// so that it does not drop a burst of QUIC packets (the kernel caps it at
// net.core.rmem_max and wmem_max).
const udpFwdBuffer = 4 << 20

// udpFwdDir is the direction of a forwarded datagram.
type udpFwdDir int

const (
	udpFwdUp   udpFwdDir = iota // from a client to the target
	udpFwdDown                  // from the target back to a client
)

// udpFwd forwards UDP datagrams between its clients and one target, as a
// home NAT router does: each client address has its own upstream socket
// (its mapping, with its own source port), which the target's replies come
// back through. rebind replaces every upstream socket with a new one, as a
// router that forgot its mappings and made new ones would: the target sees
// the same client come from a new port.
type udpFwd struct {
	t      *testing.T
	ln     *net.UDPConn
	target netip.AddrPort

	mu      sync.Mutex
	flows   map[netip.AddrPort]*udpFwdFlow
	closed  bool
	observe func(dir udpFwdDir, client netip.AddrPort, gen int, b []byte) []byte
	wg      sync.WaitGroup
}

// udpFwdFlow is one client's mapping.
type udpFwdFlow struct {
	client netip.AddrPort
	up     *net.UDPConn // under udpFwd.mu
	gen    int          // rebinds so far; under udpFwd.mu
}

// startUDPFwd forwards datagrams sent to the returned forwarder's address
// to target (host:port) until the test ends.
func startUDPFwd(t *testing.T, target string) *udpFwd {
	t.Helper()
	ap, err := netip.ParseAddrPort(target)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := udpFwdListen()
	if err != nil {
		t.Fatal(err)
	}
	f := &udpFwd{t: t, ln: ln, target: ap, flows: map[netip.AddrPort]*udpFwdFlow{}}
	f.wg.Add(1)
	go f.serveClients()
	t.Cleanup(f.close)
	return f
}

func udpFwdListen() (*net.UDPConn, error) {
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return nil, err
	}
	_ = c.SetReadBuffer(udpFwdBuffer)
	_ = c.SetWriteBuffer(udpFwdBuffer)
	return c, nil
}

func (f *udpFwd) addr() string { return f.ln.LocalAddr().String() }

// onPacket sets a function called with every datagram before it is
// forwarded, with the generation (rebinds so far) of the upstream socket
// that carries it. What it returns is forwarded instead: b itself, another
// datagram, or nil to drop it. It must not keep or change b.
func (f *udpFwd) onPacket(fn func(dir udpFwdDir, client netip.AddrPort, gen int, b []byte) []byte) {
	f.mu.Lock()
	f.observe = fn
	f.mu.Unlock()
}

func (f *udpFwd) filter(dir udpFwdDir, client netip.AddrPort, gen int, b []byte) []byte {
	f.mu.Lock()
	fn := f.observe
	f.mu.Unlock()
	if fn == nil {
		return b
	}
	return fn(dir, client, gen, b)
}

// clients returns the client addresses that have a mapping.
func (f *udpFwd) clients() []netip.AddrPort {
	f.mu.Lock()
	defer f.mu.Unlock()
	var cs []netip.AddrPort
	for c := range f.flows {
		cs = append(cs, c)
	}
	return cs
}

func (f *udpFwd) isClosed() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.closed
}

// upstream returns the client's flow and its current socket, making them
// on the client's first datagram; ok is false once the forwarder is closed.
func (f *udpFwd) upstream(client netip.AddrPort) (up *net.UDPConn, gen int, ok bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return nil, 0, false
	}
	fl := f.flows[client]
	if fl == nil {
		c, err := udpFwdListen()
		if err != nil {
			f.t.Errorf("udp forwarder: new mapping for %v: %v", client, err)
			return nil, 0, false
		}
		fl = &udpFwdFlow{client: client, up: c}
		f.flows[client] = fl
		f.wg.Add(1)
		go f.serveUpstream(fl, c, 0)
	}
	return fl.up, fl.gen, true
}

// serveClients forwards what clients send to the target, each client
// through its current upstream socket.
func (f *udpFwd) serveClients() {
	defer f.wg.Done()
	buf := make([]byte, 64<<10)
	for {
		_ = f.ln.SetReadDeadline(time.Now().Add(udpFwdPoll))
		n, from, err := f.ln.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) || f.isClosed() {
				return
			}
			continue // a read timeout: look at closed again
		}
		from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
		up, gen, ok := f.upstream(from)
		if !ok {
			return
		}
		if b := f.filter(udpFwdUp, from, gen, buf[:n]); b != nil {
			// A socket that a rebind closed meanwhile loses the
			// datagram, as a router does that forgets a mapping.
			_, _ = up.WriteToUDPAddrPort(b, f.target)
		}
	}
}

// serveUpstream forwards what the target sends to one upstream socket
// back to its client, until the socket is closed by a rebind or the end.
func (f *udpFwd) serveUpstream(fl *udpFwdFlow, up *net.UDPConn, gen int) {
	defer f.wg.Done()
	buf := make([]byte, 64<<10)
	for {
		_ = up.SetReadDeadline(time.Now().Add(udpFwdPoll))
		n, from, err := up.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) || f.isClosed() {
				return
			}
			continue
		}
		if netip.AddrPortFrom(from.Addr().Unmap(), from.Port()) != f.target {
			continue // a router drops what does not come from the mapped peer
		}
		if b := f.filter(udpFwdDown, fl.client, gen, buf[:n]); b != nil {
			_, _ = f.ln.WriteToUDPAddrPort(b, fl.client)
		}
	}
}

// rebind gives every client a new upstream socket, with a new source
// port, and closes the old one: later datagrams in both directions use
// the new socket only. It returns the number of mappings changed.
func (f *udpFwd) rebind() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return 0
	}
	for _, fl := range f.flows {
		c, err := udpFwdListen()
		if err != nil {
			f.t.Errorf("udp forwarder: rebind %v: %v", fl.client, err)
			continue
		}
		old := fl.up
		fl.up = c
		fl.gen++
		f.wg.Add(1)
		go f.serveUpstream(fl, c, fl.gen)
		old.Close()
	}
	return len(f.flows)
}

// close stops forwarding, closes every socket and waits for the loops.
func (f *udpFwd) close() {
	f.mu.Lock()
	f.closed = true
	f.ln.Close()
	for _, fl := range f.flows {
		fl.up.Close()
	}
	f.mu.Unlock()
	f.wg.Wait()
}

// TestQUICNATRebinding: the home router changes the agent's public port
// in the middle of a large transfer, several times. QUIC follows the
// agent to its new address (the relay validates the new path and moves
// the connection to it): the transfer completes intact, and the session
// is never re-established.
func TestQUICNATRebinding(t *testing.T) {
	leak.Check(t)
	size := int64(16 << 20)
	const rebinds = 3 // after 1/4, 2/4 and 3/4 of the bytes came back

	target := serve(t, echo)
	r := startRelayOver(t, config.TransportQUIC, nil)
	fwd := startUDPFwd(t, r.addr) // the relay's QUIC port has the TCP port's number
	port := freePort(t)
	cfg := agentConfig(r, tcpTunnel("echo", port, target))
	cfg.Transport = config.TransportQUIC
	cfg.Relay = fwd.addr()
	a := startAgent(t, cfg)
	if si := a.waitSession(10 * time.Second); si.Transport != config.TransportQUIC {
		t.Fatalf("session over %s, want quic", si.Transport)
	}

	// What came back from the relay through each generation of the
	// agent's mapping, and when the first of it did.
	var (
		mu        sync.Mutex
		downBytes = map[int]int64{}
		firstDown = map[int]time.Time{}
	)
	fwd.onPacket(func(dir udpFwdDir, _ netip.AddrPort, gen int, b []byte) []byte {
		if dir == udpFwdDown {
			mu.Lock()
			if downBytes[gen] == 0 {
				firstDown[gen] = time.Now()
			}
			downBytes[gen] += int64(len(b))
			mu.Unlock()
		}
		return b
	})

	c := dial(t, publicAddr(port))
	type sendResult struct {
		sum [32]byte
		err error
	}
	sent := make(chan sendResult, 1)
	senderDone := make(chan struct{})
	start := time.Now()
	go func() {
		defer close(senderDone)
		h := sha256.New()
		src := io.TeeReader(io.LimitReader(rand.NewChaCha8([32]byte{7}), size), h)
		_, err := io.Copy(c, src)
		if err == nil {
			err = c.CloseWrite()
		}
		sent <- sendResult{[32]byte(h.Sum(nil)), err}
	}()
	t.Cleanup(func() {
		c.Close()
		<-senderDone
	})

	h := sha256.New()
	buf := make([]byte, 256<<10)
	var got int64
	var rebindAt []time.Time
	for {
		n, err := c.Read(buf)
		h.Write(buf[:n])
		got += int64(n)
		for len(rebindAt) < rebinds && got >= size*int64(len(rebindAt)+1)/(rebinds+1) {
			if m := fwd.rebind(); m != 1 {
				t.Fatalf("rebind changed %d mappings, want 1", m)
			}
			rebindAt = append(rebindAt, time.Now())
		}
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("after %d of %d bytes back (%d rebinds): %v\nagent log:\n%s\nrelay log:\n%s", got, size, len(rebindAt), err, a.logs, r.logs)
		}
	}
	elapsed := time.Since(start)
	res := <-sent
	if res.err != nil {
		t.Fatalf("sending: %v", res.err)
	}
	if got != size || [32]byte(h.Sum(nil)) != res.sum {
		t.Fatalf("got %d of %d bytes back, or a different sha256", got, size)
	}
	t.Logf("%d MiB there and back in %v with %d rebinds (%.1f MiB/s each way)",
		size>>20, elapsed.Round(time.Millisecond), len(rebindAt), float64(size)/(1<<20)/elapsed.Seconds())

	// The relay followed each new mapping: its packets came back through
	// every new socket.
	mu.Lock()
	for gen := 1; gen <= len(rebindAt); gen++ {
		if downBytes[gen] == 0 {
			t.Errorf("rebind %d: nothing from the relay through the new mapping", gen)
			continue
		}
		t.Logf("rebind %d: first packet from the relay at the new port after %v; %d KiB came back through it",
			gen, firstDown[gen].Sub(rebindAt[gen-1]).Round(time.Microsecond), downBytes[gen]>>10)
	}
	mu.Unlock()

	// The session lives on, through keepalive rounds, on the last mapping.
	if !testing.Short() {
		time.Sleep(cfg.Session.KeepAlive + cfg.Session.KeepAliveTimeout + time.Second)
	}
	expectEcho(t, publicAddr(port))
	select {
	case <-a.sessions:
		t.Errorf("agent registered again: the session was re-established")
	default:
	}
	alog, rlog := a.logs.String(), r.logs.String()
	if n := strings.Count(alog, `msg="connected to relay"`); n != 1 {
		t.Errorf("agent connected %d times, want 1", n)
	}
	if strings.Contains(alog, "session lost") {
		t.Errorf("agent lost its session")
	}
	if n := strings.Count(rlog, `msg="tunnel registered"`); n != 1 {
		t.Errorf("relay registered the tunnel %d times, want 1", n)
	}
	if strings.Contains(rlog, "agent session down") {
		t.Errorf("relay saw the agent session go down")
	}
	if t.Failed() {
		t.Logf("agent log:\n%s\nrelay log:\n%s", alog, rlog)
	}
}

// udpFwdStartRelay starts the relay command on 127.0.0.1:port with data
// directory dataDir and the given extra arguments, and returns it with
// the agent command its banner printed.
func udpFwdStartRelay(t *testing.T, dataDir string, port uint16, extra ...string) (*binProc, binBanner) {
	t.Helper()
	args := append([]string{
		"--data-dir", dataDir,
		"--listen", publicAddr(port),
		"--bind-addr", "127.0.0.1",
		"--advertise", "127.0.0.1",
	}, extra...)
	p := binStart(t, "relay", args...)
	return p, binAwaitBanner(p, dataDir)
}

// udpFwdResetMin is the smallest packet quic-go answers with a stateless
// reset: it ignores packets of up to 42 bytes (protocol.MinStatelessResetSize,
// so that a reset never answers a reset).
const udpFwdResetMin = 43

// TestQUICRelayRestartReset: the relay crashes (SIGKILL: not a word to the
// agent) and comes back on the same port with the same key. Its stateless
// reset key derives from that key, so the first packet of the agent's old
// connection that reaches the new relay is answered with a stateless
// reset, and the agent reconnects within a keepalive interval, a round
// trip and its backoff, long before the idle timeout would tell it.
//
// "idle agent" is the common case: a session without traffic when the
// relay crashes, whose agent sends only keepalive PINGs.
// "large packets" is the same, except that the forwarder pads the old
// connection's packets after the restart to udpFwdResetMin bytes; it
// shows what the reset does for an agent whose packets are large enough.
func TestQUICRelayRestartReset(t *testing.T) {
	t.Run("idle agent", func(t *testing.T) { testQUICRelayRestartReset(t, false) })
	t.Run("large packets", func(t *testing.T) { testQUICRelayRestartReset(t, true) })
}

func testQUICRelayRestartReset(t *testing.T, pad bool) {
	leak.Check(t)
	// Keepalive and idle timeout long on both sides: only the reset can
	// end the old session quickly. The agent pings every 2 s; the idle
	// timeout is 20 s (the relay's 10 s + 10 s, lower than the agent's).
	relayArgs := []string{"--keepalive", "10s", "--keepalive-timeout", "10s"}
	agentSession := config.Session{KeepAlive: 2 * time.Second, KeepAliveTimeout: 20 * time.Second, StreamWindow: 4 << 20}
	const idleTimeout = 20 * time.Second
	const limit = 8 * time.Second

	target := serve(t, echo)
	dataDir := t.TempDir()
	relayPort, public := freePort(t), freePort(t)
	r1, b := udpFwdStartRelay(t, dataDir, relayPort, relayArgs...)
	// The agent reaches the relay through a forwarder, which shows what
	// goes between the old connection and the restarted relay.
	fwd := startUDPFwd(t, publicAddr(relayPort))
	var (
		mu        sync.Mutex
		restarted time.Time      // zero until the relay is back
		oldMap    netip.AddrPort // the agent's first connection
		trace     []string       // the old connection after the restart
		maxUp     int            // its largest packet to the relay
		resets    int            // packets from the new relay to it
	)
	fwd.onPacket(func(dir udpFwdDir, client netip.AddrPort, _ int, b []byte) []byte {
		mu.Lock()
		defer mu.Unlock()
		if restarted.IsZero() || client != oldMap {
			return b
		}
		d := time.Since(restarted).Round(time.Millisecond)
		if dir == udpFwdDown {
			trace = append(trace, fmt.Sprintf("+%v relay->agent %d bytes", d, len(b)))
			resets++
			return b
		}
		maxUp = max(maxUp, len(b))
		if pad && len(b) < udpFwdResetMin {
			trace = append(trace, fmt.Sprintf("+%v agent->relay %d bytes, padded to %d", d, len(b), udpFwdResetMin))
			// The relay reads no further than the connection ID of a
			// packet it has no connection for.
			p := make([]byte, udpFwdResetMin)
			copy(p, b)
			return p
		}
		trace = append(trace, fmt.Sprintf("+%v agent->relay %d bytes", d, len(b)))
		return b
	})

	cfg := config.Agent{
		Relay:            fwd.addr(),
		Transport:        config.TransportQUIC,
		Token:            b.token,
		Fingerprint:      b.fingerprint,
		ID:               "home-pc",
		Tunnels:          []config.Tunnel{tcpTunnel("echo", public, target)},
		DialTimeout:      2 * time.Second,
		HandshakeTimeout: 5 * time.Second,
		ReconnectMax:     2 * time.Second,
		Session:          agentSession,
	}
	a := startAgent(t, cfg)
	if si := a.waitSession(15 * time.Second); si.Transport != config.TransportQUIC {
		t.Fatalf("session over %s, want quic", si.Transport)
	}
	expectEcho(t, publicAddr(public))
	if cs := fwd.clients(); len(cs) != 1 {
		t.Fatalf("agent has %d mappings, want 1", len(cs))
	} else {
		oldMap = cs[0]
	}
	// Let the session settle as it does between visitors: path MTU
	// discovery, which sends large probes in the first moments of a
	// connection, is over, and the agent only sends keepalives.
	time.Sleep(2 * agentSession.KeepAlive)

	r1.signal(syscall.SIGKILL)
	r1.exitCode(10 * time.Second)
	killed := time.Now()
	r2, b2 := udpFwdStartRelay(t, dataDir, relayPort, relayArgs...)
	mu.Lock()
	restarted = time.Now()
	mu.Unlock()
	if b2 != b {
		t.Fatalf("restarted relay printed %+v, first %+v", b2, b)
	}
	t.Logf("relay back %v after SIGKILL", restarted.Sub(killed).Round(time.Millisecond))

	// Wait past the idle timeout, so that a slow reconnect is measured
	// too, not only reported as missing.
	var back time.Time
	select {
	case si := <-a.sessions:
		back = time.Now()
		if si.Transport != config.TransportQUIC {
			t.Errorf("new session over %s, want quic", si.Transport)
		}
	case <-time.After(testenv.Deadline(idleTimeout + 10*time.Second)):
		t.Fatalf("agent did not reconnect within %v of the restart\nagent log:\n%s", idleTimeout+10*time.Second, a.logs)
	}
	took := back.Sub(restarted)
	t.Logf("agent reconnected %v after the restart (%v after SIGKILL; idle timeout %v)",
		took.Round(time.Millisecond), back.Sub(killed).Round(time.Millisecond), idleTimeout)
	mu.Lock()
	tr, nresets, biggest := trace, resets, maxUp
	mu.Unlock()
	const show = 12
	if len(tr) > show {
		tr = append(tr[:show:show], fmt.Sprintf("... %d more", len(tr)-show))
	}
	t.Logf("old connection after the restart:\n  %s", strings.Join(tr, "\n  "))
	if took > limit {
		t.Errorf("agent reconnected %v after the restart, want < %v: no stateless reset ended the old session "+
			"(the agent's largest packet to the restarted relay had %d bytes; quic-go answers only packets of at least %d bytes with a reset)",
			took.Round(time.Millisecond), limit, biggest, udpFwdResetMin)
	}
	if nresets == 0 {
		t.Errorf("the restarted relay sent nothing to the old connection: no stateless reset")
	}
	if !strings.Contains(a.logs.String(), "session lost; reconnecting") {
		t.Errorf("agent did not log the lost session")
	}
	expectEcho(t, publicAddr(public))
	if n := r2.count(`msg="tunnel registered"`); n != 1 {
		t.Errorf("restarted relay registered the tunnel %d times, want 1", n)
	}
	if t.Failed() {
		t.Logf("agent log:\n%s", a.logs)
	}
}

// TestQUICKeepaliveDeadPeer: over QUIC, a network that silently drops
// everything (no ICMP, nothing) is noticed by both ends through keepalive
// and idle timeout: the relay frees the port, the agent reconnects once
// packets flow again.
func TestQUICKeepaliveDeadPeer(t *testing.T) {
	leak.Check(t)
	ka := config.Session{KeepAlive: 300 * time.Millisecond, KeepAliveTimeout: 600 * time.Millisecond, StreamWindow: 4 << 20}
	target := serve(t, echo)
	r := startRelayOver(t, config.TransportQUIC, func(c *config.Relay) { c.Session = ka })
	fwd := startUDPFwd(t, r.addr)
	var blackhole atomic.Bool
	fwd.onPacket(func(_ udpFwdDir, _ netip.AddrPort, _ int, b []byte) []byte {
		if blackhole.Load() {
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

	blackhole.Store(true)
	start := time.Now()
	expectClosed(t, publicAddr(port), 10*time.Second)
	t.Logf("relay freed the public port %v after the network died", time.Since(start).Round(time.Millisecond))
	waitFor(t, 10*time.Second, "agent noticing the dead session", func() bool {
		return contains(a.logs.String(), "session lost; reconnecting")
	})
	t.Logf("agent noticed %v after the network died", time.Since(start).Round(time.Millisecond))

	blackhole.Store(false)
	back := time.Now()
	a.waitSession(10 * time.Second)
	t.Logf("agent back %v after the network came back", time.Since(back).Round(time.Millisecond))
	expectEcho(t, publicAddr(port))
}
