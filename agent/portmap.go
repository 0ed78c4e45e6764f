package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"reflect"
	"strconv"
	"sync"
	"time"

	"github.com/homeport/homeport/config"
	"github.com/homeport/homeport/ddns"
	"github.com/homeport/homeport/portmap"
	"github.com/homeport/homeport/tunnel"
)

// Port mappings on the home router (config: a tunnel's port_mapping): a
// direct way in beside the relay. Each mapping is kept by a
// portmap.Keeper, and checked from outside by the relay (CheckReach)
// whenever it changes and every reachRecheck, since a router's "yes" means
// nothing behind a carrier's NAT. The verdicts go to the ddns section's
// mapping sources (WithMappings), which publish a mapping only while the
// relay has verified it.

const (
	// mappingLease is the lease asked for; the keeper renews it.
	mappingLease = 2 * time.Hour
	// reachRecheck is how often a mapping is checked from outside again.
	reachRecheck = 10 * time.Minute
	// publishedRecheck is how often a mapping that a DNS name points at
	// (a ddns mapping source) is checked again: a mapping that stops
	// taking connections (the router forgot it and refuses it, a
	// firewall) is withdrawn from DNS within this time. The relay allows
	// 30 checks in 10 minutes per session.
	publishedRecheck = time.Minute
	// reachRetry is how soon a check that could not be made is tried
	// again (no session yet, or a check still running).
	reachRetry = 5 * time.Second
)

// MappingStatus is a tunnel's port mapping on the home router.
type MappingStatus struct {
	// State is "mapping" (asking the router), "mapped", or "failed"
	// (Detail says why; the agent keeps trying).
	State    string `json:"state"`
	Method   string `json:"method,omitempty"`
	External string `json:"external,omitempty"`
	// Reachable is "yes" when the relay connected to External from the
	// internet, "no" when it could not (Detail says why), "unknown"
	// while it has not checked (or cannot: UDP, an older relay).
	Reachable string    `json:"reachable"`
	Detail    string    `json:"detail,omitempty"`
	Since     time.Time `json:"since,omitzero"`
	CheckedAt time.Time `json:"checked_at,omitzero"`
	// Remade counts mappings made again after the router lost them.
	Remade int `json:"remade,omitempty"`
}

// mapRunner keeps the port mappings of the configured tunnels while the
// agent runs.
type mapRunner struct {
	mu   sync.Mutex
	ctx  context.Context // set while the agent runs
	byTn map[string]*tunnelMapping
	// feed receives the relay's verdicts for the ddns mapping sources
	// (nil: none).
	feed *ddns.Mappings
}

// WithMappings makes the agent report its port mappings' verdicts to m:
// verified when the relay reached one from outside, unverified when it
// changes, is lost, fails a check or is no longer kept. The ddns
// section's mapping sources publish from the same m.
func WithMappings(m *ddns.Mappings) Option { return func(a *Agent) { a.maps.feed = m } }

// tunnelMapping is one tunnel's mapping and its checks.
type tunnelMapping struct {
	spec   config.PortMapping
	target string
	proto  string
	cancel context.CancelFunc
	done   chan struct{}
	feed   *ddns.Mappings // nil: no ddns mapping source

	mu sync.Mutex
	st MappingStatus
}

// start begins keeping the mappings of tunnels.
func (r *mapRunner) start(ctx context.Context, a *Agent, tunnels []config.Tunnel) {
	r.mu.Lock()
	r.ctx = ctx
	r.mu.Unlock()
	r.apply(a, tunnels)
}

