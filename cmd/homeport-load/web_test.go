package main

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// TestWebRun: webRun counts the GETs that brought the whole file, keeps
// their latencies, sends the Host asked for, and counts a wrong answer as
// a failure with the reason.
func TestWebRun(t *testing.T) {
	body := strings.Repeat("x", webFileSize)
	var badHost atomic.Bool
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Host != webHost {
			badHost.Store(true)
		}
		if r.URL.Path == "/short" {
			w.Write([]byte("short"))
			return
		}
		w.Write([]byte(body))
	}))
	defer srv.Close()
	ctx := context.Background()
	res := webRun(ctx, srv.URL+"/"+webFile, webHost, 4, 200*time.Millisecond)
	if res.requests == 0 || res.failures != 0 || len(res.samples) != int(res.requests) || badHost.Load() {
		t.Fatalf("run: %d requests, %d failures (%v), %d samples, bad host %v", res.requests, res.failures, res.lastErr, len(res.samples), badHost.Load())
	}
	res = webRun(ctx, srv.URL+"/short", webHost, 1, 50*time.Millisecond)
	if res.requests != 0 || res.failures == 0 || !strings.Contains(res.lastErr.Error(), "5 bytes, want 1024") {
		t.Fatalf("short answers: %d requests, %d failures, %v", res.requests, res.failures, res.lastErr)
	}
}

// TestNginxStops: the web measure's nginx runs in the foreground, so that
// stop ends it: no nginx is left behind, as root too (where a second -g
// once made it fork into the background and outlive the load tool).
func TestNginxStops(t *testing.T) {
	if _, err := exec.LookPath("nginx"); err != nil {
		t.Skip("no nginx (Debian package nginx)")
	}
	dir := t.TempDir()
	ng, err := startNginx(context.Background(), dir)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "nginx.pid"))
	if err != nil {
		ng.stop()
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		ng.stop()
		t.Fatal(err)
	}
	if pid != ng.cmd.Process.Pid {
		syscall.Kill(pid, syscall.SIGKILL)
		ng.stop()
		t.Fatalf("nginx's master is process %d, not the one started (%d): it went to the background", pid, ng.cmd.Process.Pid)
	}
	ng.stop()
	if err := syscall.Kill(pid, 0); err == nil {
		t.Fatalf("nginx (process %d) still runs after stop", pid)
	}
}
