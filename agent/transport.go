package agent

import (
	"context"
	"errors"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/homeport/homeport/config"
	"github.com/homeport/homeport/tunnel"
)

// Transport choice with transport: auto. QUIC is tried first; when it
// fails for reasons of the network (no answer over UDP: a firewall, a
// relay without QUIC), the agent connects over TCP at once and tries QUIC
// again later, with a growing pause so that a network that blocks UDP costs
// one short probe now and then, not a slow start every time. While the
// session is on TCP, the agent probes QUIC in the background and, once it
// works and no connection is open, moves the session over to QUIC.
//
// Two kinds of flapping are avoided: a QUIC that fails is not retried for
// quicRetryMin (doubling to quicRetryMax), and QUIC sessions that keep
// dying young count as a QUIC failure, so the agent settles on TCP.
const (
	// quicAttemptTimeout bounds a QUIC attempt in auto mode: how long a
	// blocked UDP path delays the fallback to TCP.
	quicAttemptTimeout = 3 * time.Second
	quicRetryMin       = time.Minute
	quicRetryMax       = 30 * time.Minute
	// quicYoung: a QUIC session that ends sooner than this is suspect;
	// quicYoungLimit of them in a row count as a QUIC failure.
	quicYoung      = time.Minute
	quicYoungLimit = 3
	// upgradeCheck is how often a TCP session checks whether it is idle
	// enough to move to QUIC.
	upgradeCheck = 5 * time.Second
)

// errUpgrade ends a TCP session that moves to QUIC.
var errUpgrade = errors.New("moving the session to QUIC")

// quicPolicy remembers, in auto mode, whether QUIC is worth trying.
type quicPolicy struct {
	mu      sync.Mutex
	retryAt time.Time // QUIC is not tried before this
	pause   time.Duration
	young   int // QUIC sessions in a row that ended young
}

// usable reports whether the next attempt should try QUIC.
func (p *quicPolicy) usable(now time.Time) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return !now.Before(p.retryAt)
}

// failed records a QUIC failure and returns the pause before QUIC is
// tried again.
func (p *quicPolicy) failed(now time.Time) time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.pause = min(max(2*p.pause, quicRetryMin), quicRetryMax)
	// Up to a quarter less, so that many agents do not probe in step.
	d := p.pause - rand.N(p.pause/4)
	p.retryAt = now.Add(d)
	p.young = 0
	return d
}

// worked records a QUIC handshake that succeeded.
func (p *quicPolicy) worked() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.retryAt = time.Time{}
}

// ended records the end of a QUIC session that lasted d, and reports
// whether QUIC is now considered failed.
func (p *quicPolicy) ended(d time.Duration, now time.Time) (failed bool, pause time.Duration) {
	p.mu.Lock()
	if d >= quicYoung {
		p.young, p.pause = 0, 0
		p.mu.Unlock()
		return false, 0
	}
	p.young++
	n := p.young
	p.mu.Unlock()
	if n < quicYoungLimit {
		return false, 0
	}
	return true, p.failed(now)
}

// retryIn is the time left before QUIC is tried again.
func (p *quicPolicy) retryIn(now time.Time) time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	return max(p.retryAt.Sub(now), 0)
}

// transports builds the agent's transports from its configuration.
func (a *Agent) transports(cfg *config.Agent) (tcp, quic tunnel.Transport) {
	hs := cfg.HandshakeTimeout
	if cfg.Transport == config.TransportAuto {
		hs = min(hs, quicAttemptTimeout)
	}
	return tunnel.TCPTransport{}, tunnel.QUICTransport{
		OnSmallBuffers: func(rcv, snd int) {
			a.smallBuffers.Do(func() {
				tunnel.LogSmallBuffers(a.log, rcv, snd)
			})
		},
		Session: tunnel.SessionConfig{
			KeepAlive:        cfg.Session.KeepAlive,
			KeepAliveTimeout: cfg.Session.KeepAliveTimeout,
			StreamWindow:     cfg.Session.StreamWindow,
		},
		HandshakeTimeout: hs,
	}
}

// probeQUIC checks that the relay answers over QUIC: a QUIC and TLS
// handshake (which verifies the relay), nothing more.
func (a *Agent) probeQUIC(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, quicAttemptTimeout)
	defer cancel()
	set := a.conf()
	c, err := set.quic.Dial(ctx, set.cfg.Relay, set.tls)
	if err != nil {
		return err
	}
	defer c.Close()
	return c.Handshake(ctx)
}

// watchQUIC runs beside a TCP session in auto mode: when QUIC may be
// tried again, it probes; once QUIC answers and the session carries no
// visitor connection, it ends the session so that the next one uses QUIC.
func (a *Agent) watchQUIC(ctx context.Context, sess tunnel.Session, upgrade func()) {
	for {
		// Wake at least every upgradeCheck, so that a policy changed
		// meanwhile (a QUIC success elsewhere) is seen.
		t := time.NewTimer(min(a.policy.retryIn(time.Now()), upgradeCheck))
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-sess.Done():
			t.Stop()
			return
		case <-t.C:
		}
		if !a.policy.usable(time.Now()) {
			continue
		}
		if err := a.probeQUIC(ctx); err != nil {
			if ctx.Err() != nil {
				return
			}
			pause := a.policy.failed(time.Now())
			a.log.Debug("QUIC to the relay still fails; staying on TCP", "err", err, "retry_quic_in", pause.Round(time.Second))
			continue
		}
		a.policy.worked()
		a.log.Info("QUIC to the relay works again; moving the session from TCP once no connection is open")
		tick := time.NewTicker(upgradeCheck)
		for {
			// The control stream is always open.
			if sess.NumStreams() <= 1 {
				tick.Stop()
				upgrade()
				return
			}
			select {
			case <-ctx.Done():
				tick.Stop()
				return
			case <-sess.Done():
				tick.Stop()
				return
			case <-tick.C:
			}
		}
	}
}
