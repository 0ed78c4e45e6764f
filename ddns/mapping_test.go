package ddns

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"testing/synctest"
	"time"
)

// runUpdater runs u until the test ends and returns a function that
// stops it and waits.
func runUpdater(t *testing.T, u *Updater) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- u.Run(ctx) }()
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run() = %v", err)
		}
	}
	t.Cleanup(stop)
	return stop
}

func ap(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

// TestMappingSourcePublishesOnlyVerified: the mapping source's name
// points at the mapping's outside address while it is verified, has no
// record at all while it is not (at once, within MinWriteInterval), is
// published again when it is verified again, and is withdrawn by the
// last round as the updater stops. The AAAA records are withdrawn
// throughout: the name points at the (IPv4) mapping only.
func TestMappingSourcePublishesOnlyVerified(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := newMemProvider()
		p.put(testName, TypeAAAA, addrs("2001:db8::99")...) // left from elsewhere
		m := NewMappings()
		logs := &logBuffer{}
		u := &Updater{Provider: p, Source: m.Source("web"), Names: []NameConfig{{Name: testName, IPv4: true, IPv6: true}},
			Wake: m.Wake(), StopTimeout: 10 * time.Second, MinWriteInterval: time.Hour, Log: logs.logger()}
		stop := runUpdater(t, u)

		// The first question waits for the first verdict.
		time.Sleep(5 * time.Second)
		synctest.Wait()
		if p.numGets() != 0 {
			t.Fatalf("the provider was read before the mapping's first verdict")
		}
		m.Verified("web", ap("203.0.113.7:8090"))
		synctest.Wait()
		if got := p.get(testName, TypeA); !slices.Equal(got, addrs("203.0.113.7")) {
			t.Fatalf("A = %v after the mapping was verified, want 203.0.113.7", got)
		}
		if got := p.get(testName, TypeAAAA); len(got) != 0 {
			t.Fatalf("AAAA = %v, want none: the name points at the IPv4 mapping only", got)
		}
		st := statusOf(t, u.Status(), TypeA)
		if !st.Synced || !slices.Equal(st.Published, addrs("203.0.113.7")) || st.PublishedAt.IsZero() {
			t.Fatalf("status after publishing: %+v", st)
		}

		// Lost: withdrawn at once, although MinWriteInterval (1h) has not
		// passed since the write.
		time.Sleep(time.Minute)
		m.Unverified("web", "lost: the router forgot it")
		synctest.Wait()
		if got := p.get(testName, TypeA); len(got) != 0 {
			t.Fatalf("A = %v after the mapping was lost, want none", got)
		}
		st = statusOf(t, u.Status(), TypeA)
		if !st.Synced || len(st.Published) != 0 || st.PublishedAt.IsZero() || st.LastError != nil {
			t.Fatalf("status after withdrawing: %+v", st)
		}
		if !strings.Contains(logs.String(), "lost: the router forgot it") || !strings.Contains(logs.String(), "records withdrawn") {
			t.Fatalf("the log does not say why the records went:\n%s", logs)
		}

		// Verified again: published again (after MinWriteInterval, which
		// counts from the withdrawal's write).
		m.Verified("web", ap("203.0.113.8:8090"))
		synctest.Wait()
		time.Sleep(time.Hour + time.Minute)
		synctest.Wait()
		if got := p.get(testName, TypeA); !slices.Equal(got, addrs("203.0.113.8")) {
			t.Fatalf("A = %v after the mapping was verified again, want 203.0.113.8", got)
		}

		// The updater stops: the last round withdraws the address.
		stop()
		if got := p.get(testName, TypeA); len(got) != 0 {
			t.Fatalf("A = %v after the updater stopped, want none", got)
		}
	})
}

