// Package acme obtains, stores, renews and serves the certificates of the
// relay's web names through ACME (HTTP-01 and TLS-ALPN-01), with
// certmagic doing the protocol, the storage and the renewals.
//
// A certificate is only ever asked for a name that Config.Allow accepts
// (the relay's answer: a connected agent registered it and its token may
// claim it), and Allow is asked first, before any cache, storage or CA
// work: a TLS handshake or HTTP request for any other name costs one call
// of Allow. Challenges are answered on the relay's own listeners, through
// TLSConfig (TLS-ALPN-01) and HTTPHandler (HTTP-01). A handshake never
// waits for the CA: a name whose certificate is not ready yet fails its
// handshake at once, and its certificate is obtained in the background.
package acme

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/certmagic"
	"github.com/mholt/acmez/v3"
)

// StorageDir is where a relay whose data directory is dataDir keeps its
// certificates: Config.Dir.
func StorageDir(dataDir string) string { return filepath.Join(dataDir, "acme") }

// LetsEncrypt is the directory URL of Let's Encrypt's production CA, the
// default Config.CA.
const LetsEncrypt = certmagic.LetsEncryptProductionCA

// Errors a handshake, Prepare or Status can show; test with errors.Is.
var (
	// ErrNotAllowed: Config.Allow refused the name.
	ErrNotAllowed = errors.New("no certificate may be had for this name")
	// ErrNotReady: the name is allowed but its certificate is still being
	// obtained, or obtaining it failed (the status says why).
	ErrNotReady = errors.New("certificate not ready")
	// ErrRateLimited: too many new certificates were asked for lately;
	// the next handshake or Prepare for the name tries again.
	ErrRateLimited = errors.New("too many new certificates asked for lately")
	// ErrNoServerName: the client sent no server name (SNI).
	ErrNoServerName = errors.New("client sent no server name")
)

// Defaults of Config.
const (
	DefaultNewOrders     = 10
	DefaultNewOrderEvery = time.Minute
)

// Config configures a Manager.
type Config struct {
	// Dir holds the certificates, keys and the ACME account (the relay
	// passes <data dir>/acme); it is made 0700, its files are 0600.
	Dir string
	// Email is the contact address of the ACME account ("" for none).
	Email string
	// CA is the ACME directory URL; "" means LetsEncrypt.
	CA string
	// CARoots, when set, is the only trust for the CA's own HTTPS (a
	// private or test CA); nil means the system's roots.
	CARoots *x509.CertPool
	// Allow says whether a certificate may be had and served for name; it
	// is called on every handshake, so it must be cheap. Required.
	Allow func(ctx context.Context, name string) error
	// Logger receives the manager's and certmagic's messages; nil discards
	// them.
	Logger *slog.Logger

	// HTTPAddr is the address the relay's HTTP listener is bound to
	// (HOST:PORT, its real port, not 0), which answers HTTP-01 through
	// HTTPHandler; "" turns HTTP-01 off. HTTPSAddr is that of the
	// relay's HTTPS listener, which answers TLS-ALPN-01 through
	// TLSConfig; "" turns TLS-ALPN-01 off. At least one is needed. The
	// listeners must be open before Prepare: certmagic, finding a port
	// free, would serve the challenge on a listener of its own.
	HTTPAddr, HTTPSAddr string
	// DisableHTTP01 and DisableTLSALPN01 turn a challenge off although
	// its listener exists.
	DisableHTTP01, DisableTLSALPN01 bool

	// Profile names the CA's certificate profile ("" for its default).
	Profile string
	// RenewCheck is how often certificates are checked for renewal
	// (default 10 minutes).
	RenewCheck time.Duration
	// NewOrders new certificates may be asked for at once, and one more
	// each NewOrderEvery: a bound on what a flood of handshakes for
	// allowed names can ask of the CA. Defaults DefaultNewOrders and
	// DefaultNewOrderEvery.
	NewOrders     int
	NewOrderEvery time.Duration
}

// State is where a name's certificate stands.
type State string

// States of a name.
const (
	StateObtaining State = "obtaining" // asked for, not there yet
	StateValid     State = "valid"     // served
	StateExpired   State = "expired"   // served, but past its end: renewal keeps failing
	StateFailed    State = "failed"    // none; LastError says why
)

