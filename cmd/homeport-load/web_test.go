package main

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
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
