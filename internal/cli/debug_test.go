package cli

import (
	"bytes"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
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
	for _, path := range []string{"", "goroutine?debug=1", "heap"} {
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

// TestServeDebugRefuses: the profiler answers only requests whose Host
// header names loopback (a page in a browser on this machine, its name
// rebound to 127.0.0.1, sends its own name), and never shows the
// process's command line, where a secret may be.
func TestServeDebugRefuses(t *testing.T) {
	leak.Check(t)
	var logged bytes.Buffer
	stop, err := ServeDebug("127.0.0.1:0", slog.New(slog.NewTextHandler(&logged, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	m := regexp.MustCompile(`url=http://(\S+)/debug/pprof/`).FindStringSubmatch(logged.String())
	if m == nil {
		t.Fatalf("no profiler URL in the log: %q", logged.String())
	}
	addr := m[1]
	_, port, _ := net.SplitHostPort(addr)
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	get := func(host, path string) (int, string) {
		t.Helper()
		req, err := http.NewRequest("GET", "http://"+addr+"/debug/pprof/"+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Host = host
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	for _, tt := range []struct {
		host string
		want int
	}{
		{addr, http.StatusOK},
		{"localhost:" + port, http.StatusOK},
		{"LocalHost", http.StatusOK},
		{"127.0.0.1", http.StatusOK},
		{"127.1.2.3:" + port, http.StatusOK},
		{"[::1]:" + port, http.StatusOK},
		{"[::1]", http.StatusOK},
		{"[::ffff:127.0.0.1]:" + port, http.StatusOK},
		{"attacker.example:" + port, http.StatusForbidden},
		{"attacker.example", http.StatusForbidden},
		{"localhost.attacker.example:" + port, http.StatusForbidden},
		{"127.0.0.1.nip.io:" + port, http.StatusForbidden},
		{"192.0.2.1:" + port, http.StatusForbidden},
		{"[2001:db8::1]:" + port, http.StatusForbidden},
		{"[fe80::1%lo]:" + port, http.StatusForbidden},
	} {
		for _, path := range []string{"", "goroutine?debug=1"} {
			if code, body := get(tt.host, path); code != tt.want {
				t.Errorf("GET /debug/pprof/%s with Host %q: %d, want %d (%.80q)", path, tt.host, code, tt.want, body)
			}
		}
	}
	exe, _ := os.Executable()
	for _, path := range []string{"cmdline", "cmdline?debug=1"} {
		code, body := get(addr, path)
		if code != http.StatusNotFound || strings.Contains(body, exe) || strings.Contains(body, os.Args[0]) {
			t.Errorf("GET /debug/pprof/%s: %d, %.200q; want 404 without the command line", path, code, body)
		}
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
