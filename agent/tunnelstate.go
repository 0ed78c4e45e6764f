package agent

import (
	"context"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/homeport/homeport/tunnel"
)

// TunnelState says whether the relay serves a tunnel.
type TunnelState string

// Tunnel states.
const (
	// TunnelDown: no session to the relay (yet).
	TunnelDown TunnelState = "down"
	// TunnelUp: the relay has the tunnel's public port open.
	TunnelUp TunnelState = "up"
	// TunnelRetrying: the relay refused the tunnel for a reason that may
	// pass (the port is in use or reserved, a quota is reached); the
	// agent asks again at NextRetry, on the same session.
	TunnelRetrying TunnelState = "retrying"
	// TunnelRefused: the relay refused the tunnel for a reason only a
	// change of configuration fixes; the agent asks again on its next
	// session.
	TunnelRefused TunnelState = "refused"
)

// Registration is what the agent knows of one of its tunnels at the relay.
type Registration struct {
	Name  string
	State TunnelState
	// Since is when the tunnel entered State.
	Since time.Time
	// Code and Message are the relay's last refusal of the tunnel
	// (CodeOK and empty when it never refused it).
	Code    tunnel.Code
	Message string
	// NextRetry is when the agent asks again, while State is
	// TunnelRetrying.
	NextRetry time.Time
}

// Registrations returns the state of every tunnel at the relay, in the
// configuration's order.
func (a *Agent) Registrations() []Registration { return a.status.list() }

// retryable reports whether a refusal may pass without a change of
// configuration: the agent then registers the tunnel again on the same
// session. A code newer than this agent counts as retryable: the backoff
// keeps that cheap.
func retryable(c tunnel.Code) bool {
	switch c {
	case tunnel.CodePortInUse, tunnel.CodePortReserved, tunnel.CodeQuota, tunnel.CodeInternal:
		return true
	}
	return c > tunnel.CodeIDInUse
}

// statusBoard holds the Registration of every tunnel.
type statusBoard struct {
	mu    sync.Mutex
	order []string
	m     map[string]*Registration
}

func newStatusBoard(names []string, now time.Time) *statusBoard {
	b := &statusBoard{order: names, m: make(map[string]*Registration, len(names))}
	for _, n := range names {
		b.m[n] = &Registration{Name: n, State: TunnelDown, Since: now}
	}
	return b
}

func (b *statusBoard) list() []Registration {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make([]Registration, 0, len(b.order))
	for _, n := range b.order {
		out = append(out, *b.m[n])
	}
	return out
}

// result records the relay's answer for a tunnel and reports whether it
// is news: a refusal with another code or message than the last one, or
// the end of a refusal.
func (b *statusBoard) result(r tunnel.TunnelResult, now time.Time) (news bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	st := b.m[r.Name]
	if st == nil {
		return false
	}
	state := TunnelUp
	switch {
	case r.Code == tunnel.CodeOK:
	case retryable(r.Code):
		state = TunnelRetrying
	default:
		state = TunnelRefused
	}
	if r.Code == tunnel.CodeOK {
		news = st.State != TunnelUp
	} else {
		news = st.Code != r.Code || st.Message != r.Message
		st.Code, st.Message = r.Code, r.Message
	}
	if st.State != state {
		st.State, st.Since = state, now
	}
	st.NextRetry = time.Time{}
	return news
}

// retryAt records when the retrying tunnels are asked for again.
func (b *statusBoard) retryAt(names []string, at time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, n := range names {
		if st := b.m[n]; st != nil && st.State == TunnelRetrying {
			st.NextRetry = at
		}
	}
}

// down marks every tunnel down: the session has ended.
func (b *statusBoard) down(now time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, st := range b.m {
		if st.State != TunnelDown {
			st.State, st.Since, st.NextRetry = TunnelDown, now, time.Time{}
		}
	}
}

