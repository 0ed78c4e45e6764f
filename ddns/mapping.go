package ddns

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"
)

// ErrWithdraw: the source knows that no address of its may be published
// now (the port mapping it publishes is not verified reachable). Records
// of a family that no source gives an address for are then removed,
// instead of being left as they are, so that the name stops pointing at
// an address that does not take connections.
var ErrWithdraw = errors.New("nothing to publish")

// Mappings holds the agent's port mappings on the home router that the
// relay has verified reachable from outside, per tunnel: the agent marks
// one Verified when the relay connected to it, and Unverified when the
// mapping changes, is lost, fails a check, or the agent stops keeping
// it. Its sources ("mapping:TUNNEL") publish the verified addresses. Use
// NewMappings; a nil *Mappings ignores the verdicts.
type Mappings struct {
	mu       sync.Mutex
	byTunnel map[string]*mappingState
	wake     chan struct{}
	// firstWait is how long a source's first question waits for the
	// tunnel's first verdict, so that an agent's start does not withdraw
	// a name that is verified again a few seconds later.
	firstWait time.Duration
}

// mappingState is what Mappings knows of one tunnel's mapping.
type mappingState struct {
	verified netip.AddrPort // valid while verified
	why      string         // why not verified
	decided  chan struct{}  // closed at the first verdict
	waited   bool           // a source's first question has waited
	watched  bool           // a source publishes it
}

// DefaultMappingFirstWait is how long the mapping source's first question
// waits for the tunnel's first verdict: making the mapping and the
// relay's check take a few seconds, UPnP's discovery and a slow session
// longer.
const DefaultMappingFirstWait = time.Minute

// NewMappings returns a Mappings that knows no mapping yet.
func NewMappings() *Mappings {
	return &Mappings{byTunnel: make(map[string]*mappingState), wake: make(chan struct{}, 1), firstWait: DefaultMappingFirstWait}
}

func (m *Mappings) stateLocked(tunnel string) *mappingState {
	st := m.byTunnel[tunnel]
	if st == nil {
		st = &mappingState{why: "not verified yet", decided: make(chan struct{})}
		m.byTunnel[tunnel] = st
	}
	return st
}

// Verified records that the relay reached the tunnel's mapping at ext
// from outside. A change wakes the updater.
func (m *Mappings) Verified(tunnel string, ext netip.AddrPort) {
	if m == nil {
		return
	}
	ext = netip.AddrPortFrom(ext.Addr().Unmap(), ext.Port())
	m.mu.Lock()
	defer m.mu.Unlock()
	st := m.stateLocked(tunnel)
	m.decideLocked(st)
	if st.verified == ext {
		return
	}
	st.verified, st.why = ext, ""
	m.wakeLocked()
}

// Unverified records that the tunnel's mapping may no longer be
// published, and why ("the router lost it", "the relay could not
// connect: …"). A change wakes the updater.
func (m *Mappings) Unverified(tunnel, why string) { m.unverified(tunnel, why, true) }

// Pending records that the tunnel's mapping is new (made, or made again)
// and not yet checked from outside: it may not be published, but a
// verdict is on its way, so a source's first question keeps waiting for
// it.
func (m *Mappings) Pending(tunnel, why string) { m.unverified(tunnel, why, false) }

func (m *Mappings) unverified(tunnel, why string, decided bool) {
	if m == nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	st := m.stateLocked(tunnel)
	if decided {
		m.decideLocked(st)
	}
	was := st.verified.IsValid()
	st.verified, st.why = netip.AddrPort{}, why
	if was {
		m.wakeLocked()
	}
}

func (m *Mappings) decideLocked(st *mappingState) {
	select {
	case <-st.decided:
	default:
		close(st.decided)
	}
}

func (m *Mappings) wakeLocked() {
	select {
	case m.wake <- struct{}{}:
	default:
	}
}

// Wake receives when a mapping became verified or stopped being so.
func (m *Mappings) Wake() <-chan struct{} { return m.wake }

// Source is the "mapping:TUNNEL" source: the outside address of the
// tunnel's port mapping while it is verified. Otherwise it gives no
// address and an error that wraps ErrWithdraw; so does it for the family
// the mapping is not of, since the name is to point at the mapping only.
// In the round an Updater makes as it stops (Updater.StopTimeout), it
// withdraws whatever it knows: the agent stops keeping the mapping.
func (m *Mappings) Source(tunnel string) Source {
	m.mu.Lock()
	m.stateLocked(tunnel).watched = true
	m.mu.Unlock()
	return mappingSource{m: m, tunnel: tunnel}
}

// Watched reports whether a source publishes the tunnel's mapping: the
// agent checks such a mapping from outside more often, since a name
// points at it.
func (m *Mappings) Watched(tunnel string) bool {
	if m == nil {
		return false
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	st := m.byTunnel[tunnel]
	return st != nil && st.watched
}

type mappingSource struct {
	m      *Mappings
	tunnel string
}

func (s mappingSource) Name() string { return "mapping:" + s.tunnel }

func (s mappingSource) Addrs(ctx context.Context) ([]netip.Addr, error) {
	if stopping(ctx) {
		return nil, fmt.Errorf("source %s: the agent is stopping and removes the mapping: %w", s.Name(), ErrWithdraw)
	}
	m := s.m
	m.mu.Lock()
	st := m.stateLocked(s.tunnel)
	wait := !st.waited
	st.waited = true
	decided := st.decided
	m.mu.Unlock()
	if wait {
		awaitFirst(ctx, decided, m.firstWait)
	}
	m.mu.Lock()
	ext, why := st.verified, st.why
	m.mu.Unlock()
	if !ext.IsValid() {
		return nil, fmt.Errorf("source %s: the port mapping is %s: %w", s.Name(), why, ErrWithdraw)
	}
	family, other := "IPv4", "IPv6"
	if ext.Addr().Is6() {
		family, other = "IPv6", "IPv4"
	}
	return []netip.Addr{ext.Addr()}, fmt.Errorf("source %s: the mapping is %s, so no %s address is published for it: %w", s.Name(), family, other, ErrWithdraw)
}

// stoppingKey marks the context of the round an Updater makes as it
// stops.
type stoppingKey struct{}

func stopping(ctx context.Context) bool {
	v, _ := ctx.Value(stoppingKey{}).(bool)
	return v
}
