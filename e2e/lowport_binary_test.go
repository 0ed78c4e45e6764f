//go:build linux

package e2e

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/homeport/homeport/internal/leak"
)

// TestBinaryLowPortPermission: a relay that may not open a port below
// 1024 (it runs as an ordinary user) tells the agent so, and how to allow
// it, instead of "internal error". As root, the relay runs as nobody
// (setpriv), so the kernel really refuses the bind with EACCES.
func TestBinaryLowPortPermission(t *testing.T) {
	leak.Check(t)
	const low = 1023
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_unprivileged_port_start"); err == nil {
		if n, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && n <= low {
			t.Skipf("net.ipv4.ip_unprivileged_port_start is %d: any user may open port %d here", n, low)
		}
	}
	relayBin := binPath(t, "relay")
	program, args := relayBin, []string(nil)
	dir := t.TempDir()
	if os.Geteuid() == 0 {
		setpriv, err := exec.LookPath("setpriv")
		if err != nil {
			t.Skip("running as root without setpriv: cannot run the relay as an ordinary user")
		}
		// nobody must reach the binary and its data directory.
		dir, err = os.MkdirTemp("", "homeport-lowport-")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(dir) })
		if err := os.Chmod(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		program, args = setpriv, []string{"--reuid=65534", "--regid=65534", "--clear-groups", copyExecutable(t, relayBin, dir)}
	}
	dataDir := filepath.Join(dir, "data")
	if err := os.Mkdir(dataDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if os.Geteuid() == 0 {
		if err := os.Chown(dataDir, 65534, 65534); err != nil {
			t.Fatal(err)
		}
	}
	relayPort := freePort(t)
	r := binStartVia(t, "relay", program, append(args,
		"--data-dir", dataDir,
		"--listen", publicAddr(relayPort),
		"--bind-addr", "127.0.0.1",
		"--advertise", "127.0.0.1",
		"--allow-ports", "1-65535")...)
	b := binAwaitBanner(r, dataDir)

	target := serve(t, echo)
	a := binStartAgent(t, b, []string{binTunnel(low, target)})
	want := fmt.Sprintf("the relay may not open tcp port %d (permission denied): ports below 1024 need the relay to run as root or with CAP_NET_BIND_SERVICE", low)
	a.await(15*time.Second, "the agent's log of the refusal", func() bool {
		return a.count("tunnel refused by relay") > 0
	})
	if log := a.stderr.String(); !contains(log, want, "net.ipv4.ip_unprivileged_port_start="+strconv.Itoa(low), "port not allowed") {
		t.Fatalf("agent log does not explain the refusal (want %q):\n%s", want, log)
	}
}

// copyExecutable copies the program at src into dir, executable by all.
func copyExecutable(t *testing.T, src, dir string) string {
	t.Helper()
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	dst := filepath.Join(dir, filepath.Base(src))
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_EXCL, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
	return dst
}
