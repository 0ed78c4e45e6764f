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

	"github.com/homeport/homeport/agent"
)

// TestBinaryAgentReload: the real agent reloads its configuration file
// when it changes, and on SIGHUP. A tunnel added while 16 MiB go through
// another arrives without disturbing the transfer (the agent connects
// once); a broken file is refused with its mistakes named in the log and
// in `agent status`, and the running tunnels go on; `agent reload` says
// what happened in one line, and exits with 1 on a refusal.
func TestBinaryAgentReload(t *testing.T) {
	t.Parallel() // see parallel in harness_test.go
	_, banner := binStartRelay(t, t.TempDir(), freePort(t))
	target := serve(t, echo)
	bulk, web := freePort(t), freePort(t)
	dir := t.TempDir()
	file := filepath.Join(dir, "agent.yaml")
	write := func(body string) {
		t.Helper()
		// As an editor saves: a new file renamed over the old one.
		tmp := file + ".new"
		if err := os.WriteFile(tmp, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, file); err != nil {
			t.Fatal(err)
		}
	}
	tunnelYAML := func(name string, port uint16, target string) string {
		return fmt.Sprintf("  - {name: %s, remote_port: %d, target: %q}\n", name, port, target)
	}
	write("data_dir: " + dir + "\ntunnels:\n" + tunnelYAML("bulk", bulk, target))
	a := binStartAgent(t, banner, nil, "--config", file)
	binAwaitTunnels(a, 1, 30*time.Second)

	size := transferSize()
	x := startTransfer(t, publicAddr(bulk), size)
	x.waitBack(t, size/8)
	write("data_dir: " + dir + "\ntunnels:\n" + tunnelYAML("bulk", bulk, target) + tunnelYAML("web", web, target))
	a.await(30*time.Second, "the reload", func() bool { return a.count(`msg="configuration reloaded"`) == 1 })
	binAwaitTunnels(a, 2, 30*time.Second)
	if x.back.Load() == size {
		t.Fatal("the transfer ended before the reload: nothing shown")
	}
	if !strings.Contains(a.stderr.String(), `trigger="file changed" tunnels_added=[web]`) {
		t.Fatalf("reload not logged with what changed:\n%s", a.stderr.String())
	}
	expectEcho(t, publicAddr(web))
	x.wait(t)
	if n := a.count(`msg="connected to relay"`); n != 1 {
		t.Fatalf("agent connected %d times, want once", n)
	}

	// A broken file: two tunnels with one name, and a target without a
	// port. Refused when the file changes, and again on SIGHUP.
	write("data_dir: " + dir + "\ntunnels:\n" + tunnelYAML("bulk", bulk, target) + tunnelYAML("bulk", freePort(t), target) + tunnelYAML("other", freePort(t), "nohost"))
	const refused = `msg="configuration reload refused; the running configuration stays in force"`
	a.await(30*time.Second, "the refusal of the changed file", func() bool { return a.count(refused) >= 2 })
	a.signal(syscall.SIGHUP)
	a.await(30*time.Second, "the refusal on SIGHUP", func() bool { return a.count("trigger=SIGHUP") >= 2 })
	log := a.stderr.String()
	for _, want := range []string{`two tunnels are named \"bulk\"`, `target \"nohost\"`} {
		if !strings.Contains(log, want) {
			t.Errorf("log does not name the mistake %s:\n%s", want, log)
		}
	}
	code, out, errOut := binRun(t, 30*time.Second, "agent", "status", "--json", "--data-dir", dir)
	if code != 0 {
		t.Fatalf("agent status: exit %d: %s", code, errOut)
	}
	var st agent.Status
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("agent status --json: %v\n%s", err, out)
	}
	if !strings.Contains(st.Config.LastErr, `two tunnels are named "bulk"`) || st.Config.LastFail.IsZero() || st.Config.Reloads != 1 || st.Config.File != file {
		t.Fatalf("status config: %+v", st.Config)
	}
	if len(st.Tunnels) != 2 || st.Tunnels[0].State != "up" || st.Tunnels[1].State != "up" {
		t.Fatalf("status tunnels: %+v", st.Tunnels)
	}
	expectEcho(t, publicAddr(bulk))
	expectEcho(t, publicAddr(web))

	// agent reload: refused, in one line, with status 1.
	code, out, errOut = binRun(t, 30*time.Second, "agent", "reload", "--data-dir", dir)
	if code != 1 || out != "" || strings.Count(errOut, "\n") != 1 ||
		!strings.HasPrefix(errOut, "agent: configuration reload refused; the running configuration stays in force: ") || !strings.Contains(errOut, `target "nohost"`) {
		t.Fatalf("agent reload of a broken file: exit %d\nstdout: %q\nstderr: %q", code, out, errOut)
	}

	// Fixed, without web: its port closes; agent reload then finds
	// nothing more to change.
	write("data_dir: " + dir + "\ntunnels:\n" + tunnelYAML("bulk", bulk, target))
	a.await(30*time.Second, "the reload of the fixed file", func() bool { return a.count(`msg="configuration reloaded"`) == 2 })
	a.await(30*time.Second, "web's port closed", func() bool { return binRefused(publicAddr(web)) })
	expectEcho(t, publicAddr(bulk))
	code, out, errOut = binRun(t, 30*time.Second, "agent", "reload", "--data-dir", dir)
	if code != 0 || out != "configuration reloaded: nothing changed\n" {
		t.Fatalf("agent reload: exit %d\nstdout: %q\nstderr: %q", code, out, errOut)
	}
	if n := a.count(`msg="connected to relay"`); n != 1 {
		t.Fatalf("agent connected %d times, want once", n)
	}
}
