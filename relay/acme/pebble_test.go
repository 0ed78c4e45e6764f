package acme

// The tests run a real ACME server: pebble, Let's Encrypt's test CA, built
// from the module cache (it is a tool dependency in go.mod) once per test
// binary and run as a process on loopback. Its validator really connects
// to the tests' listeners (httpPort, tlsPort) at the address a small DNS
// server here gives every name: 127.0.0.1. In front of its ACME endpoint
// sits a counting reverse proxy, which can also play a CA that is down.

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
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

	"github.com/homeport/homeport/internal/pebbletest"
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
	pebbleLog *pebbletest.Buffer
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
	ports, err := pebbletest.FreePorts(2)
	if err != nil {
		return nil, nil, err
	}
	start := time.Now()
	ca, err := pebbletest.Start(ctx, tmp, pebbletest.Options{HTTPPort: ports[0], TLSPort: ports[1],
		Profiles: map[string]time.Duration{shortProfile: shortValidity * time.Second}, WaitFor: testenv.Deadline(30 * time.Second)})
	if err != nil {
		return nil, nil, err
	}
	fmt.Fprintf(os.Stderr, "acme tests: built and started pebble in %v\n", time.Since(start).Round(time.Millisecond))
	stops := []func(){ca.Close}
	stop := func() {
		for i := len(stops) - 1; i >= 0; i-- {
			stops[i]()
		}
	}
	c := &testCA{httpPort: ports[0], tlsPort: ports[1], pebbleLog: ca.Log, roots: ca.Roots, issuer: ca.Issuer,
		issuerPE: ca.IssuerPEM, newOrder: ca.NewOrderPath}
	acmeAddr := ca.Addr

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
	cert := ca.Cert
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

func listenTLS(port int) (net.Listener, error) {
	return net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
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
