package ddns

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/homeport/homeport/internal/leak"
)

// mutableSource is a source whose answer tests change.
type mutableSource struct {
	mu    sync.Mutex
	addrs []netip.Addr
	err   error
	calls int
}

func (s *mutableSource) Name() string { return "test" }

func (s *mutableSource) Addrs(context.Context) ([]netip.Addr, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls++
	return slices.Clone(s.addrs), s.err
}

func (s *mutableSource) set(a []netip.Addr, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.addrs, s.err = a, err
}

// testUpdater returns an updater of testName (both families) over p,
// with a fake clock and logs in a buffer.
func testUpdater(p Provider, src Source) (*Updater, *fakeClock, *logBuffer) {
	clock, logs := newFakeClock(), &logBuffer{}
	return &Updater{
		Provider:       p,
		Source:         src,
		Names:          []NameConfig{{Name: testName, IPv4: true, IPv6: true}},
		Log:            logs.logger(),
		Now:            clock.Now,
		ConfirmTimeout: -1,
	}, clock, logs
}

func statusOf(t *testing.T, sts []Status, typ string) Status {
	t.Helper()
	for _, s := range sts {
		if s.Type == typ {
			return s
		}
	}
	t.Fatalf("no status for %s in %v", typ, sts)
	return Status{}
}

func TestUpdaterWritesConfirmsAndThenOnlyReads(t *testing.T) {
	p := newMemProvider()
	src := &mutableSource{addrs: addrs("2001:db8::5", "203.0.113.5", "203.0.113.5")}
	u, clock, logs := testUpdater(p, src)
	sts := u.Sync(context.Background())
	for _, typ := range []string{TypeA, TypeAAAA} {
		st := statusOf(t, sts, typ)
		if !st.Synced || st.LastError != nil || !st.LastUpdate.Equal(clock.Now()) {
			t.Errorf("%s: %+v", typ, st)
		}
	}
	if got := p.get(testName, TypeA); !slices.Equal(got, addrs("203.0.113.5")) {
		t.Errorf("A = %v", got)
	}
	if got := p.get(testName, TypeAAAA); !slices.Equal(got, addrs("2001:db8::5")) {
		t.Errorf("AAAA = %v", got)
	}
	if !strings.Contains(logs.String(), "records updated") {
		t.Errorf("no log of the update:\n%s", logs)
	}
	clock.Add(time.Hour)
	u.Sync(context.Background())
	if p.numSets() != 2 {
		t.Errorf("%d writes, want 2: unchanged records were written again", p.numSets())
	}
	if got := u.Status(); len(got) != 2 || !got[0].Synced || got[0].LastCheck != clock.Now() {
		t.Errorf("Status() = %+v", got)
	}

	// A new IPv4 address: only A is written.
	src.set(addrs("203.0.113.6", "2001:db8::5"), nil)
	clock.Add(time.Hour)
	sts = u.Sync(context.Background())
	if p.numSets() != 3 || !slices.Equal(p.get(testName, TypeA), addrs("203.0.113.6")) {
		t.Errorf("after a change: %d writes, A = %v", p.numSets(), p.get(testName, TypeA))
	}
	if st := statusOf(t, sts, TypeA); !st.Synced || !slices.Equal(st.Current, addrs("203.0.113.6")) {
		t.Errorf("A status %+v", st)
	}
}

func TestUpdaterMisbehavingProvider(t *testing.T) {
	tests := []struct {
		misbehave string
		errText   string
	}{
		{"duplicate", "provider shows 203.0.113.5, 203.0.113.5 after writing 203.0.113.5"},
		{"wrong", "provider shows 203.0.113.1 after writing 203.0.113.5"},
		// Writing A deletes AAAA, writing AAAA back deletes A: whichever
		// report came last stays.
		{"neighbour", "changed from 203.0.113.5 to no address when AAAA was written"},
	}
	for _, tt := range tests {
		t.Run(tt.misbehave, func(t *testing.T) {
			p := newMemProvider()
			p.put(testName, TypeA, addrs("203.0.113.1")...)
			p.put(testName, TypeAAAA, addrs("2001:db8::5")...)
			p.misbehave = tt.misbehave
			u, _, logs := testUpdater(p, &mutableSource{addrs: addrs("203.0.113.5", "2001:db8::5")})
			st := statusOf(t, u.Sync(context.Background()), TypeA)
			if st.Synced {
				t.Errorf("marked synced: %+v", st)
			}
			if st.LastError == nil || !strings.Contains(st.LastError.Error(), tt.errText) {
				t.Errorf("error %v, want one containing %q", st.LastError, tt.errText)
			}
			if st.NextAttempt.IsZero() {
				t.Error("no retry planned")
			}
			if !strings.Contains(logs.String(), "level=WARN") {
				t.Errorf("not logged:\n%s", logs)
			}
		})
	}
}

