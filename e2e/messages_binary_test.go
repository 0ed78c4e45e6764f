//go:build linux

package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/homeport/homeport/internal/leak"
)

const smallBuffersMsg = `msg="UDP buffers are small for QUIC"`

// binSmallBuffersLines returns the log's lines about small UDP buffers.
func binSmallBuffersLines(log string) []string {
	var lines []string
	for _, l := range strings.Split(log, "\n") {
		if strings.Contains(l, smallBuffersMsg) {
			lines = append(lines, l)
		}
	}
	return lines
}

// sysctlWritable reports whether this process may write the kernel's
// UDP buffer limits.
func sysctlWritable() bool {
	for _, name := range []string{"/proc/sys/net/core/rmem_max", "/proc/sys/net/core/wmem_max"} {
		f, err := os.OpenFile(name, os.O_WRONLY, 0)
		if err != nil {
			return false
		}
		f.Close()
	}
	return true
}

// checkSmallBuffers checks a process's lines about small UDP buffers: at
// most one, a warning with the fix where the process could apply it,
// information without the fix where it cannot.
func checkSmallBuffers(t *testing.T, name, log string, canFix bool) {
	t.Helper()
	lines := binSmallBuffersLines(log)
	switch {
	case len(lines) > 1:
		t.Errorf("%s logged small UDP buffers %d times, want once:\n%s", name, len(lines), strings.Join(lines, "\n"))
	case len(lines) == 0:
		t.Logf("%s: UDP buffers big enough here", name)
	case canFix && !(strings.Contains(lines[0], "level=WARN") && strings.Contains(lines[0], "sysctl -w net.core.rmem_max")):
		t.Errorf("%s can raise the limits; want a warning with the fix: %s", name, lines[0])
	case !canFix && !(strings.Contains(lines[0], "level=INFO") && !strings.Contains(lines[0], "sysctl -w")):
		t.Errorf("%s cannot raise the limits; want information without the fix: %s", name, lines[0])
	}
}

// TestBinaryShutdownMessages: over QUIC, an agent stopped with SIGINT says
// that it is shutting down and when it has stopped; the relay tells its
// clean close in words, not as "Application error 0x0"; so does the relay
// stopping with an agent connected. Each logs small UDP buffers at most
// once, at the level that fits what it can do about them.
func TestBinaryShutdownMessages(t *testing.T) {
	leak.Check(t)
	target := serve(t, echo)
	public := freePort(t)
	r, b := binStartRelay(t, t.TempDir(), freePort(t))
	a := binStartAgent(t, b, []string{binTunnel(public, target)}, "--transport", "quic", "--id", "first")
	binAwaitTunnels(a, 1, 15*time.Second)
	expectEcho(t, publicAddr(public))

	a.signal(syscall.SIGINT)
	if code := a.exitCode(10 * time.Second); code != 0 {
		t.Fatalf("agent exited with status %d after SIGINT", code)
	}
	log := a.stderr.String()
	down, stopped := strings.Index(log, `msg="agent shutting down"`), strings.Index(log, `msg="agent stopped"`)
	if down < 0 || stopped < down {
		t.Errorf("agent log after SIGINT: want \"agent shutting down\" and then \"agent stopped\":\n%s", log)
	}
	downRE := regexp.MustCompile(`msg="agent session down" .*agent=first .*reason=`)
	r.await(10*time.Second, "the relay's log of the agent's session end", func() bool {
		return downRE.MatchString(r.stderr.String())
	})

	a2 := binStartAgent(t, b, []string{binTunnel(public, target)}, "--transport", "quic", "--id", "second")
	binAwaitTunnels(a2, 1, 15*time.Second)
	r.signal(syscall.SIGTERM)
	if code := r.exitCode(15 * time.Second); code != 0 {
		t.Fatalf("relay exited with status %d after SIGTERM", code)
	}
	if !regexp.MustCompile(`msg="agent session down" .*agent=second .*reason=`).MatchString(r.stderr.String()) {
		t.Errorf("relay's log of ending the session at its shutdown:\n%s", r.stderr.String())
	}
	for _, p := range []*binProc{r, a, a2} {
		if strings.Contains(p.stderr.String(), "Application error") {
			t.Errorf("%s logged a QUIC error code instead of words:\n%s", p.name, p.stderr.String())
		}
	}
	canFix := sysctlWritable()
	checkSmallBuffers(t, "relay", r.stderr.String(), canFix)
	checkSmallBuffers(t, "agent", log, canFix)
	a2.signal(syscall.SIGTERM)
	a2.exitCode(10 * time.Second)
}

// TestBinarySmallBuffersNotRoot: a relay that cannot raise the kernel's
// UDP buffer limits (run here as an ordinary user) tells of small buffers
// as information, without a fix it could not apply.
func TestBinarySmallBuffersNotRoot(t *testing.T) {
	leak.Check(t)
	if os.Geteuid() != 0 {
		t.Skip("needs root to start the relay as another user")
	}
	// The relay as user nobody: its binary and data directory must be
	// within its reach.
	dir, err := os.MkdirTemp("", "homeport-nobody-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	bin := filepath.Join(dir, "relay")
	data, err := os.ReadFile(binPath(t, "relay"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, data, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	p := binStartWith(t, "relay", bin, func(c *exec.Cmd) {
		c.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	}, "--data-dir", filepath.Join(dir, "data"),
		"--listen", publicAddr(freePort(t)), "--bind-addr", "127.0.0.1", "--advertise", "127.0.0.1")
	p.await(15*time.Second, "the relay listening over QUIC", func() bool {
		return strings.Contains(p.stderr.String(), `transport=quic`)
	})
	if lines := binSmallBuffersLines(p.stderr.String()); len(lines) == 0 {
		t.Skip("UDP buffers big enough here")
	}
	checkSmallBuffers(t, "relay as nobody", p.stderr.String(), false)
}
