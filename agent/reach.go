package agent

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"

	"github.com/homeport/homeport/tunnel"
)

// Checking a port mapping from outside: the agent asks the relay, which
// sees it from the internet (docs/wire.md, "Checking a port mapping").

// ErrNoReachCheck: the relay cannot check a port mapping (it is older
// than CheckReach), or no session is up.
var ErrNoReachCheck = errors.New("the relay cannot check a port mapping")

// errNoSession: no session with the relay is up now.
var errNoSession = errors.New("no session with the relay")

// reachWaiters hands the relay's ReachResults to the checks that wait
// for them, by address.
type reachWaiters struct {
	mu sync.Mutex
	m  map[string]chan *tunnel.ReachResult
}

// deliver passes r to the check that asked; false if none did.
func (w *reachWaiters) deliver(r *tunnel.ReachResult) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	ch, ok := w.m[r.Addr]
	if ok {
		delete(w.m, r.Addr)
		ch <- r
	}
	return ok
}

// CheckReach asks the relay of the live session whether addr (the outside
// address of a port mapping on the home router) takes TCP connections
// from the internet. A nil error means the relay answered: its code
// says how (tunnel.CodeOK: reachable).
func (a *Agent) CheckReach(ctx context.Context, addr netip.AddrPort) (*tunnel.ReachResult, error) {
	r := a.link.registrar()
	if r == nil {
		return nil, fmt.Errorf("%w: %w", ErrNoReachCheck, errNoSession)
	}
	l := r.l
	if l.features&tunnel.FeatureReach == 0 {
		return nil, fmt.Errorf("%w: upgrade the relay", ErrNoReachCheck)
	}
	key := addr.String()
	ch := make(chan *tunnel.ReachResult, 1)
	l.reach.mu.Lock()
	if l.reach.m == nil {
		l.reach.m = make(map[string]chan *tunnel.ReachResult)
	}
	if _, busy := l.reach.m[key]; busy {
		l.reach.mu.Unlock()
		return nil, fmt.Errorf("a check of %s is already running", key)
	}
	l.reach.m[key] = ch
	l.reach.mu.Unlock()
	defer func() {
		l.reach.mu.Lock()
		if l.reach.m[key] == ch {
			delete(l.reach.m, key)
		}
		l.reach.mu.Unlock()
	}()
	if err := l.w.write(&tunnel.CheckReach{Protocol: tunnel.ProtoTCP, Addr: key}, l.set.cfg.HandshakeTimeout); err != nil {
		return nil, fmt.Errorf("asking the relay to check %s: %w", key, err)
	}
	select {
	case res := <-ch:
		return res, nil
	case <-l.sess.Done():
		return nil, fmt.Errorf("checking %s: the session with the relay ended", key)
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}
