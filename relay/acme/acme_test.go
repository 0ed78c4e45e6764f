package acme

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/homeport/homeport/internal/leak"
	"github.com/homeport/homeport/internal/testenv"
)

// env is one test's manager, serving on the ports pebble validates: an
// HTTP server (HTTPHandler around a 404) and an HTTPS server (TLSConfig)
// that answers "hello NAME".
type env struct {
	t        *testing.T
	ca       *testCA
	m        *Manager
	cfg      Config
	httpsURL string // https://127.0.0.1:tlsPort, for dialing
	httpHits atomic.Int64
	alpnHits atomic.Int64
	log      *recorder
}

type envOpts struct {
	noHTTP  bool // no HTTP listener, and no HTTPAddr: a relay with only https_addr
	noHTTPS bool // the HTTPS listener serves, but TLS-ALPN-01 is off
	dir     string
	allow   func(ctx context.Context, name string) error
	edit    func(*Config)
}

func newEnv(t *testing.T, o envOpts) *env {
	t.Helper()
	ca := needCA(t)
	e := &env{t: t, ca: ca, log: &recorder{h: testLogger(t).Handler(), mu: &sync.Mutex{}, lines: &[]recorded{}}}
	if o.dir == "" {
		o.dir = filepath.Join(t.TempDir(), "acme")
	}
	if o.allow == nil {
		o.allow = func(context.Context, string) error { return nil }
	}
	tlsLn, err := listenTLS(ca.tlsPort)
	if err != nil {
		t.Fatal(err)
	}
	e.httpsURL = "127.0.0.1:" + fmt.Sprint(ca.tlsPort)
	e.cfg = Config{
		Dir: o.dir, CA: ca.dir, CARoots: ca.roots, Email: testEmail, Allow: o.allow,
		Logger: slog.New(e.log), HTTPSAddr: tlsLn.Addr().String(), DisableTLSALPN01: o.noHTTPS,
		Profile: "default",
	}
	var httpLn net.Listener
	if !o.noHTTP {
		if httpLn, err = net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", ca.httpPort)); err != nil {
			tlsLn.Close()
			t.Fatal(err)
		}
		e.cfg.HTTPAddr = httpLn.Addr().String()
	}
	if o.edit != nil {
		o.edit(&e.cfg)
	}
	e.m, err = New(context.Background(), e.cfg)
	if err != nil {
		tlsLn.Close()
		if httpLn != nil {
			httpLn.Close()
		}
		t.Fatal(err)
	}
	// Cleanups run last first: servers, then the manager, then the
	// idle keep-alive connections certmagic's ACME client leaves to the
	// CA (its http.Client is its own; a real CA closes them itself).
	t.Cleanup(ca.proxy.CloseClientConnections)
	t.Cleanup(e.m.Close)

	tc := e.m.TLSConfig()
	get := tc.GetCertificate
	tc.GetCertificate = func(h *tls.ClientHelloInfo) (*tls.Certificate, error) {
		if len(h.SupportedProtos) == 1 && h.SupportedProtos[0] == "acme-tls/1" {
			e.alpnHits.Add(1)
		}
		return get(h)
	}
	hello := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello %s over %s", r.TLS.ServerName, r.Proto)
	})
	https := &http.Server{Handler: hello, ErrorLog: quietLog}
	srvs := []*http.Server{https}
	var wg sync.WaitGroup
	wg.Go(func() { _ = https.Serve(tls.NewListener(tlsLn, tc)) })
	if httpLn != nil {
		h := e.m.HTTPHandler(http.NotFoundHandler())
		plain := &http.Server{ErrorLog: quietLog, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if strings.HasPrefix(r.URL.Path, "/.well-known/acme-challenge/") {
				e.httpHits.Add(1)
			}
			h.ServeHTTP(w, r)
		})}
		srvs = append(srvs, plain)
		wg.Go(func() { _ = plain.Serve(httpLn) })
	}
	t.Cleanup(func() {
		for _, s := range srvs {
			s.Close()
		}
		wg.Wait()
	})
	return e
}

// quietLog drops the servers' own error lines (failed handshakes are
// what several tests are about).
var quietLog = slog.NewLogLogger(slog.DiscardHandler, slog.LevelError)

