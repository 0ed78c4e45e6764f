//go:build unix

package e2e

import (
	"crypto/sha256"
	"io"
	"math/rand/v2"
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

// TestBinaryVisitor: the real relay, the real home agent with a private
// tunnel, and the real "agent visit": the visitor reads its key from
// a file, says when the tunnel is ready, carries a transfer with the
// half-close both ways, and stops cleanly on SIGTERM; a wrong key makes it
// exit at once with status 1 and the fix.
func TestBinaryVisitor(t *testing.T) {
	leak.Check(t)
	dir := t.TempDir()
	cfgFile := filepath.Join(dir, "relay.yaml")
	if err := os.WriteFile(cfgFile, []byte(`tokens:
  - name: default
    secret: "`+testToken+`"
visitor_keys:
  - name: laptop
    secret: "`+laptopKey+`"
`), 0o600); err != nil {
		t.Fatal(err)
	}
	r, port, fp := binStartRelayConfig(t, cfgFile, filepath.Join(dir, "data"))
	target := serve(t, echo)
	home := binStart(t, "agent", "--relay", publicAddr(port), "--token", testToken, "--fingerprint", fp,
		"--tunnel", "rdp=private:"+target, "--access-log")
	binAwaitTunnels(home, 1, 15*time.Second)
	keyFile := filepath.Join(dir, "visitor.key")
	if err := os.WriteFile(keyFile, []byte(laptopKey+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	listen := freeListen(t)
	v := binStart(t, "agent", "visit", "rdp", "--relay", publicAddr(port), "--fingerprint", fp,
		"--key-file", keyFile, "--listen", listen, "--id", "laptop")
	v.await(20*time.Second, "the tunnel ready", func() bool {
		return strings.Contains(v.stderr.String(), "tunnel rdp ready: connect to "+listen)
	})
	size := int64(8 << 20)
	c := dial(t, listen)
	sent := make(chan [32]byte, 1)
	go func() {
		h := sha256.New()
		if _, err := io.Copy(c, io.TeeReader(io.LimitReader(rand.NewChaCha8([32]byte{3}), size), h)); err != nil {
			t.Error(err)
		}
		c.CloseWrite()
		sent <- [32]byte(h.Sum(nil))
	}()
	h := sha256.New()
	if n, err := io.Copy(h, c); err != nil || n != size || [32]byte(h.Sum(nil)) != <-sent {
		t.Fatalf("got %d of %d bytes back (%v), or a different sha256", n, size, err)
	}
	c.Close()
	home.await(10*time.Second, "the home agent's access log, via laptop", func() bool {
		return contains(home.stderr.String(), "visitor connection", "tunnel=rdp", "via=laptop")
	})
	v.signal(syscall.SIGTERM)
	if code := v.exitCode(15 * time.Second); code != 0 {
		t.Fatalf("visitor exited with %d after SIGTERM, want 0", code)
	}
	if !strings.Contains(v.stderr.String(), "visitor stopped") || strings.Contains(v.stderr.String(), laptopKey) {
		t.Errorf("visitor log: no stop line, or the key in it")
	}

	// A wrong key, given by the environment.
	w := binStartWith(t, "agent", binPath(t, "agent"), func(cmd *exec.Cmd) {
		cmd.Env = append(cmd.Env, "HOMEPORT_KEY=not-the-visitor-key-0123456789")
	}, "visit", "rdp", "--relay", publicAddr(port), "--fingerprint", fp, "--listen", freeListen(t))
	if code := w.exitCode(15 * time.Second); code != 1 {
		t.Fatalf("visitor with a wrong key exited with %d, want 1", code)
	}
	lines := strings.Split(strings.TrimSpace(w.stderr.String()), "\n")
	if last := lines[len(lines)-1]; !strings.HasPrefix(last, "agent: ") || !contains(last, "relay refused this visitor", "the visitor key is wrong") {
		t.Errorf("last word: %q", last)
	}
	home.signal(syscall.SIGTERM)
	home.exitCode(15 * time.Second)
	r.signal(syscall.SIGTERM)
	r.exitCode(15 * time.Second)
}

// binStartRelayConfig starts the real relay with the configuration file
// cfgFile on a free loopback port, and returns it, its port and the
// fingerprint it logs once it listens.
func binStartRelayConfig(t *testing.T, cfgFile, dataDir string) (r *binProc, port uint16, fp string) {
	t.Helper()
	port = freePort(t)
	r = binStart(t, "relay", "--config", cfgFile, "--data-dir", dataDir, "--listen", publicAddr(port), "--bind-addr", "127.0.0.1")
	fpRE := regexp.MustCompile(`relay listening for agents.*fingerprint=(sha256:[0-9a-f]{64})`)
	r.await(15*time.Second, "the relay listening", func() bool {
		m := fpRE.FindStringSubmatch(r.stderr.String())
		if m != nil {
			fp = m[1]
		}
		return m != nil
	})
	return r, port, fp
}