// logResult logs the relay's answer for a tunnel: always on the first
// registration of a session (first), otherwise only when it is news.
func (a *Agent) logResult(r tunnel.TunnelResult, news, first bool) {
	t := a.tunnels[r.Name]
	switch {
	case r.Code == tunnel.CodeOK && (first || news):
		relayHost, _, _ := net.SplitHostPort(a.cfg.Relay)
		a.log.Info("tunnel ready", "tunnel", r.Name, "protocol", t.Protocol, "public", net.JoinHostPort(relayHost, fmt.Sprint(t.RemotePort)), "target", t.Target)
	case r.Code == tunnel.CodeOK:
	case first || news:
		attrs := []any{"tunnel", r.Name, "port", t.RemotePort, "reason", r.Code.String(), "detail", r.Message}
		if retryable(r.Code) {
			attrs = append(attrs, "retrying", true)
		}
		a.log.Error("tunnel refused by relay", attrs...)
	default:
		a.log.Debug("tunnel still refused by relay", "tunnel", r.Name, "reason", r.Code.String())
	}
}

// controlWriter serialises the agent's writes on a control stream.
type controlWriter struct {
	mu   sync.Mutex
	ctrl tunnel.Stream
}

// write sends m within d.
func (w *controlWriter) write(m tunnel.Message, d time.Duration) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	_ = w.ctrl.SetWriteDeadline(time.Now().Add(d))
	err := tunnel.WriteMessage(w.ctrl, m)
	_ = w.ctrl.SetWriteDeadline(time.Time{})
	return err
}

// retryRefused registers again, on the session's control stream, the
// tunnels the relay refused for a reason that may pass, with backoff (1 s
// doubling up to reconnect_max, jittered), until each is up or refused
// for good. It returns when none is left, when ctx or the session ends,
// or when the relay announced the session's end (gone). results carries
// the relay's RegisterResults, read by the control stream's one reader.
func (a *Agent) retryRefused(ctx context.Context, sess tunnel.Session, w *controlWriter, results <-chan *tunnel.RegisterResult, gone <-chan struct{}, reqs []tunnel.TunnelRequest) {
	for attempt := 0; len(reqs) > 0; attempt++ {
		delay := jitter(time.Second, a.cfg.ReconnectMax, attempt)
		names := make([]string, len(reqs))
		for i, r := range reqs {
			names[i] = r.Name
		}
		a.status.retryAt(names, time.Now().Add(delay))
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
		case <-sess.Done():
		case <-gone:
		case <-t.C:
		}
		t.Stop()
		if ctx.Err() != nil || isDone(sess.Done()) || isDone(gone) {
			return
		}
		var still []tunnel.TunnelRequest
		for _, reg := range tunnel.SplitRegister(reqs) {
			if err := w.write(reg, a.cfg.HandshakeTimeout); err != nil {
				a.log.Debug("registering refused tunnels again", "err", err)
				return // the session is failing; its reader tells
			}
			var res *tunnel.RegisterResult
			wait := time.NewTimer(a.cfg.HandshakeTimeout)
			select {
			case res = <-results:
			case <-ctx.Done():
			case <-sess.Done():
			case <-gone:
			case <-wait.C:
				a.log.Warn("relay did not answer a registration; reconnecting", "after", a.cfg.HandshakeTimeout)
				sess.Close()
			}
			wait.Stop()
			if res == nil {
				return
			}
			if len(res.Results) != len(reg.Tunnels) {
				a.log.Warn("relay answered a registration of a different length; reconnecting", "asked", len(reg.Tunnels), "answered", len(res.Results))
				sess.Close()
				return
			}
			for i, r := range res.Results {
				if r.Name != reg.Tunnels[i].Name || r.Code == tunnel.CodeShutdown {
					return // not an answer to this; or the session ends
				}
				a.logResult(r, a.status.result(r, time.Now()), false)
				if retryable(r.Code) {
					still = append(still, reg.Tunnels[i])
				}
			}
		}
		reqs = still
	}
}

// requests are the tunnel requests of the configuration, in its order.
func (a *Agent) requests() []tunnel.TunnelRequest {
	out := make([]tunnel.TunnelRequest, 0, len(a.cfg.Tunnels))
	for _, t := range a.cfg.Tunnels {
		proto := tunnel.ProtoTCP
		if t.Protocol == "udp" {
			proto = tunnel.ProtoUDP
		}
		out = append(out, tunnel.TunnelRequest{Name: t.Name, Protocol: proto, RemotePort: t.RemotePort, Allow: t.Allow, Deny: t.Deny})
	}
	return out
}
