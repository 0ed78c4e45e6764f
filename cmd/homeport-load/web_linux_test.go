package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

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
