package acme

// The tests run a real ACME server: pebble, Let's Encrypt's test CA, built
// from the module cache (it is a tool dependency in go.mod) once per test
// binary and run as a process on loopback. Its validator really connects
// to the tests' listeners (httpPort, tlsPort) at the address a small DNS
// server here gives every name: 127.0.0.1. In front of its ACME endpoint
// sits a counting reverse proxy, which can also play a CA that is down.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/homeport/homeport/internal/testenv"
)

// shortProfile is pebble's certificate profile with a short validity, for
// the renewal test; every other order asks for "default" (pebble picks a
// profile at random for an order that names none).
const (
	shortProfile  = "short"
	shortValidity = 20 // seconds
)

// testCA is the test binary's running pebble and what the tests need of it.
type testCA struct {
	dir      string         // ACME directory URL, through the proxy
	roots    *x509.CertPool // trust for the proxy's (pebble's) HTTPS
	issuer   *x509.CertPool // pebble's issuing root: trust for issued certificates
	issuerPE string         // the same, PEM file for curl
	httpPort int            // where pebble validates HTTP-01
	tlsPort  int            // where pebble validates TLS-ALPN-01
	proxy    *httptest.Server

	down      atomic.Bool  // the proxy drops every request
	orders    atomic.Int64 // new-order requests that reached pebble
	requests  atomic.Int64 // requests of any kind that reached the proxy
	newOrder  string       // path of pebble's newOrder endpoint
	pebbleLog *lockedBuffer
}

var (
	pebble    *testCA
	pebbleErr error
)

