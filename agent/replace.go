package agent

import (
	"context"
	"errors"
	"time"

	"github.com/homeport/homeport/tunnel"
)

// Make-before-break: a session whose relay has been silent for
// suspectAfter (while the link works the relay answers the agent's pings,
// over TCP, or sends its own heartbeat, over QUIC, every second) may be
// stuck behind a link that went down and came back, with the
// retransmissions on both sides (TCP's, or QUIC's probe timeouts) backed
// off for seconds. The agent then opens a new session beside it; the relay
// gives the newer session the ports, and the old one keeps its
// connections until they end. A reload that changes how to reach the
// relay does the same (see reload.go).
const (
	suspectAfter = 3 * time.Second
	silenceCheck = 250 * time.Millisecond
	retireCheck  = 250 * time.Millisecond
	retireIdle   = 10 * time.Second
)

// watchSilence reports l's relay silent, every silenceCheck while it is,
// until l or ctx ends.
func (s *relayLink) watchSilence(ctx context.Context, l *link) {
	t := time.NewTicker(silenceCheck)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-l.sess.Done():
			return
		case <-t.C:
		}
		if isDone(l.sess.Done()) {
			return // a tick and the end were both ready
		}
		if d := l.sess.SilentFor(); d >= suspectAfter {
			if !s.send(ctx, event{kind: evLinkSilent, l: l, silent: d}) {
				return
			}
		}
	}
}

func (s *relayLink) linkSilent(l *link, d time.Duration) {
	if s.state != linkServing || l != s.cur || s.silentGaveUp {
		return
	}
	s.log.Warn("relay silent; opening a new session beside this one", "silent_for", d.Round(time.Millisecond))
	s.replaceBeside(l, replaceSilent, "link_silent", nil)
}

// renewIfDue opens a new session beside the one serving when the
// settings it was made with are to be replaced (see renew), unless a try
// of that failed a moment ago, or was refused for good.
func (s *relayLink) renewIfDue() {
	if s.state != linkServing || s.renewRetry != nil {
		return
	}
	l, want := s.cur, s.wantGen
	if l.set.gen >= want || s.gaveUpGen >= want {
		return
	}
	// A new session that the relay does not see as this one's
	// successor (another relay, token or id) gets the ports only once
	// this one gave them up.
	handed := false
	handoff := func(set *settings) {
		if k, nk := l.set.cfg, set.cfg; k.Relay != nk.Relay || k.Token != nk.Token || k.ID != nk.ID {
			handed = true
			s.handOff(l)
		}
	}
	failed := func() {
		if handed {
			s.takeBack(l)
		}
	}
	s.replaceBeside(l, replaceReload, "reload", &replaceHooks{handoff: handoff, failed: failed})
}

// replaceHooks are called by the worker making a session beside another:
// handoff once the relay has let it in, failed if it failed.
type replaceHooks struct {
	handoff func(*settings)
	failed  func()
}

// replaceBeside makes a new session beside l, which goes on serving.
func (s *relayLink) replaceBeside(l *link, why replaceReason, cause string, h *replaceHooks) {
	s.replacing, s.tried = why, true
	s.enter(linkReplacing, cause)
	var handoff func(*settings)
	if h != nil {
		handoff = h.handoff
	}
	s.spawn(func() {
		next, err := s.establish(s.ctx, true, false, handoff)
		if err != nil {
			if h != nil {
				h.failed()
			}
			s.events <- event{kind: evReplacementFailed, l: l, err: err}
			return
		}
		s.events <- event{kind: evReplacementReady, l: l, next: next}
	})
}

func (s *relayLink) replacementReady(l, next *link) {
	if s.state == linkStopped {
		next.sess.Close()
		return
	}
	s.retries.everUp, s.retries.attempt, s.retries.dialFail = true, 0, 0
	if s.curEnd == nil {
		s.stopWatching()
		s.watchers.Go(func() { retire(l) })
	}
	s.start = time.Now()
	s.serveNow(next, "replacement_ready")
}

func (s *relayLink) replacementFailed(l *link, err error) {
	if s.state == linkStopped {
		return
	}
	if s.curEnd != nil {
		// The session it was to replace has ended meanwhile.
		s.ended(l, s.curEnd)
		return
	}
	var f *failure
	definitive := errors.As(err, &f) && f.definitive
	switch {
	case s.replacing == replaceSilent:
		s.log.Debug("new session failed; trying again while the relay is silent", "err", err)
		if definitive {
			s.silentGaveUp = true // the end of the session deals with it
		}
	case definitive:
		s.log.Error("new session with the changed settings refused; the old session goes on until it ends", "err", err)
		s.gaveUpGen = s.wantGen
	default:
		delay := jitter(refusedBase, s.a.conf().cfg.ReconnectMax, s.renewAttempt)
		s.renewAttempt++
		s.log.Warn("new session with the changed settings failed; the old session goes on; trying again",
			"err", err, "retry_in", delay.Round(time.Millisecond))
		s.renewRetry = time.NewTimer(delay)
	}
	s.enter(linkServing, "replacement_failed")
	s.renewIfDue()
}

// retire lets a replaced session carry its open connections to their end.
// The relay sends no new visitor to it and closes it once it carries no
// connection: it counts the streams it opened, and some of those may not
// have reached this end yet. (After a NAT rebinding, the relay's packets
// reach the old session only once its own next packet has made the home
// router map it again; closing it on an empty count here cut a visitor
// whose stream was on its way.) So this end closes it only after it has
// carried none for retireIdle, in case the relay does not; a link that
// really died ends with the keepalive.
func retire(l *link) {
	t := time.NewTicker(retireCheck)
	defer t.Stop()
	var idle time.Duration
	for {
		select {
		case <-l.served:
			return // serving it ended; its end is logged
		case <-t.C:
		}
		// The control stream is always open.
		if l.sess.NumStreams() > 1 {
			idle = 0
			continue
		}
		if idle += retireCheck; idle >= retireIdle {
			l.sess.Close()
		}
	}
}

// handOff gives up the public ports of l, for a new session beside it
// that the relay does not see as l's successor: with Unregister where the
// relay knows it (the ports are free when it answers), else with a GoAway
// (the relay closes them at once; the new session's registrations may
// come first and are then retried). l's open connections go on.
func (s *relayLink) handOff(l *link) {
	if r := s.registrar(); r != nil && r.l == l {
		if err := r.leave(); err == nil {
			return
		}
	}
	if err := l.w.write(&tunnel.GoAway{Code: tunnel.CodeShutdown, Message: "the agent's settings changed; its new session takes over"}, time.Second); err != nil {
		s.log.Debug("telling the relay that the old session leaves", "err", err)
	}
}

// takeBack registers the tunnels on l again after a handOff whose new
// session failed.
func (s *relayLink) takeBack(l *link) {
	if r := s.registrar(); r != nil && r.l == l {
		r.stay()
		if err := r.sync(); err != nil {
			s.log.Debug("registering the tunnels again on the old session", "err", err)
		}
	}
}
