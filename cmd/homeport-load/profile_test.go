package main

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/homeport/homeport/internal/cli"
)

// TestProfiles: the load tool finds a process's profiler in its log and
// records CPU and heap profiles from it; without --profile it records
// nothing, and a process without a profiler is an error that says so.
func TestProfiles(t *testing.T) {
	dir := t.TempDir()
	procs := make([]*proc, 2)
	for i, name := range []string{"relay", "agent"} {
		logPath := filepath.Join(dir, name+".log")
		f, err := os.Create(logPath)
		if err != nil {
			t.Fatal(err)
		}
		stop, err := cli.ServeDebug("127.0.0.1:0", slog.New(slog.NewTextHandler(f, nil)))
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(stop)
		procs[i] = &proc{name: name, stderr: logPath}
	}
	p := &pair{relay: procs[0], agent: procs[1]}
	out := filepath.Join(dir, "prof")
	if err := os.Mkdir(out, 0o755); err != nil {
		t.Fatal(err)
	}
	e := &env{opts: options{profileDir: out}}
	ctx := context.Background()
	// Relay and agent are one process here, which can run one CPU profile
	// at a time: the CPU profile comes from one of them.
	if err := e.fetchProfile(ctx, p.relay, "profile?seconds=1", "tcp-test-relay.cpu.pprof", 30*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := e.profileHeap(ctx, p, "tcp-idle"); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"tcp-test-relay.cpu.pprof", "tcp-idle-relay.heap.pprof", "tcp-idle-agent.heap.pprof"} {
		b, err := os.ReadFile(filepath.Join(out, f))
		// A profile is gzipped protocol buffers.
		if err != nil || len(b) < 2 || b[0] != 0x1f || b[1] != 0x8b {
			t.Errorf("%s: %d bytes, %v; want a gzipped profile", f, len(b), err)
		}
	}

	off := &env{}
	if err := off.profileCPU(ctx, p, "none", time.Second)(); err != nil {
		t.Errorf("without --profile: %v", err)
	}
	if ents, _ := os.ReadDir(out); len(ents) != 3 {
		t.Errorf("%d files in the profile directory, want 3", len(ents))
	}
	silent := filepath.Join(dir, "silent.log")
	if err := os.WriteFile(silent, []byte("level=INFO msg=started\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	p.agent = &proc{name: "agent", stderr: silent}
	if err := e.profileHeap(ctx, p, "x"); err == nil || !strings.Contains(err.Error(), "agent logged no profiler address") {
		t.Errorf("agent without a profiler: %v", err)
	}
}
