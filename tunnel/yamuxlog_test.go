package tunnel

import (
	"bytes"
	"log"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestYamuxLog: yamux's lines reach the structured log at the level that
// fits them, through the *log.Logger yamux is given.
func TestYamuxLog(t *testing.T) {
	for _, c := range []struct {
		name, line, want string
	}{
		{"keepalive", "[ERR] yamux: keepalive failed: i/o deadline reached", `level=WARN msg="yamux: keepalive failed: i/o deadline reached" component=yamux`},
		{"protocol", "[ERR] yamux: Invalid protocol version: 7", `level=WARN msg="yamux: Invalid protocol version: 7"`},
		{"peer closed", "[ERR] yamux: Failed to read header: EOF", `level=DEBUG msg="yamux: Failed to read header: EOF"`},
		{"closed here", "[ERR] yamux: Failed to write header: write tcp 127.0.0.1:1->127.0.0.1:2: use of closed network connection", `level=DEBUG`},
		{"reset", "[WARN] yamux: frame for missing stream: Vsn:0 Type:0 Flags:0 StreamID:5 Length:10", `level=DEBUG msg="yamux: frame for missing stream:`},
	} {
		t.Run(c.name, func(t *testing.T) {
			var b bytes.Buffer
			l := log.New(yamuxLog{slog.New(slog.NewTextHandler(&b, &slog.HandlerOptions{Level: slog.LevelDebug}))}, "", 0)
			l.Printf("%s", c.line)
			if got := b.String(); !strings.Contains(got, c.want) || strings.Count(got, "\n") != 1 {
				t.Fatalf("got %q, want one line with %q", got, c.want)
			}
		})
	}
	// No logger: nothing, and no panic.
	log.New(yamuxLog{}, "", 0).Printf("[ERR] yamux: keepalive failed: x")
}

// TestYamuxLogSession: on a real TLS link, a peer that sends a frame of
// another protocol version ends the session, and yamux's word on it
// reaches the session's structured log as a warning.
func TestYamuxLogSession(t *testing.T) {
	c, s := pinnedPair(t, TCPTransport{})
	var b syncBuffer
	cfg := DefaultSessionConfig()
	cfg.Log = slog.New(slog.NewTextHandler(&b, &slog.HandlerOptions{Level: slog.LevelDebug}))
	sess, err := c.Mux(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	// A yamux header (12 bytes) with version 7: no homeport peer sends it.
	if _, err := s.Write([]byte{7, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-sess.Done():
	case <-time.After(30 * time.Second):
		t.Fatal("the session outlived a frame of another version")
	}
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(b.String(), "level=WARN") || !strings.Contains(b.String(), "component=yamux") {
		if time.Now().After(deadline) {
			t.Fatalf("no warning from yamux in the session's log: %q", b.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("logged: %s", strings.TrimSpace(b.String()))
}

// syncBuffer is a bytes.Buffer safe for a logger and a test at once.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
