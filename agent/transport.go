package agent

import (
	"context"
	"time"

	"github.com/homeport/homeport/config"
	"github.com/homeport/homeport/internal/relaydial"
	"github.com/homeport/homeport/tunnel"
)

// Transport choice with transport: auto: see relaydial. While the session
// is on TCP, the agent probes QUIC in the background and, once it works
// and no connection is open, moves the session over to QUIC.

// upgradeCheck is how often a TCP session checks whether it is idle
// enough to move to QUIC.
const upgradeCheck = 5 * time.Second

// transports builds the agent's transports from its configuration.
func (a *Agent) transports(cfg *config.Agent) (tcp, quic tunnel.Transport) {
	return relaydial.Transports(cfg.Transport, cfg.Session, cfg.HandshakeTimeout, func(rcv, snd int) {
		a.smallBuffers.Do(func() {
			tunnel.LogSmallBuffers(a.log, rcv, snd)
		})
	})
}

// watchQUIC runs beside a TCP session in auto mode: when QUIC may be
// tried again, it probes; once QUIC answers and the session carries no
// visitor connection, it calls upgrade (once) and returns.
func (s *relayLink) watchQUIC(ctx context.Context, sess tunnel.Session, upgrade func()) {
	for {
		// Wake at least every upgradeCheck, so that a policy changed
		// meanwhile (a QUIC success elsewhere) is seen.
		t := time.NewTimer(min(s.policy.RetryIn(time.Now()), upgradeCheck))
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-sess.Done():
			t.Stop()
			return
		case <-t.C:
		}
		if !s.policy.Usable(time.Now()) {
			continue
		}
		if err := s.dialer(s.a.conf()).ProbeQUIC(ctx); err != nil {
			if ctx.Err() != nil {
				return
			}
			pause := s.policy.Failed(time.Now())
			s.log.Debug("QUIC to the relay still fails; staying on TCP", "err", err, "retry_quic_in", pause.Round(time.Second))
			continue
		}
		s.policy.Worked()
		s.log.Info("QUIC to the relay works again; moving the session from TCP once no connection is open")
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
