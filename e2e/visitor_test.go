package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/homeport/homeport/config"
	"github.com/homeport/homeport/internal/leak"
	"github.com/homeport/homeport/tunnel"
	"github.com/homeport/homeport/visitor"
)

// testVisitorKey is the visitor key of the relays of these tests.
const testVisitorKey = "test-visitor-key-0123456789"

type visitorHandle struct {
	t      *testing.T
	logs   *logBuf
	up     chan string // transports of the sessions that came up
	cancel context.CancelFunc
	done   chan error
}

func visitorConfig(r *relayHandle, visits ...config.Visit) config.Visitor {
	tr := r.transport
	if tr == "" {
		tr = config.TransportTCP
	}
	return config.Visitor{
		Relay:            r.addr,
		Transport:        tr,
		Key:              testVisitorKey,
		Fingerprint:      r.id.Fingerprint,
		ID:               "laptop",
		Visits:           visits,
		HandshakeTimeout: 5 * time.Second,
		ReconnectMax:     2 * time.Second,
		Session:          config.Session{KeepAlive: 2 * time.Second, KeepAliveTimeout: 2 * time.Second, StreamWindow: 4 << 20},
	}
}

// startVisitor runs a visitor in this process. It does not wait for the
// session. setup, when given, adjusts the visitor before it runs.
func startVisitor(t *testing.T, cfg config.Visitor, setup ...func(*visitor.Visitor)) *visitorHandle {
	t.Helper()
	logs := &logBuf{}
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	v, err := visitor.New(cfg, "test", log)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range setup {
		f(v)
	}
	h := &visitorHandle{t: t, logs: logs, up: make(chan string, 16), done: make(chan error, 1)}
	v.OnSession = func(_, tr string) {
		select {
		case h.up <- tr:
		default:
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	go func() { h.done <- v.Run(ctx) }()
	t.Cleanup(func() { h.stop() })
	return h
}

// stop ends the visitor and returns what Run returned.
func (h *visitorHandle) stop() error {
	h.cancel()
	select {
	case err := <-h.done:
		h.done <- err
		return err
	case <-time.After(15 * time.Second):
		h.t.Errorf("visitor did not stop\nvisitor log:\n%s", h.logs)
		return nil
	}
}

// result waits for Run to end by itself.
func (h *visitorHandle) result(d time.Duration) error {
	h.t.Helper()
	select {
	case err := <-h.done:
		h.done <- err
		return err
	case <-time.After(d):
		h.t.Fatalf("visitor still running after %v\nvisitor log:\n%s", d, h.logs)
		return nil
	}
}

// freeListen returns a loopback address whose TCP (and, most likely, UDP)
// port was free a moment ago.
func freeListen(t *testing.T) string {
	t.Helper()
	return publicAddr(freePort(t))
}

// TestVisitorWrongKey: a key the relay does not know ends Run on the
// first attempt with ErrRejected and a message that says what to fix.
func TestVisitorWrongKey(t *testing.T) {
	leak.Check(t)
	forEachTransport(t, func(t *testing.T, tr string) {
		r := startRelayOver(t, tr, nil)
		cfg := visitorConfig(r, config.Visit{Tunnel: "rdp", Protocol: "tcp", Listen: freeListen(t)})
		cfg.Key = "not-the-visitor-key-0123456789"
		v := startVisitor(t, cfg)
		err := v.result(20 * time.Second)
		if !errors.Is(err, visitor.ErrRejected) || !errors.Is(err, tunnel.ErrAuthFailed) {
			t.Fatalf("Run: %v; want ErrRejected wrapping ErrAuthFailed\nvisitor log:\n%s", err, v.logs)
		}
		if !strings.Contains(err.Error(), "visitor key is wrong") {
			t.Errorf("error %q does not say the visitor key is wrong", err)
		}
		// The token is not a visitor key either.
		cfg.Key = testToken
		v = startVisitor(t, cfg)
		if err := v.result(20 * time.Second); !errors.Is(err, tunnel.ErrAuthFailed) {
			t.Fatalf("Run with the token as key: %v; want ErrAuthFailed", err)
		}
	})
}

// TestVisitorPinMismatch: a relay whose key is not the pinned one ends Run
// on the first attempt, naming the fingerprint.
func TestVisitorPinMismatch(t *testing.T) {
	leak.Check(t)
	r := startRelay(t, nil)
	cfg := visitorConfig(r, config.Visit{Tunnel: "rdp", Protocol: "tcp", Listen: freeListen(t)})
	cfg.Fingerprint = "sha256:" + strings.Repeat("ab", 32)
	v := startVisitor(t, cfg)
	err := v.result(20 * time.Second)
	if !errors.Is(err, visitor.ErrRejected) || !errors.Is(err, tunnel.ErrFingerprintMismatch) {
		t.Fatalf("Run: %v; want ErrRejected wrapping ErrFingerprintMismatch", err)
	}
}

// TestVisitorListenInUse: a visit whose local address is taken stops Run
// at once, naming the tunnel and the address.
func TestVisitorListenInUse(t *testing.T) {
	leak.Check(t)
	r := startRelay(t, nil)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	v := startVisitor(t, visitorConfig(r, config.Visit{Tunnel: "rdp", Protocol: "tcp", Listen: l.Addr().String()}))
	err = v.result(10 * time.Second)
	if err == nil || !strings.Contains(err.Error(), `tunnel "rdp"`) || !strings.Contains(err.Error(), l.Addr().String()) {
		t.Fatalf("Run: %v; want an error naming the tunnel and its address", err)
	}
}

// TestVisitorNoSession: while the relay cannot be reached, the local
// listener is open; a connection waits for the session up to
// handshake_timeout, then is reset; Run keeps trying and ends cleanly.
func TestVisitorNoSession(t *testing.T) {
	leak.Check(t)
	listen := freeListen(t)
	cfg := config.Visitor{
		Relay: publicAddr(freePort(t)), Transport: config.TransportTCP, Key: testVisitorKey,
		Fingerprint: "sha256:" + strings.Repeat("ab", 32), ID: "laptop",
		Visits:           []config.Visit{{Tunnel: "rdp", Protocol: "tcp", Listen: listen}},
		HandshakeTimeout: time.Second, ReconnectMax: time.Second,
	}
	v := startVisitor(t, cfg)
	var c net.Conn
	waitFor(t, 10*time.Second, "the visit's listener", func() bool {
		var err error
		c, err = net.Dial("tcp", listen)
		return err == nil
	})
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(15 * time.Second))
	n, err := c.Read(make([]byte, 1))
	if n != 0 || err == nil || errors.Is(err, io.EOF) || isTimeout(err) {
		t.Fatalf("read %d bytes, %v; want the connection reset after handshake_timeout", n, err)
	}
	waitFor(t, 10*time.Second, "the log of the closed connection", func() bool {
		return strings.Contains(v.logs.String(), "no session to the relay within handshake_timeout")
	})
	if err := v.stop(); err != nil {
		t.Fatalf("Run: %v; want nil after a stop", err)
	}
}

// expectReset connects to addr and checks that the connection is reset
// before any byte comes back: at once, or within 15 s. (A reset that
// arrives as the handshake completes fails the connect itself.)
func expectReset(t *testing.T, addr string) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if errors.Is(err, syscall.ECONNRESET) {
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(15 * time.Second))
	if n, err := c.Read(make([]byte, 1)); n != 0 || err == nil || errors.Is(err, io.EOF) || isTimeout(err) {
		t.Fatalf("read %d bytes, %v; want the connection reset", n, err)
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// awaitLog waits for the visitor to log s.
func (h *visitorHandle) awaitLog(d time.Duration, s string) {
	h.t.Helper()
	deadline := time.Now().Add(d)
	for !strings.Contains(h.logs.String(), s) {
		select {
		case err := <-h.done:
			h.done <- err
			h.t.Fatalf("visitor stopped (%v) before logging %q\nvisitor log:\n%s", err, s, h.logs)
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("the visitor did not log %q within %v\nvisitor log:\n%s", s, d, h.logs)
		}
	}
}

// privateTunnel is a private tunnel of the home agent.
func privateTunnel(name, proto, target string, visitors ...string) config.Tunnel {
	return config.Tunnel{Name: name, Protocol: proto, Target: target, Private: true, Visitors: visitors}
}

// startHomeAgent runs the real home agent with private tunnels on r and
// waits for their registration.
func startHomeAgent(t *testing.T, r *relayHandle, tunnels ...config.Tunnel) *agentHandle {
	t.Helper()
	cfg := agentConfig(r, tunnels...)
	cfg.AccessLog = true
	a := startAgent(t, cfg)
	a.waitSession(10 * time.Second)
	return a
}

// TestVisitorPrivateTCP: 64 MiB each way through a private TCP tunnel,
// from a local connection to the visitor through the relay and the home
// agent to its target and back, with sha256 equal both ways and the
// half-close carried both ways.
func TestVisitorPrivateTCP(t *testing.T) { forEachTransport(t, testVisitorPrivateTCP) }

func testVisitorPrivateTCP(t *testing.T, tr string) {
	leak.Check(t)
	size := int64(64 << 20)
	if testing.Short() {
		size = 8 << 20
	}
	target := serve(t, echo)
	r := privateRelay(t, nil)
	r.transport = tr
	a := startHomeAgent(t, r, privateTunnel("rdp", "tcp", target))
	listen := freeListen(t)
	cfg := visitorConfig(r, config.Visit{Tunnel: "rdp", Protocol: "tcp", Listen: listen})
	cfg.Key = laptopKey
	v := startVisitor(t, cfg)
	v.awaitLog(20*time.Second, "tunnel rdp ready: connect to "+listen)
	if got := <-v.up; got != tr {
		t.Fatalf("session over %s, want %s", got, tr)
	}

	c := dial(t, listen)
	sent := make(chan [32]byte, 1)
	go func() {
		h := sha256.New()
		src := io.TeeReader(io.LimitReader(rand.NewChaCha8([32]byte{9}), size), h)
		if _, err := io.Copy(c, src); err != nil {
			t.Error(err)
		}
		// The target echoes until this EOF reaches it, then closes its
		// side: the EOF read below has come back through it.
		c.CloseWrite()
		sent <- [32]byte(h.Sum(nil))
	}()
	h := sha256.New()
	n, err := io.Copy(h, c)
	if err != nil {
		t.Fatal(err)
	}
	if n != size || [32]byte(h.Sum(nil)) != <-sent {
		t.Fatalf("got %d of %d bytes back, or a different sha256", n, size)
	}
	c.Close()
	waitFor(t, 10*time.Second, "the home agent's access log, via laptop", func() bool {
		return contains(a.logs.String(), "visitor connection", "tunnel=rdp", "via=laptop")
	})
	if err := v.stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
}

// TestVisitorPrivateUDP: datagrams through a private UDP tunnel, each
// local client address a flow of its own, boundaries kept.
func TestVisitorPrivateUDP(t *testing.T) { forEachTransport(t, testVisitorPrivateUDP) }

func testVisitorPrivateUDP(t *testing.T, tr string) {
	leak.Check(t)
	target := udpEcho(t, "127.0.0.1:0")
	r := privateRelay(t, nil)
	r.transport = tr
	startHomeAgent(t, r, privateTunnel("dns", "udp", target.addr()))
	port := udpFreePort(t)
	cfg := visitorConfig(r, config.Visit{Tunnel: "dns", Protocol: "udp", Listen: publicAddr(port)})
	cfg.Key = laptopKey
	v := startVisitor(t, cfg)
	v.awaitLog(20*time.Second, "tunnel dns ready: connect to "+publicAddr(port))
	clients := []*udpVisitor{udpDial(t, port), udpDial(t, port)}
	for i, size := range []int{0, 1, 1200, 9000, 60000, 3} {
		for j, c := range clients {
			msg := bytes.Repeat([]byte{byte(i), byte(j)}, size/2)
			msg = append(msg, make([]byte, size%2)...)
			if err := c.exchange(msg); err != nil {
				t.Fatalf("client %d, datagram of %d bytes: %v\nvisitor log:\n%s", j, size, err, v.logs)
			}
		}
	}
	// One flow per client address: the home agent gives each a socket
	// of its own.
	if got := target.senders(); len(got) != len(clients) {
		t.Fatalf("the target heard from %d addresses, want %d (one flow per client)", len(got), len(clients))
	}
	if err := v.stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
}

// TestVisitorWaitsForHome: a visitor started before the home agent says
// the tunnel is offline and waits; a connection meanwhile is reset at
// once; once the home agent registers, the visitor says it is ready and
// connections go through.
func TestVisitorWaitsForHome(t *testing.T) {
	leak.Check(t)
	target := serve(t, echo)
	r := privateRelay(t, nil)
	listen := freeListen(t)
	cfg := visitorConfig(r, config.Visit{Tunnel: "rdp", Protocol: "tcp", Listen: listen})
	cfg.Key = laptopKey
	v := startVisitor(t, cfg)
	v.awaitLog(20*time.Second, "tunnel rdp: its home agent is not connected; waiting")

	expectReset(t, listen)
	v.awaitLog(10*time.Second, `msg="connection refused" tunnel=rdp`)
	if strings.Contains(v.logs.String(), "tunnel rdp ready") {
		t.Fatal("ready logged before the home agent came")
	}

	startHomeAgent(t, r, privateTunnel("rdp", "tcp", target))
	// Checked again within 1 s doubling to 30 s: the refused connection
	// asked for a check at once.
	v.awaitLog(40*time.Second, "tunnel rdp ready: connect to "+listen)
	if n := strings.Count(v.logs.String(), "its home agent is not connected"); n != 1 {
		t.Errorf("offline logged %d times, want once", n)
	}
	expectEcho(t, listen)
	v.stop()
}

// TestVisitorNotAllowed: a key the relay's list keeps from the tunnel, a
// key the home agent's list keeps out, and a visit of the other protocol
// each end Run with an error that names the tunnel and the fix; one visit
// that works keeps Run going.
func TestVisitorNotAllowed(t *testing.T) {
	leak.Check(t)
	target := serve(t, echo)
	r := privateRelay(t, nil)
	startHomeAgent(t, r,
		privateTunnel("rdp", "tcp", target),
		privateTunnel("ssh", "tcp", target, "laptop"),
		privateTunnel("dns", "udp", "127.0.0.1:53"))
	for _, tt := range []struct {
		name, key, tunnel, proto string
		want                     []string
	}{
		{"relay's list", phoneKey, "rdp", "tcp", []string{`tunnel "rdp": this visitor key may not use it`, `visitor key "phone" may not reach`, "visitor_keys"}},
		{"agent's list", phoneKey, "ssh", "tcp", []string{`tunnel "ssh": this visitor key may not use it`, `visitor key "phone"`, "home agent's visitors list"}},
		{"protocol", laptopKey, "dns", "tcp", []string{`tunnel "dns" is not a tcp tunnel`, "protocol"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cfg := visitorConfig(r, config.Visit{Tunnel: tt.tunnel, Protocol: tt.proto, Listen: freeListen(t)})
			cfg.Key = tt.key
			v := startVisitor(t, cfg)
			err := v.result(20 * time.Second)
			if !errors.Is(err, visitor.ErrNoVisit) {
				t.Fatalf("Run: %v; want ErrNoVisit\nvisitor log:\n%s", err, v.logs)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
	// With a visit that works beside the one that cannot, the visitor
	// runs on; the one that cannot closes its listener.
	ok, bad := freeListen(t), freeListen(t)
	cfg := visitorConfig(r, config.Visit{Tunnel: "dns", Protocol: "tcp", Listen: bad}, config.Visit{Tunnel: "rdp", Protocol: "tcp", Listen: ok})
	cfg.Key = laptopKey
	v := startVisitor(t, cfg)
	v.awaitLog(20*time.Second, "tunnel rdp ready")
	v.awaitLog(20*time.Second, `tunnel \"dns\" is not a tcp tunnel`)
	expectEcho(t, ok)
	waitFor(t, 10*time.Second, "the listener of the visit that cannot work to close", func() bool {
		c, err := net.Dial("tcp", bad)
		if err == nil {
			c.Close()
		}
		return err != nil
	})
	if err := v.stop(); err != nil {
		t.Fatalf("Run: %v; want nil, one visit working", err)
	}
}

// TestVisitorRelayRestart: after the relay restarts, the visitor and the
// home agent each make their session again by themselves, and the
// visitor's listener, open throughout, carries connections again.
func TestVisitorRelayRestart(t *testing.T) {
	leak.Check(t)
	target := serve(t, echo)
	r := privateRelay(t, nil)
	a := startHomeAgent(t, r, privateTunnel("rdp", "tcp", target))
	listen := freeListen(t)
	cfg := visitorConfig(r, config.Visit{Tunnel: "rdp", Protocol: "tcp", Listen: listen})
	cfg.Key = laptopKey
	v := startVisitor(t, cfg)
	v.awaitLog(20*time.Second, "tunnel rdp ready")
	<-v.up
	expectEcho(t, listen)

	r.stop()
	rcfg := r.cfg
	rcfg.Listen = r.addr
	runRelay(t, rcfg, r.id)
	v.awaitLog(20*time.Second, "session lost; reconnecting")
	select {
	case <-v.up:
	case <-time.After(20 * time.Second):
		t.Fatalf("no new session after the relay restarted\nvisitor log:\n%s", v.logs)
	}
	a.waitSession(20 * time.Second)
	// The home agent and the visitor may come back in either order: a
	// connection goes through once both are.
	waitFor(t, 30*time.Second, "an echo through the new sessions", func() bool {
		got, err := roundTrip(listen, []byte("hello"))
		return err == nil && string(got) == "hello"
	})
	v.stop()
}

// TestVisitorUDPFlows: a UDP visit ends a flow that stays idle, and a
// client that sends again gets a new one; a client over the most flows
// is turned away, and logged.
func TestVisitorUDPFlows(t *testing.T) {
	leak.Check(t)
	target := udpEcho(t, "127.0.0.1:0")
	r := privateRelay(t, nil)
	startHomeAgent(t, r, privateTunnel("dns", "udp", target.addr()))
	port := udpFreePort(t)
	cfg := visitorConfig(r, config.Visit{Tunnel: "dns", Protocol: "udp", Listen: publicAddr(port)})
	cfg.Key = laptopKey
	v := startVisitor(t, cfg, func(v *visitor.Visitor) {
		// Long enough for the first exchanges to go by on a busy machine.
		v.UDPIdle = 5 * time.Second
		v.UDPMaxFlows = 2
	})
	v.awaitLog(20*time.Second, "tunnel dns ready")
	a, b, c := udpDial(t, port), udpDial(t, port), udpDial(t, port)
	for i, cl := range []*udpVisitor{a, b} {
		if err := cl.exchange([]byte{byte(i)}); err != nil {
			t.Fatalf("client %d: %v", i, err)
		}
	}
	// Two flows are open: the third client is turned away while they are.
	if _, err := c.c.Write([]byte("over")); err != nil {
		t.Fatal(err)
	}
	v.awaitLog(10*time.Second, "UDP client turned away")
	// Idle, the flows end; a client that sends again gets a new flow.
	waitFor(t, 20*time.Second, "the idle flows to end", func() bool {
		return strings.Count(v.logs.String(), `msg="UDP flow ended"`) >= 2
	})
	if err := c.exchange([]byte("now")); err != nil {
		t.Fatalf("third client after the idle flows ended: %v", err)
	}
	if err := a.exchange([]byte("again")); err != nil {
		t.Fatalf("first client again: %v", err)
	}
	// Each flow has a socket of its own at the home agent.
	if n := len(target.senders()); n != 4 {
		t.Fatalf("the target heard from %d addresses, want 4 (two flows, then two new ones)", n)
	}
	v.stop()
}
