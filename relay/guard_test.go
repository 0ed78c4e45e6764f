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

func TestHandshakeGuard(t *testing.T) {
	clk := &fakeClock{t: time.Unix(1e9, 0)}
	g := newHandshakeGuard(config.Guard{MaxHandshakes: 4, MaxHandshakesPerIP: 2, AuthBanAfter: 3, AuthBanFor: time.Minute})
	g.now = clk.now
	a, b := addr("198.51.100.1"), addr("198.51.100.2")

	// Per address, then in all.
	for i, want := range []bool{true, true, false} {
		if ok, _ := g.admit(a); ok != want {
			t.Fatalf("admit %d from a: %v", i, ok)
		}
	}
	if ok, _ := g.admit(b); !ok {
		t.Fatal("b refused while a is at its cap")
	}
	if ok, _ := g.admit(addr("198.51.100.3")); !ok {
		t.Fatal("fourth login refused")
	}
	if ok, why := g.admit(addr("198.51.100.4")); ok || why != "too many logins in progress" {
		t.Fatalf("fifth login: %v %q", ok, why)
	}
	g.done(a, loginOK)
	g.done(b, loginOK)
	g.done(addr("198.51.100.3"), loginOK)
	g.done(a, loginOK)

	// IPv6 counts by /64.
	if ok, _ := g.admit(addr("2001:db8:1:2::1")); !ok {
		t.Fatal("v6 refused")
	}
	if ok, _ := g.admit(addr("2001:db8:1:2::ffff")); !ok {
		t.Fatal("second v6 of the /64 refused")
	}
	if ok, _ := g.admit(addr("2001:db8:1:2:abcd::1")); ok {
		t.Fatal("third login from one /64 admitted")
	}
	g.done(addr("2001:db8:1:2::1"), loginOK)
	g.done(addr("2001:db8:1:2::ffff"), loginOK)

	// Failed logins ban, within the window only.
	fail := func(ip netip.Addr) bool {
		if ok, why := g.admit(ip); !ok {
			t.Fatalf("admit %v: %s", ip, why)
		}
		return g.done(ip, loginFailed)
	}
	fail(a)
	clk.add(2 * time.Minute) // the first failure is out of the window
	fail(a)
	fail(a)
	// A connection that ends without a verdict does not clear them.
	if ok, _ := g.admit(a); !ok {
		t.Fatal("admit")
	}
	g.done(a, loginAborted)
	if !fail(a) {
		t.Fatal("third failure within the window did not ban")
	}
	if ok, why := g.admit(a); ok || why != "banned after failed logins" {
		t.Fatalf("banned address admitted: %v %q", ok, why)
	}
	if ok, _ := g.admit(b); !ok {
		t.Fatal("another address refused during a's ban")
	}
	g.done(b, loginOK)
	clk.add(time.Minute)
	if ok, _ := g.admit(a); !ok {
		t.Fatal("ban did not expire")
	}
	g.done(a, loginOK)
	if g.pending != 0 {
		t.Fatalf("%d logins still pending", g.pending)
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
	if ok, _ := g.admit(home); !ok {
		t.Fatal("first login refused")
	}
	g.done(home, loginOK)
	for _, ip := range []string{"203.0.113.1", "203.0.113.2"} {
		if ok, _ := g.admit(addr(ip)); !ok {
			t.Fatalf("%s refused", ip)
		}
	}
	if ok, _ := g.admit(addr("203.0.113.3")); ok {
		t.Fatal("stranger admitted over the cap")
	}
	if ok, why := g.admit(home); !ok {
		t.Fatalf("known agent kept out by the flood: %s", why)
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
