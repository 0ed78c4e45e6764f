package relay

import (
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/homeport/homeport/config"
)

// The relay faces the open internet. Two guards keep one source from
// taking it over: handshakeGuard on the agent port (pending logins,
// failed-login bans), visitorGuard on each public port (allow and deny
// lists, connections, rate, bans). Both keep their state in memory, per
// source: an IPv4 address or an IPv6 /64, since one IPv6 host has a whole
// /64 to pick addresses from.

// maxTracked bounds each guard's table of sources. Past it, new sources
// are not tracked (the global caps still hold) rather than refused.
const maxTracked = 1 << 16

// sourceKey is what a guard counts by.
func sourceKey(a netip.Addr) netip.Addr {
	a = a.Unmap()
	if a.Is6() {
		p, _ := a.Prefix(64)
		return p.Addr()
	}
	return a
}

// addrOf returns the IP address of a connection's remote end.
func addrOf(a net.Addr) netip.Addr {
	switch a := a.(type) {
	case *net.TCPAddr:
		ip, _ := netip.AddrFromSlice(a.IP)
		return ip.Unmap()
	case *net.UDPAddr:
		ip, _ := netip.AddrFromSlice(a.IP)
		return ip.Unmap()
	}
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
}

// withGuardDefaults fills unset limits with the configuration defaults.
func withGuardDefaults(g config.Guard) config.Guard {
	set := func(v *int, def int) {
		if *v <= 0 {
			*v = def
		}
	}
	set(&g.MaxHandshakes, 1024)
	set(&g.MaxHandshakesPerIP, 16)
	set(&g.VisitorMaxConns, 32)
	set(&g.VisitorRate, 60)
	set(&g.VisitorBurst, 20)
	if g.AuthBanFor <= 0 {
		g.AuthBanFor = 15 * time.Minute
	}
	if g.VisitorBanFor <= 0 {
		g.VisitorBanFor = 10 * time.Minute
	}
	return g
}

// handshakeGuard limits logins on the agent port.
type handshakeGuard struct {
	cfg config.Guard
	now func() time.Time

	mu      sync.Mutex
	pending int
	sources map[netip.Addr]*loginState
	// trusted holds sources that logged in successfully lately: they may
	// go past the global cap (by trustedReserve), so that a flood from
	// elsewhere cannot keep a known agent from logging in again.
	trusted map[netip.Addr]time.Time
	// learned, when set, is called (under mu; it must not block) when a
	// source becomes trusted, or trusted again after knownRefresh.
	learned func()
}

// Trusted sources: how long a good login is remembered, how many sources
// are, and how many logins they may have past the global cap.
const (
	trustedFor     = 24 * time.Hour
	maxTrusted     = 4096
	trustedReserve = 64
)

// loginResult is how a login admitted by a handshakeGuard ended.
type loginResult int

const (
	loginAborted loginResult = iota // closed, timed out, malformed: no verdict
	loginFailed                     // wrong token
	loginOK
)

type loginState struct {
	pending     int
	fails       int
	since       time.Time // first failure counted
	bannedUntil time.Time
}

func newHandshakeGuard(cfg config.Guard) *handshakeGuard {
	return &handshakeGuard{cfg: cfg, now: time.Now, sources: make(map[netip.Addr]*loginState), trusted: make(map[netip.Addr]time.Time)}
}

// banned reports whether ip is banned now.
func (g *handshakeGuard) banned(ip netip.Addr) bool {
	now := g.now()
	g.mu.Lock()
	defer g.mu.Unlock()
	st := g.sources[sourceKey(ip)]
	return st != nil && now.Before(st.bannedUntil)
}

// admit counts a new connection from ip, or says why it is refused.
func (g *handshakeGuard) admit(ip netip.Addr) (ok bool, why string) {
	k := sourceKey(ip)
	now := g.now()
	g.mu.Lock()
	defer g.mu.Unlock()
	st := g.sources[k]
	switch {
	case st != nil && now.Before(st.bannedUntil):
		return false, "banned after failed logins"
	case g.pending >= g.cfg.MaxHandshakes+trustedReserve,
		g.pending >= g.cfg.MaxHandshakes && now.Sub(g.trusted[k]) > trustedFor:
		return false, "too many logins in progress"
	case st != nil && st.pending >= g.cfg.MaxHandshakesPerIP:
		return false, "too many logins in progress from this address"
	}
	if st == nil && len(g.sources) < maxTracked {
		st = &loginState{}
		g.sources[k] = st
	}
	if st != nil {
		st.pending++
	}
	g.pending++
	return true, ""
}

// done ends a login admitted before; banned reports that a wrong token
// got the source banned. Only a successful login clears the failures
// counted: connections that end without a verdict leave them be.
func (g *handshakeGuard) done(ip netip.Addr, res loginResult) (banned bool) {
	failed := res == loginFailed
	k := sourceKey(ip)
	now := g.now()
	g.mu.Lock()
	defer g.mu.Unlock()
	g.pending--
	st := g.sources[k]
	if st == nil {
		return false
	}
	st.pending--
	if failed && g.cfg.AuthBanAfter > 0 {
		if st.fails == 0 || now.Sub(st.since) > g.cfg.AuthBanFor {
			st.fails, st.since = 0, now
		}
		st.fails++
		if st.fails >= g.cfg.AuthBanAfter {
			st.fails = 0
			st.bannedUntil = now.Add(g.cfg.AuthBanFor)
			banned = true
		}
	}
	if res == loginOK {
		st.fails = 0
		if last, ok := g.trusted[k]; ok || len(g.trusted) < maxTrusted {
			g.trusted[k] = now
			if g.learned != nil && (!ok || now.Sub(last) >= knownRefresh) {
				g.learned()
			}
		}
	}
	if st.pending == 0 && st.fails == 0 && !now.Before(st.bannedUntil) {
		delete(g.sources, k)
	}
	g.sweep(now)
	return banned
}

