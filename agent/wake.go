package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/homeport/homeport/config"
	"github.com/homeport/homeport/internal/control"
	"github.com/homeport/homeport/internal/wol"
	"github.com/homeport/homeport/tunnel"
)

const (
	// DefaultWakeEvery is the least time between two magic packets for one
	// MAC address, however many visitors wait.
	DefaultWakeEvery = 5 * time.Second
	// wakeRedial is the least time between two dials of a waking target.
	wakeRedial = 250 * time.Millisecond
)

// Wake results, in the status and as the metric's label.
const (
	WakeWoke     = "woke"      // the target answered after the wake
	WakeNoAnswer = "no_answer" // it did not within wake_time
	WakeSent     = "sent"      // sent by hand (agent wake); nobody waits
	WakeFailed   = "failed"    // no magic packet could be sent
)

// WakeStatus is a tunnel's last wake.
type WakeStatus struct {
	Time   time.Time `json:"time"`
	MAC    string    `json:"mac"`
	Result string    `json:"result"`
	// Took is the time from the first magic packet to the target's
	// answer (result woke).
	Took control.Duration `json:"took,omitempty"`
	// Sent says how the magic packet went out.
	Sent  string `json:"sent,omitempty"`
	Error string `json:"error,omitempty"`
}

// waker sends the magic packets of one MAC address, at most one burst
// per WakeEvery, and keeps when the current wake began.
type waker struct {
	mu        sync.Mutex
	lastBurst time.Time
	began     time.Time // first burst of the wake going on; zero: none
	sent      string    // how the last burst went out
}

// wakerOf returns the waker of m, made on first use.
func (a *Agent) wakerOf(m wol.MAC) *waker {
	a.wakeMu.Lock()
	defer a.wakeMu.Unlock()
	if a.wakers == nil {
		a.wakers = map[wol.MAC]*waker{}
	}
	w := a.wakers[m]
	if w == nil {
		w = &waker{}
		a.wakers[m] = w
	}
	return w
}

// WolTarget says where t's magic packets go.
func WolTarget(ctx context.Context, t config.Tunnel) wol.Target {
	w := t.Wake
	wt := wol.Target{MAC: w.MAC, Broadcast: w.Broadcast, Interface: w.Interface, Port: w.Port}
	host, _, err := net.SplitHostPort(t.Target)
	if err != nil {
		return wt
	}
	if a, err := netip.ParseAddr(host); err == nil {
		wt.Host = a.Unmap()
		return wt
	}
	rctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	if as, err := net.DefaultResolver.LookupNetIP(rctx, "ip4", host); err == nil && len(as) > 0 {
		wt.Host = as[0].Unmap()
	}
	return wt
}

// burst sends t's magic packet unless one went out for its MAC address
// less than WakeEvery ago. It reports whether it sent one.
func (a *Agent) burst(ctx context.Context, w *waker, t config.Tunnel) bool {
	w.mu.Lock()
	now := time.Now()
	if !w.lastBurst.IsZero() && now.Sub(w.lastBurst) < a.WakeEvery {
		w.mu.Unlock()
		return false
	}
	w.lastBurst = now
	fresh := w.began.IsZero()
	if fresh {
		w.began = now
	}
	w.mu.Unlock()
	sent, err := wol.Send(ctx, WolTarget(ctx, t))
	w.mu.Lock()
	w.sent = sent.String()
	w.mu.Unlock()
	switch {
	case err != nil:
		a.log.Warn("wake: magic packet not sent", "tunnel", t.Name, "mac", t.Wake.MAC.String(), "err", err)
	case fresh:
		attrs := []any{"tunnel", t.Name, "mac", t.Wake.MAC.String(), "target", t.Target, "sent", sent.String()}
		if sent.RawErr != nil && !sent.Raw {
			attrs = append(attrs, "ethernet", sent.RawErr.Error())
		}
		a.log.Info("waking target (Wake-on-LAN)", attrs...)
	default:
		a.log.Debug("wake: magic packet sent again", "tunnel", t.Name, "mac", t.Wake.MAC.String(), "sent", sent.String())
	}
	return true
}

