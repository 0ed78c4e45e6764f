package visitor

import (
	"context"
	"errors"
	"net"
	"sync"
	"time"

	"github.com/homeport/homeport/tunnel"
)

// serveTCP accepts the visit's local connections until its listener is
// closed, and carries each one on a stream of its own.
func (v *Visitor) serveTCP(ctx context.Context, vis *visit, wg *sync.WaitGroup) {
	var delay time.Duration
	for {
		c, err := vis.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) || ctx.Err() != nil {
				return
			}
			// Out of file descriptors, say: back off as net/http does,
			// rather than spin.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			vis.log.Warn("accepting a local connection failed", "err", err, "retry_in", delay)
			t := time.NewTimer(delay)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
			continue
		}
		delay = 0
		wg.Go(func() { v.handleTCP(ctx, vis, c.(*net.TCPConn)) })
	}
}

// handleTCP carries one local connection: it waits for the session (up to
// handshake_timeout), asks the relay for the tunnel, and splices the
// connection with the stream. A refusal resets the local connection.
func (v *Visitor) handleTCP(ctx context.Context, vis *visit, c *net.TCPConn) {
	start := time.Now()
	log := vis.log.With("client", c.RemoteAddr().String())
	// The answer may wait for the home agent to wake the target.
	st, sess, relay, res, err := v.connect(ctx, vis, false, log)
	switch {
	case errors.Is(err, errNoSession):
		reset(c)
		log.Warn("connection closed: no session to the relay within handshake_timeout", "waited", time.Since(start).Round(time.Millisecond))
		return
	case err != nil:
		reset(c)
		if ctx.Err() == nil {
			log.Warn("connection closed: the relay did not answer", "err", err)
		}
		return
	case st == nil:
		reset(c)
		log.Warn("connection refused", "reason", res.Code.String(), "relay_said", res.Message)
		return
	}
	log = log.With("relay", relay)
	log.Debug("connection carried")
	// A stream of a session that died ends with a plain EOF: read as a
	// cut, so that the client is reset rather than told the data ended.
	// The relay gives a visitor no notice before ending its session.
	lost := func() bool {
		select {
		case <-sess.Done():
			return true
		default:
			return false
		}
	}
	out, in, err := tunnel.Splice(ctx, c, tunnel.CutAware(st, lost))
	log.Debug("connection ended", "bytes_out", out, "bytes_in", in, "duration", time.Since(start).Round(time.Millisecond), "err", err)
}

// reset closes a local connection with a reset, so that its client sees
// a failure rather than an empty answer.
func reset(c *net.TCPConn) {
	_ = c.SetLinger(0)
	c.Close()
}
