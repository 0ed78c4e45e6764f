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

// handshakeGuard limits logins on the agent port, over TCP and QUIC alike:
// a login counts from the connection's accept (for QUIC, from the client's
// first packet, before any crypto work) until its verdict.
//
// When every slot is taken, a newcomer pushes out the oldest pending login
// of the source that holds the most (more than the newcomer's own source),
// provided that login has been pending for loginMinAge: so a flood of idle
// or stalled logins, however many sources it comes from, cannot keep a new
// agent out, while a genuine login, which ends within a few round trips,
// is not cut by one.
//
// A source banned after failed logins may still log in with the right
// token, but one login at a time, each answered no sooner than bannedPace
// after it began: a guesser gets about one try a second.
type handshakeGuard struct {
	cfg config.Guard
	now func() time.Time

	mu      sync.Mutex
	pending int
	sources map[netip.Addr]*loginState
	// active are the sources with pending logins, for eviction.
	active []*loginState
	// lingering counts logins pushed out before they had a connection
	// to close (QUIC handshakes quic-go has not handed over): quic-go
	// runs them until they time out or arrive. At most MaxHandshakes
	// linger; past that such logins are not pushed out.
	lingering int
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

const (
	// loginMinAge is how long a login must have been pending before a
	// newcomer may push it out: far longer than the few round trips a
	// genuine login takes once its connection is up.
	loginMinAge = time.Second
	// bannedPace is the earliest a banned source's login is answered,
	// after it began; a banned source's login gives way to a newer one
	// of the source after bannedPace+loginMinAge (a stalled connection
	// must not keep the right token out).
	bannedPace = time.Second
)

// loginResult is how a login admitted by a handshakeGuard ended.
type loginResult int

const (
	loginAborted loginResult = iota // closed, timed out, malformed: no verdict
	loginFailed                     // wrong token
	loginOK
)

// loginState is what a guard knows of one source.
type loginState struct {
	key         netip.Addr
	logins      []*login // pending, oldest first
	active      int      // index in handshakeGuard.active; -1: none pending
	fails       int
	since       time.Time // first failure counted
	bannedUntil time.Time
}

// login is one login admitted by a handshakeGuard.
type login struct {
	g      *handshakeGuard
	ip     netip.Addr
	start  time.Time
	st     *loginState // nil: an untracked source (see maxTracked)
	banned bool        // its source was banned when it began
	// Under g.mu: ended, once the guard no longer counts it; evict closes
	// its connection (nil: it cannot be closed yet, as a QUIC handshake
	// before quic-go hands it over; pushed out, it then ends there).
	ended     bool
	evict     func()
	lingering bool // pushed out, it has not arrived nor timed out
}

// Abort ends a login that failed before its connection reached the relay
// (tunnel.Admission, for QUIC).
func (l *login) Abort() { l.g.done(l, loginAborted) }

// banInfo is what a verdict did to a banned (or now banned) source.
type banInfo struct {
	started bool          // this failure started the ban
	left    time.Duration // how long it lasts still; 0: not banned
}

func newHandshakeGuard(cfg config.Guard) *handshakeGuard {
	return &handshakeGuard{cfg: cfg, now: time.Now, sources: make(map[netip.Addr]*loginState), trusted: make(map[netip.Addr]time.Time)}
}

// admit counts a new login from ip, or says why it is refused; evict, if
// not nil, closes its connection (see attach). A login it pushed out to
// make room is ended and its connection closed (pushed: its address).
func (g *handshakeGuard) admit(ip netip.Addr, evict func()) (l *login, pushed netip.Addr, why string) {
	k := sourceKey(ip)
	now := g.now()
	g.mu.Lock()
	st := g.sources[k]
	banned := st != nil && now.Before(st.bannedUntil)
	mine := 0
	if st != nil {
		mine = len(st.logins)
	}
	var victim *login
	switch {
	case banned && mine > 0:
		if victim = st.oldest(now.Add(-bannedPace-loginMinAge), g.lingering < g.cfg.MaxHandshakes); victim == nil {
			g.mu.Unlock()
			return nil, pushed, "banned after failed logins: one login at a time, and one is in progress"
		}
	case mine >= g.cfg.MaxHandshakesPerIP:
		g.mu.Unlock()
		return nil, pushed, "too many logins in progress from this address"
	}
	limit := g.cfg.MaxHandshakes
	if now.Sub(g.trusted[k]) <= trustedFor {
		limit += trustedReserve
	}
	if victim == nil && g.pending >= limit {
		if victim = g.victim(mine, now.Add(-loginMinAge), g.lingering < g.cfg.MaxHandshakes); victim == nil {
			g.mu.Unlock()
			return nil, pushed, "too many logins in progress"
		}
	}
	var closeVictim func()
	if victim != nil {
		pushed, closeVictim = victim.ip, victim.evict
		g.end(victim)
		if closeVictim == nil {
			victim.lingering = true
			g.lingering++
		}
	}
	if st == nil && len(g.sources) < maxTracked {
		st = &loginState{key: k, active: -1}
		g.sources[k] = st
	}
	l = &login{g: g, ip: ip, start: now, st: st, banned: banned, evict: evict}
	if st != nil {
		if len(st.logins) == 0 {
			st.active = len(g.active)
			g.active = append(g.active, st)
		}
		st.logins = append(st.logins, l)
	}
	g.pending++
	g.mu.Unlock()
	if closeVictim != nil {
		go closeVictim() // closing a TLS connection may wait on its writer
	}
	return l, pushed, ""
}

// oldest returns the source's oldest pending login that began at cutoff
// or before and may be pushed out (linger: also one without a connection
// to close yet), or nil.
func (st *loginState) oldest(cutoff time.Time, linger bool) *login {
	for _, l := range st.logins {
		if l.start.After(cutoff) {
			return nil
		}
		if l.evict != nil || linger {
			return l
		}
	}
	return nil
}

// victim picks the login a newcomer from a source with mine pending logins
// pushes out, of the sources with more: any of them for a newcomer whose
// source has none, else one with at least two more (swapping one login
// for another would only churn). Of those, the one with the most (ties:
// the oldest login), its oldest login that oldest allows. nil: none. It
// looks at every source with a pending login, at most max_handshakes +
// trustedReserve of them, and only when the global cap is reached.
func (g *handshakeGuard) victim(mine int, cutoff time.Time, linger bool) *login {
	var best *login
	bestN := 0
	for _, st := range g.active {
		n := len(st.logins)
		if n <= mine || mine > 0 && n == mine+1 || n < bestN {
			continue
		}
		l := st.oldest(cutoff, linger)
		if l == nil {
			continue
		}
		if best == nil || n > bestN || l.start.Before(best.start) {
			best, bestN = l, n
		}
	}
	return best
}

// attach sets what closes l's connection, once there is one (QUIC: at
// Accept). It reports false if l was pushed out meanwhile: the caller
// closes the connection.
func (g *handshakeGuard) attach(l *login, evict func()) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if l.ended {
		g.arrived(l)
		return false
	}
	l.evict = evict
	return true
}

