package cli

import (
	"bytes"
	"io"
	"log/slog"
	"net"
	"net/http"
	"regexp"
	"strings"
	"testing"

	"github.com/homeport/homeport/internal/leak"
)

// TestServeDebug: the profiler answers on the address it logs, and stops
// with everything it opened.
func TestServeDebug(t *testing.T) {
	leak.Check(t)
	var logged bytes.Buffer
	stop, err := ServeDebug("127.0.0.1:0", slog.New(slog.NewTextHandler(&logged, nil)))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`url=(http://\S+/debug/pprof/)`).FindStringSubmatch(logged.String())
	if m == nil {
		stop()
		t.Fatalf("no profiler URL in the log: %q", logged.String())
	}
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	for _, path := range []string{"", "goroutine?debug=1", "heap", "cmdline"} {
		resp, err := client.Get(m[1] + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || len(body) == 0 {
			t.Errorf("GET %s: %s, %d bytes", path, resp.Status, len(body))
		}
		if path == "goroutine?debug=1" && !strings.Contains(string(body), "goroutine profile") {
			t.Errorf("GET %s: not a goroutine profile: %.80q", path, body)
		}
	}
	stop()
	if _, err := client.Get(m[1]); err == nil {
		t.Error("profiler still answers after stop")
	}
}

func TestServeDebugOff(t *testing.T) {
	leak.Check(t)
	stop, err := ServeDebug("", slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	stop()
}

// TestServeDebugTaken: a port in use is an error that names the setting.
func TestServeDebugTaken(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	stop, err := ServeDebug(ln.Addr().String(), slog.New(slog.DiscardHandler))
	if err == nil {
		stop()
		t.Fatal("served on a port already in use")
	}
	if !strings.Contains(err.Error(), "debug_addr") || !strings.Contains(err.Error(), "in use") {
		t.Errorf("error %q does not name debug_addr and the port in use", err)
	}
}
