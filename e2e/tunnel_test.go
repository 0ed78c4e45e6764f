package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/homeport/homeport/agent"
	"github.com/homeport/homeport/config"
	"github.com/homeport/homeport/internal/leak"
	"github.com/homeport/homeport/internal/testenv"
	"github.com/homeport/homeport/tunnel"
)

// TestIntegrity64MiB sends 64 MiB through the tunnel to an echo target
// and back, both directions at once, and compares sha256 sums.
func TestIntegrity64MiB(t *testing.T) { forEachTransport(t, testIntegrity64MiB) }

func testIntegrity64MiB(t *testing.T, tr string) {
	leak.Check(t)
	size := int64(64 << 20)
	if testing.Short() {
		size = 8 << 20
	}
	target := serve(t, echo)
	r := startRelayOver(t, tr, nil)
	port := freePort(t)
	a := startAgent(t, agentConfig(r, tcpTunnel("echo", port, target)))
	a.waitSession(10 * time.Second)

	c := dial(t, publicAddr(port))
	sent := make(chan [32]byte, 1)
	go func() {
		h := sha256.New()
		src := io.TeeReader(io.LimitReader(rand.NewChaCha8([32]byte{7}), size), h)
		if _, err := io.Copy(c, src); err != nil {
			t.Error(err)
		}
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
}

// TestHalfClose: EOF travels through the tunnel in each direction while
// the other direction keeps working.
func TestHalfClose(t *testing.T) { forEachTransport(t, testHalfClose) }

func testHalfClose(t *testing.T, tr string) {
	leak.Check(t)
	// Target 1 reads the request to EOF, then answers: the visitor's
	// half-close must reach it.
	requestThenAnswer := serve(t, func(c *net.TCPConn) {
		req, _ := io.ReadAll(c)
		fmt.Fprintf(c, "got %d bytes", len(req))
		c.CloseWrite()
	})
	// Target 2 speaks first and half-closes, then still reads: the
	// target's half-close must reach the visitor.
	bannerThenRead := serve(t, func(c *net.TCPConn) {
		c.Write([]byte("banner"))
		c.CloseWrite()
		req, _ := io.ReadAll(c)
		c.Write(req) // fails: the write side is closed; the visitor must not get it
	})
	r := startRelayOver(t, tr, nil)
	p1, p2 := freePort(t), freePort(t)
	a := startAgent(t, agentConfig(r, tcpTunnel("answer", p1, requestThenAnswer), tcpTunnel("banner", p2, bannerThenRead)))
	a.waitSession(10 * time.Second)

	got, err := roundTrip(publicAddr(p1), bytes.Repeat([]byte("q"), 100000))
	if err != nil || string(got) != "got 100000 bytes" {
		t.Fatalf("visitor half-close: got %q, %v", got, err)
	}

	c := dial(t, publicAddr(p2))
	banner, err := io.ReadAll(c) // EOF from the target's half-close
	if err != nil || string(banner) != "banner" {
		t.Fatalf("target half-close: got %q, %v", banner, err)
	}
	if _, err := c.Write([]byte("still writing after EOF")); err != nil {
		t.Fatalf("write after the target's half-close: %v", err)
	}
	c.CloseWrite()
}

// TestResetCarried: a connection reset at one end reaches the other end
// as a reset, not as an end of data: a cut upload must not look complete
// to the target, nor a cut download to the visitor.
func TestResetCarried(t *testing.T) { forEachTransport(t, testResetCarried) }

func testResetCarried(t *testing.T, tr string) {
	leak.Check(t)
	targetRead := make(chan error, 1)
	cutUpload := serve(t, func(c *net.TCPConn) { // reads until the visitor's reset
		_, err := io.Copy(io.Discard, c)
		targetRead <- err
	})
	cutDownload := serve(t, func(c *net.TCPConn) { // sends a little, then resets
		c.Write([]byte("partial"))
		time.Sleep(100 * time.Millisecond)
		c.SetLinger(0)
		c.Close()
	})
	r := startRelayOver(t, tr, nil)
	p1, p2 := freePort(t), freePort(t)
	a := startAgent(t, agentConfig(r, tcpTunnel("up", p1, cutUpload), tcpTunnel("down", p2, cutDownload)))
	a.waitSession(10 * time.Second)

	c := dial(t, publicAddr(p1))
	if _, err := c.Write(bytes.Repeat([]byte("u"), 100000)); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	c.SetLinger(0)
	c.Close()
	select {
	case err := <-targetRead:
		if !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("target read %v after the visitor's reset, want ECONNRESET", err)
		}
	case <-time.After(testenv.Deadline(10 * time.Second)):
		t.Fatal("target still reading 10 s after the visitor's reset")
	}

	c = dial(t, publicAddr(p2))
	c.SetReadDeadline(time.Now().Add(testenv.Deadline(10 * time.Second)))
	got, err := io.ReadAll(c)
	if string(got) != "partial" || !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("visitor read %q, %v after the target's reset; want \"partial\", ECONNRESET", got, err)
	}
	c.Close()
}