func TestUpdaterReportsDamagedNeighbour(t *testing.T) {
	p := newMemProvider()
	p.put(testName, TypeAAAA, addrs("2001:db8::5")...)
	p.misbehave = "neighbour"
	u, _, _ := testUpdater(p, &mutableSource{addrs: addrs("203.0.113.5", "2001:db8::5")})
	u.Names[0].IPv6 = false // AAAA is not managed, and must still be left alone
	st := u.Sync(context.Background())
	if len(st) != 1 || st[0].Synced || st[0].LastError == nil || !strings.Contains(st[0].LastError.Error(), "changed the AAAA records") {
		t.Errorf("status %+v", st)
	}
}

func TestUpdaterMinWriteInterval(t *testing.T) {
	p := newMemProvider()
	src := &mutableSource{addrs: addrs("203.0.113.5")}
	u, clock, _ := testUpdater(p, src)
	u.Names[0].IPv6 = false
	u.Sync(context.Background())
	if p.numSets() != 1 {
		t.Fatalf("%d writes", p.numSets())
	}
	start := clock.Now()

	src.set(addrs("203.0.113.6"), nil)
	clock.Add(10 * time.Second)
	st := u.Sync(context.Background())[0]
	if p.numSets() != 1 {
		t.Fatal("wrote twice within the minimum write interval")
	}
	if st.Synced || st.LastError != nil || !st.NextAttempt.Equal(start.Add(DefaultMinWriteInterval)) {
		t.Errorf("deferred status %+v", st)
	}
	clock.Add(40 * time.Second)
	u.Sync(context.Background())
	if p.numSets() != 1 {
		t.Fatal("wrote before the minimum write interval was over")
	}
	clock.Add(10 * time.Second)
	st = u.Sync(context.Background())[0]
	if p.numSets() != 2 || !st.Synced || !slices.Equal(p.get(testName, TypeA), addrs("203.0.113.6")) {
		t.Errorf("after the interval: %d writes, status %+v", p.numSets(), st)
	}
}

func TestUpdaterForceRefresh(t *testing.T) {
	p := newMemProvider()
	p.put(testName, TypeA, addrs("203.0.113.5")...)
	u, clock, _ := testUpdater(p, &mutableSource{addrs: addrs("203.0.113.5")})
	u.Names[0].IPv6 = false
	u.Sync(context.Background()) // in sync: no write, even at start
	if p.numSets() != 0 {
		t.Fatal("wrote unchanged records at start")
	}
	clock.Add(DefaultForceRefresh - time.Minute)
	u.Sync(context.Background())
	if p.numSets() != 0 {
		t.Fatal("refreshed too early")
	}
	clock.Add(time.Minute)
	st := u.Sync(context.Background())[0]
	if p.numSets() != 1 || !st.Synced || !st.LastUpdate.Equal(clock.Now()) {
		t.Fatalf("no refresh after %v: %d writes, %+v", DefaultForceRefresh, p.numSets(), st)
	}
	clock.Add(DefaultForceRefresh - time.Minute)
	u.Sync(context.Background())
	if p.numSets() != 1 {
		t.Fatal("refreshed again too early: the refresh must count from the last write")
	}

	// Negative: never.
	p2 := newMemProvider()
	p2.put(testName, TypeA, addrs("203.0.113.5")...)
	u2, clock2, _ := testUpdater(p2, &mutableSource{addrs: addrs("203.0.113.5")})
	u2.Names[0].IPv6, u2.ForceRefresh = false, -1
	u2.Sync(context.Background())
	clock2.Add(100 * DefaultForceRefresh)
	u2.Sync(context.Background())
	if p2.numSets() != 0 {
		t.Error("refreshed with ForceRefresh < 0")
	}
}

