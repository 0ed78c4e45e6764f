package portmap

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/jackpal/gateway"
)

// Config is what Keep keeps.
type Config struct {
	Request Request
	// Methods are tried in order (nil: Methods).
	Methods []Method
	// Gateway is the router (zero: the default route's gateway). When
	// set, UPnP uses only a device at this address.
	Gateway netip.Addr
	// Check is how often the mapping is checked, and renewed where the
	// protocol has no other way to check (PCP, NAT-PMP); 0: half the
	// lease, at most a minute. A router that restarted and forgot the
	// mapping is noticed within this time.
	Check time.Duration
	// Log receives what happens to the mapping (nil: nothing).
	Log *slog.Logger
	// OnChange, when set, is called from the keeper's goroutine with the
	// new mapping when one is made or changes, and with ok false when it
	// is lost or removed.
	OnChange func(m Mapping, ok bool)
}

// Status is the keeper's state.
type Status struct {
	// Mapping is the current mapping, valid when Up.
	Mapping Mapping
	Up      bool
	// Err is the last failure, nil after a success.
	Err error
	// Since is when the state last changed.
	Since time.Time
	// Renewals counts renewals that succeeded; Remade, mappings made
	// again after the router lost them.
	Renewals, Remade int
}

// Keeper holds one port mapping: it makes it, renews it, makes it again
// when the router forgets it, and removes it on Close.
type Keeper struct {
	cfg    Config
	log    *slog.Logger
	cancel context.CancelFunc
	done   chan struct{}

	mu sync.Mutex
	st Status
}

// Keep starts keeping the mapping cfg asks for. It returns at once; the
// first attempt runs in the background (see Status and OnChange).
func Keep(ctx context.Context, cfg Config) (*Keeper, error) {
	k, err := newKeeper(cfg)
	if err != nil {
		return nil, err
	}
	ctx, k.cancel = context.WithCancel(ctx)
	k.done = make(chan struct{})
	go func() {
		defer close(k.done)
		k.run(ctx)
	}()
	return k, nil
}

// newKeeper checks cfg and fills in its defaults; the keeper does not
// run yet.
func newKeeper(cfg Config) (*Keeper, error) {
	if err := cfg.Request.check(); err != nil {
		return nil, err
	}
	if len(cfg.Methods) == 0 {
		cfg.Methods = Methods
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	k := &Keeper{cfg: cfg, log: log}
	k.st.Since = time.Now()
	return k, nil
}

// Status returns the keeper's state.
func (k *Keeper) Status() Status {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.st
}

// Close stops keeping the mapping and removes it from the router
// (within a few seconds; a router that does not answer keeps it until
// its lease ends).
func (k *Keeper) Close() error {
	k.cancel()
	<-k.done
	return nil
}

// Backoff after failed attempts: 2 s doubling to 5 min.
const (
	retryFirst = 2 * time.Second
	retryMax   = 5 * time.Minute
	// attemptTimeout bounds one method's try (UPnP's search included).
	attemptTimeout = 8 * time.Second
	// removeTimeout bounds removing the mapping on Close.
	removeTimeout = 3 * time.Second
)

func (k *Keeper) run(ctx context.Context) {
	var (
		cur   Mapping
		have  bool
		retry = retryFirst
	)
	defer func() {
		if !have {
			return
		}
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), removeTimeout)
		defer cancel()
		if err := cur.handle.unmap(rctx, cur); err != nil {
			k.log.Warn("port mapping: could not remove it; the router keeps it until its lease ends", "mapping", cur.String(), "err", err)
		} else {
			k.log.Info("port mapping removed", "mapping", cur.String())
		}
		k.set(func(st *Status) { st.Up = false })
		k.notify(cur, false)
	}()
	for {
		if !have {
			m, err := k.mapAny(ctx)
			if ctx.Err() != nil {
				return
			}
			if err != nil {
				k.set(func(st *Status) { st.Err = err })
				k.log.Warn("port mapping failed", "port", k.cfg.Request.InternalPort, "protocol", k.cfg.Request.Protocol, "err", err, "retry_in", retry)
				if !sleep(ctx, retry) {
					return
				}
				retry = min(2*retry, retryMax)
				continue
			}
			cur, have, retry = m, true, retryFirst
			k.set(func(st *Status) { st.Mapping, st.Up, st.Err = m, true, nil })
			k.log.Info("port mapping made", "mapping", m.String())
			k.notify(m, true)
		}
		if !sleep(ctx, k.checkEvery(cur)) {
			return
		}
		m, lost, err := k.check(ctx, cur)
		if ctx.Err() != nil {
			return
		}
		switch {
		case err != nil && time.Now().Before(cur.Granted.Add(cur.Lifetime)) && cur.Lifetime > 0:
			// The router did not answer; the lease still runs.
			k.set(func(st *Status) { st.Err = err })
			k.log.Warn("port mapping: renewal failed; retrying", "mapping", cur.String(), "err", err)
		case err != nil:
			k.set(func(st *Status) { st.Up, st.Err = false, err })
			k.log.Warn("port mapping lost", "mapping", cur.String(), "err", err)
			have = false
			k.notify(cur, false)
		default:
			changed := m.External != cur.External
			k.set(func(st *Status) {
				st.Mapping, st.Up, st.Err = m, true, nil
				st.Renewals++
				if lost {
					st.Remade++
				}
			})
			switch {
			case lost:
				k.log.Warn("port mapping: the router had forgotten it (restarted?); made again", "mapping", m.String())
			case m.Granted != cur.Granted:
				k.log.Debug("port mapping renewed", "mapping", m.String())
			}
			cur = m
			if changed {
				k.log.Info("port mapping changed", "mapping", m.String())
				k.notify(m, true)
			}
		}
	}
}

