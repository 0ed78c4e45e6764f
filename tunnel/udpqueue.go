package tunnel

import (
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

// Datagrams waiting to be sent toward a peer that is slow or paused (a
// flow's stream whose window is full) are held within byte budgets: one
// per flow and one per tunnel, shared by its flows. A datagram that does
// not fit is dropped, as a router drops what its queue cannot hold, and
// counted; the sender's protocol copes, as it must with any UDP path.

// Budgets for a UDP tunnel's datagrams queued toward the peer. A flow's
// budget holds a few of the largest datagrams; the tunnel's, all flows
// together, bounds what a tunnel can pin however many flows it has.
const (
	FlowQueueBudget   = 256 << 10
	TunnelQueueBudget = 4 << 20
)

// datagramCost is what a queued datagram costs besides its payload (its
// slice and allocation): an empty datagram is not free.
const datagramCost = 64

// dropLogEvery is the shortest time between two log lines about a
// tunnel's dropped datagrams.
const dropLogEvery = 10 * time.Second

// UDPDrops counts a tunnel's datagrams dropped because a budget was full.
type UDPDrops struct {
	FlowFull   uint64 // the flow's budget was full
	TunnelFull uint64 // the tunnel's budget was full
}

// Total is the number of datagrams dropped.
func (d UDPDrops) Total() uint64 { return d.FlowFull + d.TunnelFull }

// UDPBudget is one UDP tunnel's budget for datagrams queued toward the
// peer, shared by the queues of its flows (see NewQueue). It counts the
// datagrams dropped and logs them, at most one line per dropLogEvery with
// the number dropped since the line before.
type UDPBudget struct {
	flowMax, tunnelMax int64
	queued             atomic.Int64
	flowFull           atomic.Uint64
	tunnelFull         atomic.Uint64

	log *slog.Logger
	msg string

	mu     sync.Mutex
	logged time.Time   // the last line
	since  uint64      // drops since that line
	timer  *time.Timer // logs the drops since, once dropLogEvery is over
	closed bool
}

// NewUDPBudget returns a budget of flowMax bytes per flow and tunnelMax
// for all flows together. Drops are logged to log (with the tunnel's
// attributes) as msg.
func NewUDPBudget(flowMax, tunnelMax int64, log *slog.Logger, msg string) (*UDPBudget, error) {
	if flowMax < MaxDatagram+datagramCost || tunnelMax < flowMax {
		return nil, fmt.Errorf("UDP queue budget of %d bytes per flow and %d per tunnel: a flow must hold one datagram of %d bytes, and a tunnel one flow", flowMax, tunnelMax, MaxDatagram)
	}
	return &UDPBudget{flowMax: flowMax, tunnelMax: tunnelMax, log: log, msg: msg}, nil
}

// Drops returns the number of datagrams dropped so far.
func (b *UDPBudget) Drops() UDPDrops {
	return UDPDrops{FlowFull: b.flowFull.Load(), TunnelFull: b.tunnelFull.Load()}
}

// Queued returns the bytes queued in all flows, the datagrams being sent
// included.
func (b *UDPBudget) Queued() int64 { return b.queued.Load() }

// Close logs the drops not logged yet and stops logging.
func (b *UDPBudget) Close() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return
	}
	b.closed = true
	if b.timer != nil {
		b.timer.Stop()
		b.timer = nil
	}
	if b.since > 0 {
		b.logLocked(time.Now())
	}
}

func (b *UDPBudget) dropped(count *atomic.Uint64) {
	count.Add(1)
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return
	}
	b.since++
	now := time.Now()
	if b.logged.IsZero() || now.Sub(b.logged) >= dropLogEvery {
		b.logLocked(now)
		return
	}
	if b.timer == nil {
		b.timer = time.AfterFunc(b.logged.Add(dropLogEvery).Sub(now), b.logDue)
	}
}

// logDue logs the drops since the last line, when its time has come.
func (b *UDPBudget) logDue() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.timer = nil
	if !b.closed && b.since > 0 {
		b.logLocked(time.Now())
	}
}

func (b *UDPBudget) logLocked(now time.Time) {
	d := b.Drops()
	b.log.Warn(b.msg, "dropped", b.since, "dropped_total", d.Total(), "queued_bytes", b.queued.Load(),
		"flow_budget", b.flowMax, "tunnel_budget", b.tunnelMax)
	b.since = 0
	b.logged = now
}

// DatagramQueue is one flow's datagrams waiting to be sent toward the
// peer, within its tunnel's budget. One goroutine takes them (Pop, then
// Done once sent); any may Push.
type DatagramQueue struct {
	b     *UDPBudget
	ready chan struct{} // a datagram may be waiting

	mu     sync.Mutex
	q      [][]byte
	bytes  int64 // cost of the datagrams queued and being sent
	closed bool
}

// NewQueue returns an empty queue for a flow of the tunnel.
func (b *UDPBudget) NewQueue() *DatagramQueue {
	return &DatagramQueue{b: b, ready: make(chan struct{}, 1)}
}

// Push queues a copy of p, or drops it (and counts the drop) when the
// flow's or the tunnel's budget cannot hold it. It reports whether p was
// queued; after Close it queues nothing and counts nothing.
func (q *DatagramQueue) Push(p []byte) bool {
	cost := int64(len(p)) + datagramCost
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return false
	}
	if q.bytes+cost > q.b.flowMax {
		q.mu.Unlock()
		q.b.dropped(&q.b.flowFull)
		return false
	}
	if q.b.queued.Add(cost) > q.b.tunnelMax {
		q.b.queued.Add(-cost)
		q.mu.Unlock()
		q.b.dropped(&q.b.tunnelFull)
		return false
	}
	q.bytes += cost
	q.q = append(q.q, append([]byte(nil), p...))
	q.mu.Unlock()
	select {
	case q.ready <- struct{}{}:
	default:
	}
	return true
}

// Ready is signalled after a Push; Pop then has a datagram.
func (q *DatagramQueue) Ready() <-chan struct{} { return q.ready }

// Pop takes the oldest datagram, if any. It still counts against the
// budgets until Done.
func (q *DatagramQueue) Pop() ([]byte, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.q) == 0 {
		return nil, false
	}
	p := q.q[0]
	q.q[0] = nil
	q.q = q.q[1:]
	return p, true
}

// Done releases a datagram that Pop returned, once sent (or given up).
func (q *DatagramQueue) Done(p []byte) {
	cost := int64(len(p)) + datagramCost
	q.mu.Lock()
	q.bytes -= cost
	q.mu.Unlock()
	q.b.queued.Add(-cost)
}

// Bytes returns what the flow's datagrams queued and being sent cost.
func (q *DatagramQueue) Bytes() int64 {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.bytes
}

// Close drops the datagrams waiting and releases their budget; a
// datagram being sent is released by its Done.
func (q *DatagramQueue) Close() {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		return
	}
	q.closed = true
	var cost int64
	for _, p := range q.q {
		cost += int64(len(p)) + datagramCost
	}
	q.q = nil
	q.bytes -= cost
	q.b.queued.Add(-cost)
}