// CertStatus is one name's certificate, for the relay's status and metrics.
type CertStatus struct {
	Name        string
	State       State
	NotAfter    time.Time // zero without a certificate
	NextRenewal time.Time // about when renewal starts; zero without a certificate
	LastError   string    // of the last attempt to obtain or renew, "" after a success
	LastErrorAt time.Time
}

// Manager obtains, stores, renews and serves the certificates.
type Manager struct {
	cfg    Config
	log    *slog.Logger
	ctx    context.Context
	cancel context.CancelFunc
	cache  *certmagic.Cache
	magic  *certmagic.Config
	issuer *certmagic.ACMEIssuer
	wg     sync.WaitGroup

	mu     sync.Mutex
	closed bool
	names  map[string]*entry
	orders bucket
}

// entry is what the manager knows of one name beyond certmagic's cache.
type entry struct {
	state State
	busy  bool // a goroutine of ours is loading or obtaining it
	err   error
	errAt time.Time
}

// New makes a Manager and starts its renewal maintenance; Close stops it.
// It neither binds a port nor talks to the CA: that happens on Prepare,
// on a handshake for an allowed name, and on renewal.
func New(ctx context.Context, c Config) (*Manager, error) {
	if c.Dir == "" {
		return nil, errors.New("acme: no storage directory")
	}
	if c.Allow == nil {
		return nil, errors.New("acme: no Allow function: certificates would be had for any name")
	}
	if c.CA == "" {
		c.CA = LetsEncrypt
	}
	if c.NewOrders <= 0 {
		c.NewOrders = DefaultNewOrders
	}
	if c.NewOrderEvery <= 0 {
		c.NewOrderEvery = DefaultNewOrderEvery
	}
	log := c.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	httpPort, err := challengePort("HTTP", c.HTTPAddr)
	if err != nil {
		return nil, err
	}
	tlsPort, err := challengePort("HTTPS", c.HTTPSAddr)
	if err != nil {
		return nil, err
	}
	noHTTP := c.DisableHTTP01 || httpPort == 0
	noTLS := c.DisableTLSALPN01 || tlsPort == 0
	if noHTTP && noTLS {
		return nil, errors.New("acme: no challenge can be answered: HTTP-01 needs the HTTP listener, TLS-ALPN-01 the HTTPS listener, and neither is both there and turned on")
	}
	if err := os.MkdirAll(c.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("acme: storage: %w", err)
	}
	if err := os.Chmod(c.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("acme: storage: %w", err)
	}

	m := &Manager{cfg: c, log: log, names: map[string]*entry{}}
	m.orders = bucket{size: float64(c.NewOrders), every: c.NewOrderEvery, tokens: float64(c.NewOrders), last: time.Now()}
	m.ctx, m.cancel = context.WithCancel(ctx)
	zl := zapToSlog(log)
	m.cache = certmagic.NewCache(certmagic.CacheOptions{
		GetConfigForCert:   func(certmagic.Certificate) (*certmagic.Config, error) { return m.magic, nil },
		RenewCheckInterval: c.RenewCheck,
		Logger:             zl,
	})
	m.magic = certmagic.New(m.cache, certmagic.Config{
		Storage: &certmagic.FileStorage{Path: c.Dir},
		Logger:  zl,
		OnEvent: m.onEvent,
		// Let's Encrypt has no OCSP any more; nothing to staple.
		OCSP: certmagic.OCSPConfig{DisableStapling: true},
	})
	m.issuer = certmagic.NewACMEIssuer(m.magic, certmagic.ACMEIssuer{
		CA:     c.CA,
		Email:  c.Email,
		Agreed: true, // the relay runs unattended: using a CA is agreeing to its terms
		// certmagic answers challenges on a listener of its own unless
		// the port is taken, and then relies on the server holding it.
		// Pointing it at the relay's own ports (on every address, which
		// conflicts with the relay's listener whatever address that has)
		// means it finds them taken and leaves the answers to TLSConfig
		// and HTTPHandler.
		ListenHost:              "",
		AltHTTPPort:             httpPort,
		AltTLSALPNPort:          tlsPort,
		DisableHTTPChallenge:    noHTTP,
		DisableTLSALPNChallenge: noTLS,
		TrustedRoots:            c.CARoots,
		Profile:                 c.Profile,
		Logger:                  zl,
	})
	m.magic.Issuers = []certmagic.Issuer{m.issuer}
	return m, nil
}

