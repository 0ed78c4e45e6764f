package relay

import (
	"net/netip"
	"testing"
	"time"

	"github.com/homeport/homeport/config"
)

type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time      { return c.t }
func (c *fakeClock) add(d time.Duration) { c.t = c.t.Add(d) }
func addr(s string) netip.Addr           { return netip.MustParseAddr(s) }
func prefixes(ss ...string) (ps []netip.Prefix) {
	for _, s := range ss {
		ps = append(ps, netip.MustParsePrefix(s))
	}
	return ps
}

// guardAdmit admits a login from ip or fails the test.
func guardAdmit(t *testing.T, g *handshakeGuard, ip netip.Addr) *login {
	t.Helper()
	l, _, why := g.admit(ip, nil)
	if l == nil {
		t.Fatalf("admit %v: %s", ip, why)
	}
	return l
}

func TestHandshakeGuard(t *testing.T) {
	clk := &fakeClock{t: time.Unix(1e9, 0)}
	g := newHandshakeGuard(config.Guard{MaxHandshakes: 4, MaxHandshakesPerIP: 2, AuthBanAfter: 3, AuthBanFor: time.Minute})
	g.now = clk.now
	a, b := addr("198.51.100.1"), addr("198.51.100.2")

	// Per address, then in all.
	la := []*login{guardAdmit(t, g, a), guardAdmit(t, g, a)}
	if l, _, why := g.admit(a, nil); l != nil || why != "too many logins in progress from this address" {
		t.Fatalf("third login from a: %v %q", l, why)
	}
	lb := guardAdmit(t, g, b)
	l3 := guardAdmit(t, g, addr("198.51.100.3"))
	if l, _, why := g.admit(addr("198.51.100.4"), nil); l != nil || why != "too many logins in progress" {
		t.Fatalf("fifth login: %v %q", l, why)
	}
	g.done(la[0], loginOK)
	g.done(lb, loginOK)
	g.done(l3, loginOK)
	g.done(la[1], loginOK)
	g.done(la[1], loginOK) // a second verdict counts for nothing
	if g.pending != 0 {
		t.Fatalf("%d logins pending, want 0", g.pending)
	}

	// IPv6 counts by /64.
	l6 := []*login{guardAdmit(t, g, addr("2001:db8:1:2::1")), guardAdmit(t, g, addr("2001:db8:1:2::ffff"))}
	if l, _, _ := g.admit(addr("2001:db8:1:2:abcd::1"), nil); l != nil {
		t.Fatal("third login from one /64 admitted")
	}
	g.done(l6[0], loginOK)
	g.done(l6[1], loginOK)

	// Failed logins ban, within the window only.
	fail := func(ip netip.Addr) banInfo {
		return g.done(guardAdmit(t, g, ip), loginFailed)
	}
	fail(a)
	clk.add(2 * time.Minute) // the first failure is out of the window
	fail(a)
	fail(a)
	// A connection that ends without a verdict does not clear them.
	g.done(guardAdmit(t, g, a), loginAborted)
	if ban := fail(a); !ban.started || ban.left != time.Minute {
		t.Fatalf("third failure within the window: %+v, want a ban of a minute", ban)
	}
	// Banned: one login at a time, which a newer one pushes out only once
	// it is bannedPace+loginMinAge old.
	clk.add(10 * time.Second)
	l := guardAdmit(t, g, a)
	if !l.banned {
		t.Fatal("login from a banned address not marked")
	}
	if l2, _, why := g.admit(a, nil); l2 != nil || why != "banned after failed logins: one login at a time, and one is in progress" {
		t.Fatalf("second login from the banned address: %v %q", l2, why)
	}
	clk.add(bannedPace + loginMinAge)
	l2, pushed, _ := g.admit(a, nil)
	if l2 == nil || pushed != a || !l.ended {
		t.Fatalf("newer login from the banned address: %v, pushed %v; want the stalled one pushed out", l2, pushed)
	}
	if ban := g.done(l, loginOK); ban != (banInfo{}) {
		t.Fatalf("verdict of a login pushed out: %+v", ban)
	}
	// A wrong token extends nothing until ban_after more; a right one gets
	// in and leaves the ban.
	if ban := g.done(l2, loginFailed); ban.started || ban.left != time.Minute-10*time.Second-bannedPace-loginMinAge {
		t.Fatalf("wrong token during the ban: %+v", ban)
	}
	if ban := g.done(guardAdmit(t, g, a), loginOK); ban.started || ban.left <= 0 {
		t.Fatalf("right token during the ban: %+v; want the ban left as it was", ban)
	}
	if _, ok := g.trusted[a]; !ok {
		t.Fatal("right token from a banned address not trusted")
	}
	g.done(guardAdmit(t, g, b), loginOK)
	clk.add(time.Minute)
	if l := guardAdmit(t, g, a); l.banned {
		t.Fatal("ban did not expire")
	} else {
		g.done(l, loginOK)
	}
	if g.pending != 0 || len(g.active) != 0 {
		t.Fatalf("%d logins still pending, %d sources active", g.pending, len(g.active))
	}
	clk.add(25 * time.Hour)
	for range 10 {
		g.sweep(clk.now())
	}
	if len(g.sources) != 0 || len(g.trusted) != 0 {
		t.Fatalf("%d sources, %d trusted remembered after everything expired", len(g.sources), len(g.trusted))
	}
}

