package relay

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/homeport/homeport/tunnel"
)

// Checking an agent's port mapping from outside (docs/wire.md, "Checking
// a port mapping").
const (
	reachDialTimeout = 5 * time.Second
	reachWindow      = 10 * time.Minute
	reachMaxChecks   = 30
)

// reachLimit bounds an agent session's checks: one at a time, and
// reachMaxChecks within reachWindow.
type reachLimit struct {
	mu    sync.Mutex
	busy  bool
	times []time.Time
}

// take reserves a check, or says why not.
func (l *reachLimit) take(now time.Time) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.busy {
		return "a check of this session is still running"
	}
	kept := l.times[:0]
	for _, t := range l.times {
		if now.Sub(t) < reachWindow {
			kept = append(kept, t)
		}
	}
	l.times = kept
	if len(l.times) >= reachMaxChecks {
		return fmt.Sprintf("at most %d checks in %v", reachMaxChecks, reachWindow)
	}
	l.times = append(l.times, now)
	l.busy = true
	return ""
}

func (l *reachLimit) done() {
	l.mu.Lock()
	l.busy = false
	l.mu.Unlock()
}

// checkReach answers a CheckReach: at once for a request it refuses, and
// from a goroutine of wg once its dial ends.
func (as *agentSession) checkReach(ctx context.Context, wg *sync.WaitGroup, m *tunnel.CheckReach) {
	answer := func(code tunnel.Code, msg string) {
		as.ctrlMu.Lock()
		err := tunnel.WriteMessage(as.ctrl, &tunnel.ReachResult{Addr: m.Addr, Code: code, Message: msg})
		as.ctrlMu.Unlock()
		if err != nil {
			as.log.Debug("port mapping check: answer not sent", "err", err)
		}
	}
	target, err := netip.ParseAddrPort(m.Addr)
	switch {
	case err != nil || target.Port() == 0:
		answer(tunnel.CodeBadRequest, fmt.Sprintf("%q is not ip:port", m.Addr))
		return
	case m.Protocol != tunnel.ProtoTCP:
		answer(tunnel.CodeBadRequest, fmt.Sprintf("the relay checks TCP ports only, not %v", m.Protocol))
		return
	}
	target = netip.AddrPortFrom(target.Addr().Unmap(), target.Port())
	seen, err := netip.ParseAddrPort(as.remote)
	if err != nil || seen.Addr().Unmap() != target.Addr() {
		answer(tunnel.CodeNotAllowed, fmt.Sprintf("the relay sees this agent at %s, not at %s: another NAT (a carrier's) stands between the router and the internet, and a mapping on the router cannot be reached from outside", seen.Addr().Unmap(), target.Addr()))
		return
	}
	if why := as.reach.take(time.Now()); why != "" {
		answer(tunnel.CodeQuota, why)
		return
	}
	wg.Go(func() {
		d := net.Dialer{Timeout: reachDialTimeout}
		c, err := d.DialContext(ctx, "tcp", target.String())
		// Free before answering: the agent may ask again at once.
		as.reach.done()
		if err != nil {
			as.log.Info("port mapping check: not reachable from outside", "addr", target, "err", err)
			answer(tunnel.CodeDialFailed, err.Error())
			return
		}
		c.Close()
		as.log.Info("port mapping check: reachable from outside", "addr", target)
		answer(tunnel.CodeOK, "")
	})
}
