package tunnel

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"
)

// Congestion reset at a change of direction. quic-go's congestion
// control leaves slow start for good at the first rise of the round trip
// it measures (hybrid slow start), and a side that only receives measures
// round trips too: its PINGs (one with every 20th ACK), window updates
// and heartbeats are acknowledged behind the other side's data, in the
// path's queue. So once one side has received a transfer that filled the
// queue, its own first large transfer starts in congestion avoidance from
// 32 packets and grows by one packet per round trip (0.02× of the path at
// 1 Gbit/s and 50 ms). quic-go resets that state only after a
// retransmission timeout or a change of path, on both ends.
//
// So the client (the only end that may migrate) moves the connection to
// another UDP socket of its own, and back the next time, when the
// dominant direction of its traffic changes and the new direction's
// sender looks stuck there: both ends start again in slow start with
// fresh round trip estimates. A sender that is not stuck keeps its
// window: slow start again would only risk an early end on a noisy
// round trip. A move that fails leaves the connection on the path it
// was on.

// Thresholds of the direction detector (see bulkPhases).
const (
	// pathTick is how often the client samples its byte counters.
	pathTick = 100 * time.Millisecond
	// pathTickBulk is the least a direction carries in one tick to count
	// as bulk: below what a sender stuck at 32 packets sends in a tick
	// over a round trip up to 250 ms (40 KB per round trip).
	pathTickBulk = 16 << 10
	// pathDominance: the bulk direction carries this many times what the
	// other one does in the tick (data against its ACKs: about 20:1).
	pathDominance = 8
	// pathPhaseMin is the least a phase one way carries before a phase
	// the other way resets: a smaller one hardly fills a path's queue.
	pathPhaseMin = 256 << 10
	// pathResetGap is the least time between two resets: a change of
	// direction sooner waits for it. After a failed reset the wait is
	// pathRetryGap, so a network that refuses new paths costs little.
	pathResetGap = time.Second
	pathRetryGap = 30 * time.Second
	// pathProbeMax bounds the validation of the new path.
	pathProbeMax = 5 * time.Second
	// pathJudgeRTTs: the new direction's sender is judged after this
	// many round trips (and two ticks at least). In slow start from 32
	// packets it sends about 3.7 windows of 32 packets per round trip
	// over the first 4, stuck about 1; less than pathStuckWindows per
	// round trip is stuck (or a path too slow to lose much by a reset).
	pathJudgeRTTs    = 4
	pathStuckWindows = 2
	// pathInitialWindow is quic-go's initial congestion window: 32
	// packets of its initial size, 1280 bytes.
	pathInitialWindow = 32 * 1280
)

// direction of a connection's bulk traffic, from the client's side.
type direction int8

const (
	dirNone direction = iota
	dirUp             // the client sends
	dirDown           // the client receives
)

// bulkPhases tells from a connection's byte counters when a phase of
// bulk traffic one way ends with one the other way.
type bulkPhases struct {
	sent, rcvd uint64    // the counters at the last step
	dir        direction // of the current phase
	vol        uint64    // bytes the current phase carried
}

// carried is what the counters show the current phase's direction
// carried in all.
func (b *bulkPhases) carried(sent, rcvd uint64) uint64 {
	if b.dir == dirUp {
		return sent
	}
	return rcvd
}

// stuck reports whether a sender that carried n bytes in the elapsed
// time since a change of direction looks stuck in congestion avoidance
// from quic-go's initial window, over round trips of rtt.
func stuck(n uint64, elapsed, rtt time.Duration) bool {
	if elapsed <= 0 {
		return false
	}
	perRTT := float64(n) * float64(rtt) / float64(elapsed)
	return perRTT < pathStuckWindows*pathInitialWindow
}

// step takes the counters at the end of a tick; it reports whether the
// tick began a bulk phase the other way after one of at least
// pathPhaseMin. A tick that is quiet, or busy both ways, changes nothing.
func (b *bulkPhases) step(sent, rcvd uint64) (flipped bool) {
	up, down := sent-b.sent, rcvd-b.rcvd
	b.sent, b.rcvd = sent, rcvd
	var d direction
	var n uint64
	switch {
	case up >= pathTickBulk && up >= pathDominance*down:
		d, n = dirUp, up
	case down >= pathTickBulk && down >= pathDominance*up:
		d, n = dirDown, down
	default:
		return false
	}
	if d == b.dir {
		b.vol += n
		return false
	}
	flipped = b.dir != dirNone && b.vol >= pathPhaseMin
	b.dir, b.vol = d, n
	return flipped
}

