package agent

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/homeport/homeport/config"
	"github.com/homeport/homeport/internal/leak"
	"github.com/homeport/homeport/internal/relaydial"
	"github.com/homeport/homeport/relay"
)

// logSink is a concurrency-safe log buffer.
type logSink struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logSink) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logSink) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// startRelay runs a real relay on addr; it stops with the returned func.
func startRelay(t *testing.T, cfg config.Relay, id relay.Identity) (addr string, stop func()) {
	t.Helper()
	srv, err := relay.New(cfg, id, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	a, err := srv.Listen()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("relay: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return a.String(), stop
}

// TestAutoFallbackAndUpgrade: with a relay that serves TCP only, auto
// falls back to TCP within a few seconds and says so; once QUIC answers,
// an idle session moves to QUIC by itself.
func TestAutoFallbackAndUpgrade(t *testing.T) {
	leak.Check(t)
	const token = "auto-test-token-0123456789"
	rcfg := config.Relay{
		DataDir:          t.TempDir(),
		Listen:           "127.0.0.1:0",
		BindAddr:         "127.0.0.1",
		AllowPorts:       config.PortRanges{{Lo: 1024, Hi: 65535}},
		Tokens:           []config.Token{{Name: "default", Secret: token}},
		HandshakeTimeout: 5 * time.Second,
		QUIC:             false,
		Session:          config.Session{KeepAlive: time.Second, KeepAliveTimeout: time.Second},
	}
	id, err := relay.LoadIdentity(rcfg)
	if err != nil {
		t.Fatal(err)
	}
	addr, stopRelay := startRelay(t, rcfg, id)

	// A public port for the tunnel.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := uint16(l.Addr().(*net.TCPAddr).Port)
	l.Close()

	logs := &logSink{}
	a, err := New(config.Agent{
		Relay: addr, Transport: config.TransportAuto, Token: token, Fingerprint: id.Fingerprint, ID: "auto",
		Tunnels:          []config.Tunnel{{Name: "t", Protocol: "tcp", RemotePort: port, Target: "127.0.0.1:9"}},
		HandshakeTimeout: 10 * time.Second, ReconnectMax: 500 * time.Millisecond,
		Session: config.Session{KeepAlive: time.Second, KeepAliveTimeout: time.Second},
	}, "test", slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	if err != nil {
		t.Fatal(err)
	}
	sessions := make(chan SessionInfo, 8)
	a.OnSession = func(si SessionInfo) { sessions <- si }
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	defer func() {
		cancel()
		<-done
	}()

	next := func(want string, within time.Duration) {
		t.Helper()
		select {
		case si := <-sessions:
			if si.Transport != want {
				t.Fatalf("session over %s, want %s\n%s", si.Transport, want, logs)
			}
		case <-time.After(within):
			t.Fatalf("no session over %s within %v\n%s", want, within, logs)
		}
	}
	start := time.Now()
	next(config.TransportTCP, 8*time.Second)
	t.Logf("fell back to TCP after %v", time.Since(start).Round(time.Millisecond))
	if !strings.Contains(logs.String(), "QUIC to the relay failed; using TCP") {
		t.Fatalf("fallback not logged:\n%s", logs)
	}

	// The relay comes back with QUIC on the same port number. The agent
	// reconnects over TCP (QUIC failed a moment ago) ...
	stopRelay()
	rcfg.QUIC = true
	_, port2, _ := net.SplitHostPort(addr)
	rcfg.Listen = net.JoinHostPort("127.0.0.1", port2)
	if _, err := strconv.Atoi(port2); err != nil {
		t.Fatal(err)
	}
	startRelay(t, rcfg, id)
	next(config.TransportTCP, 10*time.Second)

	// ... and once the pause is over, probes QUIC and moves there.
	a.policy.Worked()
	next(config.TransportQUIC, 2*upgradeCheck+relaydial.QUICAttemptTimeout)
	if !strings.Contains(logs.String(), "moving the session from TCP") {
		t.Fatalf("upgrade not logged:\n%s", logs)
	}
}