// TestConcurrentVisitors: 500 visitors at once, each with its own data.
func TestConcurrentVisitors(t *testing.T) { forEachTransport(t, testConcurrentVisitors) }

func testConcurrentVisitors(t *testing.T, tr string) {
	leak.Check(t)
	n := 500
	if testing.Short() {
		n = 100
	}
	target := serve(t, echo)
	// The burst puts 8 MB in the session ahead of a keepalive ping, more
	// than a busy machine may carry within the tests' 2 s keepalive
	// timeout: give the ping the time the data takes.
	kaTimeout := testenv.Deadline(0)
	r := startRelayOver(t, tr, func(c *config.Relay) { c.Session.KeepAliveTimeout = kaTimeout })
	port := freePort(t)
	cfg := agentConfig(r, tcpTunnel("echo", port, target))
	cfg.Session.KeepAliveTimeout = kaTimeout
	a := startAgent(t, cfg)
	a.waitSession(10 * time.Second)

	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			msg := make([]byte, 16<<10)
			rand.NewChaCha8([32]byte{byte(i), byte(i >> 8)}).Read(msg)
			got, err := roundTrip(publicAddr(port), msg)
			if err == nil && !bytes.Equal(got, msg) {
				err = fmt.Errorf("visitor %d: got %d bytes, wrong content", i, len(got))
			}
			if err != nil {
				errs <- fmt.Errorf("visitor %d: %w", i, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// TestTargetDown: the visitor is closed promptly and both sides say why;
// the session and other tunnels are unaffected.
func TestTargetDown(t *testing.T) { forEachTransport(t, testTargetDown) }

func testTargetDown(t *testing.T, tr string) {
	leak.Check(t)
	target := serve(t, echo)
	down := publicAddr(freePort(t)) // nothing listens there
	r := startRelayOver(t, tr, nil)
	pDown, pUp := freePort(t), freePort(t)
	a := startAgent(t, agentConfig(r, tcpTunnel("down", pDown, down), tcpTunnel("up", pUp, target)))
	a.waitSession(10 * time.Second)

	start := time.Now()
	expectClosed(t, publicAddr(pDown), 5*time.Second)
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("visitor closed after %v", d)
	}
	waitFor(t, 5*time.Second, "relay log of the refusal", func() bool {
		return contains(r.logs.String(), "target unreachable", "down", "connection refused")
	})
	waitFor(t, 5*time.Second, "agent log of the dial failure", func() bool {
		return contains(a.logs.String(), "target unreachable", down)
	})
	expectEcho(t, publicAddr(pUp))
}

// TestBadCredentials: a wrong token or fingerprint stops the agent at once
// with an error that says what to fix; the relay keeps serving others.
func TestBadCredentials(t *testing.T) { forEachTransport(t, testBadCredentials) }

func testBadCredentials(t *testing.T, tr string) {
	leak.Check(t)
	target := serve(t, echo)
	r := startRelayOver(t, tr, nil)
	good := freePort(t)
	a := startAgent(t, agentConfig(r, tcpTunnel("good", good, target)))
	a.waitSession(10 * time.Second)

	other := startRelayOver(t, tr, nil) // a relay with another key
	tests := []struct {
		name   string
		mutate func(*config.Agent)
		is     error
		says   string
	}{
		{"wrong token", func(c *config.Agent) { c.Token = "wrong-token-0123456789abc" }, tunnel.ErrAuthFailed, "token is wrong"},
		{"wrong fingerprint", func(c *config.Agent) { c.Fingerprint = other.id.Fingerprint }, tunnel.ErrFingerprintMismatch, "fingerprint"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := agentConfig(r, tcpTunnel("bad", freePort(t), target))
			cfg.ID = "intruder"
			tt.mutate(&cfg)
			h := startAgent(t, cfg)
			select {
			case err := <-h.done:
				h.done <- err
				if !errors.Is(err, agent.ErrRejected) || !errors.Is(err, tt.is) || !contains(err.Error(), tt.says) {
					t.Fatalf("agent: %v; want %v saying %q", err, tt.is, tt.says)
				}
			case <-time.After(testenv.Deadline(10 * time.Second)):
				t.Fatal("agent kept running")
			}
		})
	}
	waitFor(t, 5*time.Second, "relay log of the failed login", func() bool {
		return contains(r.logs.String(), "agent authentication failed")
	})
	expectEcho(t, publicAddr(good))
}

// TestRegistrationRefusals: each bad tunnel gets its own reason; the good
// tunnel of the same agent works.
func TestRegistrationRefusals(t *testing.T) { forEachTransport(t, testRegistrationRefusals) }

func testRegistrationRefusals(t *testing.T, tr string) {
	leak.Check(t)
	target := serve(t, echo)
	taken, err := net.Listen("tcp", "127.0.0.1:0") // a port another program holds
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	takenPort := uint16(taken.Addr().(*net.TCPAddr).Port)

	r := startRelayOver(t, tr, func(c *config.Relay) {
		c.Tokens = []config.Token{{Name: "default", Secret: testToken, Ports: config.PortRanges{{Lo: 1024, Hi: 65535}}}}
		c.AllowPorts = config.PortRanges{{Lo: 1024, Hi: 65535}}
	})
	good, dup := freePort(t), freePort(t)
	cfg := agentConfig(r,
		tcpTunnel("good", good, target),
		tcpTunnel("low", 80, target),
		tcpTunnel("taken", takenPort, target),
		tcpTunnel("same-port", good, target),
		tcpTunnel("dup-a", dup, target),
	)
	a := startAgent(t, cfg)
	si := a.waitAny(10 * time.Second)
	want := map[string]tunnel.Code{
		"good":      tunnel.CodeOK,
		"low":       tunnel.CodePortNotAllowed,
		"taken":     tunnel.CodePortInUse,
		"same-port": tunnel.CodePortInUse,
		"dup-a":     tunnel.CodeOK,
	}
	for _, res := range si.Results {
		if res.Code != want[res.Name] {
			t.Errorf("tunnel %s: %v (%s), want %v", res.Name, res.Code, res.Message, want[res.Name])
		}
	}
	waitFor(t, time.Second, "agent log of refusals", func() bool {
		return contains(a.logs.String(), "tunnel refused by relay", "port 80 is outside the relay's allow_ports", "in use by another program")
	})
	expectEcho(t, publicAddr(good))
}

// TestTokenPortLimits: one relay, two people: each token only reaches its
// own ports.
func TestTokenPortLimits(t *testing.T) { forEachTransport(t, testTokenPortLimits) }

func testTokenPortLimits(t *testing.T, tr string) {
	leak.Check(t)
	target := serve(t, echo)
	pA, pB := freePort(t), freePort(t)
	r := startRelayOver(t, tr, func(c *config.Relay) {
		c.Tokens = []config.Token{
			{Name: "alice", Secret: "alice-token-0123456789", Ports: config.PortRanges{{Lo: pA, Hi: pA}}},
			{Name: "bob", Secret: "bob-token-0123456789ab", Ports: config.PortRanges{{Lo: pB, Hi: pB}}},
		}
	})
	cfg := agentConfig(r, tcpTunnel("mine", pA, target), tcpTunnel("bobs", pB, target))
	cfg.Token = "alice-token-0123456789"
	a := startAgent(t, cfg)
	si := a.waitAny(10 * time.Second)
	if si.Results[0].Code != tunnel.CodeOK || si.Results[1].Code != tunnel.CodePortNotAllowed {
		t.Fatalf("alice's registration: %+v", si.Results)
	}
	if !contains(si.Results[1].Message, "alice") {
		t.Errorf("refusal does not name the token: %q", si.Results[1].Message)
	}
	expectEcho(t, publicAddr(pA))
}

// TestRelayRestart: the agent reconnects by itself after the relay comes
// back on the same address, with the same identity.
func TestRelayRestart(t *testing.T) { forEachTransport(t, testRelayRestart) }

func testRelayRestart(t *testing.T, tr string) {
	leak.Check(t)
	target := serve(t, echo)
	r := startRelayOver(t, tr, nil)
	port := freePort(t)
	a := startAgent(t, agentConfig(r, tcpTunnel("echo", port, target)))
	a.waitSession(10 * time.Second)
	expectEcho(t, publicAddr(port))

	r.stop()
	expectClosed(t, publicAddr(port), 2*time.Second)
	cfg := r.cfg
	cfg.Listen = r.addr
	r2 := runRelay(t, cfg, r.id)
	start := time.Now()
	a.waitSession(10 * time.Second)
	t.Logf("agent back %v after the relay restarted", time.Since(start).Round(time.Millisecond))
	expectEcho(t, publicAddr(port))
	_ = r2
}

// TestSessionReplacement: a newer session of the same agent takes the
// ports over at once; the old one is told why.
func TestSessionReplacement(t *testing.T) { forEachTransport(t, testSessionReplacement) }

func testSessionReplacement(t *testing.T, tr string) {
	leak.Check(t)
	target := serve(t, echo)
	r := startRelayOver(t, tr, nil)
	port := freePort(t)
	cfg := agentConfig(r, tcpTunnel("echo", port, target))
	old := startAgent(t, cfg)
	old.waitSession(10 * time.Second)

	newer := startAgent(t, cfg)
	newer.waitSession(10 * time.Second)
	expectEcho(t, publicAddr(port))
	waitFor(t, 5*time.Second, "old agent told it was replaced", func() bool {
		return contains(old.logs.String(), "replaced by a newer session")
	})
	// The old agent backs off instead of taking the ports back.
	time.Sleep(500 * time.Millisecond)
	select {
	case <-old.sessions:
		t.Fatal("replaced agent came back at once")
	default:
	}
	expectEcho(t, publicAddr(port))
}

// TestSessionEndFreesPorts: when the agent goes away the relay closes its
// public ports at once.
func TestSessionEndFreesPorts(t *testing.T) { forEachTransport(t, testSessionEndFreesPorts) }

func testSessionEndFreesPorts(t *testing.T, tr string) {
	leak.Check(t)
	target := serve(t, echo)
	r := startRelayOver(t, tr, nil)
	port := freePort(t)
	a := startAgent(t, agentConfig(r, tcpTunnel("echo", port, target)))
	a.waitSession(10 * time.Second)
	expectEcho(t, publicAddr(port))
	a.stop()
	waitFor(t, 2*time.Second, "public port closed", func() bool {
		c, err := net.Dial("tcp", publicAddr(port))
		if err != nil {
			return true
		}
		c.Close()
		return false
	})
}

// TestSilentPeer: a peer that connects to the agent port and never speaks
// is dropped at the handshake deadline; a real agent is served meanwhile.
func TestSilentPeer(t *testing.T) { forEachTransport(t, testSilentPeer) }

func testSilentPeer(t *testing.T, tr string) {
	leak.Check(t)
	target := serve(t, echo)
	r := startRelayOver(t, tr, func(c *config.Relay) { c.HandshakeTimeout = 500 * time.Millisecond })
	var silent []net.Conn
	for range 20 {
		c, err := net.Dial("tcp", r.addr)
		if err != nil {
			t.Fatal(err)
		}
		silent = append(silent, c)
	}
	defer func() {
		for _, c := range silent {
			c.Close()
		}
	}()
	port := freePort(t)
	a := startAgent(t, agentConfig(r, tcpTunnel("echo", port, target)))
	a.waitSession(5 * time.Second)
	expectEcho(t, publicAddr(port))
	for _, c := range silent {
		c.SetReadDeadline(time.Now().Add(testenv.Deadline(5 * time.Second)))
		if _, err := io.ReadAll(c); err != nil {
			t.Fatalf("silent peer not dropped by the deadline: %v", err)
		}
	}
}

// TestGarbageAfterAuth: an authenticated peer that sends garbage on the
// control stream loses its own session only.
func TestGarbageAfterAuth(t *testing.T) { forEachTransport(t, testGarbageAfterAuth) }

func testGarbageAfterAuth(t *testing.T, tr string) {
	leak.Check(t)
	target := serve(t, echo)
	r := startRelayOver(t, tr, nil)
	port := freePort(t)
	a := startAgent(t, agentConfig(r, tcpTunnel("echo", port, target)))
	a.waitSession(10 * time.Second)

	for _, junk := range [][]byte{
		[]byte("\x10\xff\xffjunk"),                  // oversized frame
		[]byte("\x7f\x00\x00"),                      // unknown type
		[]byte("\x10\x00\x04\x00\x05ab"),            // malformed register
		[]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), // not our protocol at all
	} {
		conf, err := tunnel.PinnedTLSConfig(r.id.Fingerprint)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		c, err := transportFor(tr).Dial(ctx, r.addr, conf)
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Handshake(ctx); err != nil {
			t.Fatal(err)
		}
		if _, err := tunnel.Authenticate(c, []byte(testToken), "evil", "x", 0); err != nil {
			t.Fatal(err)
		}
		sess, err := c.Mux(tunnel.DefaultSessionConfig())
		if err != nil {
			t.Fatal(err)
		}
		ctrl, err := sess.OpenStream(ctx)
		if err != nil {
			t.Fatal(err)
		}
		ctrl.Write(junk)
		select {
		case <-sess.Done():
		case <-ctx.Done():
			t.Fatalf("relay kept a session that sent %q", junk)
		}
		sess.Close()
		cancel()
	}
	expectEcho(t, publicAddr(port))
}