// pathResetter moves a client's connection between two UDP sockets: its
// own and one more, made at the first move.
type pathResetter struct {
	conn    *quic.Conn
	log     *slog.Logger
	network string       // of the sockets: "udp4" or "udp6"
	resets  atomic.Int64 // moves made
	// moved, when set, is called with the new local address after a
	// move (quic-go's Conn.LocalAddr is not safe then).
	moved func(net.Addr)

	mu    sync.Mutex     // held by reset, and by run's end
	socks [2]*quicSocket // [0] is the session's own; [1] is ours
	on    int            // index of the socket in use
	path  *quic.Path     // the path in use, nil for the first
}

func newPathResetter(conn *quic.Conn, sock *quicSocket, log *slog.Logger) *pathResetter {
	network := "udp4"
	if a, ok := sock.udp.LocalAddr().(*net.UDPAddr); ok && a.IP.To4() == nil {
		network = "udp6"
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &pathResetter{conn: conn, log: log, network: network, socks: [2]*quicSocket{sock}}
}

// run watches the connection's counters until it ends, and then closes
// the socket it made.
func (r *pathResetter) run() {
	defer func() {
		r.mu.Lock()
		if r.socks[1] != nil {
			r.socks[1].release()
			r.socks[1] = nil
		}
		r.mu.Unlock()
	}()
	done := r.conn.Context().Done()
	t := time.NewTicker(pathTick)
	defer t.Stop()
	var (
		phases  bulkPhases
		judging bool      // a change of direction waits for its judgement
		since   time.Time // of the change
		base    uint64    // what the new direction had carried then
		next    time.Time // no reset before
	)
	st := r.conn.ConnectionStats()
	phases.sent, phases.rcvd = st.BytesSent, st.BytesReceived
	for {
		select {
		case <-done:
			return
		case <-t.C:
		}
		now := time.Now()
		st := r.conn.ConnectionStats()
		if phases.step(st.BytesSent, st.BytesReceived) {
			judging, since, base = true, now, phases.carried(st.BytesSent, st.BytesReceived)
			continue
		}
		elapsed := now.Sub(since)
		if !judging || elapsed < max(pathJudgeRTTs*st.SmoothedRTT, 2*pathTick) || now.Before(next) {
			continue
		}
		judging = false
		if !stuck(phases.carried(st.BytesSent, st.BytesReceived)-base, elapsed, st.SmoothedRTT) {
			continue
		}
		next = now.Add(pathResetGap)
		if err := r.reset(); err != nil {
			next = time.Now().Add(pathRetryGap)
			r.log.Debug("QUIC congestion reset: the connection stays on its path", "err", err)
		}
	}
}

// reset moves the connection to the other socket. On an error the
// connection is where it was.
func (r *pathResetter) reset() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.conn.Context().Err() != nil {
		return net.ErrClosed // run may have closed our socket
	}
	next := 1 - r.on
	if r.socks[next] == nil {
		udp, err := net.ListenUDP(r.network, nil)
		if err != nil {
			return fmt.Errorf("open a UDP socket: %w", err)
		}
		r.socks[next] = newQUICSocket(udp, nil)
	}
	p, err := r.conn.AddPath(r.socks[next].tr)
	if err != nil {
		return fmt.Errorf("add a path: %w", err)
	}
	ctx, cancel := context.WithTimeout(r.conn.Context(), pathProbeMax)
	err = p.Probe(ctx)
	cancel()
	if err == nil {
		err = p.Switch()
	}
	if err != nil {
		_ = p.Close()
		return fmt.Errorf("move to %s: %w", r.socks[next].udp.LocalAddr(), err)
	}
	if r.path != nil {
		if err := r.path.Close(); err != nil && !errors.Is(err, quic.ErrPathClosed) {
			r.log.Debug("QUIC congestion reset: previous path not closed", "err", err)
		}
	}
	r.path, r.on = p, next
	if r.moved != nil {
		r.moved(r.socks[next].udp.LocalAddr())
	}
	r.resets.Add(1)
	r.log.Debug("QUIC congestion reset: the connection moved to another UDP socket", "local", r.socks[next].udp.LocalAddr().String())
	return nil
}