func TestUpdaterStopsOnAuthAndAbuse(t *testing.T) {
	for _, perm := range []error{ErrAuth, ErrAbuse} {
		t.Run(perm.Error(), func(t *testing.T) {
			p := newMemProvider()
			p.setErrs = []error{perm}
			u, clock, logs := testUpdater(p, &mutableSource{addrs: addrs("203.0.113.5", "2001:db8::5")})
			sts := u.Sync(context.Background())
			for _, st := range sts {
				if !errors.Is(st.LastError, perm) || st.Synced {
					t.Errorf("status %+v", st)
				}
			}
			if p.numSets() != 1 {
				t.Errorf("%d writes after %v, want 1", p.numSets(), perm)
			}
			if !strings.Contains(logs.String(), "level=ERROR") || !strings.Contains(logs.String(), "no more updates") {
				t.Errorf("not logged clearly:\n%s", logs)
			}
			gets := p.numGets()
			clock.Add(48 * time.Hour)
			u.Sync(context.Background())
			if p.numSets() != 1 || p.numGets() != gets {
				t.Error("the provider was called again")
			}
			if err := u.Run(context.Background()); !errors.Is(err, perm) {
				t.Errorf("Run() = %v, want %v", err, perm)
			}
		})
	}
}

func TestUpdaterNoHostStopsOnlyThatName(t *testing.T) {
	p := newMemProvider()
	p.setErrs = []error{nil, ErrNoHost} // the first name's A works, its AAAA does not
	u, clock, _ := testUpdater(p, &mutableSource{addrs: addrs("203.0.113.5", "2001:db8::5")})
	u.Names = append(u.Names, NameConfig{Name: "other.example.com", IPv4: true})
	sts := u.Sync(context.Background())
	if !sts[0].Synced || !errors.Is(sts[1].LastError, ErrNoHost) || !sts[2].Synced {
		t.Fatalf("statuses %+v", sts)
	}
	clock.Add(48 * time.Hour)
	p.put("other.example.com", TypeA)
	u.Sync(context.Background())
	for _, s := range p.sets[3:] {
		if s.Name == testName && s.Type == TypeAAAA {
			t.Error("wrote the refused record again")
		}
	}
	if !slices.Equal(p.get("other.example.com", TypeA), addrs("203.0.113.5")) {
		t.Error("the other name is no longer kept up to date")
	}
}

func TestUpdaterBackoff(t *testing.T) {
	p := newMemProvider()
	p.setErrs = []error{errFlaky, errFlaky, errFlaky, errFlaky, errFlaky, errFlaky, errFlaky, errFlaky, errFlaky}
	u, clock, _ := testUpdater(p, &mutableSource{addrs: addrs("203.0.113.5")})
	u.Names[0].IPv6 = false
	u.MinWriteInterval = time.Nanosecond // the backoff alone decides
	var delays []time.Duration
	for range 9 {
		st := u.Sync(context.Background())[0]
		if !errors.Is(st.LastError, errFlaky) {
			t.Fatalf("status %+v", st)
		}
		d := st.NextAttempt.Sub(clock.Now())
		delays = append(delays, d)
		// Not before the retry is due.
		clock.Add(d - time.Millisecond)
		n := p.numSets()
		u.Sync(context.Background())
		if p.numSets() != n {
			t.Fatal("retried before the backoff was over")
		}
		clock.Add(time.Millisecond)
	}
	for i, d := range delays {
		ceiling := min(retryBase<<i, DefaultRetryMax)
		if d < min(retryFloor, ceiling) || d > ceiling+retryFloor || d > DefaultRetryMax {
			t.Errorf("retry %d after %v, want within [%v, %v]", i+1, d, retryFloor, ceiling+retryFloor)
		}
	}
	st := u.Sync(context.Background())[0]
	if !st.Synced || !st.NextAttempt.IsZero() {
		t.Errorf("after recovery: %+v", st)
	}
}

func TestUpdaterHonoursRetryAfter(t *testing.T) {
	p := newMemProvider()
	p.setErrs = []error{&RetryAfterError{After: 45 * time.Minute, Err: errFlaky}}
	u, clock, _ := testUpdater(p, &mutableSource{addrs: addrs("203.0.113.5")})
	u.Names[0].IPv6 = false
	st := u.Sync(context.Background())[0]
	if got := st.NextAttempt.Sub(clock.Now()); got < 45*time.Minute {
		t.Fatalf("next attempt in %v, want at least 45m", got)
	}
	clock.Add(44 * time.Minute)
	u.Sync(context.Background())
	if p.numSets() != 1 {
		t.Fatal("retried before Retry-After")
	}
	clock.Add(time.Minute)
	if st := u.Sync(context.Background())[0]; !st.Synced || p.numSets() != 2 {
		t.Errorf("after Retry-After: %d writes, %+v", p.numSets(), st)
	}
}

