package ddns

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"time"
)

// RelaySessions holds the addresses of the relays the agent has a session
// with now: the agent marks each session Up when it comes up, and calls
// the function Up returns when it ends. Its source ("connected_relays")
// publishes them, so that a name with several relays behind it follows
// their health: a relay whose last session ended leaves the name at once,
// and comes back once a session does (after min_write_interval). Use
// NewRelaySessions.
type RelaySessions struct {
	mu     sync.Mutex
	up     map[string][]upSession // by the relay's configured address
	seq    uint64
	known  chan struct{} // closed at the first session
	waited bool          // the first question has waited
	wake   chan struct{}
	// firstWait is how long the first question waits for a first
	// session, so that the agent's start does not fail a round.
	firstWait time.Duration
}

// upSession is one session up to a relay: a relay has two while a new
// session replaces an old one.
type upSession struct {
	id   uint64
	addr netip.Addr
}

// NewRelaySessions returns a RelaySessions with no session yet.
func NewRelaySessions() *RelaySessions {
	return &RelaySessions{up: make(map[string][]upSession), known: make(chan struct{}), wake: make(chan struct{}, 1), firstWait: DefaultFirstWait}
}

// Up records a session with relay (its configured address) whose far end
// is remote ("203.0.113.7:7000"), and returns the function to call when
// that session ends. The relay's newest session gives its address. A
// change wakes the updater.
func (r *RelaySessions) Up(relay, remote string) (down func(), err error) {
	if r == nil {
		return func() {}, nil
	}
	a, err := parseObserved(remote)
	if err != nil {
		return func() {}, fmt.Errorf("relay %s: %w", relay, err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	select {
	case <-r.known:
	default:
		close(r.known)
	}
	r.seq++
	id := r.seq
	ss := r.up[relay]
	if len(ss) == 0 || ss[len(ss)-1].addr != a {
		r.wakeLocked()
	}
	r.up[relay] = append(ss, upSession{id, a})
	var once sync.Once
	return func() { once.Do(func() { r.down(relay, id) }) }, nil
}

// down removes session id of relay.
func (r *RelaySessions) down(relay string, id uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	ss := r.up[relay]
	i := slices.IndexFunc(ss, func(s upSession) bool { return s.id == id })
	if i < 0 {
		return
	}
	was := ss[len(ss)-1].addr
	ss = slices.Delete(ss, i, i+1)
	if len(ss) == 0 {
		delete(r.up, relay)
		r.wakeLocked()
		return
	}
	r.up[relay] = ss
	if ss[len(ss)-1].addr != was {
		r.wakeLocked()
	}
}

func (r *RelaySessions) wakeLocked() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// Wake receives when a session came up or ended.
func (r *RelaySessions) Wake() <-chan struct{} { return r.wake }

// Source is the "connected_relays" source: the addresses of the relays
// with a session up. With none (the agent cannot reach any relay, so it
// may be its own link that is down) it fails, and the records stay as
// they are. A family none of the relays has is withdrawn (ErrWithdraw):
// the name points at the relays only.
func (r *RelaySessions) Source() Source { return relaySessionsSource{r} }

type relaySessionsSource struct{ r *RelaySessions }

func (s relaySessionsSource) Name() string { return "connected_relays" }

func (s relaySessionsSource) Addrs(ctx context.Context) ([]netip.Addr, error) {
	addrs, err := s.r.addrs(ctx)
	if err != nil {
		err = fmt.Errorf("source %s: %w", s.Name(), err)
	}
	return addrs, err
}

func (r *RelaySessions) addrs(ctx context.Context) ([]netip.Addr, error) {
	r.mu.Lock()
	wait := !r.waited && len(r.up) == 0
	r.waited = true
	r.mu.Unlock()
	if wait {
		awaitFirst(ctx, r.known, r.firstWait)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	// This answer is the news a pending wake announces.
	select {
	case <-r.wake:
	default:
	}
	if len(r.up) == 0 {
		return nil, errors.New("no session to any relay")
	}
	var out []netip.Addr
	var v4, v6 bool
	for _, ss := range r.up {
		a := ss[len(ss)-1].addr
		out = append(out, a)
		v4, v6 = v4 || a.Is4(), v6 || a.Is6()
	}
	slices.SortFunc(out, func(a, b netip.Addr) int { return a.Compare(b) })
	out = slices.Compact(out)
	switch {
	case !v6:
		return out, fmt.Errorf("no relay with a session has an IPv6 address: %w", ErrWithdraw)
	case !v4:
		return out, fmt.Errorf("no relay with a session has an IPv4 address: %w", ErrWithdraw)
	}
	return out, nil
}
