//go:build unix

package e2e

import (
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/homeport/homeport/internal/leak"
	"github.com/homeport/homeport/internal/pebbletest"
	"github.com/homeport/homeport/internal/testenv"
)

// TestBinaryWebACME: the real relay with http_addr, https_addr, a domain
// and an acme section pointing at a real ACME server (pebble), and the
// real agent with a web tunnel: the relay gets a certificate for the
// name the agent registered (pebble validates it on the relay's own
// ports), curl verifies it against pebble's root over HTTP/2 and
// HTTP/1.1, plain HTTP is redirected to HTTPS, relay status lists the
// certificate, and a name nobody registered gets no certificate.
func TestBinaryWebACME(t *testing.T) {
	leak.Check(t)
	if _, err := exec.LookPath("curl"); err != nil {
		t.Skip("no curl:", err)
	}
	httpPort, httpsPort := freePort(t), freePort(t)
	ca, err := pebbletest.Start(t.Context(), t.TempDir(), pebbletest.Options{HTTPPort: int(httpPort), TLSPort: int(httpsPort),
		WaitFor: testenv.Deadline(30 * time.Second)})
	if err != nil {
		var missing *exec.Error
		if errors.As(err, &missing) {
			t.Skip("no go command to build pebble:", err)
		}
		t.Fatal(err)
	}
	t.Cleanup(ca.Close)
	caRoot, err := ca.RootsPEM(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}

	target := startWebTarget(t, "nas")
	dataDir := t.TempDir()
	r, b := binStartRelay(t, dataDir, freePort(t),
		"--http-addr", publicAddr(httpPort), "--https-addr", publicAddr(httpsPort), "--domain", "example.test",
		"--acme-ca", ca.Directory, "--acme-ca-root", caRoot, "--acme-email", "ops@example.test")
	a := binStartAgent(t, b, []string{"web=http:nas:" + target.addr})
	binAwaitTunnels(a, 1, 20*time.Second)

	resolve := func(name string, port uint16) []string {
		return []string{"--resolve", fmt.Sprintf("%s:%d:127.0.0.1", name, port)}
	}
	url := fmt.Sprintf("https://nas.example.test:%d/", httpsPort)
	// The relay asks for the certificate when the agent registers (a
	// handshake before it is there fails at once).
	r.await(60*time.Second, "the certificate from pebble", func() bool {
		return strings.Contains(r.stderr.String(), `msg="acme: certificate ready" part=acme name=nas.example.test`)
	})
	out, err := runCurl(t, append(resolve("nas.example.test", httpsPort), "--cacert", ca.IssuerPEM, "--http2", "-w", "\n%{http_code} %{http_version}", url)...)
	if err != nil || !strings.HasSuffix(out, "\n200 2") || !strings.Contains(out, `"who":"nas"`) && !strings.Contains(out, `"Who":"nas"`) {
		t.Errorf("HTTP/2 through the relay's certificate: %v\n%s", err, out)
	}
	out, err = runCurl(t, append(resolve("nas.example.test", httpsPort), "--cacert", ca.IssuerPEM, "--http1.1", "-w", "\n%{http_code} %{http_version}", url)...)
	if err != nil || !strings.HasSuffix(out, "\n200 1.1") {
		t.Errorf("HTTP/1.1: %v\n%s", err, out)
	}
	// Without pebble's root, curl refuses the certificate: it is pebble's.
	if out, err := runCurl(t, append(resolve("nas.example.test", httpsPort), url)...); err == nil {
		t.Errorf("curl trusted the certificate without pebble's root:\n%s", out)
	}
	// Plain HTTP goes to HTTPS.
	out, err = runCurl(t, append(resolve("nas.example.test", httpPort), "-w", "\n%{http_code} %{redirect_url}", fmt.Sprintf("http://nas.example.test:%d/x", httpPort))...)
	if err != nil || !strings.Contains(out, "\n308 https://nas.example.test") {
		t.Errorf("plain HTTP: %v\n%s", err, out)
	}
	// A name nobody registered: no certificate, the handshake fails.
	if out, err := runCurl(t, append(resolve("other.example.test", httpsPort), "--cacert", ca.IssuerPEM, fmt.Sprintf("https://other.example.test:%d/", httpsPort))...); err == nil {
		t.Errorf("an unregistered name got through:\n%s", out)
	}

	code, stdout, stderr := binRun(t, 30*time.Second, "relay", "status", "--data-dir", dataDir, "--json")
	if code != 0 {
		t.Fatalf("relay status: exit %d: %s", code, stderr)
	}
	var st struct {
		Certificates []struct {
			Name, State string
			NotAfter    time.Time `json:"not_after"`
		} `json:"certificates"`
	}
	if err := json.Unmarshal([]byte(stdout), &st); err != nil {
		t.Fatalf("relay status --json: %v\n%s", err, stdout)
	}
	if len(st.Certificates) != 1 || st.Certificates[0].Name != "nas.example.test" || st.Certificates[0].State != "valid" ||
		time.Until(st.Certificates[0].NotAfter) < 24*time.Hour {
		t.Errorf("relay status certificates: %+v", st.Certificates)
	}
	code, stdout, _ = binRun(t, 30*time.Second, "relay", "status", "--data-dir", dataDir)
	if code != 0 || !strings.Contains(stdout, "CERTIFICATES") || !strings.Contains(stdout, "nas.example.test") {
		t.Errorf("relay status text:\n%s", stdout)
	}
	for _, p := range []*binProc{a, r} {
		p.signal(syscall.SIGTERM)
		if code := p.exitCode(15 * time.Second); code != 0 {
			t.Errorf("%s exited with %d", p.name, code)
		}
	}
}
