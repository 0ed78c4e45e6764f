package visitor

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/homeport/homeport/tunnel"
)

// A tunnel whose home agent is not connected is checked again after
// checkBase, doubling up to checkMax.
const (
	checkBase = time.Second
	checkMax  = 30 * time.Second
)

// ask opens a stream on sess for the visit, sends its Visit with flags,
// and reads the relay's answer, within handshake_timeout and ctx. The
// stream is returned whenever it was opened; the caller closes it.
func (v *Visitor) ask(ctx context.Context, sess tunnel.Session, vis *visit, flags tunnel.VisitFlags) (tunnel.Stream, tunnel.OpenResult, error) {
	var res tunnel.OpenResult
	st, err := sess.OpenStream(ctx)
	if err != nil {
		return nil, res, fmt.Errorf("open stream: %w", err)
	}
	deadline := time.Now().Add(v.cfg.HandshakeTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	_ = st.SetDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { _ = st.SetDeadline(time.Now()) })
	defer stop()
	if err := tunnel.WriteMessage(st, &tunnel.Visit{Tunnel: vis.cfg.Tunnel, Protocol: vis.proto, Flags: flags}); err != nil {
		return st, res, fmt.Errorf("send visit: %w", err)
	}
	if err := tunnel.ReadInto(st, tunnel.MaxFrameSize, &res); err != nil {
		return st, res, fmt.Errorf("read the relay's answer: %w", err)
	}
	if res.Code == tunnel.CodeWaking {
		// The home agent wakes the target: its answer follows within
		// tunnel.MaxWakeWait (ctx still ends the wait).
		vis.log.Info("the home agent is waking the target; waiting", "detail", res.Message)
		_ = st.SetReadDeadline(time.Now().Add(tunnel.MaxWakeWait))
		if err := tunnel.ReadInto(st, tunnel.MaxFrameSize, &res); err != nil {
			return st, res, fmt.Errorf("read the relay's answer after the target's wake: %w", err)
		}
		if res.Code == tunnel.CodeWaking {
			return st, res, fmt.Errorf("the relay sent a second waking notice: %w", tunnel.ErrUnexpected)
		}
	}
	if !stop() {
		return st, res, ctx.Err()
	}
	_ = st.SetDeadline(time.Time{})
	return st, res, nil
}

// errNoSession: no relay had a session up within handshake_timeout.
var errNoSession = errors.New("no session to any relay within handshake_timeout")

// connect carries one connection or flow of vis: it asks the relays whose
// session is up, in order (see liveSessions.up), for the visit's tunnel,
// and returns the stream of the first that accepts, with its session. It
// waits up to handshake_timeout for a first session. A relay that fails
// to answer, or refuses (the home agent is not connected to it, say), is
// passed over for the next; but a home target that cannot be dialed is
// the same through every relay, so that answer is final. With bounded,
// each answer is awaited only within handshake_timeout, even when the
// home agent wakes the target. relay is the address of the relay that
// carries it. When no relay accepts, st is nil and either err is set or
// res holds the refusal to report.
func (v *Visitor) connect(ctx context.Context, vis *visit, bounded bool, log *slog.Logger) (st tunnel.Stream, sess tunnel.Session, relay string, res tunnel.OpenResult, err error) {
	wctx, cancel := context.WithTimeout(ctx, v.cfg.HandshakeTimeout)
	defer cancel()
	up, err := v.sessions(wctx)
	if err != nil {
		if ctx.Err() != nil {
			return nil, nil, "", res, ctx.Err()
		}
		return nil, nil, "", res, errNoSession
	}
	actx := ctx
	if bounded {
		actx = wctx
	}
	var refused *tunnel.OpenResult
	for i, u := range up {
		relay = v.relays[u.relay].ep.Address
		if i < len(up)-1 {
			st, res, err = v.askWatched(actx, u.sess, vis)
		} else {
			st, res, err = v.ask(actx, u.sess, vis, 0)
		}
		switch {
		case err == nil && res.Code == tunnel.CodeOK:
			return st, u.sess, relay, res, nil
		case st != nil:
			st.Close()
		}
		if ctx.Err() != nil {
			return nil, nil, "", res, ctx.Err()
		}
		if err != nil {
			log.Debug("relay did not answer; trying the next", "relay", relay, "err", err)
			continue
		}
		if res.Code == tunnel.CodeOffline {
			select {
			case vis.recheck[u.relay] <- struct{}{}:
			default:
			}
		}
		if refused == nil || refused.Code == tunnel.CodeOffline {
			r := res
			refused = &r
		}
		if res.Code == tunnel.CodeDialFailed {
			break
		}
		log.Debug("relay refused; trying the next", "relay", relay, "reason", res.Code.String(), "relay_said", res.Message)
	}
	if refused != nil {
		return nil, nil, "", *refused, nil
	}
	return nil, nil, "", res, err
}