// trustedSnapshot returns a copy of the trusted sources.
func (g *handshakeGuard) trustedSnapshot() map[netip.Addr]time.Time {
	g.mu.Lock()
	defer g.mu.Unlock()
	m := make(map[netip.Addr]time.Time, len(g.trusted))
	for k, t := range g.trusted {
		m[k] = t
	}
	return m
}

// trust adds sources remembered from before (loadKnownAgents).
func (g *handshakeGuard) trust(known map[netip.Addr]time.Time) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for k, t := range known {
		if len(g.trusted) >= maxTrusted {
			return
		}
		if t.After(g.trusted[k]) {
			g.trusted[k] = t
		}
	}
}

// sweep drops a few expired entries, so that bans and old failures do not
// pile up; each call looks at a handful.
func (g *handshakeGuard) sweep(now time.Time) {
	n := 0
	for k, st := range g.sources {
		if n++; n > 8 {
			return
		}
		if st.pending == 0 && !now.Before(st.bannedUntil) && (st.fails == 0 || now.Sub(st.since) > g.cfg.AuthBanFor) {
			delete(g.sources, k)
		}
	}
	n = 0
	for k, t := range g.trusted {
		if n++; n > 8 {
			return
		}
		if now.Sub(t) > trustedFor {
			delete(g.trusted, k)
		}
	}
}

// visitorGuard decides which visitors reach one tunnel.
type visitorGuard struct {
	cfg         config.Guard
	allow, deny []netip.Prefix
	now         func() time.Time

	mu      sync.Mutex
	sources map[netip.Addr]*visitorState
}

type visitorState struct {
	conns        int
	tokens       float64
	last         time.Time // tokens counted up to here
	refused      int
	refusedSince time.Time
	bannedUntil  time.Time
}

func newVisitorGuard(cfg config.Guard, allow, deny []netip.Prefix) *visitorGuard {
	return &visitorGuard{cfg: cfg, allow: allow, deny: deny, now: time.Now, sources: make(map[netip.Addr]*visitorState)}
}

// listed reports whether ip passes the tunnel's allow and deny lists.
func (g *visitorGuard) listed(ip netip.Addr) (ok bool, why string) {
	for _, p := range g.deny {
		if p.Contains(ip) {
			return false, "address denied by the tunnel"
		}
	}
	if len(g.allow) == 0 {
		return true, ""
	}
	for _, p := range g.allow {
		if p.Contains(ip) {
			return true, ""
		}
	}
	return false, "address not allowed by the tunnel"
}

// admit counts a new connection (or UDP flow) from ip, or says why it is
// refused; banned reports that this refusal started a ban.
func (g *visitorGuard) admit(ip netip.Addr) (ok bool, why string, banned bool) {
	ip = ip.Unmap()
	if ok, why := g.listed(ip); !ok {
		return false, why, false
	}
	k := sourceKey(ip)
	now := g.now()
	rate := float64(g.cfg.VisitorRate) / 60 // per second
	burst := float64(g.cfg.VisitorBurst)
	g.mu.Lock()
	defer g.mu.Unlock()
	st := g.sources[k]
	if st == nil {
		if len(g.sources) >= maxTracked {
			g.sweep(now)
			if len(g.sources) >= maxTracked {
				return true, "", false // untracked: see maxTracked
			}
		}
		st = &visitorState{tokens: burst, last: now}
		g.sources[k] = st
	}
	if now.Before(st.bannedUntil) {
		return false, "banned for too many connections", false
	}
	st.tokens = min(burst, st.tokens+now.Sub(st.last).Seconds()*rate)
	st.last = now
	switch {
	case st.conns >= g.cfg.VisitorMaxConns:
		why = "too many open connections from this address"
	case st.tokens < 1:
		why = "too many new connections from this address"
	default:
		st.tokens--
		st.conns++
		return true, "", false
	}
	// Refusals count within a window of VisitorBanFor.
	if st.refused == 0 || now.Sub(st.refusedSince) > g.cfg.VisitorBanFor {
		st.refused, st.refusedSince = 0, now
	}
	st.refused++
	if g.cfg.VisitorBanAfter > 0 && st.refused >= g.cfg.VisitorBanAfter {
		st.refused = 0
		st.bannedUntil = now.Add(g.cfg.VisitorBanFor)
		banned = true
	}
	return false, why, banned
}

// release ends a connection admitted before.
func (g *visitorGuard) release(ip netip.Addr) {
	k := sourceKey(ip.Unmap())
	g.mu.Lock()
	defer g.mu.Unlock()
	if st := g.sources[k]; st != nil {
		st.conns--
	}
	g.sweep(g.now())
}

// sweep forgets a few sources that have nothing left to remember: no
// connection, a full bucket, no ban.
func (g *visitorGuard) sweep(now time.Time) {
	rate := float64(g.cfg.VisitorRate) / 60
	burst := float64(g.cfg.VisitorBurst)
	n := 0
	for k, st := range g.sources {
		if n++; n > 8 {
			return
		}
		full := st.tokens+now.Sub(st.last).Seconds()*rate >= burst
		if st.conns == 0 && full && !now.Before(st.bannedUntil) && (st.refused == 0 || now.Sub(st.refusedSince) > g.cfg.VisitorBanFor) {
			delete(g.sources, k)
		}
	}
}
