package tunnel

import (
	"bytes"
	"log"
	"log/slog"
	"strings"
	"testing"
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
