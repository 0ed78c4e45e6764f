package relay

import (
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/homeport/homeport/config"
)

func TestKnownAgentsFile(t *testing.T) {
	now := time.Unix(2e9, 0)
	path := filepath.Join(t.TempDir(), KnownAgentsFile)

	if known, err := loadKnownAgents(path, now); known != nil || err != nil {
		t.Fatalf("missing file: %v, %v; want nothing and no error", known, err)
	}
	want := map[netip.Addr]time.Time{
		addr("198.51.100.7"):   now.Add(-time.Hour),
		addr("2001:db8:1:2::"): now.Add(-23 * time.Hour),
	}
	if err := saveKnownAgents(path, want); err != nil {
		t.Fatal(err)
	}
	got, err := loadKnownAgents(path, now)
	if err != nil || len(got) != len(want) {
		t.Fatalf("round trip: %v, %v; want %v", got, err, want)
	}
	for k, v := range want {
		if !got[k].Equal(v) {
			t.Errorf("%v: %v, want %v", k, got[k], v)
		}
	}
	if left, _ := filepath.Glob(path + ".*"); len(left) != 0 {
		t.Errorf("temporary files left: %v", left)
	}

	// Damage, expiry and times from the future.
	text := strings.Join([]string{
		"198.51.100.7 " + unix(now.Add(-time.Hour)),
		"not-an-address 12",
		"198.51.100.8",
		"198.51.100.9 " + unix(now.Add(-25*time.Hour)), // expired
		"198.51.100.10 " + unix(now.Add(48*time.Hour)), // from the future
		"",
		"2001:db8:9:9::5 " + unix(now.Add(-time.Minute)), // kept by its /64
	}, "\n")
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	got, err = loadKnownAgents(path, now)
	if err == nil || !strings.Contains(err.Error(), KnownAgentsFile+":2:") {
		t.Errorf("damaged file: err %v, want one naming line 2", err)
	}
	if len(got) != 2 || got[addr("198.51.100.7")].IsZero() || got[addr("2001:db8:9:9::")].IsZero() {
		t.Errorf("damaged file: kept %v; want 198.51.100.7 and 2001:db8:9:9::", got)
	}
}

func unix(t time.Time) string { return strconv.FormatInt(t.Unix(), 10) }

// TestGuardTrustsKnownAgents: sources loaded from before pass a full
// global cap; a new login of a source, or one after knownRefresh, is
// reported so that it is saved.
func TestGuardTrustsKnownAgents(t *testing.T) {
	clk := &fakeClock{t: time.Unix(2e9, 0)}
	g := newHandshakeGuard(config.Guard{MaxHandshakes: 2, MaxHandshakesPerIP: 2})
	g.now = clk.now
	learned := 0
	g.learned = func() { learned++ }
	known, stranger := addr("198.51.100.7"), addr("198.51.100.8")
	g.trust(map[netip.Addr]time.Time{known: clk.t.Add(-time.Hour)})

	for _, a := range []netip.Addr{addr("203.0.113.1"), addr("203.0.113.2")} {
		if l, _, _ := g.admit(a, nil); l == nil {
			t.Fatalf("login from %v refused below the cap", a)
		}
	}
	if l, _, _ := g.admit(stranger, nil); l != nil {
		t.Fatal("a stranger admitted past the full cap")
	}
	l, _, _ := g.admit(known, nil)
	if l == nil {
		t.Fatal("a known agent's address refused at the full cap")
	}
	g.done(l, loginOK)
	if learned != 1 {
		t.Fatalf("login of an entry an hour old reported %d times, want 1", learned)
	}
	clk.add(time.Minute)
	if l, _, _ = g.admit(known, nil); l == nil {
		t.Fatal("known agent refused")
	}
	g.done(l, loginOK)
	if learned != 1 {
		t.Fatalf("a login a minute after the last reported again (%d)", learned)
	}
	if snap := g.trustedSnapshot(); !snap[known].Equal(clk.t) {
		t.Fatalf("snapshot %v: want %v at %v", snap, known, clk.t)
	}
}