// TestGracefulShutdown: on shutdown the relay stops accepting, lets an
// open connection finish within the drain time, then stops.
func TestGracefulShutdown(t *testing.T) { forEachTransport(t, testGracefulShutdown) }

func testGracefulShutdown(t *testing.T, tr string) {
	leak.Check(t)
	target := serve(t, echo)
	r := startRelayOver(t, tr, func(c *config.Relay) { c.ShutdownTimeout = 5 * time.Second })
	port := freePort(t)
	a := startAgent(t, agentConfig(r, tcpTunnel("echo", port, target)))
	a.waitSession(10 * time.Second)

	c := dial(t, publicAddr(port))
	c.Write([]byte("before"))
	buf := make([]byte, 6)
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatal(err)
	}
	r.cancel() // begin shutdown
	expectClosed(t, publicAddr(port), 2*time.Second)
	if _, err := c.Write([]byte("during")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "during" {
		t.Fatalf("open connection during drain: %q, %v", buf, err)
	}
	c.CloseWrite()
	if rest, err := io.ReadAll(c); err != nil || len(rest) != 0 {
		t.Fatalf("after half-close: %q, %v", rest, err)
	}
	r.stop()
}

// TestAgentGracefulShutdown: a stopping agent has the relay close its
// ports at once, lets open connections finish, and then exits.
func TestAgentGracefulShutdown(t *testing.T) { forEachTransport(t, testAgentGracefulShutdown) }

