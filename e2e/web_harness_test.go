package e2e

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/homeport/homeport/config"
	"github.com/homeport/homeport/internal/testenv"
	"github.com/homeport/homeport/relay"
)

// testCA is a certificate authority made by a test: it stands in for the
// ACME certificate manager behind relay.Certificates.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
	pem  []byte
}

func newTestCA(t *testing.T) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "homeport test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &testCA{cert: cert, key: key, pool: pool, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// leaf issues a certificate for name.
func (ca *testCA) leaf(t testing.TB, name string) tls.Certificate {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(mrand.Int64()), Subject: pkix.Name{CommonName: name}, DNSNames: []string{name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der, ca.cert.Raw}, PrivateKey: key}
}

// testCerts implements relay.Certificates with a test CA, asking the
// relay's ServesHost before issuing as the ACME manager does, and counts
// every call the relay makes.
type testCerts struct {
	t        testing.TB
	ca       *testCA
	srv      atomic.Pointer[relay.Server]
	calls    atomic.Int64 // TLSConfig and GetCertificate
	prepared chan string

	mu    sync.Mutex
	cache map[string]*tls.Certificate
}

func newTestCerts(t *testing.T) *testCerts {
	return &testCerts{t: t, ca: newTestCA(t), prepared: make(chan string, 64), cache: map[string]*tls.Certificate{}}
}

func (c *testCerts) TLSConfig() *tls.Config {
	c.calls.Add(1)
	return &tls.Config{
		NextProtos: []string{"h2", "http/1.1", "acme-tls/1"},
		GetCertificate: func(h *tls.ClientHelloInfo) (*tls.Certificate, error) {
			c.calls.Add(1)
			if err := c.srv.Load().ServesHost(h.ServerName); err != nil {
				return nil, err
			}
			c.mu.Lock()
			defer c.mu.Unlock()
			if cert := c.cache[h.ServerName]; cert != nil {
				return cert, nil
			}
			cert := c.ca.leaf(c.t, h.ServerName)
			c.cache[h.ServerName] = &cert
			return &cert, nil
		},
	}
}

// HTTPHandler answers the ACME HTTP-01 path, as the manager would.
func (c *testCerts) HTTPHandler(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if len(r.URL.Path) > 28 && r.URL.Path[:28] == "/.well-known/acme-challenge/" {
			io.WriteString(w, "challenge answered")
			return
		}
		next.ServeHTTP(w, r)
	})
}

func (c *testCerts) Prepare(name string) {
	select {
	case c.prepared <- name:
	default:
	}
}

// webRelay is an in-process relay with web ports.
type webRelay struct {
	*relayHandle
	httpAddr, httpsAddr string
}

// startWebRelay runs a relay with http_addr and https_addr on loopback and
// certs (nil: no TLS termination). Its token may serve the names of
// example.com, and those under home.example.com; mutate adjusts the rest.
func startWebRelay(t *testing.T, certs *testCerts, mutate func(*config.Relay)) *webRelay {
	t.Helper()
	cfg := relayConfig(t)
	cfg.HTTPAddr, cfg.HTTPSAddr = "127.0.0.1:0", "127.0.0.1:0"
	cfg.Tokens[0].Hosts = []string{"*.example.com"}
	cfg.PortReserve = time.Minute
	if mutate != nil {
		mutate(&cfg)
	}
	id, err := relay.LoadIdentity(cfg)
	if err != nil {
		t.Fatal(err)
	}
	logs := &logBuf{}
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	srv, err := relay.New(cfg, id, log)
	if err != nil {
		t.Fatal(err)
	}
	if certs != nil {
		certs.srv.Store(srv)
		srv.SetCertificates(certs)
	}
	addr, err := srv.Listen()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	h := &relayHandle{t: t, cfg: cfg, id: id, addr: addr.String(), srv: srv, logs: logs, cancel: cancel, done: make(chan error, 1), transport: config.TransportTCP}
	go func() { h.done <- srv.Serve(ctx) }()
	t.Cleanup(func() { h.stop() })
	ha, hsa := srv.WebAddrs()
	return &webRelay{relayHandle: h, httpAddr: ha.String(), httpsAddr: hsa.String()}
}

func webTunnel(name, proto, host, target string) config.Tunnel {
	return config.Tunnel{Name: name, Protocol: proto, Host: host, Target: target}
}