// TestHandshakeGuardTrusted: a source that logged in before gets past a
// global cap filled by others.
func TestHandshakeGuardTrusted(t *testing.T) {
	g := newHandshakeGuard(config.Guard{MaxHandshakes: 2, MaxHandshakesPerIP: 2})
	home := addr("198.51.100.10")
	g.done(guardAdmit(t, g, home), loginOK)
	for _, ip := range []string{"203.0.113.1", "203.0.113.2"} {
		guardAdmit(t, g, addr(ip))
	}
	if l, _, _ := g.admit(addr("203.0.113.3"), nil); l != nil {
		t.Fatal("stranger admitted over the cap")
	}
	if l, _, why := g.admit(home, nil); l == nil {
		t.Fatalf("known agent kept out by the flood: %s", why)
	}
}

// TestHandshakeGuardPushOut: with every slot taken, a newcomer pushes out
// the oldest login of the source with the most, once it is loginMinAge
// old, and closes its connection; never a login of a source with as few
// as the newcomer's own.
func TestHandshakeGuardPushOut(t *testing.T) {
	clk := &fakeClock{t: time.Unix(1e9, 0)}
	g := newHandshakeGuard(config.Guard{MaxHandshakes: 6, MaxHandshakesPerIP: 3})
	g.now = clk.now
	closed := make(chan netip.Addr, 8)
	admit := func(ip netip.Addr) (*login, netip.Addr, string) {
		return g.admit(ip, func() { closed <- ip })
	}
	big, small, fresh := addr("203.0.113.1"), addr("203.0.113.2"), addr("198.51.100.1")
	var bigs []*login
	for range 3 {
		l, _, _ := admit(big)
		bigs = append(bigs, l)
		clk.add(100 * time.Millisecond)
	}
	l, _, _ := admit(small)
	l2, _, _ := admit(small)
	if l == nil || l2 == nil || len(bigs) != 3 || bigs[2] == nil {
		t.Fatal("flood not admitted")
	}
	guardAdmit(t, g, addr("203.0.113.3")) // a QUIC handshake, no connection yet
	// Full, and every login younger than loginMinAge.
	if l, _, why := admit(fresh); l != nil || why != "too many logins in progress" {
		t.Fatalf("newcomer with every login young: %v %q", l, why)
	}
	clk.add(loginMinAge)
	l, pushed, why := admit(fresh)
	if l == nil || pushed != big || !bigs[0].ended || bigs[1].ended {
		t.Fatalf("newcomer: %v, pushed %v (%s); want the oldest login of %v pushed out", l, pushed, why, big)
	}
	select {
	case ip := <-closed:
		if ip != big {
			t.Fatalf("closed a connection of %v, want %v", ip, big)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the login pushed out was not closed")
	}
	// big and small have 2 each now, fresh 1: fresh's next login would
	// only swap one for another; a new source pushes out the older of
	// big's and small's oldest logins, big's.
	if l, _, _ := admit(fresh); l != nil {
		t.Fatal("a source pushed out a login of a source with one more")
	}
	if l, pushed, _ := admit(addr("198.51.100.2")); l == nil || pushed != big || !bigs[1].ended {
		t.Fatalf("second newcomer: pushed %v, want %v", pushed, big)
	}
	// Now small has 2, the others 1: a new source pushes out small's.
	if l, pushed, _ := admit(addr("198.51.100.3")); l == nil || pushed != small {
		t.Fatalf("third newcomer: pushed %v, want %v", pushed, small)
	}
	if g.pending != 6 {
		t.Fatalf("%d logins pending, want the cap of 6", g.pending)
	}

	// A login without a connection yet (QUIC, before Accept) is ended when
	// pushed out, and attach then tells its caller to close it. At most
	// max_handshakes such logins linger in quic-go; past that they are
	// not pushed out.
	g = newHandshakeGuard(config.Guard{MaxHandshakes: 1, MaxHandshakesPerIP: 1})
	g.now = clk.now
	q := guardAdmit(t, g, big)
	clk.add(loginMinAge)
	q2 := guardAdmit(t, g, fresh)
	if !q.ended || g.lingering != 1 {
		t.Fatalf("login pushed out before it had a connection: ended %v, %d lingering", q.ended, g.lingering)
	}
	clk.add(loginMinAge)
	if l, _, why := g.admit(small, nil); l != nil || why != "too many logins in progress" {
		t.Fatalf("newcomer with one login lingering already: %v %q", l, why)
	}
	if g.attach(q, func() {}) || g.lingering != 0 {
		t.Fatalf("attach of a login pushed out: %d lingering", g.lingering)
	}
	if l, pushed, _ := g.admit(small, nil); l == nil || pushed != fresh || !q2.ended {
		t.Fatalf("newcomer once nothing lingers: pushed %v", pushed)
	}
	g.done(q2, loginAborted) // timed out in quic-go
	if g.lingering != 0 {
		t.Fatalf("%d logins lingering after the last timed out", g.lingering)
	}
}

func TestVisitorGuardLists(t *testing.T) {
	g := newVisitorGuard(withGuardDefaults(config.Guard{}), prefixes("198.51.100.0/24", "2001:db8::/32"), prefixes("198.51.100.66/32"))
	for _, tt := range []struct {
		ip   string
		want bool
	}{
		{"198.51.100.7", true},
		{"198.51.100.66", false}, // deny wins
		{"203.0.113.1", false},   // not in allow
		{"2001:db8::5", true},
		{"::ffff:198.51.100.8", true}, // v4-mapped counts as v4
		{"2001:db9::1", false},
	} {
		ok, why, _ := g.admit(addr(tt.ip))
		if ok != tt.want {
			t.Errorf("%s: admitted %v (%s), want %v", tt.ip, ok, why, tt.want)
		}
		if ok {
			g.release(addr(tt.ip))
		}
	}
	open := newVisitorGuard(withGuardDefaults(config.Guard{}), nil, prefixes("10.0.0.0/8"))
	if ok, _, _ := open.admit(addr("203.0.113.1")); !ok {
		t.Error("empty allow list refused a stranger")
	}
	if ok, _, _ := open.admit(addr("10.1.2.3")); ok {
		t.Error("deny list ignored")
	}
}

func TestVisitorGuardLimits(t *testing.T) {
	clk := &fakeClock{t: time.Unix(1e9, 0)}
	g := newVisitorGuard(config.Guard{VisitorMaxConns: 3, VisitorRate: 60, VisitorBurst: 5, VisitorBanAfter: 4, VisitorBanFor: time.Minute}, nil, nil)
	g.now = clk.now
	a, b := addr("198.51.100.1"), addr("198.51.100.2")

	// Concurrent cap.
	for i := range 3 {
		if ok, why, _ := g.admit(a); !ok {
			t.Fatalf("conn %d: %s", i, why)
		}
	}
	if ok, why, _ := g.admit(a); ok || why != "too many open connections from this address" {
		t.Fatalf("fourth open conn: %v %q", ok, why)
	}
	for range 3 {
		g.release(a)
	}
	// Rate: 2 tokens left of the burst of 5; one a second after that.
	for i := range 2 {
		if ok, why, _ := g.admit(a); !ok {
			t.Fatalf("burst conn %d: %s", i, why)
		}
		g.release(a)
	}
	if ok, why, _ := g.admit(a); ok || why != "too many new connections from this address" {
		t.Fatalf("over the burst: %v %q", ok, why)
	}
	clk.add(time.Second)
	if ok, _, _ := g.admit(a); !ok {
		t.Fatal("token not refilled after a second")
	}
	g.release(a)
	if ok, _, _ := g.admit(b); !ok {
		t.Fatal("another address limited by a's use")
	}
	g.release(b)
	// Refusals ban: two so far, the fourth in the window bans (once).
	var bans int
	for range 3 {
		if _, _, b := g.admit(a); b {
			bans++
		}
	}
	if bans != 1 {
		t.Fatal("no ban after VisitorBanAfter refusals")
	}
	clk.add(30 * time.Second) // bucket full again, still banned
	if ok, why, _ := g.admit(a); ok || why != "banned for too many connections" {
		t.Fatalf("during ban: %v %q", ok, why)
	}
	clk.add(31 * time.Second)
	if ok, _, _ := g.admit(a); !ok {
		t.Fatal("ban did not expire")
	}
	g.release(a)
	clk.add(time.Hour)
	g.sweep(clk.now())
	if len(g.sources) != 0 {
		t.Fatalf("%d sources remembered after everything expired", len(g.sources))
	}
}