func TestUpdaterRefusesNonPublicAddresses(t *testing.T) {
	p := newMemProvider()
	p.put(testName, TypeA, addrs("203.0.113.1")...)
	src := &mutableSource{addrs: addrs("100.64.1.2", "fd00::2")}
	u, clock, logs := testUpdater(p, src)
	for range 3 {
		sts := u.Sync(context.Background())
		clock.Add(time.Hour)
		for _, st := range sts {
			if st.Synced || st.LastError == nil || !strings.Contains(st.LastError.Error(), "reach it through the relay") {
				t.Errorf("status %+v", st)
			}
		}
	}
	if p.numSets() != 0 || p.numGets() != 0 || !slices.Equal(p.get(testName, TypeA), addrs("203.0.113.1")) {
		t.Errorf("the provider was touched: %d writes", p.numSets())
	}
	if n := strings.Count(logs.String(), "address not published"); n != 2 {
		t.Errorf("%d warnings for two addresses over three rounds, want 2 (once per change):\n%s", n, logs)
	}
	src.set(addrs("10.0.0.2"), nil)
	u.Sync(context.Background())
	if n := strings.Count(logs.String(), "address not published"); n != 3 {
		t.Errorf("a changed address was not logged")
	}
}

func TestUpdaterSourceFailureKeepsRecords(t *testing.T) {
	p := newMemProvider()
	p.put(testName, TypeA, addrs("203.0.113.1")...)
	src := &mutableSource{err: errors.New("source down")}
	u, clock, _ := testUpdater(p, src)
	st := u.Sync(context.Background())[0]
	if st.LastError == nil || !strings.Contains(st.LastError.Error(), "source down") || p.numSets() != 0 {
		t.Fatalf("status %+v, %d writes", st, p.numSets())
	}
	// The source is backed off too.
	u.Sync(context.Background())
	if src.calls != 1 {
		t.Errorf("source asked %d times at once", src.calls)
	}
	clock.Add(DefaultRetryMax)
	src.set(addrs("203.0.113.5"), nil)
	if st := u.Sync(context.Background())[0]; !st.Synced {
		t.Errorf("after the source recovered: %+v", st)
	}
	// IPv6 is wanted but the source has none: AAAA is left alone.
	if st := u.Status()[1]; st.Synced || !strings.Contains(st.LastError.Error(), "no public IPv6 address") {
		t.Errorf("AAAA status %+v", st)
	}
}

func TestUpdaterValidate(t *testing.T) {
	p, src := newMemProvider(), StaticSource(nil)
	tests := []struct {
		name string
		u    *Updater
		err  string
	}{
		{"no provider", &Updater{Source: src, Names: []NameConfig{{Name: testName, IPv4: true}}}, "no provider"},
		{"no source", &Updater{Provider: p, Names: []NameConfig{{Name: testName, IPv4: true}}}, "no source"},
		{"no names", &Updater{Provider: p, Source: src}, "no names"},
		{"no family", &Updater{Provider: p, Source: src, Names: []NameConfig{{Name: testName}}}, "neither IPv4 nor IPv6"},
		{"bad name", &Updater{Provider: p, Source: src, Names: []NameConfig{{Name: "a b", IPv4: true}}}, "names[0]"},
		{"twice", &Updater{Provider: p, Source: src, Names: []NameConfig{{Name: testName, IPv4: true}, {Name: testName + ".", IPv6: true}}}, "listed twice"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.u.Validate(); err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("Validate() = %v, want %q", err, tt.err)
			}
			if err := tt.u.Run(context.Background()); err == nil {
				t.Error("Run() works")
			}
			if sts := tt.u.Sync(context.Background()); sts != nil {
				t.Errorf("Sync() = %v", sts)
			}
		})
	}
}

