//go:build unix

package e2e

import (
	"context"
	"errors"
	"fmt"
	"net"
	"regexp"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/homeport/homeport/config"
	"github.com/homeport/homeport/internal/leak"
	"github.com/homeport/homeport/internal/testenv"
	"github.com/homeport/homeport/tunnel"
)

// Logins on the agent port under a ban and under floods: a banned address
// still lets a correct token in and tells a wrong one why; QUIC handshakes
// are capped per address like TCP logins; and a flood that fills every
// login slot cannot keep a new agent out.

// guardBanSays matches the relay's words to a wrong token from a banned
// address: what happened, for how long, and that the right token works.
var guardBanSays = regexp.MustCompile(`^wrong token; this address is banned from logging in for (\d+m)?\d+s after 3 failed logins \(a correct token still gets in\)$`)

// TestGuardBanLetsTokenIn: an address banned after agent_port.ban_after
// wrong tokens still logs in with the right one, over both transports.
// The login that triggered the ban, and every wrong token after it, are
// told in words what happened and for how long; the agent shows those
// words; a banned address's logins are answered no sooner than a second
// after they began (the ban still brakes a guesser); the relay logs the
// ban, and the correct login from the banned address.
func TestGuardBanLetsTokenIn(t *testing.T) { forEachTransport(t, testGuardBanLetsTokenIn) }

func testGuardBanLetsTokenIn(t *testing.T, tr string) {
	leak.Check(t)
	// The agent dials from 127.0.0.1: that is the address banned here.
	const home = "127.0.0.1"
	target := serve(t, echo)
	r := startRelayOver(t, tr, func(c *config.Relay) {
		c.Guard = config.Guard{AuthBanAfter: 3, AuthBanFor: time.Minute}
	})
	for i := range 3 {
		err := guardLogin(tr, home, r, guardWrongToken)
		var re *tunnel.RejectError
		if !errors.As(err, &re) || !errors.Is(err, tunnel.ErrAuthFailed) {
			t.Fatalf("wrong-token login %d: %v, want an authentication failure", i+1, err)
		}
		if i < 2 && re.Message != "wrong token" {
			t.Errorf("wrong-token login %d before the ban: relay said %q, want %q", i+1, re.Message, "wrong token")
		}
		if i == 2 && !guardBanSays.MatchString(re.Message) {
			t.Errorf("the login that triggered the ban: relay said %q, want it to match %q", re.Message, guardBanSays)
		}
	}
	waitFor(t, 5*time.Second, "the relay to log the ban", func() bool {
		return len(guardLines(r.logs.String(), `msg="agent address banned after failed logins"`, "agent_addr="+home+":")) == 1
	})

	// Banned: a wrong token is told so, after the brake.
	start := time.Now()
	err := guardLogin(tr, home, r, guardWrongToken)
	took := time.Since(start)
	var re *tunnel.RejectError
	if !errors.As(err, &re) || !guardBanSays.MatchString(re.Message) {
		t.Errorf("wrong token from the banned address: %v; want a rejection matching %q", err, guardBanSays)
	}
	if took < time.Second {
		t.Errorf("wrong token from the banned address answered after %v; want no sooner than 1 s", took)
	}
	t.Logf("wrong token from the banned address answered after %v: %v", took.Round(time.Millisecond), err)

	// An agent with that wrong token, on its first start, exits with the
	// relay's words.
	bad := agentConfig(r, tcpTunnel("web", freePort(t), target))
	bad.Token = guardWrongToken
	ba := startAgent(t, bad)
	select {
	case err := <-ba.done:
		ba.done <- nil
		if !errors.Is(err, tunnel.ErrAuthFailed) || !contains(err.Error(), "this address is banned from logging in for", "a correct token still gets in") {
			t.Errorf("agent with the wrong token from the banned address ended with %v; want the relay's words", err)
		}
	case <-time.After(testenv.Deadline(20 * time.Second)):
		t.Fatal("agent with the wrong token from the banned address did not exit")
	}

	// The right token gets in from the banned address.
	port := freePort(t)
	start = time.Now()
	a := startAgent(t, agentConfig(r, tcpTunnel("web", port, target)))
	a.waitSession(15 * time.Second)
	t.Logf("agent with the right token from the banned address logged in %v after its start", time.Since(start).Round(time.Millisecond))
	expectEcho(t, publicAddr(port))
	waitFor(t, 5*time.Second, "the relay to log the login from the banned address", func() bool {
		return len(guardLines(r.logs.String(), `msg="agent logged in from a banned address"`, "agent_addr="+home+":")) == 1
	})
	if n := len(guardLines(r.logs.String(), `msg="agent connection refused"`, "agent_addr="+home+":")); n > 0 {
		t.Errorf("relay refused %d connections of the banned address", n)
	}
}

