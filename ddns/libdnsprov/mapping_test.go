package libdnsprov

import (
	"context"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/homeport/homeport/ddns"
)

// TestMappingSourceBIND: an updater whose source is a tunnel's port
// mapping keeps a name at BIND (RFC 2136) pointing at the mapping while
// it is verified, withdraws the record when it is lost or fails the
// check, publishes it again when it is verified again, and withdraws it
// as it stops. dig asks BIND after each step.
func TestMappingSourceBIND(t *testing.T) {
	s := startBIND(t)
	m := ddns.NewMappings()
	u := &ddns.Updater{
		Provider: s.provider(t, nil),
		Source:   m.Source("web"),
		Names:    []ddns.NameConfig{{Name: "pc.home.test", IPv4: true}},
		Wake:     m.Wake(),
		// A withdrawal does not wait for MinWriteInterval; a publication
		// after a withdrawal does, so it is short here.
		MinWriteInterval: time.Second,
		StopTimeout:      10 * time.Second,
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- u.Run(ctx) }()
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run() = %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Fatal("Run did not return within 30s of its context ending")
		}
	}
	t.Cleanup(stop)
	// digUntil asks BIND until pc.home.test has want as its A records.
	digUntil := func(what string, want ...string) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			got, _ := dig(t, s.port, "pc.home.test", "A")
			if slices.Equal(got, addrs(want...)) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: dig pc.home.test A = %v, want %v; status %+v", what, got, want, u.Status())
			}
			time.Sleep(100 * time.Millisecond)
		}
	}

	m.Verified("web", netip.MustParseAddrPort("203.0.113.7:8090"))
	digUntil("verified", "203.0.113.7")
	m.Unverified("web", "not reachable from outside: connection refused")
	digUntil("failed the check")
	m.Verified("web", netip.MustParseAddrPort("203.0.113.9:8090"))
	digUntil("verified again", "203.0.113.9")
	m.Unverified("web", "lost: the router forgot it")
	digUntil("lost")
	m.Verified("web", netip.MustParseAddrPort("203.0.113.9:8090"))
	digUntil("made again", "203.0.113.9")
	st := u.Status()[0]
	if !st.Synced || !slices.Equal(st.Published, addrs("203.0.113.9")) {
		t.Fatalf("status: %+v", st)
	}

	stop()
	if got, _ := dig(t, s.port, "pc.home.test", "A"); len(got) != 0 {
		t.Fatalf("dig pc.home.test A = %v after the updater stopped, want no record", got)
	}
}