// TestUpdaterConfirmWaits: a provider that shows a write only after a
// few reads (an authoritative server catching up) is read again, with
// growing pauses, until the write shows.
func TestUpdaterConfirmWaits(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := newMemProvider()
		p.misbehave, p.lag = "lag", 4
		u := &Updater{Provider: p, Source: StaticSource(addrs("203.0.113.5")), Names: []NameConfig{{Name: testName, IPv4: true}}}
		start := time.Now()
		st := u.Sync(context.Background())[0]
		if !st.Synced {
			t.Fatalf("status %+v", st)
		}
		// Reads at 0, 1, 3, 7 and 15 s.
		if d := time.Since(start); d != 15*time.Second {
			t.Errorf("confirmed after %v, want 15s", d)
		}

		p.lag = 1000
		u.Source = StaticSource(addrs("203.0.113.6"))
		time.Sleep(time.Hour)
		start = time.Now()
		st = u.Sync(context.Background())[0]
		if st.Synced || !strings.Contains(st.LastError.Error(), "provider shows 203.0.113.5 after writing 203.0.113.6") {
			t.Fatalf("status %+v", st)
		}
		if d := time.Since(start); d != DefaultConfirmTimeout {
			t.Errorf("gave up after %v, want %v", d, DefaultConfirmTimeout)
		}
	})
}

// TestUpdaterRun runs the loop in a bubble: it syncs at once, then every
// Interval, retries sooner after a failure, and returns nil when its
// context ends.
func TestUpdaterRun(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := newMemProvider()
		src := &mutableSource{addrs: addrs("203.0.113.5")}
		u := &Updater{Provider: p, Source: src, Names: []NameConfig{{Name: testName, IPv4: true}}, MinWriteInterval: time.Second}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- u.Run(ctx) }()
		t.Cleanup(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Run() = %v", err)
			}
		})

		synctest.Wait()
		if p.numSets() != 1 {
			t.Fatalf("%d writes at start", p.numSets())
		}
		src.set(addrs("203.0.113.6"), nil)
		p.mu.Lock()
		p.setErrs = []error{errFlaky}
		p.mu.Unlock()
		time.Sleep(DefaultInterval)
		synctest.Wait()
		if p.numSets() != 2 || u.Status()[0].Synced {
			t.Fatalf("after one interval: %d writes, %+v", p.numSets(), u.Status()[0])
		}
		// The retry comes before the next interval.
		next := u.Status()[0].NextAttempt
		time.Sleep(time.Until(next))
		synctest.Wait()
		if p.numSets() != 3 || !u.Status()[0].Synced {
			t.Fatalf("after the retry: %d writes, %+v", p.numSets(), u.Status()[0])
		}
	})
}

// TestUpdaterWithDynDNS2 runs the updater against the dyndns2 fake over
// HTTP, reading back through the fake's records.
func TestUpdaterWithDynDNS2(t *testing.T) {
	leak.Check(t)
	f, srv := newFakeDynDNS(t, testUser, testPass, testName)
	src := &mutableSource{addrs: addrs("203.0.113.5", "2001:db8::5")}
	d := &DynDNS2{Server: srv.URL, Username: testUser, Password: testPass, UserAgent: UserAgent("test"), Lookup: f.lookup}
	u, clock, logs := testUpdater(d, src)
	for _, st := range u.Sync(context.Background()) {
		if !st.Synced {
			t.Fatalf("status %+v", st)
		}
	}
	if f.numUpdates() != 2 {
		t.Errorf("%d updates, want 2", f.numUpdates())
	}
	clock.Add(time.Hour)
	u.Sync(context.Background())
	if f.numUpdates() != 2 {
		t.Errorf("unchanged records updated again")
	}

	// Someone changes the record behind our back: it is put right.
	f.set(testName, TypeA, addrs("198.51.100.1")...)
	clock.Add(time.Hour)
	u.Sync(context.Background())
	if got, _ := f.lookup(context.Background(), testName, TypeA); !slices.Equal(got, addrs("203.0.113.5")) {
		t.Errorf("A = %v", got)
	}

	// The account gets blocked: the updater stops.
	f.mu.Lock()
	f.answer = "abuse"
	f.mu.Unlock()
	src.set(addrs("203.0.113.6", "2001:db8::5"), nil)
	clock.Add(time.Hour)
	sts := u.Sync(context.Background())
	if !errors.Is(sts[0].LastError, ErrAbuse) {
		t.Errorf("status %+v", sts[0])
	}
	n := f.numUpdates()
	clock.Add(48 * time.Hour)
	u.Sync(context.Background())
	if f.numUpdates() != n {
		t.Error("updated after abuse")
	}
	if strings.Contains(logs.String(), testPass) {
		t.Errorf("the password is in the logs:\n%s", logs)
	}
}