// wakeAndDial wakes t's target after a failed dial (first), and dials it
// again until it answers or wake_time passes. Through a relay that knows
// it (tunnel.FeatureWake) it first tells the relay, which then waits
// longer for the stream's answer.
func (a *Agent) wakeAndDial(ctx context.Context, st tunnel.Stream, t config.Tunnel, cfg config.Agent, f tunnel.Features, first error, who []any) (net.Conn, error) {
	start := time.Now()
	deadline := start.Add(cfg.WakeTime)
	w := a.wakerOf(t.Wake.MAC)
	if f&tunnel.FeatureWake != 0 {
		_ = st.SetWriteDeadline(time.Now().Add(10 * time.Second))
		err := tunnel.WriteMessage(st, &tunnel.OpenResult{Code: tunnel.CodeWaking,
			Message: fmt.Sprintf("tunnel %q: waking the target, for up to %s", t.Name, cfg.WakeTime)})
		_ = st.SetWriteDeadline(time.Time{})
		if err != nil {
			return nil, fmt.Errorf("telling the relay of the wake: %w", err)
		}
	}
	a.log.Debug("target does not answer; waking it", append(who, "target", t.Target, "err", first)...)
	a.burst(ctx, w, t)
	lastErr := first
	for i := 0; ; i++ {
		left := time.Until(deadline)
		if left <= 0 || ctx.Err() != nil {
			break
		}
		tried := time.Now()
		d := net.Dialer{Timeout: min(cfg.DialTimeout, left)}
		c, err := d.DialContext(ctx, "tcp", t.Target)
		if err == nil {
			a.woke(w, t, start)
			return c, nil
		}
		lastErr = err
		a.burst(ctx, w, t)
		if gap := wakeRedial - time.Since(tried); gap > 0 {
			select {
			case <-ctx.Done():
			case <-time.After(min(gap, time.Until(deadline))):
			}
		}
	}
	a.wakeFailed(w, t, cfg.WakeTime)
	return nil, lastErr
}

// woke ends the wake of t's target that began at start: it answered.
func (a *Agent) woke(w *waker, t config.Tunnel, start time.Time) {
	w.mu.Lock()
	began, sent := w.began, w.sent
	w.began = time.Time{}
	w.mu.Unlock()
	if began.IsZero() {
		return // another visitor's dial saw it first
	}
	took := time.Since(began)
	a.log.Info("target woke", "tunnel", t.Name, "mac", t.Wake.MAC.String(), "target", t.Target, "took", took.Round(time.Millisecond))
	a.recordWake(t.Name, WakeStatus{Time: began, MAC: t.Wake.MAC.String(), Result: WakeWoke, Took: control.Duration(took), Sent: sent})
}

// wakeFailed ends the wake of t's target: it did not answer in time.
func (a *Agent) wakeFailed(w *waker, t config.Tunnel, wakeTime time.Duration) {
	w.mu.Lock()
	began, sent := w.began, w.sent
	w.began = time.Time{}
	w.mu.Unlock()
	if began.IsZero() {
		return // logged by another visitor's wait
	}
	a.log.Warn("target did not wake", "tunnel", t.Name, "mac", t.Wake.MAC.String(), "target", t.Target, "wake_time", wakeTime, "sent", sent)
	a.recordWake(t.Name, WakeStatus{Time: began, MAC: t.Wake.MAC.String(), Result: WakeNoAnswer, Sent: sent})
}

func (a *Agent) recordWake(name string, ws WakeStatus) {
	a.metrics.wakes.WithLabelValues(name, ws.Result).Inc()
	if s := a.statsOf(name); s != nil {
		s.mu.Lock()
		s.wake = &ws
		s.mu.Unlock()
	}
}

// ErrNoWake means the tunnel asked for has no wake setting.
var ErrNoWake = errors.New("no wake setting")

// ErrUnknownTunnel means no tunnel has the name asked for.
var ErrUnknownTunnel = errors.New("no such tunnel")

// Wake sends the named tunnel's magic packet now, by hand, whatever the
// rate limit, and records it in the status. It does not wait for the
// target.
func (a *Agent) Wake(ctx context.Context, name string) (WakeStatus, error) {
	t, ok := a.conf().tunnels[name]
	switch {
	case !ok:
		return WakeStatus{}, fmt.Errorf("tunnel %q: %w", name, ErrUnknownTunnel)
	case t.Wake == nil:
		return WakeStatus{}, fmt.Errorf("tunnel %q: %w (give it wake: MAC)", name, ErrNoWake)
	}
	w := a.wakerOf(t.Wake.MAC)
	w.mu.Lock()
	w.lastBurst = time.Now()
	w.mu.Unlock()
	ws := WakeStatus{Time: time.Now(), MAC: t.Wake.MAC.String(), Result: WakeSent}
	sent, err := wol.Send(ctx, WolTarget(ctx, t))
	ws.Sent = sent.String()
	if err != nil {
		ws.Result, ws.Error = WakeFailed, err.Error()
		a.log.Warn("wake by hand: magic packet not sent", "tunnel", name, "mac", ws.MAC, "err", err)
	} else {
		a.log.Info("waking target by hand (Wake-on-LAN)", "tunnel", name, "mac", ws.MAC, "target", t.Target, "sent", ws.Sent)
	}
	a.recordWake(name, ws)
	return ws, err
}
