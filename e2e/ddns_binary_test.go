//go:build unix

package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestBinaryDDNSOnce runs "agent ddns --once" as built: one round from
// the ddns section of an agent's file (the agent's other settings
// ignored, the relay source left out), the state printed, and the exit
// status telling whether every record is in sync.
func TestBinaryDDNSOnce(t *testing.T) {
	t.Parallel() // see parallel in harness_test.go
	f := newDDNSFake(t)
	echoSource(t) // skips without sh
	write := func(password string) string {
		body := fmt.Sprintf(`relay: "vps.example.com:7000"
token: "0123456789abcdef0123"
tunnels: ["3390:127.0.0.1:3389"]
ddns:
  names: [{name: %s, ipv6: false}]
  sources: [relay, "command:sh -c 'echo 203.0.113.5'"]
  provider: dyndns2
  dyndns2:
    server: %q
    username: %s
    password: %q
    nameserver: %q
`, ddnsName, f.url, ddnsUser, password, f.ns)
		path := filepath.Join(t.TempDir(), "agent.yaml")
		if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}

	code, stdout, stderr := binRun(t, time.Minute, "agent", "ddns", "--config", write(ddnsPass), "--once")
	if code != 0 || stdout != ddnsName+" A: ok, 203.0.113.5\n" {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}
	if !contains(stderr, "the relay source is left out", `msg="ddns: records updated"`) {
		t.Errorf("stderr:\n%s", stderr)
	}
	if n := f.numUpdates(); n != 1 {
		t.Errorf("%d updates, want 1", n)
	}

	// In sync already: nothing written, still success.
	code, stdout, _ = binRun(t, time.Minute, "agent", "ddns", "--config", write(ddnsPass), "--once")
	if code != 0 || f.numUpdates() != 1 {
		t.Errorf("second run: exit %d, %d updates\n%s", code, f.numUpdates(), stdout)
	}

	// Refused credentials: status 1, the reason printed, the password not.
	f.mu.Lock()
	delete(f.records, ddnsName+" A")
	f.mu.Unlock()
	code, stdout, stderr = binRun(t, time.Minute, "agent", "ddns", "--config", write("wrong-password-123"), "--once")
	if code != 1 || !contains(stdout, ddnsName+" A: FAILED: ", `"badauth"`, "provider refused the credentials") {
		t.Errorf("wrong password: exit %d\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}
	if strings.Contains(stdout+stderr, "wrong-password-123") {
		t.Errorf("the output shows the password")
	}

	// A configuration error names the key and the file.
	path := write("")
	code, _, stderr = binRun(t, time.Minute, "agent", "ddns", "--config", path, "--once")
	if code != 1 || !strings.Contains(stderr, "agent: ddns.dyndns2.password in "+path+": empty") {
		t.Errorf("empty password: exit %d\n%s", code, stderr)
	}
}