// TestMappingSourceFallback: with a source after the mapping source, the
// name points at that source's address while the mapping is not
// verified, and the mapping's again once it is.
func TestMappingSourceFallback(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := newMemProvider()
		m := NewMappings()
		u := &Updater{Provider: p, Source: FirstOf(m.Source("web"), StaticSource(addrs("198.51.200.1"))),
			Names: []NameConfig{{Name: testName, IPv4: true}}, Wake: m.Wake(), StopTimeout: 10 * time.Second, MinWriteInterval: time.Second}
		stop := runUpdater(t, u)

		m.Unverified("web", "not reachable from outside: connection refused")
		synctest.Wait()
		if got := p.get(testName, TypeA); !slices.Equal(got, addrs("198.51.200.1")) {
			t.Fatalf("A = %v while the mapping is not verified, want the fallback 198.51.200.1", got)
		}
		time.Sleep(2 * time.Second)
		m.Verified("web", ap("203.0.113.7:8090"))
		synctest.Wait()
		if got := p.get(testName, TypeA); !slices.Equal(got, addrs("203.0.113.7")) {
			t.Fatalf("A = %v once the mapping is verified, want 203.0.113.7", got)
		}
		stop()
		if got := p.get(testName, TypeA); !slices.Equal(got, addrs("198.51.200.1")) {
			t.Fatalf("A = %v after the updater stopped, want the fallback 198.51.200.1", got)
		}
	})
}

// TestMappingSourceAnswers: the source's answers and errors, and its
// first question's wait.
func TestMappingSourceAnswers(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := NewMappings()
		src := m.Source("web")
		if src.Name() != "mapping:web" {
			t.Fatalf("Name() = %q", src.Name())
		}
		// No verdict within the first wait: withdraw.
		start := time.Now()
		got, err := src.Addrs(context.Background())
		if len(got) != 0 || !errors.Is(err, ErrWithdraw) || !strings.Contains(err.Error(), "not verified yet") {
			t.Fatalf("before any verdict: %v, %v", got, err)
		}
		if waited := time.Since(start); waited != DefaultMappingFirstWait {
			t.Fatalf("the first question waited %v, want %v", waited, DefaultMappingFirstWait)
		}
		// Later questions do not wait.
		start = time.Now()
		if _, err := src.Addrs(context.Background()); !errors.Is(err, ErrWithdraw) || time.Since(start) != 0 {
			t.Fatalf("second question: %v after %v", err, time.Since(start))
		}

		m.Verified("web", ap("[::ffff:203.0.113.7]:8090"))
		got, err = src.Addrs(context.Background())
		if !slices.Equal(got, addrs("203.0.113.7")) || !errors.Is(err, ErrWithdraw) || !strings.Contains(err.Error(), "no IPv6 address") {
			t.Fatalf("verified: %v, %v", got, err)
		}
		m.Verified("web", ap("[2001:db8::7]:8090"))
		if got, err = src.Addrs(context.Background()); !slices.Equal(got, addrs("2001:db8::7")) || !strings.Contains(err.Error(), "no IPv4 address") {
			t.Fatalf("verified IPv6: %v, %v", got, err)
		}
		if got, err := src.Addrs(context.WithValue(context.Background(), stoppingKey{}, true)); len(got) != 0 || !errors.Is(err, ErrWithdraw) {
			t.Fatalf("stopping: %v, %v", got, err)
		}
		// A new mapping, not yet checked, does not end the first wait;
		// the check's verdict does.
		third := m.Source("rdp")
		go func() {
			time.Sleep(time.Second)
			m.Pending("rdp", "new, not checked from outside yet")
			time.Sleep(5 * time.Second)
			m.Verified("rdp", ap("203.0.113.7:3389"))
		}()
		start = time.Now()
		if got, _ := third.Addrs(context.Background()); !slices.Equal(got, addrs("203.0.113.7")) || time.Since(start) != 6*time.Second {
			t.Fatalf("rdp: %v after %v, want the address after the verdict (6s)", got, time.Since(start))
		}
		m.Pending("rdp", "made again, not checked from outside yet")
		if got, err := third.Addrs(context.Background()); len(got) != 0 || !strings.Contains(err.Error(), "made again") {
			t.Fatalf("rdp pending: %v, %v", got, err)
		}

		// Another tunnel's verdict does not end this one's first wait.
		other := m.Source("ssh")
		m.Verified("web", ap("203.0.113.7:8090"))
		go m.Verified("ssh", ap("203.0.113.7:2222"))
		if got, _ := other.Addrs(context.Background()); !slices.Equal(got, addrs("203.0.113.7")) {
			t.Fatalf("ssh: %v", got)
		}
	})
}
