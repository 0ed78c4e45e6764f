package e2e

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/homeport/homeport/internal/leak"
	"github.com/homeport/homeport/internal/testenv"
)

// startNginxTLS runs nginx, as this test's own process, on a loopback
// port with its own certificate for name (made here, by a CA the relay
// never sees), serving index.html. It returns the address and the
// certificate.
func startNginxTLS(t *testing.T, name, index string) (addr string, cert *x509.Certificate, ca *testCA) {
	t.Helper()
	nginx, err := exec.LookPath("nginx")
	if err != nil {
		t.Skip("nginx is not installed (Debian package nginx)")
	}
	ca = newTestCA(t)
	leaf := ca.leaf(t, name)
	cert, _ = x509.ParseCertificate(leaf.Certificate[0])
	keyDER, err := x509.MarshalPKCS8PrivateKey(leaf.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for _, d := range []string{"tmp", "www"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	var chain bytes.Buffer
	for _, der := range leaf.Certificate {
		pem.Encode(&chain, &pem.Block{Type: "CERTIFICATE", Bytes: der})
	}
	files := map[string][]byte{
		"cert.pem":       chain.Bytes(),
		"key.pem":        pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
		"www/index.html": []byte(index),
	}
	for n, b := range files {
		if err := os.WriteFile(filepath.Join(dir, n), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	addr = publicAddr(freePort(t))
	user := ""
	if os.Geteuid() == 0 {
		user = "user root;"
	}
	conf := fmt.Sprintf(`%[4]s
worker_processes 1;
pid %[1]s/nginx.pid;
error_log stderr warn;
events { worker_connections 256; }
http {
	access_log off;
	client_body_temp_path %[1]s/tmp/body;
	proxy_temp_path %[1]s/tmp/proxy;
	fastcgi_temp_path %[1]s/tmp/fastcgi;
	uwsgi_temp_path %[1]s/tmp/uwsgi;
	scgi_temp_path %[1]s/tmp/scgi;
	server {
		listen %[2]s ssl;
		server_name %[3]s;
		ssl_certificate %[1]s/cert.pem;
		ssl_certificate_key %[1]s/key.pem;
		root %[1]s/www;
	}
}
`, dir, addr, name, user)
	path := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	var out logBuf
	cmd := exec.Command(nginx, "-e", "stderr", "-p", dir, "-c", path, "-g", "daemon off;")
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		cmd.Process.Signal(os.Interrupt) // nginx: fast shutdown
		select {
		case <-exited:
		case <-time.After(testenv.Deadline(10 * time.Second)):
			cmd.Process.Kill()
			<-exited
		}
	})
	waitFor(t, 10*time.Second, "nginx to listen", func() bool {
		select {
		case <-exited:
			t.Fatalf("nginx exited:\n%s", out.String())
		default:
		}
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	return addr, cert, ca
}

// TestWebPassthroughNginx: an https tunnel routes TLS by its server name
// to nginx at home and passes it through: the visitor sees nginx's own
// certificate, never the relay's, and Certificates is not asked.
func TestWebPassthroughNginx(t *testing.T) {
	leak.Check(t)
	nginxAddr, nginxCert, nginxCA := startNginxTLS(t, "nas.example.com", "hello from nginx at home\n")
	certs := newTestCerts(t)
	r := startWebRelay(t, certs, nil)
	a := startAgent(t, agentConfig(r.relayHandle, webTunnel("nas", "https", "nas.example.com", nginxAddr)))
	a.waitSession(10 * time.Second)

	// Verified by nginx's CA, which the relay never saw, and the leaf
	// must be nginx's own.
	tr := &http.Transport{
		DialTLSContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			d := &tls.Dialer{Config: &tls.Config{ServerName: "nas.example.com", RootCAs: nginxCA.pool,
				VerifyConnection: func(cs tls.ConnectionState) error {
					if !cs.PeerCertificates[0].Equal(nginxCert) {
						return fmt.Errorf("certificate %q is not nginx's", cs.PeerCertificates[0].Subject)
					}
					return nil
				}}}
			return d.DialContext(ctx, "tcp", r.httpsAddr)
		},
	}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, Timeout: testenv.Deadline(time.Minute)}
	resp, err := c.Get("https://nas.example.com/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != "hello from nginx at home\n" || !strings.HasPrefix(resp.Header.Get("Server"), "nginx") {
		t.Fatalf("%d %q (server %q)", resp.StatusCode, body, resp.Header.Get("Server"))
	}
	if n := certs.calls.Load(); n != 0 {
		t.Errorf("%d calls to Certificates for a passed-through name", n)
	}
	// curl, trusting nginx's CA only.
	_, port, _ := net.SplitHostPort(r.httpsAddr)
	out, err := runCurl(t, "--cacert", writeFileT(t, "nginx-ca.pem", nginxCA.pem), "-w", "\n%{http_code}", "--resolve", "nas.example.com:"+port+":127.0.0.1", "https://nas.example.com:"+port+"/")
	if err != nil || out != "hello from nginx at home\n\n200" {
		t.Errorf("curl: %v\n%s", err, out)
	}
}
