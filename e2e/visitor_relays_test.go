package e2e

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/homeport/homeport/config"
	"github.com/homeport/homeport/internal/leak"
)

// TestVisitorSeveralRelays: a visitor with two relays keeps a session to
// each and carries every connection through the first relay that can:
// through the first while its home agent is there, through the second
// when the first answers that the home agent is away, and through the
// second when the first relay goes. Losing the first relay cuts (resets)
// only the connections on it: a transfer on the second ends with its
// sha256 equal. When the first relay is back, the visitor logs in again
// by itself and uses it.
func TestVisitorSeveralRelays(t *testing.T) { forEachTransport(t, testVisitorSeveralRelays) }

func testVisitorSeveralRelays(t *testing.T, tr string) {
	leak.Check(t)
	ra, rb := privateRelay(t, nil), privateRelay(t, nil)
	ra.transport, rb.transport = tr, tr
	// One home agent on each relay (with its own id), each with a target
	// that counts the connections it carried.
	var viaA, viaB atomic.Int32
	targetA := serve(t, func(c *net.TCPConn) { viaA.Add(1); echo(c) })
	targetB := serve(t, func(c *net.TCPConn) { viaB.Add(1); echo(c) })
	agentOn := func(r *relayHandle, id, target string) *agentHandle {
		cfg := agentConfig(r, privateTunnel("rdp", "tcp", target))
		cfg.ID = id
		a := startAgent(t, cfg)
		a.waitSession(10 * time.Second)
		return a
	}
	aa := agentOn(ra, "home-a", targetA)
	agentOn(rb, "home-b", targetB)
	listen := freeListen(t)
	cfg := visitorConfig(ra, config.Visit{Tunnel: "rdp", Protocol: "tcp", Listen: listen})
	cfg.Relays = []config.RelayEndpoint{
		{Address: ra.addr, Fingerprint: ra.id.Fingerprint, Transport: tr, Secret: laptopKey},
		{Address: rb.addr, Fingerprint: rb.id.Fingerprint, Transport: tr, Secret: laptopKey},
	}
	v := startVisitor(t, cfg)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("visitor log:\n%s", v.logs)
		}
	})
	for _, r := range []*relayHandle{ra, rb} {
		v.awaitLine(20*time.Second, "tunnel rdp ready: connect to "+listen, "relay="+r.addr)
	}
	expectVia := func(what string, via *atomic.Int32) {
		t.Helper()
		before := via.Load()
		expectEcho(t, listen)
		waitFor(t, 10*time.Second, what, func() bool { return via.Load() > before })
	}

	expectVia("a connection through the first relay", &viaA)
	if n := viaB.Load(); n != 0 {
		t.Fatalf("the second relay's home agent carried %d connections; the first relay could", n)
	}

	// The first relay's home agent goes: the first relay answers that it
	// is away, and the connection goes through the second at once.
	aa.stop()
	expectVia("a connection through the second relay, the first one's home agent away", &viaB)

	// A transfer runs through the second relay (the first one's agent is
	// still away).
	slow := dial(t, listen)
	defer slow.Close()
	const half = 4 << 20
	src := make([]byte, 2*half)
	rand.NewChaCha8([32]byte{7}).Read(src)
	got := make([]byte, 0, len(src))
	exchange := func(p []byte) {
		t.Helper()
		if _, err := slow.Write(p); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, len(p))
		if _, err := io.ReadFull(slow, buf); err != nil {
			t.Fatalf("transfer through the second relay: %v", err)
		}
		got = append(got, buf...)
	}
	exchange(src[:half])

	// The first relay's home agent is back, so a new connection goes
	// through the first relay again, and stays open.
	aa = agentOn(ra, "home-a", targetA)
	before := viaA.Load()
	onA := dial(t, listen)
	defer onA.Close()
	if _, err := onA.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(onA, make([]byte, 5)); err != nil {
		t.Fatalf("a connection through the first relay: %v", err)
	}
	waitFor(t, 10*time.Second, "the connection through the first relay", func() bool { return viaA.Load() > before })

	// The first relay goes. Its connection is reset, not ended; the
	// transfer through the second goes on and arrives whole; new
	// connections go through the second.
	ra.stop()
	_ = onA.SetReadDeadline(time.Now().Add(20 * time.Second))
	if n, err := onA.Read(make([]byte, 1)); n != 0 || err == nil || errors.Is(err, io.EOF) || isTimeout(err) {
		t.Fatalf("the first relay's connection read %d bytes, %v; want it reset", n, err)
	}
	exchange(src[half:])
	if err := slow.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if rest, err := io.ReadAll(slow); err != nil || len(rest) != 0 {
		t.Fatalf("after the half-close: %d more bytes, %v; want EOF", len(rest), err)
	}
	if sha256.Sum256(got) != sha256.Sum256(src) || !bytes.Equal(got, src) {
		t.Fatalf("the transfer through the second relay came back different (%d of %d bytes)", len(got), len(src))
	}
	expectVia("a connection through the second relay, the first relay gone", &viaB)

	// The first relay is back on its address: the visitor logs in to it
	// again by itself, and uses it once its home agent is back too.
	logins := v.lines(`msg="connected to relay"`, "relay="+ra.addr)
	rcfg := ra.cfg
	rcfg.Listen = ra.addr
	ra = runRelay(t, rcfg, ra.id)
	ra.transport = tr
	waitFor(t, 30*time.Second, "the visitor's new session to the first relay", func() bool {
		return v.lines(`msg="connected to relay"`, "relay="+ra.addr) > logins
	})
	aa.waitSession(30 * time.Second)
	before = viaA.Load()
	waitFor(t, 30*time.Second, "a connection through the first relay again", func() bool {
		got, err := roundTrip(listen, []byte("hello"))
		return err == nil && string(got) == "hello" && viaA.Load() > before
	})
	if err := v.stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
}