// client returns an HTTP client that reaches every name through the
// relay's web ports: plain HTTP on http_addr, TLS (verified by the test
// CA, h2 unless http1) on https_addr. It follows no redirect.
func (r *webRelay) client(t *testing.T, ca *testCA, http1 bool) *http.Client {
	d := &net.Dialer{Timeout: 10 * time.Second}
	tr := &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return d.DialContext(ctx, "tcp", r.httpAddr)
		},
		DialTLSContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			host, _, _ := net.SplitHostPort(addr)
			protos := []string{"h2", "http/1.1"}
			if http1 {
				protos = []string{"http/1.1"}
			}
			var roots *x509.CertPool
			if ca != nil {
				roots = ca.pool
			}
			td := &tls.Dialer{NetDialer: d, Config: &tls.Config{ServerName: host, RootCAs: roots, NextProtos: protos}}
			return td.DialContext(ctx, "tcp", r.httpsAddr)
		},
		ForceAttemptHTTP2:   !http1,
		DisableCompression:  true,
		MaxIdleConnsPerHost: 4,
	}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: testenv.Deadline(2 * time.Minute),
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

// webTarget is a home web app: it echoes what it saw of each request as
// JSON, hashes uploads, streams downloads and echoes WebSocket messages.
type webTarget struct {
	srv      *httptest.Server
	who      string
	addr     string
	requests atomic.Int64
}

type seenRequest struct {
	Who    string              `json:"who"`
	Host   string              `json:"host"`
	Header map[string][]string `json:"header"`
	Remote string              `json:"remote"`
}

func startWebTarget(t *testing.T, who string) *webTarget {
	wt := &webTarget{who: who}
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		wt.requests.Add(1)
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(seenRequest{Who: who, Host: r.Host, Header: r.Header, Remote: r.RemoteAddr})
	})
	mux.HandleFunc("/upload", func(w http.ResponseWriter, r *http.Request) {
		wt.requests.Add(1)
		h := sha256.New()
		n, err := io.Copy(h, r.Body)
		if err != nil {
			http.Error(w, err.Error(), 500)
			return
		}
		fmt.Fprintf(w, "%d %x", n, h.Sum(nil))
	})
	mux.HandleFunc("/download", func(w http.ResponseWriter, r *http.Request) {
		wt.requests.Add(1)
		n, _ := strconv.ParseInt(r.URL.Query().Get("n"), 10, 64)
		w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
		io.Copy(w, io.LimitReader(newPattern(7), n))
	})
	mux.HandleFunc("/ws", func(w http.ResponseWriter, r *http.Request) {
		wt.requests.Add(1)
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer c.CloseNow()
		for {
			typ, msg, err := c.Read(r.Context())
			if err != nil {
				return
			}
			if err := c.Write(r.Context(), typ, append([]byte(who+": "), msg...)); err != nil {
				return
			}
		}
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	wt.addr, wt.srv = srv.Listener.Addr().String(), srv
	return wt
}

// pattern is a deterministic stream of bytes, cheap to make.
type pattern struct{ r *mrand.ChaCha8 }

func newPattern(seed byte) *pattern { return &pattern{r: mrand.NewChaCha8([32]byte{seed})} }

func (p *pattern) Read(b []byte) (int, error) { return p.r.Read(b) }

func patternSum(seed byte, n int64) string {
	h := sha256.New()
	io.Copy(h, io.LimitReader(newPattern(seed), n))
	return hex.EncodeToString(h.Sum(nil))
}

// get fetches url and returns its status and body.
func get(t *testing.T, c *http.Client, url string, hdr http.Header) (int, string, *http.Response) {
	t.Helper()
	req, err := http.NewRequest("GET", url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: body: %v", url, err)
	}
	return resp.StatusCode, string(b), resp
}

func seen(t *testing.T, body string) seenRequest {
	t.Helper()
	var s seenRequest
	if err := json.Unmarshal([]byte(body), &s); err != nil {
		t.Fatalf("target's answer %q: %v", body, err)
	}
	return s
}

// writeFileT writes a file in a test directory and returns its path.
func writeFileT(t *testing.T, name string, b []byte) string {
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// hash is a sha256 in hex.
type hash struct {
	h interface {
		io.Writer
		Sum([]byte) []byte
	}
}

func newHash() *hash                        { return &hash{h: sha256.New()} }
func (h *hash) Write(p []byte) (int, error) { return h.h.Write(p) }
func (h *hash) sum() string                 { return hex.EncodeToString(h.h.Sum(nil)) }

// runCurl runs curl (quiet, failing on HTTP errors) and returns its output.
func runCurl(t *testing.T, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testenv.Deadline(time.Minute))
	defer cancel()
	out, err := exec.CommandContext(ctx, "curl", append([]string{"-sS", "--max-time", "60"}, args...)...).CombinedOutput()
	return string(out), err
}