// apply brings the kept mappings in line with tunnels: new ones start,
// removed or changed ones are removed from the router (and started again
// if changed).
func (r *mapRunner) apply(a *Agent, tunnels []config.Tunnel) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.ctx == nil {
		return
	}
	want := map[string]config.Tunnel{}
	for _, t := range tunnels {
		if t.PortMapping != nil {
			want[t.Name] = t
		}
	}
	for name, tm := range r.byTn {
		t, ok := want[name]
		if ok && reflect.DeepEqual(*t.PortMapping, tm.spec) && t.Target == tm.target && t.Protocol == tm.proto {
			delete(want, name)
			continue
		}
		tm.cancel()
		<-tm.done
		delete(r.byTn, name)
	}
	if r.byTn == nil {
		r.byTn = make(map[string]*tunnelMapping)
	}
	for name, t := range want {
		ctx, cancel := context.WithCancel(r.ctx)
		tm := &tunnelMapping{spec: *t.PortMapping, target: t.Target, proto: t.Protocol, cancel: cancel, done: make(chan struct{}), feed: r.feed}
		tm.st = MappingStatus{State: "mapping", Reachable: "unknown", Since: time.Now()}
		r.byTn[name] = tm
		go func() {
			defer close(tm.done)
			tm.run(ctx, a, name)
		}()
	}
}

// stop removes every mapping and waits.
func (r *mapRunner) stop() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for name, tm := range r.byTn {
		tm.cancel()
		<-tm.done
		delete(r.byTn, name)
	}
	r.ctx = nil
}

// status returns the tunnel's mapping state; nil if it has none.
func (r *mapRunner) status(name string) *MappingStatus {
	r.mu.Lock()
	tm := r.byTn[name]
	r.mu.Unlock()
	if tm == nil {
		return nil
	}
	tm.mu.Lock()
	defer tm.mu.Unlock()
	st := tm.st
	return &st
}

func (tm *tunnelMapping) update(f func(*MappingStatus)) {
	tm.mu.Lock()
	defer tm.mu.Unlock()
	f(&tm.st)
}

// run keeps the mapping and checks it from outside until ctx ends; the
// keeper removes it from the router then.
func (tm *tunnelMapping) run(ctx context.Context, a *Agent, name string) {
	log := a.log.With("tunnel", name)
	// Whatever ends the keeping (the agent stops, a reload changes or
	// removes the mapping, it cannot be made), DNS must stop pointing
	// at it.
	defer tm.feed.Unverified(name, "no longer kept by the agent")
	port, err := localTargetPort(tm.target)
	if err != nil {
		tm.update(func(st *MappingStatus) { st.State, st.Detail = "failed", err.Error() })
		log.Error("port mapping not made", "err", err)
		return
	}
	cfg := portmap.Config{
		Request: portmap.Request{Protocol: tm.proto, InternalPort: port, ExternalPort: tm.spec.External,
			Lifetime: mappingLease, Description: "homeport " + name},
		Log: log,
	}
	for _, m := range tm.spec.Methods {
		meth, err := portmap.ParseMethod(m)
		if err != nil {
			log.Error("port mapping not made", "err", err)
			return
		}
		cfg.Methods = append(cfg.Methods, meth)
	}
	changed := make(chan struct{}, 1)
	cfg.OnChange = func(m portmap.Mapping, ok bool) {
		tm.update(func(st *MappingStatus) {
			st.Since = time.Now()
			if ok {
				st.State, st.Method, st.External, st.Detail = "mapped", string(m.Method), m.External.String(), ""
				st.Reachable, st.CheckedAt = "unknown", time.Time{}
			} else {
				st.State, st.Reachable = "mapping", "unknown"
			}
		})
		if ok {
			tm.feed.Pending(name, "new ("+m.External.String()+"), not checked from outside yet")
		} else {
			tm.feed.Unverified(name, "lost")
		}
		select {
		case changed <- struct{}{}:
		default:
		}
	}
	k, err := portmap.Keep(ctx, cfg)
	if err != nil {
		tm.update(func(st *MappingStatus) { st.State, st.Detail = "failed", err.Error() })
		log.Error("port mapping not made", "err", err)
		return
	}
	defer k.Close()

	next := time.NewTimer(reachRetry)
	defer next.Stop()
	remade := 0
	for {
		select {
		case <-ctx.Done():
			return
		case <-changed:
		case <-next.C:
		}
		ks := k.Status()
		tm.update(func(st *MappingStatus) {
			st.Remade = ks.Remade
			if !ks.Up && ks.Err != nil {
				st.State, st.Detail = "failed", ks.Err.Error()
			}
		})
		if ks.Remade != remade {
			// The router had forgotten the mapping; the keeper made it
			// again at the same address. It is new to the outside too.
			remade = ks.Remade
			tm.feed.Pending(name, "made again after the router forgot it, not checked from outside yet")
		}
		if !ks.Up && ks.Err != nil {
			tm.feed.Unverified(name, "not made: "+ks.Err.Error())
		}
		wait := reachRecheck
		if ks.Up {
			wait = tm.check(ctx, a, name, ks.Mapping, log)
		}
		if tm.feed.Watched(name) {
			wait = min(wait, publishedRecheck)
		}
		next.Reset(wait)
	}
}