func TestMain(m *testing.M) {
	flag.Parse()
	if f := flag.Lookup("test.list"); f != nil && f.Value.String() != "" {
		os.Exit(m.Run()) // listing tests needs no CA
	}
	code := func() int {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		tmp, err := os.MkdirTemp("", "acme-test-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(tmp)
		var stop func()
		pebble, stop, pebbleErr = startPebble(ctx, tmp)
		if stop != nil {
			defer stop()
		}
		if pebbleErr == nil {
			pebbleErr = warmUp(ctx, tmp)
		}
		return m.Run()
	}()
	os.Exit(code)
}

// needCA returns the running CA or fails the test with why there is none.
func needCA(t *testing.T) *testCA {
	t.Helper()
	if pebbleErr != nil {
		var missing *exec.Error
		if errors.As(pebbleErr, &missing) {
			t.Skipf("no go command to build pebble: %v", pebbleErr)
		}
		t.Fatalf("pebble: %v", pebbleErr)
	}
	return pebble
}

// startPebble builds and starts pebble, its DNS server and the counting
// proxy, and waits until the directory answers.
func startPebble(ctx context.Context, tmp string) (*testCA, func(), error) {
	gocmd, err := exec.LookPath("go")
	if err != nil {
		return nil, nil, err
	}
	start := time.Now()
	bin := filepath.Join(tmp, "pebble")
	if out, err := exec.CommandContext(ctx, gocmd, "build", "-o", bin, "github.com/letsencrypt/pebble/v2/cmd/pebble").CombinedOutput(); err != nil {
		return nil, nil, fmt.Errorf("go build pebble: %v\n%s", err, out)
	}
	out, err := exec.CommandContext(ctx, gocmd, "list", "-m", "-f", "{{.Dir}}", "github.com/letsencrypt/pebble/v2").Output()
	if err != nil {
		return nil, nil, fmt.Errorf("go list pebble: %w", err)
	}
	certs := filepath.Join(strings.TrimSpace(string(out)), "test", "certs")
	fmt.Fprintf(os.Stderr, "acme tests: built pebble in %v\n", time.Since(start).Round(time.Millisecond))

	var stops []func()
	stop := func() {
		for i := len(stops) - 1; i >= 0; i-- {
			stops[i]()
		}
	}
	fail := func(err error) (*testCA, func(), error) { stop(); return nil, nil, err }

	dnsAddr, dnsStop, err := startDNS()
	if err != nil {
		return fail(err)
	}
	stops = append(stops, dnsStop)

	ports, err := freePorts(4)
	if err != nil {
		return fail(err)
	}
	c := &testCA{httpPort: ports[0], tlsPort: ports[1], pebbleLog: &lockedBuffer{}}
	acmeAddr := fmt.Sprintf("127.0.0.1:%d", ports[2])
	mgmtAddr := fmt.Sprintf("127.0.0.1:%d", ports[3])
	conf := map[string]any{"pebble": map[string]any{
		"listenAddress":           acmeAddr,
		"managementListenAddress": mgmtAddr,
		"certificate":             filepath.Join(certs, "localhost", "cert.pem"),
		"privateKey":              filepath.Join(certs, "localhost", "key.pem"),
		"httpPort":                c.httpPort,
		"tlsPort":                 c.tlsPort,
		"ocspResponderURL":        "",
		"keyAlgorithm":            "ecdsa",
		"retryAfter":              map[string]int{"authz": 1, "order": 1},
		"profiles": map[string]any{
			"default":    map[string]any{"description": "90 days", "validityPeriod": 90 * 24 * 3600},
			shortProfile: map[string]any{"description": "for the renewal test", "validityPeriod": shortValidity},
		},
	}}
	confFile := filepath.Join(tmp, "pebble.json")
	b, _ := json.Marshal(conf)
	if err := os.WriteFile(confFile, b, 0o600); err != nil {
		return fail(err)
	}
	cmd := exec.Command(bin, "-config", confFile, "-dnsserver", dnsAddr)
	// No PEBBLE_* from outside: above all not PEBBLE_VA_ALWAYS_VALID,
	// which would skip validation.
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PEBBLE_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, "PEBBLE_VA_NOSLEEP=1", "PEBBLE_WFE_NONCEREJECT=0")
	cmd.Stdout, cmd.Stderr = c.pebbleLog, c.pebbleLog
	if err := cmd.Start(); err != nil {
		return fail(err)
	}
	stops = append(stops, func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })

	// Trust for pebble's own HTTPS (and the proxy's, which shows the same
	// certificate).
	minica, err := os.ReadFile(filepath.Join(certs, "pebble.minica.pem"))
	if err != nil {
		return fail(err)
	}
	c.roots = x509.NewCertPool()
	c.roots.AppendCertsFromPEM(minica)
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: c.roots}}, Timeout: 10 * time.Second}
	defer client.CloseIdleConnections()

	// Wait for pebble: its directory, then its issuing root.
	var dir struct {
		NewOrder string `json:"newOrder"`
	}
	deadline := time.Now().Add(testenv.Deadline(30 * time.Second))
	for {
		err = getJSON(client, "https://"+acmeAddr+"/dir", &dir)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			return fail(fmt.Errorf("pebble did not answer: %v\n%s", err, c.pebbleLog))
		}
		time.Sleep(50 * time.Millisecond)
	}
	u, err := url.Parse(dir.NewOrder)
	if err != nil {
		return fail(err)
	}
	c.newOrder = u.Path
	resp, err := client.Get("https://" + mgmtAddr + "/roots/0")
	if err != nil {
		return fail(err)
	}
	rootPEM, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK {
		return fail(fmt.Errorf("pebble's root: %s %v", resp.Status, err))
	}
	c.issuer = x509.NewCertPool()
	if !c.issuer.AppendCertsFromPEM(rootPEM) {
		return fail(fmt.Errorf("pebble's root is no PEM certificate: %q", rootPEM))
	}
	c.issuerPE = filepath.Join(tmp, "pebble-root.pem")
	if err := os.WriteFile(c.issuerPE, rootPEM, 0o600); err != nil {
		return fail(err)
	}

	// The counting proxy: pebble builds its URLs from the Host header,
	// which the proxy passes on, so every later request comes here too.
	target, _ := url.Parse("https://" + acmeAddr)
	rp := httputil.NewSingleHostReverseProxy(target)
	rp.Transport = &http.Transport{TLSClientConfig: &tls.Config{RootCAs: c.roots}}
	rp.ErrorLog = nil
	c.proxy = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if c.down.Load() {
			// A CA that is down: the connection closes unanswered.
			if conn, _, err := http.NewResponseController(w).Hijack(); err == nil {
				conn.Close()
			}
			return
		}
		c.requests.Add(1)
		if r.Method == http.MethodPost && r.URL.Path == c.newOrder {
			c.orders.Add(1)
		}
		rp.ServeHTTP(w, r)
	}))
	cert, err := tls.LoadX509KeyPair(filepath.Join(certs, "localhost", "cert.pem"), filepath.Join(certs, "localhost", "key.pem"))
	if err != nil {
		return fail(err)
	}
	c.proxy.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	c.proxy.StartTLS()
	stops = append(stops, c.proxy.Close)
	c.dir = c.proxy.URL + "/dir"
	return c, stop, nil
}