// check confirms cur with the router: asks whether it holds it where the
// protocol can say (UPnP), else renews it (which also makes it again on
// a router that forgot it). lost reports that the router had lost it.
func (k *Keeper) check(ctx context.Context, cur Mapping) (m Mapping, lost bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, attemptTimeout)
	defer cancel()
	held, known, err := cur.handle.present(ctx, cur)
	if err != nil {
		return cur, false, err
	}
	if known && held && (cur.Lifetime == 0 || time.Until(cur.Granted.Add(cur.Lifetime)) > cur.Lifetime/2) {
		return cur, false, nil
	}
	m, err = cur.handle.mapPort(ctx, k.cfg.Request, &cur)
	if err != nil {
		return cur, false, err
	}
	if known {
		return m, !held, nil
	}
	// PCP and NAT-PMP: a router's epoch counts seconds since it started;
	// one that went back (by more than the RFCs' slack) restarted, and
	// lost its mappings before this renewal made ours again.
	elapsed := uint32(m.Granted.Sub(cur.Granted) / time.Second)
	expect := cur.epoch + elapsed - elapsed/8
	return m, m.epoch+2 < expect, nil
}

// Map makes the mapping cfg asks for once, trying each method in turn,
// and returns it; nothing renews it (see Keep). Remove removes it.
func Map(ctx context.Context, cfg Config) (Mapping, error) {
	k, err := newKeeper(cfg)
	if err != nil {
		return Mapping{}, err
	}
	return k.mapAny(ctx)
}

// Remove asks the router to remove m.
func (m Mapping) Remove(ctx context.Context) error {
	if m.handle == nil {
		return errors.New("port mapping: not made by this package")
	}
	return m.handle.unmap(ctx, m)
}

// mapAny tries each method in turn.
func (k *Keeper) mapAny(ctx context.Context) (Mapping, error) {
	gw, local, err := k.route()
	if err != nil {
		return Mapping{}, err
	}
	var errs []error
	for _, meth := range k.cfg.Methods {
		var c mapper
		switch meth {
		case PCP:
			c = &pcpClient{gateway: gw, local: local}
		case NATPMP:
			c = &natpmpClient{gateway: gw, local: local}
		case UPnP:
			u := &upnpClient{local: local}
			if k.cfg.Gateway.IsValid() {
				u.gateway = gw
			}
			c = u
		default:
			return Mapping{}, fmt.Errorf("port mapping: unknown method %q", meth)
		}
		actx, cancel := context.WithTimeout(ctx, attemptTimeout)
		m, err := c.mapPort(actx, k.cfg.Request, nil)
		cancel()
		if err == nil {
			return m, nil
		}
		if ctx.Err() != nil {
			return Mapping{}, ctx.Err()
		}
		k.log.Debug("port mapping: method failed", "method", meth, "err", err)
		errs = append(errs, err)
	}
	return Mapping{}, fmt.Errorf("port mapping through %v: %w", gw, errors.Join(errs...))
}

// route finds the router and this host's address toward it.
func (k *Keeper) route() (gw, local netip.Addr, err error) {
	gw = k.cfg.Gateway
	if !gw.IsValid() {
		ip, err := gateway.DiscoverGateway()
		if err != nil {
			return gw, local, fmt.Errorf("port mapping: finding the router (default gateway): %w", err)
		}
		a, ok := netip.AddrFromSlice(ip)
		if !ok {
			return gw, local, fmt.Errorf("port mapping: default gateway %v", ip)
		}
		gw = a.Unmap()
	}
	// A connected UDP socket names the source address the system would
	// use; it sends nothing.
	c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(netip.AddrPortFrom(gw, pcpPort)))
	if err != nil {
		return gw, local, fmt.Errorf("port mapping: no route to the router %v: %w", gw, err)
	}
	defer c.Close()
	local = c.LocalAddr().(*net.UDPAddr).AddrPort().Addr().Unmap()
	return gw, local, nil
}

func (k *Keeper) checkEvery(m Mapping) time.Duration {
	if k.cfg.Check > 0 {
		return k.cfg.Check
	}
	if m.Lifetime > 0 {
		return min(max(m.Lifetime/2, time.Second), time.Minute)
	}
	return time.Minute
}

func (k *Keeper) set(f func(*Status)) {
	k.mu.Lock()
	defer k.mu.Unlock()
	was := k.st.Up
	f(&k.st)
	if k.st.Up != was {
		k.st.Since = time.Now()
	}
}

func (k *Keeper) notify(m Mapping, ok bool) {
	if k.cfg.OnChange != nil {
		k.cfg.OnChange(m, ok)
	}
}

// sleep waits d or until ctx ends; false if ctx ended.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
