package ddns

import (
	"context"
	"net/netip"
	"strings"
	"testing"
	"time"
)

func TestRelayAddr(t *testing.T) {
	ra := NewRelayAddr()
	ra.firstWait = 50 * time.Millisecond
	src := ra.Source()
	ctx := context.Background()

	// The first question waits for the first session, then gives up.
	start := time.Now()
	if _, err := src.Addrs(ctx); err == nil || !strings.Contains(err.Error(), "source relay: no session with the relay yet") {
		t.Errorf("before a session: %v", err)
	}
	if time.Since(start) < 50*time.Millisecond {
		t.Error("the first question did not wait")
	}
	// Later questions do not wait: were they to, this one would hang
	// until the test's deadline.
	ra.firstWait = time.Hour
	if _, err := src.Addrs(ctx); err == nil {
		t.Error("second question: no error before a session")
	}

	for _, bad := range []string{"", "relay", "203.0.113.5:x:y"} {
		if err := ra.Set(bad); err == nil {
			t.Errorf("Set(%q) accepted", bad)
		}
	}
	if err := ra.Set("[::ffff:203.0.113.5]:4000"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-ra.Wake():
	default:
		t.Error("no wake for the first address")
	}
	if err := ra.Set("203.0.113.5:4001"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-ra.Wake():
		t.Error("wake for the same address on another port")
	default:
	}
	got, err := src.Addrs(ctx)
	if err != nil || len(got) != 1 || got[0] != netip.MustParseAddr("203.0.113.5") {
		t.Errorf("Addrs = %v, %v", got, err)
	}

	// A new address wakes the updater, unless the source has told it
	// already.
	ra.Set("[2001:db8::7]:4000")
	if got, _ := src.Addrs(ctx); got[0] != netip.MustParseAddr("2001:db8::7") {
		t.Errorf("Addrs = %v", got)
	}
	select {
	case <-ra.Wake():
		t.Error("wake left after the source gave the new address")
	default:
	}
	ra.Set("198.51.100.1")
	select {
	case <-ra.Wake():
	default:
		t.Error("no wake for a new address")
	}
}

// TestRelayAddrFirstSession: the first question is answered as soon as
// the first session reports the address.
func TestRelayAddrFirstSession(t *testing.T) {
	ra := NewRelayAddr()
	ra.firstWait = time.Hour // only the address can end the wait
	asked := make(chan struct{})
	go func() {
		<-asked
		ra.Set("203.0.113.9:1234")
	}()
	src := ra.Source()
	close(asked) // the answer comes whether Set runs before or during the question
	got, err := src.Addrs(context.Background())
	if err != nil || len(got) != 1 || got[0] != netip.MustParseAddr("203.0.113.9") {
		t.Errorf("Addrs = %v, %v", got, err)
	}
}