// arrived notes that a login pushed out has ended in quic-go too (under
// mu).
func (g *handshakeGuard) arrived(l *login) {
	if l.lingering {
		l.lingering = false
		g.lingering--
	}
}

// end stops counting l (under mu).
func (g *handshakeGuard) end(l *login) {
	l.ended = true
	g.pending--
	st := l.st
	if st == nil {
		return
	}
	for i, x := range st.logins {
		if x == l {
			st.logins = append(st.logins[:i], st.logins[i+1:]...)
			break
		}
	}
	if len(st.logins) == 0 && st.active >= 0 {
		last := g.active[len(g.active)-1]
		g.active[st.active] = last
		last.active = st.active
		g.active = g.active[:len(g.active)-1]
		st.active = -1
	}
}

// done ends a login admitted before with its verdict, and reports what it
// did to a ban of the source. Only a successful login clears the failures
// counted (outside a ban): connections that end without a verdict leave
// them be. A login pushed out before has ended already; done ignores it.
func (g *handshakeGuard) done(l *login, res loginResult) (ban banInfo) {
	now := g.now()
	g.mu.Lock()
	defer g.mu.Unlock()
	if l.ended {
		g.arrived(l)
		return ban
	}
	g.end(l)
	st := l.st
	if st == nil {
		return ban
	}
	if res == loginFailed && g.cfg.AuthBanAfter > 0 {
		if st.fails == 0 || now.Sub(st.since) > g.cfg.AuthBanFor {
			st.fails, st.since = 0, now
		}
		st.fails++
		if st.fails >= g.cfg.AuthBanAfter {
			st.fails = 0
			st.bannedUntil = now.Add(g.cfg.AuthBanFor)
			ban.started = true
		}
	}
	if now.Before(st.bannedUntil) {
		ban.left = st.bannedUntil.Sub(now)
	}
	if res == loginOK {
		// A correct token does not lift a ban: it proves this agent, not
		// whoever else shares the address.
		if ban.left == 0 {
			st.fails = 0
		}
		k := st.key
		if last, ok := g.trusted[k]; ok || len(g.trusted) < maxTrusted {
			g.trusted[k] = now
			if g.learned != nil && (!ok || now.Sub(last) >= knownRefresh) {
				g.learned()
			}
		}
	}
	if len(st.logins) == 0 && st.fails == 0 && !now.Before(st.bannedUntil) {
		delete(g.sources, st.key)
	}
	g.sweep(now)
	return ban
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
		if len(st.logins) == 0 && !now.Before(st.bannedUntil) && (st.fails == 0 || now.Sub(st.since) > g.cfg.AuthBanFor) {
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
	g.mu.Lock()
	defer g.mu.Unlock()
	rate := float64(g.cfg.VisitorRate) / 60 // per second
	burst := float64(g.cfg.VisitorBurst)
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
	return false, why, g.countRefusal(st, now)
}

// countRefusal counts a refusal of st's source and reports whether it
// started a ban. Refusals count within a window of VisitorBanFor.
func (g *visitorGuard) countRefusal(st *visitorState, now time.Time) (banned bool) {
	if st.refused == 0 || now.Sub(st.refusedSince) > g.cfg.VisitorBanFor {
		st.refused, st.refusedSince = 0, now
	}
	st.refused++
	if g.cfg.VisitorBanAfter > 0 && st.refused >= g.cfg.VisitorBanAfter {
		st.refused = 0
		st.bannedUntil = now.Add(g.cfg.VisitorBanFor)
		return true
	}
	return false
}

// strike counts a refusal of ip, admitted before, for what it did on its
// connection (a web request with a wrong password): enough of them ban
// it, as refused connections do. It reports whether this one started a
// ban.
func (g *visitorGuard) strike(ip netip.Addr) (banned bool) {
	k := sourceKey(ip.Unmap())
	now := g.now()
	g.mu.Lock()
	defer g.mu.Unlock()
	st := g.sources[k]
	if st == nil {
		return false // untracked: see maxTracked
	}
	return g.countRefusal(st, now)
}

// isBanned reports whether ip is banned now.
func (g *visitorGuard) isBanned(ip netip.Addr) bool {
	k := sourceKey(ip.Unmap())
	now := g.now()
	g.mu.Lock()
	defer g.mu.Unlock()
	st := g.sources[k]
	return st != nil && now.Before(st.bannedUntil)
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

// maxBansShown bounds the bans a status lists from one guard.
const maxBansShown = 256

// bans lists the sources banned now, at most maxBansShown.
func (g *handshakeGuard) bans(now time.Time) []BanStatus {
	g.mu.Lock()
	defer g.mu.Unlock()
	var out []BanStatus
	for k, st := range g.sources {
		if now.Before(st.bannedUntil) && len(out) < maxBansShown {
			out = append(out, BanStatus{Where: "agent port", Addr: sourceText(k), Until: st.bannedUntil})
		}
	}
	return out
}

// bans lists the sources banned from the tunnel now, at most maxBansShown.
func (g *visitorGuard) bans(now time.Time, where string) []BanStatus {
	g.mu.Lock()
	defer g.mu.Unlock()
	var out []BanStatus
	for k, st := range g.sources {
		if now.Before(st.bannedUntil) && len(out) < maxBansShown {
			out = append(out, BanStatus{Where: where, Addr: sourceText(k), Until: st.bannedUntil})
		}
	}
	return out
}

// sourceText names a guard's source: an IPv4 address, or an IPv6 /64.
func sourceText(k netip.Addr) string {
	if k.Is6() {
		return netip.PrefixFrom(k, 64).String()
	}
	return k.String()
}

// setConfig puts new limits in force (a reload); what the guard counted
// so far stays.
func (g *handshakeGuard) setConfig(cfg config.Guard) {
	g.mu.Lock()
	g.cfg = cfg
	g.mu.Unlock()
}

// setConfig puts new limits in force (a reload); the tunnel's allow and
// deny lists, and what the guard counted so far, stay.
func (g *visitorGuard) setConfig(cfg config.Guard) {
	g.mu.Lock()
	g.cfg = cfg
	g.mu.Unlock()
}