func testAgentGracefulShutdown(t *testing.T, tr string) {
	leak.Check(t)
	target := serve(t, echo)
	r := startRelayOver(t, tr, nil)
	port := freePort(t)
	a := startAgent(t, agentConfig(r, tcpTunnel("echo", port, target)))
	a.waitSession(10 * time.Second)

	c := dial(t, publicAddr(port))
	buf := make([]byte, 6)
	if _, err := c.Write([]byte("before")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatal(err)
	}
	a.cancel()
	expectClosed(t, publicAddr(port), 2*time.Second)
	waitFor(t, 2*time.Second, "relay log of the agent going away", func() bool {
		return contains(r.logs.String(), "agent going away")
	})
	if _, err := c.Write([]byte("during")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "during" {
		t.Fatalf("open connection during drain: %q, %v", buf, err)
	}
	select {
	case <-a.done:
		t.Fatal("agent exited with a connection still open")
	default:
	}
	c.CloseWrite()
	if rest, err := io.ReadAll(c); err != nil || len(rest) != 0 {
		t.Fatalf("after half-close: %q, %v", rest, err)
	}
	select {
	case err := <-a.done:
		a.done <- err
	case <-time.After(testenv.Deadline(3 * time.Second)):
		t.Fatal("agent did not exit after its last connection ended")
	}
}