// errSilent: the relay's session went silent while it was asked.
var errSilent = errors.New("the relay went silent")

// askWatched is ask, given up as soon as the session has been silent for
// suspectSilence: its link may have died just now, and another relay can
// carry the connection. (A session pings its relay every second.)
func (v *Visitor) askWatched(ctx context.Context, sess tunnel.Session, vis *visit) (tunnel.Stream, tunnel.OpenResult, error) {
	actx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	done := make(chan struct{})
	defer close(done)
	go func() {
		t := time.NewTicker(silenceCheck)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				if sess.SilentFor() > suspectSilence {
					cancel(errSilent)
					return
				}
			}
		}
	}()
	st, res, err := v.ask(actx, sess, vis, 0)
	if err != nil && ctx.Err() == nil && errors.Is(context.Cause(actx), errSilent) {
		err = fmt.Errorf("%w for %v: %w", errSilent, suspectSilence, err)
	}
	return st, res, err
}

// silenceCheck is how often askWatched looks at the session's silence.
const silenceCheck = 250 * time.Millisecond

// tunnel states, for logging changes once.
const (
	stateUnknown = iota
	stateReady
	stateOffline
)

// watch checks that the visit's tunnel can be reached through one relay,
// on every new session to it and, while its home agent is away, until it
// is back, and logs what changes. It returns an error, already logged,
// when the tunnel can never be reached through this relay with this
// configuration (unknown, not allowed, another protocol); nil when ctx
// ends.
func (v *Visitor) watch(ctx context.Context, vis *visit, rc *relayConn) error {
	state := stateUnknown
	wait := checkBase
	name, listen := vis.cfg.Tunnel, vis.cfg.Listen
	log := vis.log.With("relay", rc.ep.Address)
	for {
		sess, err := v.session(ctx, rc.index)
		if err != nil {
			return nil
		}
		st, res, err := v.ask(ctx, sess, vis, tunnel.VisitCheck)
		if st != nil {
			st.Close()
		}
		if ctx.Err() != nil {
			return nil
		}
		retry := time.NewTimer(wait)
		after := retry.C
		if err != nil {
			// The session broke or the relay did not answer in time: ask
			// again on the next session, or after a while.
			log.Debug("checking the tunnel failed", "err", err)
			wait = min(2*wait, checkMax)
		} else {
			switch res.Code {
			case tunnel.CodeOK:
				if state != stateReady {
					log.Info(fmt.Sprintf("tunnel %s ready: connect to %s", name, listen), "protocol", vis.cfg.Protocol)
				}
				state, wait = stateReady, checkBase
				after = nil // until the session ends or a connection finds it offline
			case tunnel.CodeOffline:
				if state != stateOffline {
					log.Info(fmt.Sprintf("tunnel %s: its home agent is not connected; waiting", name), "relay_said", res.Message)
				}
				state = stateOffline
				wait = min(2*wait, checkMax)
			case tunnel.CodeNotAllowed:
				err := fmt.Errorf("tunnel %q: this visitor key may not use it (relay: %s); allow it in the relay's visitor_keys entry of this key (its tunnels), or add the key's name to the home agent's visitors list of the tunnel", name, res.Message)
				log.Error("tunnel cannot be visited", "err", err)
				retry.Stop()
				return err
			case tunnel.CodeUnknownTunnel:
				err := fmt.Errorf("tunnel %q: the relay knows no private tunnel of that name for this key (relay: %s); check the name against the home agent's private tunnels, and the token and tunnels of this key's entry in the relay's visitor_keys", name, res.Message)
				log.Error("tunnel cannot be visited", "err", err)
				retry.Stop()
				return err
			case tunnel.CodeBadRequest:
				err := fmt.Errorf("tunnel %q is not a %s tunnel at its home agent (relay: %s); set the visit's protocol to the tunnel's", name, vis.cfg.Protocol, res.Message)
				log.Error("tunnel cannot be visited", "err", err)
				retry.Stop()
				return err
			default:
				log.Warn("checking the tunnel: the relay refused", "code", res.Code.String(), "relay_said", res.Message, "retry_in", wait)
				wait = min(2*wait, checkMax)
			}
		}
		select {
		case <-ctx.Done():
			retry.Stop()
			return nil
		case <-sess.Done():
		case <-after:
		case <-vis.recheck[rc.index]:
		}
		retry.Stop()
	}
}