// guardQUICStall starts n QUIC handshakes from the address from to addr
// that never finish: the client reads nothing from the relay but Retry
// packets, so it goes on resending its Initial (which keeps the relay's
// side of the handshake alive) and never learns the relay's answer. It
// returns how many of the handshakes the relay has answered so far (with
// anything but a Retry: its own handshake packets, or a refusal), and a
// function that ends them all.
func guardQUICStall(t *testing.T, from, addr, fingerprint string, n int) (answered func() int, stop func()) {
	t.Helper()
	// quic-go warns once that it cannot size the buffers of a socket it
	// does not read directly.
	t.Setenv("QUIC_GO_DISABLE_RECEIVE_BUFFER_WARNING", "true")
	conf, err := tunnel.PinnedTLSConfig(fingerprint)
	if err != nil {
		t.Fatal(err)
	}
	raddr, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.ParseIP(from)})
	if err != nil {
		t.Fatal(err)
	}
	sc := &guardStallConn{PacketConn: udp, seen: make(map[string]bool)}
	// Connection IDs of their own tell the handshakes apart.
	qt := &quic.Transport{Conn: sc, ConnectionIDLength: 8}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			c, err := qt.Dial(ctx, raddr, conf, &quic.Config{HandshakeIdleTimeout: 3 * time.Minute})
			if err == nil {
				c.CloseWithError(0, "")
			}
		})
	}
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			wg.Wait()
			qt.Close()
			udp.Close()
		})
	}
	t.Cleanup(stop)
	return sc.answered, stop
}

// guardStallConn is a UDP socket that hands its QUIC client only Retry
// packets, and counts the connections that got anything else. It is a
// plain net.PacketConn: quic-go would read a *net.UDPConn directly.
type guardStallConn struct {
	net.PacketConn
	mu   sync.Mutex
	seen map[string]bool // destination connection IDs answered
}

func (c *guardStallConn) ReadFrom(p []byte) (int, net.Addr, error) {
	for {
		n, a, err := c.PacketConn.ReadFrom(p)
		if err != nil || n < 7 || p[0]&0x80 == 0 {
			return n, a, err
		}
		// A long header: first byte, version (4), DCID length, DCID.
		if p[0]&0x30 == 0x30 {
			return n, a, err // Retry: let the client answer it
		}
		if l := int(p[5]); 6+l <= n {
			c.mu.Lock()
			c.seen[string(p[6:6+l])] = true
			c.mu.Unlock()
		}
	}
}

func (c *guardStallConn) answered() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.seen)
}

// TestGuardQUICPerAddress: QUIC handshakes count against
// agent_port.max_handshakes_per_ip like TCP logins. One address starting
// more QUIC handshakes that stall than max_handshakes holds at most 16 of
// them; the relay refuses the rest at once (logged at Debug, and
// rate-limited at Warn), and a known agent over QUIC from another address
// logs in while they are held.
func TestGuardQUICPerAddress(t *testing.T) {
	guardNeedSources(t)
	leak.Check(t)
	const all, flood, perIP = 256, 320, 16
	target := serve(t, echo)
	r := startRelayOver(t, config.TransportQUIC, func(c *config.Relay) {
		c.HandshakeTimeout = 2 * time.Minute // longer than the wait below
		c.Guard = config.Guard{MaxHandshakes: all, MaxHandshakesPerIP: perIP}
	})
	port := freePort(t)
	acfg := agentConfig(r, tcpTunnel("web", port, target))
	a := startAgent(t, acfg)
	a.waitSession(15 * time.Second)
	a.stop()

	start := time.Now()
	answered, stop := guardQUICStall(t, "127.0.0.50", r.addr, r.id.Fingerprint, flood)
	defer stop()
	// The relay answers some of them only when they send their Initial
	// again (it drops what it cannot answer at once), and a client waits
	// longer each time before it sends again; once it has answered more
	// than it may hold, it holds all it will.
	waitFor(t, time.Minute, "the relay to answer the stalled handshakes", func() bool { return answered() >= all+(flood-all)/2 })
	nAnswered := answered()
	t.Logf("%d of %d stalled QUIC handshakes from 127.0.0.50 answered after %v", nAnswered, flood, time.Since(start).Round(time.Millisecond))

	start = time.Now()
	a = startAgent(t, acfg)
	a.waitSession(15 * time.Second)
	t.Logf("the known agent logged in over QUIC %v after its start, with the stalled handshakes held", time.Since(start).Round(time.Millisecond))
	expectEcho(t, publicAddr(port))

	log := r.logs.String()
	refused := len(guardLines(log, `msg="agent connection refused"`, "agent_addr=127.0.0.50:", "transport=quic", `reason="too many logins in progress from this address"`))
	if refused < nAnswered-perIP {
		t.Errorf("relay logged %d refusals of 127.0.0.50 over QUIC after answering %d handshakes, want at least %d (it may hold %d)", refused, nAnswered, nAnswered-perIP, perIP)
	}
	warned := len(guardLines(log, `level=WARN`, `msg="agent connections refused"`))
	if warned == 0 || warned > 5 {
		t.Errorf("relay logged %d warnings about refused agent connections for %d refusals; want a few (rate-limited)", warned, refused)
	}
	t.Logf("relay refused %d handshakes of 127.0.0.50, in %d warnings", refused, warned)
}

