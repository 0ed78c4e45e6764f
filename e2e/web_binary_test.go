//go:build unix

package e2e

import (
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/homeport/homeport/internal/leak"
)

// TestBinaryWebTunnel: the real relay with http_addr and a domain, and the
// real agent with a web tunnel that names a bare label: curl reaches the
// home web app at LABEL.DOMAIN on the relay's HTTP port, the target sees
// the visitor in X-Forwarded-For, and an unknown name gets 404.
func TestBinaryWebTunnel(t *testing.T) {
	leak.Check(t)
	target := startWebTarget(t, "nas")
	httpAddr := publicAddr(freePort(t))
	dataDir := t.TempDir()
	r, b := binStartRelay(t, dataDir, freePort(t), "--http-addr", httpAddr, "--domain", "example.com")
	r.await(15*time.Second, "the relay's web port", func() bool {
		return strings.Contains(r.stderr.String(), "relay serving web tunnels")
	})
	a := binStartAgent(t, b, []string{"web=http:nas:" + target.addr})
	binAwaitTunnels(a, 1, 20*time.Second)
	if !strings.Contains(a.stderr.String(), "host=nas.example.com") {
		t.Errorf("the agent's log does not name the host served:\n%s", a.stderr.String())
	}
	_, port, _ := net.SplitHostPort(httpAddr)
	out, err := runCurl(t, "--resolve", "nas.example.com:"+port+":127.0.0.1", "-H", "X-Forwarded-For: 203.0.113.66",
		"-w", "\n%{http_code}", "http://nas.example.com:"+port+"/")
	if err != nil || !strings.HasSuffix(out, "\n200") || !strings.Contains(out, `"X-Forwarded-For":["127.0.0.1"]`) {
		t.Fatalf("curl: %v\n%s", err, out)
	}
	out, err = runCurl(t, "--resolve", "other.example.com:"+port+":127.0.0.1", "-w", "\n%{http_code}", "http://other.example.com:"+port+"/")
	if err != nil || !strings.HasSuffix(out, "\n404") {
		t.Errorf("unknown name: %v\n%s", err, out)
	}
	for _, p := range []*binProc{a, r} {
		p.signal(syscall.SIGTERM)
		if code := p.exitCode(15 * time.Second); code != 0 {
			t.Errorf("%s exited with %d", p.name, code)
		}
	}
}
