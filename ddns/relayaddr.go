package ddns

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"
)

// RelayAddr is the agent's address as the relay last saw it: the agent
// sets it on every session, the relay source reads it. Use NewRelayAddr.
type RelayAddr struct {
	mu     sync.Mutex
	addr   netip.Addr
	known  chan struct{} // closed when the first address arrives
	wake   chan struct{}
	waited bool // the first question has waited for the first address
	// firstWait is how long the first question waits for the first
	// session, so that the updater's first round need not fail.
	firstWait time.Duration
}

// DefaultFirstWait is how long the relay source's first question waits
// for the agent's first session.
const DefaultFirstWait = 30 * time.Second

// NewRelayAddr returns an empty RelayAddr.
func NewRelayAddr() *RelayAddr {
	return &RelayAddr{known: make(chan struct{}), wake: make(chan struct{}, 1), firstWait: DefaultFirstWait}
}

// Set records the address the relay reported ("203.0.113.5:51234", as
// in the relay's welcome). A new address wakes the updater.
func (r *RelayAddr) Set(observed string) error {
	a, err := parseObserved(observed)
	if err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.addr == a {
		return nil
	}
	first := !r.addr.IsValid()
	r.addr = a
	if first {
		close(r.known)
	}
	select {
	case r.wake <- struct{}{}:
	default:
	}
	return nil
}

// parseObserved reads the host of "ip:port" (or a bare IP address).
func parseObserved(s string) (netip.Addr, error) {
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return ap.Addr().Unmap(), nil
	}
	host := s
	if h, _, err := net.SplitHostPort(s); err == nil {
		host = h
	}
	a, err := netip.ParseAddr(strings.Trim(host, "[]"))
	if err != nil {
		return netip.Addr{}, fmt.Errorf("the relay reported %q, which is not an address", s)
	}
	return a.WithZone("").Unmap(), nil
}

// Wake receives when the address changed since the source last told it.
func (r *RelayAddr) Wake() <-chan struct{} { return r.wake }

// Source is the "relay" source.
func (r *RelayAddr) Source() Source {
	return FuncSource{Label: "relay", F: r.addrs}
}

func (r *RelayAddr) addrs(ctx context.Context) ([]netip.Addr, error) {
	r.mu.Lock()
	wait := !r.waited && !r.addr.IsValid()
	r.waited = true
	r.mu.Unlock()
	if wait {
		awaitFirst(ctx, r.known, r.firstWait)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.addr.IsValid() {
		return nil, errors.New("no session with the relay yet")
	}
	// This answer is the news a pending wake announces.
	select {
	case <-r.wake:
	default:
	}
	return []netip.Addr{r.addr}, nil
}

// awaitFirst waits for a source's first news (known closed) for at most
// d, or until ctx ends: the first round of an agent's updater need not
// fail for a session or a verdict that comes a few seconds later.
func awaitFirst(ctx context.Context, known <-chan struct{}, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-known:
	case <-t.C:
	case <-ctx.Done():
	}
}