// guardFloodSources are the loopback addresses a login flood comes from:
// 127.0.1.1 and on.
func guardFloodSources(n int) []string {
	s := make([]string, n)
	for i := range s {
		s[i] = fmt.Sprintf("127.0.1.%d", 1+i)
	}
	return s
}

// TestGuardLoginFloodNewAgent: more pending logins than max_handshakes,
// 16 from each address (the per-address cap), that never finish their
// handshakes: over TCP 1,120 from 70 addresses (max_handshakes 1024), idle
// or stalled in the middle of TLS; over QUIC 160 from 10 (max_handshakes
// 128), stalled after the client's first flight. A never-seen agent with
// the right token still gets a session while the flood is held (before
// the relay's handshake deadline frees a single slot): a newcomer pushes
// out the oldest pending login of the address with the most.
func TestGuardLoginFloodNewAgent(t *testing.T) {
	guardNeedSources(t)
	forEachTransport(t, testGuardLoginFloodNewAgent)
}

func testGuardLoginFloodNewAgent(t *testing.T, tr string) {
	leak.Check(t)
	const perIP = 16
	all, sources := 1024, 70
	if tr == config.TransportQUIC {
		// 1,120 stalled QUIC handshakes take the relay over a minute to
		// answer under the race detector (it drops Initials it cannot
		// answer at once, and the clients back off): an eighth of it.
		all, sources = 128, 10
	}
	hsTimeout := 30 * time.Second
	if tr == config.TransportQUIC {
		hsTimeout = time.Minute // the flood takes long to set up
	}
	target := serve(t, echo)
	r := startRelayOver(t, tr, func(c *config.Relay) {
		c.HandshakeTimeout = hsTimeout
		c.Guard = config.Guard{MaxHandshakes: all, MaxHandshakesPerIP: perIP}
	})
	floodStart := time.Now()
	if tr == config.TransportQUIC {
		var answered []func() int
		for _, from := range guardFloodSources(sources) {
			n, stop := guardQUICStall(t, from, r.addr, r.id.Fingerprint, perIP)
			answered = append(answered, n)
			defer stop()
		}
		// None is over its address's cap: once the relay has answered
		// max_handshakes of them, it has taken them all in, or refused
		// some because every slot was taken.
		waitFor(t, 60*time.Second, "the relay to answer the stalled handshakes", func() bool {
			total := 0
			for _, n := range answered {
				total += n()
			}
			return total >= all
		})
	} else {
		hello := guardPartialHello(t, r.id.Fingerprint, 50)
		g0 := guardGoroutines()
		var conns []*net.TCPConn
		defer func() {
			for _, c := range conns {
				c.Close()
			}
		}()
		for i := range perIP {
			for _, from := range guardFloodSources(sources) {
				c, err := guardDial(from, r.addr)
				if err != nil {
					t.Fatalf("flood connection from %s: %v", from, err)
				}
				conns = append(conns, c)
				if i%5 == 4 {
					c.Write(hello) // stalls in the middle of TLS
				}
			}
		}
		// Every login slot holds a relay goroutine.
		waitFor(t, 30*time.Second, "the relay to take in the flood", func() bool {
			return runtime.NumGoroutine() >= g0+all-guardGoSlack
		})
	}
	held := time.Since(floodStart)
	t.Logf("flood of %d %s logins from %d addresses held after %v", sources*perIP, tr, sources, held.Round(time.Millisecond))

	port := freePort(t)
	cfg := agentConfig(r, tcpTunnel("web", port, target))
	cfg.ID = "fresh"
	start := time.Now()
	a := startAgent(t, cfg)
	// The flood's first slots free up at the relay's handshake deadline;
	// the agent must be in before that.
	a.waitSession(max(time.Until(floodStart.Add(hsTimeout)), time.Second))
	t.Logf("a never-seen agent logged in over %s %v after its start, with the flood held", tr, time.Since(start).Round(time.Millisecond))
	expectEcho(t, publicAddr(port))
}
