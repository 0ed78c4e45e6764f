package dashboard

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"time"
)

// Limits of the login machinery. Each table is bounded: the dashboard may
// face the internet.
const (
	// SessionTTL is how long a login lasts.
	SessionTTL = 12 * time.Hour
	// maxSessions bounds the logged-in browsers; a login past it ends the
	// session closest to expiring.
	maxSessions = 64
	// LoginFailures wrong passwords within LoginWindow from one address
	// (IPv6: /64) refuse every login from it until the window has passed.
	LoginFailures = 5
	LoginWindow   = time.Minute
	// maxLoginSources bounds the table of addresses with failed logins;
	// when it is full of recent ones, logins from new addresses are
	// refused as if limited (failing closed) until entries expire.
	maxLoginSources = 4096
	// cookieName is the session cookie.
	cookieName = "homeport_dashboard"
)

// sessions are the logged-in browsers, by the SHA-256 of their cookie, so
// that a lookup's timing says nothing about a stored value.
type sessions struct {
	mu sync.Mutex
	m  map[[32]byte]time.Time // expiry
}

// create starts a session and returns its cookie value.
func (s *sessions) create(now time.Time) string {
	var b [32]byte
	rand.Read(b[:])
	tok := base64.RawURLEncoding.EncodeToString(b[:])
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m == nil {
		s.m = map[[32]byte]time.Time{}
	}
	for k, exp := range s.m {
		if !now.Before(exp) {
			delete(s.m, k)
		}
	}
	for len(s.m) >= maxSessions {
		var oldest [32]byte
		var first time.Time
		for k, exp := range s.m {
			if first.IsZero() || exp.Before(first) {
				oldest, first = k, exp
			}
		}
		delete(s.m, oldest)
	}
	s.m[sha256.Sum256([]byte(tok))] = now.Add(SessionTTL)
	return tok
}

// valid reports whether tok is a live session.
func (s *sessions) valid(tok string, now time.Time) bool {
	if tok == "" {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	exp, ok := s.m[sha256.Sum256([]byte(tok))]
	return ok && now.Before(exp)
}

func (s *sessions) end(tok string) {
	s.mu.Lock()
	delete(s.m, sha256.Sum256([]byte(tok)))
	s.mu.Unlock()
}

// loginLimiter counts failed logins per source address.
type loginLimiter struct {
	mu sync.Mutex
	m  map[netip.Addr]*failures
}

type failures struct {
	start  time.Time // of the window
	n      int
	warned bool // the limit was logged in this window
}

// allowed reports whether src may try a password now.
func (l *loginLimiter) allowed(src netip.Addr, now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	f := l.m[src]
	if f == nil || now.Sub(f.start) >= LoginWindow {
		return f != nil || len(l.m) < maxLoginSources || l.prune(now)
	}
	return f.n < LoginFailures
}

// fail counts a wrong password from src; it reports whether src is now
// limited, and whether that is news worth a log line.
func (l *loginLimiter) fail(src netip.Addr, now time.Time) (limited, news bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.m == nil {
		l.m = map[netip.Addr]*failures{}
	}
	f := l.m[src]
	if f == nil || now.Sub(f.start) >= LoginWindow {
		if f == nil && len(l.m) >= maxLoginSources && !l.prune(now) {
			return true, false
		}
		f = &failures{start: now}
		l.m[src] = f
	}
	f.n++
	if f.n >= LoginFailures && !f.warned {
		f.warned = true
		return true, true
	}
	return f.n >= LoginFailures, false
}

// prune drops expired entries and reports whether there is room now.
func (l *loginLimiter) prune(now time.Time) bool {
	for k, f := range l.m {
		if now.Sub(f.start) >= LoginWindow {
			delete(l.m, k)
		}
	}
	return len(l.m) < maxLoginSources
}

// samePassword compares in constant time, whatever the lengths.
func samePassword(got, want string) bool {
	g, w := sha256.Sum256([]byte(got)), sha256.Sum256([]byte(want))
	return subtle.ConstantTimeCompare(g[:], w[:]) == 1
}

// source is what failed logins are counted by: the peer's IPv4 address or
// IPv6 /64.
func source(r *http.Request) netip.Addr {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return netip.Addr{}
	}
	a := ap.Addr().Unmap()
	if a.Is6() {
		p, _ := a.Prefix(64)
		return p.Addr()
	}
	return a
}

// loopbackHost reports whether a Host header names this machine's
// loopback: localhost or a loopback address literal, with or without a
// port. Any other name may be an attacker's, pointed at 127.0.0.1 (DNS
// rebinding), so a dashboard without a password answers only these.
func loopbackHost(host string) bool {
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	if strings.EqualFold(host, "localhost") {
		return true
	}
	a, err := netip.ParseAddr(host)
	return err == nil && a.Zone() == "" && a.IsLoopback()
}

// sameOrigin reports whether a form post comes from the dashboard's own
// pages. Browsers say where a request comes from in Sec-Fetch-Site; older
// ones only in Origin, which is "null" under the dashboard's own
// Referrer-Policy (no-referrer). A post that says neither (an old browser,
// a script) is let through: the session cookie is SameSite=Strict anyway.
func sameOrigin(r *http.Request) bool {
	switch r.Header.Get("Sec-Fetch-Site") {
	case "same-origin", "none":
		return true
	case "":
	default: // cross-site, same-site (another port or subdomain)
		return false
	}
	o := r.Header.Get("Origin")
	if o == "" || o == "null" {
		return true
	}
	_, host, ok := strings.Cut(o, "://")
	return ok && strings.EqualFold(host, r.Host)
}