// check asks the relay whether m takes connections from outside, records
// the answer, and says when to check again.
//
// A check that cannot be made (no session with the relay) leaves the
// last verdict as it is: the mapping has not changed, and a name that
// points straight at it is most useful while the relay is away.
func (tm *tunnelMapping) check(ctx context.Context, a *Agent, name string, m portmap.Mapping, log *slog.Logger) time.Duration {
	if m.Protocol != "tcp" {
		tm.update(func(st *MappingStatus) {
			st.Reachable, st.Detail = "unknown", "a UDP mapping cannot be checked from outside without the service's help"
		})
		return reachRecheck
	}
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	res, err := a.CheckReach(cctx, m.External)
	if err != nil {
		if ctx.Err() != nil {
			return reachRecheck
		}
		tm.update(func(st *MappingStatus) { st.Reachable, st.Detail = "unknown", err.Error() })
		if errors.Is(err, ErrNoReachCheck) && !errors.Is(err, errNoSession) {
			return reachRecheck // an older relay: asking again soon helps nothing
		}
		return reachRetry
	}
	now := time.Now()
	switch res.Code {
	case tunnel.CodeOK:
		tm.update(func(st *MappingStatus) { st.Reachable, st.Detail, st.CheckedAt = "yes", "", now })
		log.Info("port mapping reachable from outside", "addr", m.External)
		tm.feed.Verified(name, m.External)
		return reachRecheck
	case tunnel.CodeQuota:
		tm.update(func(st *MappingStatus) { st.Detail = res.Message })
		return reachRetry
	default:
		tm.update(func(st *MappingStatus) { st.Reachable, st.Detail, st.CheckedAt = "no", res.Message, now })
		log.Warn("port mapping not reachable from outside; only the relay's way in works", "addr", m.External, "why", res.Message)
		tm.feed.Unverified(name, "not reachable from outside: "+res.Message)
		return reachRecheck
	}
}

// localTargetPort returns the target's port if the target is this
// machine: the router can forward only to the machine that asks.
func localTargetPort(target string) (uint16, error) {
	host, p, err := net.SplitHostPort(target)
	if err != nil {
		return 0, fmt.Errorf("target %q: %w", target, err)
	}
	port, err := strconv.ParseUint(p, 10, 16)
	if err != nil || port == 0 {
		return 0, fmt.Errorf("target %q: bad port", target)
	}
	if host == "localhost" {
		return uint16(port), nil
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return 0, fmt.Errorf("target %q: give it as an IP address of this machine for a port mapping", target)
	}
	ip = ip.Unmap()
	if ip.IsLoopback() || ip.IsUnspecified() {
		return uint16(port), nil
	}
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return 0, fmt.Errorf("listing this machine's addresses: %w", err)
	}
	for _, a := range addrs {
		if pfx, err := netip.ParsePrefix(a.String()); err == nil && pfx.Addr().Unmap() == ip {
			return uint16(port), nil
		}
	}
	return 0, fmt.Errorf("target %q is another machine: a router forwards a port only to the machine that asks for it; run an agent there", target)
}
