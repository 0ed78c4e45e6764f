package main

import (
	"context"
	"testing"
	"time"

	"github.com/homeport/homeport/internal/testenv"
)

// TestWorkloads runs each workload briefly against a target in this
// process, the direct path of a real run.
func TestWorkloads(t *testing.T) {
	tg, err := startTarget()
	if err != nil {
		t.Fatal(err)
	}
	defer tg.close()
	ctx := context.Background()
	addr := tg.addr()

	for _, streams := range []int{1, 3} {
		retry(t, "upload", func(d time.Duration) bool {
			n, elapsed, err := upload(ctx, addr, streams, d)
			if err != nil || elapsed < d {
				t.Fatalf("upload, %d streams: %d bytes in %v, %v", streams, n, elapsed, err)
			}
			return n > 0
		})
		retry(t, "download", func(d time.Duration) bool {
			n, elapsed, err := download(ctx, addr, streams, d)
			if err != nil || elapsed != d {
				t.Fatalf("download, %d streams: %d bytes in %v, %v", streams, n, elapsed, err)
			}
			return n > 0
		})
	}
	for name, steady := range map[string]func(context.Context, string, time.Duration, time.Duration) (int64, time.Duration, error){
		"steady download": steadyDownload, "steady upload": steadyUpload,
	} {
		retry(t, name, func(d time.Duration) bool {
			n, elapsed, err := steady(ctx, addr, d/2, d)
			if err != nil {
				t.Fatalf("%s: %d bytes in %v after the warmup, %v", name, n, elapsed, err)
			}
			return n > 0 && elapsed > 0
		})
	}
	samples, err := pingPong(ctx, addr, 4, 400)
	if err != nil || len(samples) != 400 {
		t.Errorf("ping-pong: %d samples, %v", len(samples), err)
	}
	retry(t, "churn", func(d time.Duration) bool {
		res := churn(ctx, addr, 4, d)
		if res.failures != 0 || len(res.firstB) != res.conns {
			t.Fatalf("churn: %+v", res)
		}
		return res.conns > 0
	})
	conns, err := hold(ctx, addr, 50)
	if err != nil || len(conns) != 50 {
		t.Fatalf("hold: %d, %v", len(conns), err)
	}
	deadline := time.Now().Add(testenv.Deadline(0))
	for tg.active.Load() != 50 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := tg.active.Load(); n != 50 {
		t.Errorf("target serves %d connections, want the 50 held", n)
	}
	closeAll(conns)
	for tg.active.Load() != 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := tg.active.Load(); n != 0 {
		t.Errorf("target still serves %d connections after they closed", n)
	}
}

// retry runs a workload for 100 ms, and again for twice as long while it
// moved nothing (a busy machine may give it no time at all), until it
// did or a run would end past testenv.Deadline.
func retry(t *testing.T, what string, run func(d time.Duration) bool) {
	t.Helper()
	limit := testenv.Deadline(0)
	for d := 100 * time.Millisecond; !run(d); d *= 2 {
		if d > limit/2 {
			t.Fatalf("%s moved nothing in runs of up to %v", what, d)
		}
	}
}