// challengePort returns the port of a relay listener, 0 for none.
func challengePort(what, addr string) (int, error) {
	if addr == "" {
		return 0, nil
	}
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		return 0, fmt.Errorf("acme: %s listener %q: %w", what, addr, err)
	}
	n, err := strconv.Atoi(p)
	if err != nil || n < 1 || n > 65535 {
		return 0, fmt.Errorf("acme: %s listener %q: want a port from 1 to 65535", what, addr)
	}
	return n, nil
}

// Close stops obtaining and renewing and waits for the manager's
// goroutines. Certificates stay in storage for the next start.
func (m *Manager) Close() {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return
	}
	m.closed = true
	m.mu.Unlock()
	m.cancel()
	m.wg.Wait()
	m.cache.Stop()
}

// TLSConfig is for every TLS connection the relay terminates: it serves
// each allowed name's certificate, offers h2 and http/1.1, and answers
// TLS-ALPN-01 challenges (acme-tls/1).
func (m *Manager) TLSConfig() *tls.Config {
	return &tls.Config{
		MinVersion:     tls.VersionTLS12,
		GetCertificate: m.getCertificate,
		NextProtos:     []string{"h2", "http/1.1", acmez.ACMETLS1Protocol},
	}
}

// HTTPHandler wraps the relay's port-80 handler so that HTTP-01
// challenges for allowed names are answered; everything else goes to next.
func (m *Manager) HTTPHandler(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if certmagic.LooksLikeHTTPChallenge(r) {
			host := r.Host
			if h, _, err := net.SplitHostPort(host); err == nil {
				host = h
			}
			if name := normalize(host); name != "" && m.cfg.Allow(r.Context(), name) == nil && m.issuer.HandleHTTPChallenge(w, r) {
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

// Prepare starts getting a certificate for a name in the background (from
// storage if there is one, else from the CA); it never blocks. Status
// shows how it went.
func (m *Manager) Prepare(name string) {
	if name = normalize(name); name != "" {
		m.start(name)
	}
}

func normalize(name string) string {
	return strings.TrimSuffix(strings.ToLower(strings.TrimSpace(name)), ".")
}

func (m *Manager) getCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	name := normalize(hello.ServerName)
	if name == "" {
		return nil, ErrNoServerName
	}
	if err := m.cfg.Allow(hello.Context(), name); err != nil {
		return nil, fmt.Errorf("acme: %s: %w: %w", name, ErrNotAllowed, err)
	}
	if len(hello.SupportedProtos) == 1 && hello.SupportedProtos[0] == acmez.ACMETLS1Protocol {
		return m.magic.GetCertificate(hello) // the challenge's certificate
	}
	// Without OnDemand, certmagic only looks in its cache here: no
	// storage, no CA.
	if cert, err := m.magic.GetCertificate(hello); err == nil && cert != nil && cert.Leaf != nil {
		return cert, nil
	}
	m.start(name)
	m.mu.Lock()
	defer m.mu.Unlock()
	if e := m.names[name]; e != nil && e.err != nil {
		return nil, fmt.Errorf("acme: %s: %w: %w", name, ErrNotReady, e.err)
	}
	return nil, fmt.Errorf("acme: %s: %w: being obtained", name, ErrNotReady)
}

// start begins loading or obtaining name's certificate unless that is
// under way or the certificate is in the cache.
func (m *Manager) start(name string) {
	cached := len(m.cached(name)) > 0 // outside m.mu: certmagic's locks are never taken under ours
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return
	}
	e := m.names[name]
	if e == nil {
		e = &entry{state: StateObtaining}
		m.names[name] = e
	}
	if e.busy || (e.state == StateValid && cached) {
		return
	}
	e.busy = true
	m.wg.Add(1)
	go m.run(name)
}

// cached returns the cache's certificates for exactly name.
func (m *Manager) cached(name string) []certmagic.Certificate {
	var out []certmagic.Certificate
	for _, c := range m.cache.AllMatchingCertificates(name) {
		if slices.Contains(c.Names, name) && c.Leaf != nil {
			out = append(out, c)
		}
	}
	return out
}

func (m *Manager) run(name string) {
	defer m.wg.Done()
	start := time.Now()
	err := m.obtain(m.ctx, name)
	m.mu.Lock()
	e := m.names[name]
	e.busy = false
	if err == nil {
		e.state, e.err = StateValid, nil
	} else {
		e.state, e.err, e.errAt = StateFailed, err, time.Now()
	}
	m.mu.Unlock()
	switch {
	case err == nil:
		m.log.Info("acme: certificate ready", "name", name, "took", time.Since(start).Round(time.Millisecond))
	case m.ctx.Err() != nil:
	case errors.Is(err, ErrNotAllowed):
		m.log.Debug("acme: no certificate", "name", name, "err", err)
	default:
		m.log.Error("acme: no certificate", "name", name, "err", err)
	}
}

func (m *Manager) obtain(ctx context.Context, name string) error {
	if err := m.cfg.Allow(ctx, name); err != nil {
		return fmt.Errorf("%w: %w", ErrNotAllowed, err)
	}
	_, err := m.magic.CacheManagedCertificate(ctx, name)
	if err == nil {
		return nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		m.log.Warn("acme: stored certificate unusable; obtaining a new one", "name", name, "err", err)
	}
	m.mu.Lock()
	ok := m.orders.take(time.Now())
	m.mu.Unlock()
	if !ok {
		return ErrRateLimited
	}
	// ObtainCertAsync retries with certmagic's backoff until ctx ends;
	// every failed attempt shows in the status through onEvent.
	if err := m.magic.ObtainCertAsync(ctx, name); err != nil {
		return err
	}
	if _, err := m.magic.CacheManagedCertificate(ctx, name); err != nil {
		return fmt.Errorf("loading the new certificate: %w", err)
	}
	return nil
}

// onEvent hears certmagic's events: it refuses to obtain or renew for a
// name no longer allowed, and keeps each name's last error.
func (m *Manager) onEvent(ctx context.Context, event string, data map[string]any) error {
	name, _ := data["identifier"].(string)
	renewal, _ := data["renewal"].(bool)
	switch event {
	case "cert_obtaining":
		if err := m.cfg.Allow(ctx, name); err != nil {
			m.log.Info("acme: certificate not asked for: the name is not allowed now", "name", name, "renewal", renewal, "err", err)
			// certmagic would retry for weeks; the name is gone.
			return certmagic.ErrNoRetry{Err: fmt.Errorf("%w: %w", ErrNotAllowed, err)}
		}
	case "cert_obtained":
		m.mu.Lock()
		if e := m.names[name]; e != nil {
			e.err = nil
			if renewal {
				e.state = StateValid
			}
		}
		m.mu.Unlock()
		if renewal {
			m.log.Info("acme: certificate renewed", "name", name)
		}
	case "cert_failed":
		err, _ := data["error"].(error)
		if err == nil {
			err = errors.New("unknown error")
		}
		m.mu.Lock()
		if e := m.names[name]; e != nil {
			e.err, e.errAt = err, time.Now()
			if !renewal {
				e.state = StateFailed
			}
		}
		m.mu.Unlock()
		what := "obtaining"
		if renewal {
			what = "renewing"
		}
		m.log.Error("acme: "+what+" certificate failed", "name", name, "ca", m.cfg.CA, "err", err)
	}
	return nil
}

// Status lists every name asked for, sorted.
func (m *Manager) Status() []CertStatus {
	m.mu.Lock()
	out := make([]CertStatus, 0, len(m.names))
	for name, e := range m.names {
		s := CertStatus{Name: name, State: e.state, LastErrorAt: e.errAt}
		if e.err != nil {
			s.LastError = e.err.Error()
		}
		out = append(out, s)
	}
	ratio := m.magic.RenewalWindowRatio
	m.mu.Unlock()
	if ratio <= 0 {
		ratio = certmagic.DefaultRenewalWindowRatio
	}
	now := time.Now()
	for i := range out {
		s := &out[i]
		for _, c := range m.cached(s.Name) {
			leaf := c.Leaf
			if !leaf.NotAfter.After(s.NotAfter) {
				continue
			}
			life := leaf.NotAfter.Sub(leaf.NotBefore)
			s.NotAfter = leaf.NotAfter
			s.NextRenewal = leaf.NotAfter.Add(-time.Duration(float64(life) * ratio))
			s.State = StateValid
			if now.After(leaf.NotAfter) {
				s.State = StateExpired
			}
		}
	}
	slices.SortFunc(out, func(a, b CertStatus) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// bucket is a token bucket: size tokens at most, one more each every.
type bucket struct {
	size, tokens float64
	every        time.Duration
	last         time.Time
}

func (b *bucket) take(now time.Time) bool {
	b.tokens = min(b.size, b.tokens+float64(now.Sub(b.last))/float64(b.every))
	b.last = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}