// TestVisitorSeveralRelaysRefused: a relay that refuses the visitor for
// good (a wrong key for it) does not stop a visitor whose other relay
// accepts it; when every relay refuses, Run ends with all their reasons.
func TestVisitorSeveralRelaysRefused(t *testing.T) {
	leak.Check(t)
	target := serve(t, echo)
	ra, rb := privateRelay(t, nil), privateRelay(t, nil)
	startHomeAgent(t, rb, privateTunnel("rdp", "tcp", target))
	listen := freeListen(t)
	cfg := visitorConfig(ra, config.Visit{Tunnel: "rdp", Protocol: "tcp", Listen: listen})
	cfg.Relays = []config.RelayEndpoint{
		{Address: ra.addr, Fingerprint: ra.id.Fingerprint, Transport: config.TransportTCP, Secret: "not-this-relays-key-0123456789"},
		{Address: rb.addr, Fingerprint: rb.id.Fingerprint, Transport: config.TransportTCP, Secret: laptopKey},
	}
	v := startVisitor(t, cfg)
	v.awaitLine(20*time.Second, "tunnel rdp ready: connect to "+listen, "relay="+rb.addr)
	v.awaitLog(20*time.Second, "visitor key is wrong")
	expectEcho(t, listen)
	if err := v.stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}

	cfg.Relays[1].Secret = "not-this-relays-key-either-0123"
	v = startVisitor(t, cfg)
	err := v.result(20 * time.Second)
	if err == nil || strings.Count(err.Error(), "visitor key is wrong") != 2 {
		t.Fatalf("Run: %v; want both relays' refusals", err)
	}
}

// lines counts the visitor's log lines that hold every one of parts.
func (h *visitorHandle) lines(parts ...string) int {
	n := 0
	for _, line := range strings.Split(h.logs.String(), "\n") {
		if contains(line, parts...) {
			n++
		}
	}
	return n
}

// awaitLine waits for a line of the visitor's log that holds every one of
// parts.
func (h *visitorHandle) awaitLine(d time.Duration, parts ...string) {
	h.t.Helper()
	waitFor(h.t, d, "the visitor's log line "+strings.Join(parts, " … "), func() bool { return h.lines(parts...) > 0 })
}

// TestVisitorSilentRelay: when the first relay's link goes dark (its
// packets stop, its session is not yet declared dead), a new connection
// gives it up once it has been silent for a few seconds and goes through
// the second relay, long before handshake_timeout or the keepalive
// would end the wait.
func TestVisitorSilentRelay(t *testing.T) {
	leak.Check(t)
	target := serve(t, echo)
	ra, rb := privateRelay(t, nil), privateRelay(t, nil)
	for _, r := range []*relayHandle{ra, rb} {
		startHomeAgent(t, r, privateTunnel("rdp", "tcp", target))
	}
	proxy := startFreezeProxy(t, ra.addr)
	listen := freeListen(t)
	cfg := visitorConfig(ra, config.Visit{Tunnel: "rdp", Protocol: "tcp", Listen: listen})
	cfg.Relays = []config.RelayEndpoint{
		{Address: proxy.addr(), Fingerprint: ra.id.Fingerprint, Transport: config.TransportTCP, Secret: laptopKey},
		{Address: rb.addr, Fingerprint: rb.id.Fingerprint, Transport: config.TransportTCP, Secret: laptopKey},
	}
	// Neither the login's bound nor the keepalive ends the wait within
	// the test's time.
	cfg.HandshakeTimeout = 2 * time.Minute
	cfg.Session.KeepAlive, cfg.Session.KeepAliveTimeout = time.Minute, time.Minute
	v := startVisitor(t, cfg)
	for _, r := range []string{proxy.addr(), rb.addr} {
		v.awaitLine(20*time.Second, "tunnel rdp ready: connect to "+listen, "relay="+r)
	}
	proxy.freeze()
	c, err := net.DialTimeout("tcp", listen, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(45 * time.Second))
	if _, err := c.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 5)
	if _, err := io.ReadFull(c, got); err != nil || string(got) != "hello" {
		t.Fatalf("echo with the first relay silent: %q, %v; want it carried by the second\nvisitor log:\n%s", got, err, v.logs)
	}
	v.awaitLine(10*time.Second, "connection carried", "relay="+rb.addr)
	if v.lines("relay did not answer; trying the next", "the relay went silent") == 0 {
		t.Errorf("the visitor did not log that it gave the silent relay up\nvisitor log:\n%s", v.logs)
	}
	proxy.thaw()
}