// warmUp obtains one certificate before the tests: certmagic keeps one
// rate limiter goroutine per CA and account for the life of the process,
// which would otherwise count as a leak of the first test to issue. It
// also shows what one issuance takes.
func warmUp(ctx context.Context, tmp string) error {
	ln, err := listenTLS(pebble.tlsPort)
	if err != nil {
		return err
	}
	defer ln.Close()
	m, err := New(ctx, Config{
		Dir: filepath.Join(tmp, "warmup"), CA: pebble.dir, CARoots: pebble.roots, Email: testEmail,
		HTTPSAddr: ln.Addr().String(), Profile: "default",
		Allow: func(context.Context, string) error { return nil },
	})
	if err != nil {
		return err
	}
	defer m.Close()
	srv := &http.Server{Handler: http.NotFoundHandler(), TLSConfig: m.TLSConfig()}
	go srv.Serve(tls.NewListener(ln, m.TLSConfig()))
	defer srv.Close()
	start := time.Now()
	m.Prepare("warmup.test")
	deadline := time.Now().Add(testenv.Deadline(60 * time.Second))
	for {
		st := m.Status()
		if len(st) == 1 && st[0].State == StateValid {
			fmt.Fprintf(os.Stderr, "acme tests: one issuance (TLS-ALPN-01, pebble on loopback) took %v\n", time.Since(start).Round(time.Millisecond))
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("warm-up issuance: %+v\n%s", st, pebble.pebbleLog)
		}
		time.Sleep(20 * time.Millisecond)
	}
	pebble.proxy.CloseClientConnections()
	return nil
}

const testEmail = "ops@example.test"

func getJSON(c *http.Client, u string, v any) error {
	resp, err := c.Get(u)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", u, resp.Status)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}

// freePorts returns n loopback TCP ports that were free a moment ago.
func freePorts(n int) ([]int, error) {
	var out []int
	var lns []net.Listener
	defer func() {
		for _, ln := range lns {
			ln.Close()
		}
	}()
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		lns = append(lns, ln)
		out = append(out, ln.Addr().(*net.TCPAddr).Port)
	}
	return out, nil
}

func listenTLS(port int) (net.Listener, error) {
	return net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
}

// startDNS runs a DNS server on loopback (UDP and TCP, one port) that
// answers every A question with 127.0.0.1 and every other with nothing.
func startDNS() (string, func(), error) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	ln, err := net.Listen("tcp", pc.LocalAddr().String())
	if err != nil {
		pc.Close()
		return "", nil, err
	}
	h := dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		for _, q := range r.Question {
			if q.Qtype == dns.TypeA {
				m.Answer = append(m.Answer, &dns.A{
					Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60},
					A:   net.IPv4(127, 0, 0, 1),
				})
			}
		}
		_ = w.WriteMsg(m)
	})
	udp := &dns.Server{PacketConn: pc, Handler: h}
	tcp := &dns.Server{Listener: ln, Handler: h}
	var wg sync.WaitGroup
	for _, s := range []*dns.Server{udp, tcp} {
		wg.Go(func() { _ = s.ActivateAndServe() })
	}
	return pc.LocalAddr().String(), func() { udp.Shutdown(); tcp.Shutdown(); wg.Wait() }, nil
}

// lockedBuffer collects a process's output.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	// The last lines are the ones that tell.
	var lines []string
	sc := bufio.NewScanner(bytes.NewReader(l.b.Bytes()))
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	if len(lines) > 40 {
		lines = lines[len(lines)-40:]
	}
	return strings.Join(lines, "\n")
}

// testLogger writes the manager's log to the test's log, until the test's
// cleanups run (certmagic's own goroutines may say a last word later).
func testLogger(t *testing.T) *slog.Logger {
	w := &tWriter{t: t}
	t.Cleanup(func() { w.mu.Lock(); w.done = true; w.mu.Unlock() })
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct {
	mu   sync.Mutex
	t    *testing.T
	done bool
}

func (w *tWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}
