//go:build unix

package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/homeport/homeport/agent"
)

// TestBinaryAgentWake: "agent wake NAME" wakes a tunnel's target through
// the running agent, whose status then shows the wake; with no agent
// running it sends the packet from the configuration and says so; an
// unknown tunnel is a clear error.
func TestBinaryAgentWake(t *testing.T) {
	t.Parallel() // see parallel in harness_test.go
	dir := t.TempDir()
	_, banner := binStartRelay(t, dir, freePort(t))
	s := startSleeper(t, wakeMAC, 0)
	agentDir := t.TempDir()
	conf := filepath.Join(t.TempDir(), "agent.yaml")
	if err := os.WriteFile(conf, fmt.Appendf(nil, `relay: %q
token: %q
fingerprint: %q
id: home-pc
data_dir: %q
tunnels:
  - name: pc
    remote_port: %d
    target: %q
    wake: {mac: %q, broadcast: 127.0.0.1, port: %d}
`, banner.relay, banner.token, banner.fingerprint, agentDir, freePort(t), s.target, wakeMAC.String(), s.wakeAt), 0o600); err != nil {
		t.Fatal(err)
	}
	a := binStart(t, "agent", "--config", conf)
	binAwaitTunnels(a, 1, 30*time.Second)

	code, out, errOut := binRun(t, 30*time.Second, "agent", "wake", "pc", "--config", conf)
	if code != 0 || !contains(out, `woke tunnel "pc" through the running agent`, wakeMAC.String(), "udp 127.0.0.1:") {
		t.Fatalf("agent wake pc: exit %d:\n%s%s", code, out, errOut)
	}
	waitFor(t, 10*time.Second, "the magic packet", func() bool { return s.mine.Load() == 1 })
	a.await(10*time.Second, "the agent's log of the wake", func() bool {
		return contains(a.stderr.String(), "waking target by hand (Wake-on-LAN)", "tunnel=pc")
	})

	var st agent.Status
	code, out, errOut = binRun(t, 30*time.Second, "agent", "status", "--config", conf, "--json")
	if code != 0 || json.Unmarshal([]byte(out), &st) != nil {
		t.Fatalf("agent status --json: exit %d:\n%s%s", code, out, errOut)
	}
	if len(st.Tunnels) != 1 || st.Tunnels[0].WakeMAC != wakeMAC.String() || st.Tunnels[0].LastWake == nil ||
		st.Tunnels[0].LastWake.Result != agent.WakeSent {
		t.Fatalf("agent status: tunnels %+v", st.Tunnels)
	}
	code, out, errOut = binRun(t, 30*time.Second, "agent", "status", "--config", conf)
	if code != 0 || !contains(out, "WAKE-ON-LAN", wakeMAC.String(), "sent", "udp 127.0.0.1:") {
		t.Fatalf("agent status: exit %d:\n%s%s", code, out, errOut)
	}

	code, out, errOut = binRun(t, 30*time.Second, "agent", "wake", "nas", "--config", conf)
	if code == 0 || !contains(errOut, `tunnel "nas": no such tunnel`) {
		t.Fatalf("agent wake nas: exit %d:\n%s%s", code, out, errOut)
	}

	a.signal(syscall.SIGTERM)
	if code := a.exitCode(30 * time.Second); code != 0 {
		t.Fatalf("agent exit %d", code)
	}
	code, out, errOut = binRun(t, 30*time.Second, "agent", "wake", "pc", "--config", conf)
	if code != 0 || !contains(out, "no agent runs", "sent the magic packet for "+wakeMAC.String()+" from the configuration directly") {
		t.Fatalf("agent wake pc without an agent: exit %d:\n%s%s", code, out, errOut)
	}
	waitFor(t, 10*time.Second, "the second magic packet", func() bool { return s.mine.Load() == 2 })
}
