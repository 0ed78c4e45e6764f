package tunnel

import (
	"cmp"
	"errors"
	"slices"
	"sync"
	"time"
)

// Stalled readers on a QUIC session.
//
// What a QUIC stream has received and its reader has not taken counts
// against the connection's receive window as well as the stream's, until
// it is read. A few visitors that stop reading their downloads without
// closing (their streams hold what the agent sent them) could use up the
// whole connection window, and every other stream of the session would
// wait: one hostile visitor could stop a home's remote desktop. yamux has
// no connection window; there recvWindows bounds what stalled streams
// hold instead.
//
// stallGuard watches each stream's reader. quic-go does not tell how much
// a stream holds, but it cannot hold more than its receive window, and
// quic-go grows that window, from the initial window, only by doubling it
// after the reader took a quarter of it: so a stream holds at most the
// initial window plus four times what its reader took, and never more
// than the largest stream window (mayHold). A stream whose reader is not
// in Read, and has not been for stallGrace, is stalled. Once what the
// stalled streams may hold together passes half the connection window,
// the guard resets them, the longest stalled first, until it no longer
// does: the rest of the session keeps at least half the window. A reader
// in Read holds nothing (quic-go hands it whatever arrives), so idle
// streams, however many, never count.
type stallGuard struct {
	start   time.Time
	initial uint64 // a stream's initial receive window
	max     uint64 // a stream's largest receive window
	budget  uint64 // what stalled streams may hold together
	grace   time.Duration

	mu      sync.Mutex
	streams map[*quicStream]struct{}
}

// ErrStalled ends a stream that the stall guard reset.
var ErrStalled = errors.New("stream reset: its reader stopped taking data while the session's receive window ran short")

const (
	// stallGrace is how long a reader may stay away from Read before its
	// stream counts as stalled: far longer than a splice's write to a
	// visitor that reads at all takes.
	stallGrace = 2 * time.Second
	// guardTick is how often the guard looks.
	guardTick = 500 * time.Millisecond
)

func newStallGuard(initial, max, connWindow uint64) *stallGuard {
	return &stallGuard{
		start:   time.Now(),
		initial: initial,
		max:     max,
		budget:  connWindow / 2,
		grace:   stallGrace,
		streams: make(map[*quicStream]struct{}),
	}
}

// now is the guard's clock, never 0 (0 marks a reader in Read).
func (g *stallGuard) now() int64 { return int64(time.Since(g.start)) + 1 }

func (g *stallGuard) add(s *quicStream) {
	s.outSince.Store(g.now()) // not read yet: what arrives waits
	g.mu.Lock()
	g.streams[s] = struct{}{}
	g.mu.Unlock()
}

func (g *stallGuard) remove(s *quicStream) {
	g.mu.Lock()
	delete(g.streams, s)
	g.mu.Unlock()
}

// mayHold is the most stream s can hold unread (see stallGuard).
func (g *stallGuard) mayHold(s *quicStream) uint64 {
	return min(g.max, g.initial+4*s.nread.Load())
}

// stalled is a stream whose reader stayed away from Read.
type stalled struct {
	s     *quicStream
	since int64
	hold  uint64
}

// check resets stalled streams while what they may hold together passes
// the budget, and returns how many it reset.
func (g *stallGuard) check() int {
	now := g.now()
	var (
		list []stalled
		sum  uint64
	)
	g.mu.Lock()
	for s := range g.streams {
		since := s.outSince.Load()
		if since == 0 || time.Duration(now-since) < g.grace {
			continue
		}
		h := g.mayHold(s)
		list = append(list, stalled{s, since, h})
		sum += h
	}
	g.mu.Unlock()
	if sum <= g.budget {
		return 0
	}
	slices.SortFunc(list, func(a, b stalled) int { return cmp.Compare(a.since, b.since) })
	n := 0
	for _, st := range list {
		if sum <= g.budget {
			break
		}
		st.s.cutStalled()
		sum -= st.hold
		n++
	}
	return n
}

// run checks every guardTick until done is closed.
func (g *stallGuard) run(done <-chan struct{}) {
	t := time.NewTicker(guardTick)
	defer t.Stop()
	for {
		select {
		case <-done:
			return
		case <-t.C:
			g.check()
		}
	}
}
