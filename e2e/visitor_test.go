package e2e

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
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
// session.
func startVisitor(t *testing.T, cfg config.Visitor) *visitorHandle {
	t.Helper()
	logs := &logBuf{}
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	v, err := visitor.New(cfg, "test", log)
	if err != nil {
		t.Fatal(err)
	}
	h := &visitorHandle{t: t, logs: logs, up: make(chan string, 16), done: make(chan error, 1)}
	v.OnSession = func(tr string) {
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

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