// waitState waits until name's status is in state, and returns it.
func (e *env) waitState(name string, want State) CertStatus {
	e.t.Helper()
	deadline := time.Now().Add(testenv.Deadline(60 * time.Second))
	for {
		for _, s := range e.m.Status() {
			if s.Name == name && s.State == want {
				return s
			}
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("%s never became %s: %+v\npebble:\n%s", name, want, e.m.Status(), e.ca.pebbleLog)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// dial makes a TLS handshake for name with a Go client that trusts only
// pebble's issuing root, and returns the verified leaf.
func (e *env) dial(name string) (*x509.Certificate, error) {
	d := &tls.Dialer{
		NetDialer: &net.Dialer{Timeout: testenv.Deadline(10 * time.Second)},
		Config:    &tls.Config{ServerName: name, RootCAs: e.ca.issuer, NextProtos: []string{"h2", "http/1.1"}},
	}
	ctx, cancel := context.WithTimeout(context.Background(), testenv.Deadline(10*time.Second))
	defer cancel()
	c, err := d.DialContext(ctx, "tcp", e.httpsURL)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	return c.(*tls.Conn).ConnectionState().PeerCertificates[0], nil
}

// get fetches https://name/ through Go's HTTP client, trusting only
// pebble's root, and returns the body.
func (e *env) get(name string, h2 bool) string {
	e.t.Helper()
	tr := &http.Transport{
		TLSClientConfig:   &tls.Config{RootCAs: e.ca.issuer},
		ForceAttemptHTTP2: h2,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "tcp", e.httpsURL)
		},
	}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr, Timeout: testenv.Deadline(10 * time.Second)}).Get("https://" + name + "/")
	if err != nil {
		e.t.Fatalf("GET https://%s/: %v", name, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// curl fetches https://name/ with curl --cacert (pebble's root), over
// HTTP/1.1 or HTTP/2, and returns the body.
func (e *env) curl(name string, h2 bool) string {
	e.t.Helper()
	bin, err := exec.LookPath("curl")
	if err != nil {
		e.t.Fatalf("curl is needed (the CI installs it): %v", err)
	}
	ver := "--http1.1"
	if h2 {
		ver = "--http2"
	}
	ctx, cancel := context.WithTimeout(context.Background(), testenv.Deadline(20*time.Second))
	defer cancel()
	port := e.httpsURL[strings.LastIndex(e.httpsURL, ":")+1:]
	out, err := exec.CommandContext(ctx, bin, "-sS", "--fail", ver, "--cacert", e.ca.issuerPE,
		"--resolve", name+":"+port+":127.0.0.1", "https://"+name+":"+port+"/").CombinedOutput()
	if err != nil {
		e.t.Fatalf("curl %s https://%s/: %v\n%s", ver, name, err, out)
	}
	return string(out)
}

// checkServed checks that name's certificate verifies against pebble's
// root with Go's client and with curl, over HTTP/1.1 and HTTP/2.
func (e *env) checkServed(name string) *x509.Certificate {
	e.t.Helper()
	leaf, err := e.dial(name)
	if err != nil {
		e.t.Fatalf("handshake for %s: %v", name, err)
	}
	if err := leaf.VerifyHostname(name); err != nil {
		e.t.Fatal(err)
	}
	for _, h2 := range []bool{false, true} {
		want := "hello " + name + " over HTTP/1.1"
		if h2 {
			want = "hello " + name + " over HTTP/2.0"
		}
		if got := e.get(name, h2); got != want {
			e.t.Errorf("Go client, h2=%v: got %q, want %q", h2, got, want)
		}
		if got := e.curl(name, h2); got != want {
			e.t.Errorf("curl, h2=%v: got %q, want %q", h2, got, want)
		}
	}
	return leaf
}

func TestHTTP01Only(t *testing.T) {
	leak.Check(t)
	e := newEnv(t, envOpts{noHTTPS: true})
	orders := e.ca.orders.Load()
	e.m.Prepare("web.http01.test")
	s := e.waitState("web.http01.test", StateValid)
	leaf := e.checkServed("web.http01.test")
	if !s.NotAfter.Equal(leaf.NotAfter) || s.LastError != "" || !s.NextRenewal.Before(s.NotAfter) || !s.NextRenewal.After(time.Now()) {
		t.Errorf("status %+v, certificate ends %v", s, leaf.NotAfter)
	}
	if e.httpHits.Load() == 0 || e.alpnHits.Load() != 0 {
		t.Errorf("challenge requests: %d HTTP-01, %d TLS-ALPN-01; want some HTTP-01 only", e.httpHits.Load(), e.alpnHits.Load())
	}
	if n := e.ca.orders.Load() - orders; n != 1 {
		t.Errorf("%d orders, want 1", n)
	}
}

func TestTLSALPN01OnlyHTTPS(t *testing.T) {
	leak.Check(t)
	e := newEnv(t, envOpts{noHTTP: true})
	orders := e.ca.orders.Load()
	e.m.Prepare("Web.ALPN.test.") // names are normalized
	e.waitState("web.alpn.test", StateValid)
	e.checkServed("web.alpn.test")
	if e.alpnHits.Load() == 0 {
		t.Error("no TLS-ALPN-01 challenge handshake reached the HTTPS listener")
	}
	if n := e.ca.orders.Load() - orders; n != 1 {
		t.Errorf("%d orders, want 1", n)
	}
}

// TestRefusedNames: a handshake (or HTTP-01 request) for a name Allow
// refuses fails, and no request at all reaches the CA, even for a burst
// of 200 random names.
func TestRefusedNames(t *testing.T) {
	leak.Check(t)
	var asked atomic.Int64
	e := newEnv(t, envOpts{allow: func(_ context.Context, name string) error {
		asked.Add(1)
		return fmt.Errorf("%s is not registered", name)
	}})
	reqs := e.ca.requests.Load()
	if _, err := e.dial("evil.test"); err == nil {
		t.Fatal("handshake for a refused name succeeded")
	}
	var wg sync.WaitGroup
	var ok atomic.Int64
	names := make(chan string)
	for range 8 {
		wg.Go(func() {
			for n := range names {
				if _, err := e.dial(n); err == nil {
					ok.Add(1)
				}
			}
		})
	}
	for range 200 {
		names <- fmt.Sprintf("x%08x.example.test", rand.Uint32())
	}
	close(names)
	wg.Wait()
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/.well-known/acme-challenge/abc", e.ca.httpPort))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("HTTP-01 request for a refused name: %s, want the next handler's 404", resp.Status)
	}
	if ok.Load() != 0 {
		t.Errorf("%d handshakes for refused names succeeded", ok.Load())
	}
	if n := e.ca.requests.Load() - reqs; n != 0 {
		t.Errorf("%d requests reached the CA, want none", n)
	}
	if asked.Load() < 202 {
		t.Errorf("Allow asked %d times, want every one of 202", asked.Load())
	}
	if st := e.m.Status(); len(st) != 0 {
		t.Errorf("status lists refused names: %+v", st)
	}
}

// TestFloodOfAllowedNames: handshakes for many allowed names start no
// more orders than the bucket holds; the rest fail at once, rate-limited.
func TestFloodOfAllowedNames(t *testing.T) {
	leak.Check(t)
	e := newEnv(t, envOpts{
		allow: func(_ context.Context, name string) error {
			if strings.HasSuffix(name, ".flood.test") {
				return nil
			}
			return errors.New("not registered")
		},
		edit: func(c *Config) { c.NewOrders, c.NewOrderEvery = 2, time.Hour },
	})
	orders := e.ca.orders.Load()
	const n = 30
	for i := range n {
		name := fmt.Sprintf("n%d.flood.test", i)
		if _, err := e.dial(name); err == nil {
			t.Fatalf("handshake for %s succeeded before any certificate", name)
		}
	}
	deadline := time.Now().Add(testenv.Deadline(60 * time.Second))
	var valid, limited int
	for {
		st := e.m.Status()
		valid, limited = 0, 0
		busy := len(st) != n
		for _, s := range st {
			switch {
			case s.State == StateValid:
				valid++
			case s.State == StateFailed && strings.Contains(s.LastError, ErrRateLimited.Error()):
				limited++
			default:
				busy = true
			}
		}
		if !busy {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("status never settled: %+v", st)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if valid != 2 || limited != n-2 {
		t.Errorf("%d valid, %d rate-limited; want 2 and %d", valid, limited, n-2)
	}
	if got := e.ca.orders.Load() - orders; got != 2 {
		t.Errorf("%d orders reached the CA, want 2", got)
	}
}

// TestStorageSurvives: a second manager on the same directory serves the
// first one's certificate without a new order; the files are private.
func TestStorageSurvives(t *testing.T) {
	leak.Check(t)
	dir := filepath.Join(t.TempDir(), "acme")
	const name = "kept.test"
	var first *x509.Certificate
	t.Run("first", func(t *testing.T) {
		e := newEnv(t, envOpts{dir: dir})
		e.m.Prepare(name)
		e.waitState(name, StateValid)
		first = e.checkServed(name)
	})
	if first == nil {
		t.FailNow()
	}
	files := 0
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		want := fs.FileMode(0o600)
		if d.IsDir() {
			want = 0o700 | fs.ModeDir
		} else {
			files++
		}
		if info.Mode() != want {
			t.Errorf("%s: mode %v, want %v", p, info.Mode(), want)
		}
		return nil
	})
	if err != nil || files < 3 {
		t.Fatalf("storage: %d files, %v", files, err)
	}

	e := newEnv(t, envOpts{dir: dir})
	orders, reqs := e.ca.orders.Load(), e.ca.requests.Load()
	e.m.Prepare(name)
	e.waitState(name, StateValid)
	leaf := e.checkServed(name)
	if !leaf.Equal(first) {
		t.Errorf("second manager serves serial %v, first served %v", leaf.SerialNumber, first.SerialNumber)
	}
	if n := e.ca.orders.Load() - orders; n != 0 {
		t.Errorf("%d new orders, want none", n)
	}
	if n := e.ca.requests.Load() - reqs; n != 0 {
		t.Errorf("%d requests reached the CA, want none", n)
	}
}

// TestRenewal: with a certificate of 20 s and a check every 200 ms,
// maintenance renews it and the handshakes serve the new one, without a
// restart.
func TestRenewal(t *testing.T) {
	leak.Check(t)
	e := newEnv(t, envOpts{edit: func(c *Config) { c.Profile, c.RenewCheck = shortProfile, 200*time.Millisecond }})
	const name = "renewed.test"
	e.m.Prepare(name)
	s := e.waitState(name, StateValid)
	first, err := e.dial(name)
	if err != nil {
		t.Fatal(err)
	}
	if life := first.NotAfter.Sub(first.NotBefore); life > 2*shortValidity*time.Second {
		t.Fatalf("certificate lives %v: the short profile was not used", life)
	}
	deadline := time.Now().Add(testenv.Deadline(3 * shortValidity * time.Second))
	for {
		leaf, err := e.dial(name)
		if err == nil && !leaf.Equal(first) {
			if !leaf.NotAfter.After(first.NotAfter) {
				t.Errorf("renewed certificate ends %v, the first %v", leaf.NotAfter, first.NotAfter)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("still serving the first certificate (err %v); status %+v (was %+v)", err, e.m.Status(), s)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if !e.log.has(slog.LevelInfo, "acme: certificate renewed", name) {
		t.Error("no log line for the renewal")
	}
}

// TestNoRenewalOnceRefused: a name that is no longer allowed (its agent
// left) is not renewed: the renewal asks the CA for nothing.
func TestNoRenewalOnceRefused(t *testing.T) {
	leak.Check(t)
	var refused atomic.Bool
	e := newEnv(t, envOpts{
		allow: func(_ context.Context, name string) error {
			if refused.Load() {
				return fmt.Errorf("%s is not registered", name)
			}
			return nil
		},
		edit: func(c *Config) { c.Profile, c.RenewCheck = shortProfile, 200*time.Millisecond },
	})
	const name = "gone.test"
	e.m.Prepare(name)
	e.waitState(name, StateValid)
	refused.Store(true)
	orders := e.ca.orders.Load()
	deadline := time.Now().Add(testenv.Deadline(3 * shortValidity * time.Second))
	for !e.log.has(slog.LevelInfo, "acme: certificate not asked for: the name is not allowed now", name) {
		if time.Now().After(deadline) {
			t.Fatalf("no renewal was attempted and refused; status %+v", e.m.Status())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if n := e.ca.orders.Load() - orders; n != 0 {
		t.Errorf("%d orders for a refused name, want none", n)
	}
	if _, err := e.dial(name); err == nil {
		t.Error("handshake for a refused name succeeded")
	}
}

// TestCADown: while the CA is unreachable, Prepare logs a clear error,
// the status shows it, a handshake for the name fails at once rather than
// waiting, and a name that has its certificate is still served.
func TestCADown(t *testing.T) {
	leak.Check(t)
	e := newEnv(t, envOpts{})
	e.m.Prepare("up.test")
	e.waitState("up.test", StateValid)

	e.ca.down.Store(true)
	t.Cleanup(func() { e.ca.down.Store(false) })
	e.m.Prepare("down.test")
	s := e.waitState("down.test", StateFailed)
	if s.LastError == "" || s.LastErrorAt.IsZero() || !s.NotAfter.IsZero() {
		t.Errorf("status %+v: want the error, and no certificate", s)
	}
	if !e.log.has(slog.LevelError, "acme: obtaining certificate failed", "down.test") {
		t.Error("no error logged for down.test")
	}
	_, err := e.dial("down.test")
	var ne net.Error
	if err == nil || (errors.As(err, &ne) && ne.Timeout()) {
		t.Errorf("handshake for down.test: %v; want it refused at once", err)
	}
	e.checkServed("up.test")
}

// recorder is a slog handler that keeps what it hears and passes it on.
type recorder struct {
	h     slog.Handler
	mu    *sync.Mutex
	lines *[]recorded
}

type recorded struct {
	level slog.Level
	msg   string
	name  string
}

func (r *recorder) Enabled(ctx context.Context, l slog.Level) bool { return true }

func (r *recorder) Handle(ctx context.Context, rec slog.Record) error {
	x := recorded{level: rec.Level, msg: rec.Message}
	rec.Attrs(func(a slog.Attr) bool {
		if a.Key == "name" {
			x.name = a.Value.String()
		}
		return true
	})
	r.mu.Lock()
	*r.lines = append(*r.lines, x)
	r.mu.Unlock()
	return r.h.Handle(ctx, rec)
}

func (r *recorder) WithAttrs(as []slog.Attr) slog.Handler {
	return &recorder{h: r.h.WithAttrs(as), mu: r.mu, lines: r.lines}
}

func (r *recorder) WithGroup(g string) slog.Handler {
	return &recorder{h: r.h.WithGroup(g), mu: r.mu, lines: r.lines}
}

func (r *recorder) has(l slog.Level, msg, name string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, x := range *r.lines {
		if x.level == l && x.msg == msg && x.name == name {
			return true
		}
	}
	return false
}

// TestChallengesOnTheRelaysPorts: certmagic is told the relay's own
// ports, on every address, so that it finds them taken by the relay and
// never binds :80 or :443 itself; a challenge without its listener is off.
func TestChallengesOnTheRelaysPorts(t *testing.T) {
	allow := func(context.Context, string) error { return nil }
	for _, tc := range []struct {
		name             string
		cfg              Config
		http, tls        int
		noHTTP, noTLSALP bool
	}{
		{"both", Config{HTTPAddr: "127.0.0.1:8080", HTTPSAddr: "[::]:8443"}, 8080, 8443, false, false},
		{"https only", Config{HTTPSAddr: ":443"}, 0, 443, true, false},
		{"http only", Config{HTTPAddr: ":80"}, 80, 0, false, true},
		{"tls-alpn-01 turned off", Config{HTTPAddr: ":80", HTTPSAddr: ":443", DisableTLSALPN01: true}, 80, 443, false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			leak.Check(t)
			tc.cfg.Dir, tc.cfg.Allow = t.TempDir(), allow
			m, err := New(context.Background(), tc.cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			i := m.issuer
			if i.ListenHost != "" || i.AltHTTPPort != tc.http || i.AltTLSALPNPort != tc.tls ||
				i.DisableHTTPChallenge != tc.noHTTP || i.DisableTLSALPNChallenge != tc.noTLSALP {
				t.Errorf("issuer: listen host %q, HTTP port %d (off %v), TLS port %d (off %v)",
					i.ListenHost, i.AltHTTPPort, i.DisableHTTPChallenge, i.AltTLSALPNPort, i.DisableTLSALPNChallenge)
			}
		})
	}
}

func TestNewRefusesBadConfig(t *testing.T) {
	allow := func(context.Context, string) error { return nil }
	dir := t.TempDir()
	for _, tc := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"no dir", Config{Allow: allow, HTTPSAddr: ":443"}, "no storage directory"},
		{"no allow", Config{Dir: dir, HTTPSAddr: ":443"}, "no Allow function"},
		{"no listener", Config{Dir: dir, Allow: allow}, "no challenge can be answered"},
		{"both off", Config{Dir: dir, Allow: allow, HTTPAddr: ":80", HTTPSAddr: ":443", DisableHTTP01: true, DisableTLSALPN01: true}, "no challenge can be answered"},
		{"bad port", Config{Dir: dir, Allow: allow, HTTPSAddr: "host:https"}, `HTTPS listener "host:https": want a port`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, err := New(context.Background(), tc.cfg)
			if err == nil {
				m.Close()
				t.Fatal("no error")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %q, want it to say %q", err, tc.want)
			}
		})
	}
}
