package ddns

import (
	"slices"
	"testing"
	"testing/synctest"
	"time"
)

// TestConnectedRelaysSource: the connected_relays source's name points at
// every relay with a session up. A relay whose session ends leaves the
// name at once, although MinWriteInterval has not passed; its return
// waits for MinWriteInterval. With no session at all the records stay as
// they are. The family no relay has is withdrawn.
func TestConnectedRelaysSource(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := newMemProvider()
		p.put(testName, TypeAAAA, addrs("2001:db8::99")...) // left from elsewhere
		rs := NewRelaySessions()
		u := &Updater{Provider: p, Source: rs.Source(), Names: []NameConfig{{Name: testName, IPv4: true, IPv6: true}},
			Wake: rs.Wake(), MinWriteInterval: time.Hour, Interval: 10 * time.Minute}
		runUpdater(t, u)

		// The first question waits for a first session.
		time.Sleep(5 * time.Second)
		synctest.Wait()
		if p.numGets() != 0 {
			t.Fatalf("the provider was read before the first session")
		}
		up := func(relay, remote string) func() {
			t.Helper()
			down, err := rs.Up(relay, remote)
			if err != nil {
				t.Fatal(err)
			}
			return down
		}
		down1 := up("vps1.example.com:7000", "203.0.113.7:7000")
		down2 := up("vps2.example.net:7000", "198.51.100.9:7000")
		synctest.Wait()
		time.Sleep(time.Second) // both sessions in one round or two
		synctest.Wait()
		if got := p.get(testName, TypeA); !slices.Equal(got, addrs("198.51.100.9", "203.0.113.7")) {
			t.Fatalf("A = %v with both sessions up, want both relays", got)
		}
		if got := p.get(testName, TypeAAAA); len(got) != 0 {
			t.Fatalf("AAAA = %v, want none: no relay has an IPv6 address", got)
		}

		// A new session replaces the second relay's (make-before-break):
		// the name does not change.
		time.Sleep(time.Minute)
		writes := p.numSets()
		newer := up("vps2.example.net:7000", "198.51.100.9:7000")
		down2()
		synctest.Wait()
		if got := p.get(testName, TypeA); !slices.Equal(got, addrs("198.51.100.9", "203.0.113.7")) || p.numSets() != writes {
			t.Fatalf("A = %v (%d writes) after a session replaced another, want both relays, unchanged", got, p.numSets()-writes)
		}

		// The second relay's session ends: it leaves the name at once.
		newer()
		synctest.Wait()
		if got := p.get(testName, TypeA); !slices.Equal(got, addrs("203.0.113.7")) {
			t.Fatalf("A = %v after the second relay's session ended, want the first relay only", got)
		}

		// It comes back: published again once MinWriteInterval has passed
		// since the last write.
		down2 = up("vps2.example.net:7000", "198.51.100.9:7000")
		synctest.Wait()
		if got := p.get(testName, TypeA); !slices.Equal(got, addrs("203.0.113.7")) {
			t.Fatalf("A = %v right after the second relay came back, want its return to wait", got)
		}
		time.Sleep(time.Hour + time.Minute)
		synctest.Wait()
		if got := p.get(testName, TypeA); !slices.Equal(got, addrs("198.51.100.9", "203.0.113.7")) {
			t.Fatalf("A = %v an hour after the second relay came back, want both", got)
		}

		// No session at all: the records stay as they are.
		down1()
		down2()
		down2() // a second call changes nothing
		synctest.Wait()
		time.Sleep(2 * time.Hour)
		synctest.Wait()
		if got := p.get(testName, TypeA); !slices.Equal(got, addrs("198.51.100.9", "203.0.113.7")) {
			t.Fatalf("A = %v with no session, want the records left as they were", got)
		}
		if st := statusOf(t, u.Status(), TypeA); st.Synced || st.LastError == nil {
			t.Fatalf("status with no session: %+v, want not synced, with the reason", st)
		}
	})
}

// TestRelaySessionsUp: a session's far end is read as an address, and
// one that is not is refused, naming the relay.
func TestRelaySessionsUp(t *testing.T) {
	rs := NewRelaySessions()
	for _, remote := range []string{"203.0.113.7:7000", "[2001:db8::7]:7000", "[::ffff:203.0.113.8]:7000"} {
		if _, err := rs.Up("r-"+remote, remote); err != nil {
			t.Errorf("Up(%q): %v", remote, err)
		}
	}
	if _, err := rs.Up("vps", "not an address"); err == nil {
		t.Error("Up with a far end that is not an address: no error")
	}
	rs.mu.Lock()
	defer rs.mu.Unlock()
	if ss := rs.up["r-[::ffff:203.0.113.8]:7000"]; len(rs.up) != 3 || len(ss) != 1 || ss[0].addr != addrs("203.0.113.8")[0] {
		t.Errorf("sessions %v", rs.up)
	}
}
