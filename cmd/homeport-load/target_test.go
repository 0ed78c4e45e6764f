package main

import (
	"context"
	"testing"
	"time"
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
	d := 100 * time.Millisecond

	for _, streams := range []int{1, 3} {
		n, elapsed, err := upload(ctx, addr, streams, d)
		if err != nil || n == 0 || elapsed < d {
			t.Errorf("upload, %d streams: %d bytes in %v, %v", streams, n, elapsed, err)
		}
		n, elapsed, err = download(ctx, addr, streams, d)
		if err != nil || n == 0 || elapsed != d {
			t.Errorf("download, %d streams: %d bytes in %v, %v", streams, n, elapsed, err)
		}
	}
	for name, steady := range map[string]func(context.Context, string, time.Duration, time.Duration) (int64, time.Duration, error){
		"steady download": steadyDownload, "steady upload": steadyUpload,
	} {
		n, elapsed, err := steady(ctx, addr, d/2, d)
		if err != nil || n == 0 || elapsed <= 0 {
			t.Errorf("%s: %d bytes in %v after the warmup, %v", name, n, elapsed, err)
		}
	}
	samples, err := pingPong(ctx, addr, 4, 400)
	if err != nil || len(samples) != 400 {
		t.Errorf("ping-pong: %d samples, %v", len(samples), err)
	}
	res := churn(ctx, addr, 4, d)
	if res.conns == 0 || res.failures != 0 || len(res.firstB) != res.conns {
		t.Errorf("churn: %+v", res)
	}
	conns, err := hold(ctx, addr, 50)
	if err != nil || len(conns) != 50 {
		t.Fatalf("hold: %d, %v", len(conns), err)
	}
	deadline := time.Now().Add(5 * time.Second)
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
