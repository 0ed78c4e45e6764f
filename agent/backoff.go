package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/homeport/homeport/config"
	"github.com/homeport/homeport/internal/relaydial"
	"github.com/homeport/homeport/tunnel"
)

// Backoff settings.
const (
	backoffBase = 500 * time.Millisecond
	// dialBackoffBase and dialBackoffMax set the delay after failing to
	// reach the relay at all: a refused or unanswered connect costs the
	// relay nothing, and a relay that comes back should be used within a
	// second.
	dialBackoffBase = 250 * time.Millisecond
	dialBackoffMax  = time.Second
	// rejectedBackoff is the delay after the relay refused this agent
	// (wrong token): retrying sooner would only hammer the relay.
	rejectedBackoff = 5 * time.Minute
	// refusedBase is the first delay after a refusal that may pass (a
	// quota, or another agent holding this agent's id); the delays double
	// up to reconnect_max.
	refusedBase = time.Second
	// stablePeriod: a session that lived this long resets the backoff;
	// shorter ones (a relay that drops agents at once) keep it growing.
	stablePeriod = 2 * time.Second
)

// jitter is exponential backoff with full jitter: uniform in
// [0, min(max, base*2^attempt)], never below a tenth of base.
func jitter(base, max time.Duration, attempt int) time.Duration {
	return relaydial.Jitter(base, max, attempt)
}

// retries is what a link remembers from one attempt to the next, to
// choose the delay before the next one.
type retries struct {
	attempt  int  // attempts since the last stable session
	dialFail int  // attempts in a row that did not reach the relay
	everUp   bool // a session has once been up
	// lastRefusal is the relay's last refusal of a login that may pass,
	// logged once.
	lastRefusal tunnel.RejectError
	// standby: another agent took over this agent's id; logins ask for
	// it only once that one has left (tunnel.FlagStandby). standbyN
	// counts the waits since, for their backoff.
	standby  bool
	standbyN int
}

// afterSession returns the delay after a session that was up for lived
// ended with f, and says why in the log.
func (r *retries) afterSession(f *failure, lived time.Duration, cfg config.Agent, log *slog.Logger) time.Duration {
	r.everUp = true
	r.dialFail = 0
	// A session that was up for a while means the relay was fine: the
	// next attempt starts with the shortest delay again.
	if lived >= stablePeriod {
		r.attempt = 0
	}
	if !f.replaced {
		r.standbyN = 0
	}
	var delay time.Duration
	switch {
	case f.replaced:
		// Wait for the other agent to leave, asking with FlagStandby:
		// the relay lets this one in only then, so two agents with one
		// id do not take it from each other.
		r.standby = true
		delay = jitter(refusedBase, cfg.ReconnectMax, r.standbyN)
		r.standbyN++
		log.Error("another agent with this agent's id took over; waiting for it to leave; give each agent its own id (--id)",
			"id", cfg.ID, "relay_said", f.err, "retry_in", delay.Round(time.Millisecond))
		return delay
	case f.definitive:
		delay = rejectedBackoff
		log.Error("session ended by the relay", "err", f.err, "retry_in", delay)
		return delay
	case f.cut:
		// A relay that crashed or restarted, or a link that died: try
		// again as soon as for an unreachable relay, however short the
		// session was.
		delay = jitter(dialBackoffBase, min(dialBackoffMax, cfg.ReconnectMax), r.attempt)
	default:
		delay = jitter(backoffBase, cfg.ReconnectMax, r.attempt)
	}
	if !f.logged {
		log.Warn("session lost; reconnecting", "err", f.err, "retry_in", delay.Round(time.Millisecond))
	}
	return delay
}

// afterConnect returns the delay after a failed attempt at a session,
// and says why in the log; or, when the very first attempt was refused
// for good, the error Run returns.
func (r *retries) afterConnect(ctx context.Context, err error, cfg config.Agent, log *slog.Logger) (time.Duration, error) {
	var f *failure
	errors.As(err, &f)
	var re *tunnel.RejectError
	var delay time.Duration
	switch {
	case f != nil && f.refused && errors.As(err, &re):
		// Refused for now (a quota, or the other agent still holds the
		// id): try again, slowly, and say so once.
		level, msg := slog.LevelError, "relay refused this agent for now; retrying"
		if re.Code == tunnel.CodeIDInUse {
			delay = jitter(refusedBase, cfg.ReconnectMax, r.standbyN)
			r.standbyN++
			level, msg = slog.LevelInfo, "the other agent still holds this agent's id; waiting"
		} else {
			delay = jitter(refusedBase, cfg.ReconnectMax, r.attempt)
		}
		if *re == r.lastRefusal {
			level = slog.LevelDebug
		}
		r.lastRefusal = *re
		log.Log(ctx, level, msg, "err", f.err, "retry_in", delay.Round(time.Millisecond))
	case f != nil && f.definitive:
		if !r.everUp {
			return 0, fmt.Errorf("%w: %w", ErrRejected, f)
		}
		delay = rejectedBackoff
		log.Error("relay refused this agent", "err", f, "retry_in", delay)
	case f != nil && f.stage == stageDial:
		delay = jitter(dialBackoffBase, min(dialBackoffMax, cfg.ReconnectMax), r.attempt)
		if r.dialFail%30 == 0 { // do not fill the log while the relay is away
			log.Warn("relay unreachable; retrying", "relay", cfg.Relay, "err", f.err, "retry_in", delay.Round(time.Millisecond))
		}
		r.dialFail++
	default:
		delay = jitter(backoffBase, cfg.ReconnectMax, r.attempt)
		log.Warn("connecting to relay failed; retrying", "relay", cfg.Relay, "err", err, "retry_in", delay.Round(time.Millisecond))
	}
	return delay, nil
}
