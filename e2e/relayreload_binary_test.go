//go:build unix

package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/homeport/homeport/relay"
)

// TestBinaryRelayReload: the real relay reloads its file when it changes:
// a 16 MiB transfer of an untouched agent goes on whole, the removed
// token's agent is cut and told why. A broken file (then SIGHUP) changes
// nothing: the log names each mistake, the status shows the refusal, the
// tunnels serve on, and `relay reload` says why in one line.
func TestBinaryRelayReload(t *testing.T) {
	t.Parallel() // see parallel in harness_test.go
	dir := t.TempDir()
	file := filepath.Join(dir, "relay.yaml")
	const (
		alice = "alice-secret-0123456789abcdef"
		bob   = "bob-secret-0123456789abcdef00"
	)
	port := freePort(t)
	write := func(body string) {
		t.Helper()
		tmp := file + ".tmp"
		if err := os.WriteFile(tmp, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, file); err != nil {
			t.Fatal(err)
		}
	}
	tokenYAML := func(secrets ...string) string {
		var b strings.Builder
		fmt.Fprintf(&b, "data_dir: %q\ntokens:\n", dir)
		for _, s := range secrets {
			fmt.Fprintf(&b, "  - name: %s\n    secret: %q\n", strings.SplitN(s, "-", 2)[0], s)
		}
		return b.String()
	}
	write(tokenYAML(alice, bob))
	r, banner := binStartRelay(t, dir, port, "--config", file)
	target := serve(t, echo)
	pa, pb := freePort(t), freePort(t)
	withToken := func(secret string) binBanner { b := banner; b.token = secret; return b }
	a := binStartAgent(t, withToken(alice), []string{binTunnel(pa, target)}, "--id", "a", "--data-dir", t.TempDir())
	b := binStartAgent(t, withToken(bob), []string{binTunnel(pb, target)}, "--id", "b", "--data-dir", t.TempDir())
	binAwaitTunnels(a, 1, 30*time.Second)
	binAwaitTunnels(b, 1, 30*time.Second)

	size := transferSize()
	x := startTransfer(t, publicAddr(pa), size)
	x.waitBack(t, size/2)
	write(tokenYAML(alice) + "visitors:\n  rate: 1000\n")
	r.await(30*time.Second, "the relay to reload its file", func() bool {
		return r.count(`msg="configuration reloaded"`) == 1
	})
	x.wait(t) // across the reload, intact
	if !strings.Contains(r.stderr.String(), `changed="token \"bob\" removed; agent_port and visitors limits changed"`) {
		t.Errorf("the reload's log line does not say what changed:\n%s", r.stderr.String())
	}
	if n := a.count(`msg="connected to relay"`); n != 1 {
		t.Errorf("the untouched agent connected %d times, want once", n)
	}
	b.await(20*time.Second, "the removed token's agent to be told", func() bool {
		return strings.Contains(b.stderr.String(), `token \"bob\" was removed from the relay's configuration`)
	})

	// A broken file, then SIGHUP: refused as a whole.
	write(tokenYAML(alice) + "visitors:\n  rate: -1\nallow_ports: \"70000\"\n")
	r.signal(syscall.SIGHUP)
	r.await(30*time.Second, "the refusal", func() bool {
		return r.count(`msg="configuration reload refused; the running configuration stays in force"`) >= 1
	})
	for _, want := range []string{"visitors.rate in " + file, "allow_ports in " + file} {
		if !strings.Contains(r.stderr.String(), want) {
			t.Errorf("the refusal does not name %q:\n%s", want, r.stderr.String())
		}
	}
	expectEcho(t, publicAddr(pa))
	code, out, errOut := binRun(t, 30*time.Second, "relay", "status", "--data-dir", dir, "--json")
	var st relay.Status
	if code != 0 || json.Unmarshal([]byte(out), &st) != nil {
		t.Fatalf("relay status: exit %d: %s %s", code, out, errOut)
	}
	if st.Config.Reloads != 1 || !strings.Contains(st.Config.LastErr, "visitors.rate") || st.Config.File != file {
		t.Fatalf("status config: %+v", st.Config)
	}
	code, out, errOut = binRun(t, 30*time.Second, "relay", "reload", "--data-dir", dir)
	if code != 1 || out != "" || strings.Count(strings.TrimSpace(errOut), "\n") != 0 || !strings.Contains(errOut, "configuration reload refused") || !strings.Contains(errOut, "visitors.rate") {
		t.Fatalf("relay reload of a broken file: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	// Fixed again: relay reload applies it.
	write(tokenYAML(alice, bob))
	code, out, _ = binRun(t, 30*time.Second, "relay", "reload", "--data-dir", dir)
	if code != 0 || out != "configuration reloaded\n" {
		t.Fatalf("relay reload: exit %d, %q", code, out)
	}
}
