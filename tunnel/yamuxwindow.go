package tunnel

import (
	"sync"
	"sync/atomic"
	"time"
)

// Receive windows of yamux streams.
//
// yamux grants a stream's peer the whole stream window as soon as the
// stream opens and keeps it topped up, so a stream whose reader lags (a
// visitor that stops reading a download) holds a full window of data at
// the receiving end, and nothing bounds a session's streams together: the
// window has to stay small, and a single stream over a long round trip is
// capped by it.
//
// recvWindows takes the grants over, as QUIC and TCP do: a stream starts
// with yamux's initial window (baseWindow), and its window doubles, up to
// the stream window, each time its reader takes half of it in less than
// two round trips, which means the window, not the reader, limits it. All
// streams of a session together grow beyond baseWindow by at most the
// session's budget. A stream idle for shrinkAfter falls back to
// baseWindow. The peer need not know: the grants are ordinary yamux window
// updates, which yamux's sender obeys as always.
//
// yamux's own window updates (those that open, accept or close a stream:
// yamux sends no others, since the data never reaches it, see streamRx)
// pass through frameWriter, which rewrites their credit to what
// recvWindows allows; the grants themselves frameWriter sends.
type recvWindows struct {
	max    uint32 // a stream's largest window
	budget uint64 // growth beyond baseWindow, all streams together
	rtt    atomic.Int64

	mu      sync.Mutex
	streams map[uint32]*recvWindow
	charged uint64 // sum of the streams' charge
}

// recvWindow is one stream's receive window.
type recvWindow struct {
	w       uint64    // the window: most credit outstanding at a grant
	granted uint64    // credit given to the peer in all, baseWindow included
	read    uint64    // bytes the application has read
	charge  uint64    // what the stream counts against the budget
	epoch   time.Time // when the last grant was sent
	readAt  time.Time // when the application last read
}

const (
	// baseWindow is a yamux stream's initial window, fixed by its protocol.
	baseWindow = 256 << 10
	// minRTT is the round trip assumed while none shorter is measured: on
	// loopback, a window taken in two milliseconds may grow.
	minRTT = time.Millisecond
)

// sessionWindow is the receive window all streams of a session share
// beyond their first baseWindow (QUIC: the connection window).
func sessionWindow(cfg SessionConfig) uint64 {
	return max(4*uint64(cfg.StreamWindow), 16<<20)
}

func newRecvWindows(cfg SessionConfig) *recvWindows {
	return &recvWindows{
		max:     cfg.StreamWindow,
		budget:  sessionWindow(cfg),
		streams: make(map[uint32]*recvWindow),
	}
}

// sampleRTT adds a measured round trip to the smoothed one.
func (ws *recvWindows) sampleRTT(rtt time.Duration) {
	old := time.Duration(ws.rtt.Load())
	if old > 0 {
		rtt = (7*old + rtt) / 8
	}
	ws.rtt.Store(int64(rtt))
}

func (ws *recvWindows) roundTrip() time.Duration {
	return max(time.Duration(ws.rtt.Load()), minRTT)
}

// outgoing rewrites the credit of a window update yamux is sending, hdr,
// to what the stream is due: yamux's own credit never goes out.
func (ws *recvWindows) outgoing(hdr frameHeader, now time.Time) {
	id, flags := hdr.id(), hdr.flags()
	var delta uint32
	ws.mu.Lock()
	defer ws.mu.Unlock()
	e := ws.streams[id]
	switch {
	case flags&yamuxFlagRST != 0:
		ws.removeLocked(id)
	case e == nil && flags&(yamuxFlagSYN|yamuxFlagACK) != 0:
		// A stream opened or accepted: its peer may send baseWindow.
		ws.streams[id] = &recvWindow{w: baseWindow, granted: baseWindow}
	case e != nil:
		delta = ws.grantLocked(e, now)
	}
	hdr.setLength(delta)
}

// consumed notes that the application read n bytes of stream id, and
// reports whether the peer is due more credit (see grant).
func (ws *recvWindows) consumed(id uint32, n int, now time.Time) bool {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	e := ws.streams[id]
	if e == nil {
		return false
	}
	e.read += uint64(n)
	e.readAt = now
	ws.rechargeLocked(e)
	return e.outstanding() < e.w/2
}

// outstanding is the credit the peer has not used yet and the data read
// from it that the application has not: what it may hold at this end.
func (e *recvWindow) outstanding() uint64 {
	if e.read > e.granted { // a peer that sent beyond its credit
		return 0
	}
	return e.granted - e.read
}

// grant returns the credit to send the peer of stream id now, 0 for none.
func (ws *recvWindows) grant(id uint32, now time.Time) uint32 {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	if e := ws.streams[id]; e != nil {
		return ws.grantLocked(e, now)
	}
	return 0
}

func (ws *recvWindows) grantLocked(e *recvWindow, now time.Time) uint32 {
	if e.outstanding() >= e.w/2 {
		return 0
	}
	if e.w < uint64(ws.max) && !e.epoch.IsZero() && now.Sub(e.epoch) < 2*ws.roundTrip() {
		// Half the window went in under two round trips: the window
		// limits the stream. Grow it if the session's budget allows.
		w := min(2*e.w, uint64(ws.max))
		if extra := chargeOf(w, e.outstanding()) - e.charge; ws.charged+extra <= ws.budget {
			e.w = w
		}
	}
	e.epoch = now
	target := e.read + e.w
	if target <= e.granted {
		return 0
	}
	delta := target - e.granted
	e.granted = target
	ws.rechargeLocked(e)
	return uint32(delta)
}

// shrink returns stream id to baseWindow if nothing was read from it for
// shrinkAfter before now: a transfer in progress keeps its window. Credit
// already granted stays with the peer and counts until it is used.
func (ws *recvWindows) shrink(id uint32, now time.Time) {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	if e := ws.streams[id]; e != nil && now.Sub(e.readAt) >= shrinkAfter {
		e.w = baseWindow
		e.epoch = time.Time{}
		ws.rechargeLocked(e)
	}
}

// remove forgets stream id: the application is done with it.
func (ws *recvWindows) remove(id uint32) {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	ws.removeLocked(id)
}

func (ws *recvWindows) removeLocked(id uint32) {
	if e := ws.streams[id]; e != nil {
		ws.charged -= e.charge
		delete(ws.streams, id)
	}
}

// rechargeLocked counts e against the budget by what the peer may have
// sent it beyond baseWindow: its window, or the credit outstanding if
// that is more (after shrink).
func (ws *recvWindows) rechargeLocked(e *recvWindow) {
	c := chargeOf(e.w, e.outstanding())
	ws.charged = ws.charged - e.charge + c
	e.charge = c
}

func chargeOf(w, outstanding uint64) uint64 {
	return max(w, outstanding, baseWindow) - baseWindow
}

// usage reports the budget in use and the number of streams (tests).
func (ws *recvWindows) usage() (charged uint64, streams int) {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	return ws.charged, len(ws.streams)
}
