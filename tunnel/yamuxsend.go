package tunnel

import (
	"sync"
	"time"

	"github.com/hashicorp/yamux"
)

// Sending on yamux streams.
//
// yamux writes every data frame from one sender goroutine: a stream's
// Write hands the frame over and waits to hear it was written, two thread
// wake-ups per frame, and the sender copies the body once more. A
// yamuxStream instead writes its data frames itself, from the writer's
// goroutine, through frameWriter (between yamux's own frames). It keeps
// the peer's credit for each stream in sendWindows, from the window
// updates frameReader sees arriving, as yamux does. yamux itself still
// sends everything else: stream opening and closing, window updates,
// pings.
type sendWindows struct {
	mu      sync.Mutex
	streams map[uint32]*sendWindow
}

// sendWindow is the credit the peer gave one stream.
type sendWindow struct {
	credit uint64
	reset  bool // the peer reset the stream
	// more is signalled when credit grows, the stream resets or ends, or
	// its write deadline moves; made when a writer first waits.
	more chan struct{}
}

// signal wakes a writer waiting on sw, if any.
func (sw *sendWindow) signal() {
	if sw.more != nil {
		select {
		case sw.more <- struct{}{}:
		default:
		}
	}
}

func newSendWindows() *sendWindows {
	return &sendWindows{streams: make(map[uint32]*sendWindow)}
}

// opened starts stream id with yamux's initial window plus what the frame
// that opens it grants.
func (ss *sendWindows) opened(id, delta uint32) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.streams[id] == nil {
		ss.streams[id] = &sendWindow{credit: baseWindow + uint64(delta)}
	}
}

// incoming applies a window update the peer sent.
func (ss *sendWindows) incoming(hdr frameHeader) {
	flags, id, delta := hdr.flags(), hdr.id(), hdr.length()
	if flags&yamuxFlagSYN != 0 {
		ss.opened(id, delta)
		return
	}
	ss.mu.Lock()
	defer ss.mu.Unlock()
	sw := ss.streams[id]
	if sw == nil {
		return
	}
	sw.credit += uint64(delta)
	if flags&yamuxFlagRST != 0 {
		sw.reset = true
	}
	sw.signal()
}

// poke wakes a writer of stream id waiting for credit: its write deadline
// moved.
func (ss *sendWindows) poke(id uint32) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if sw := ss.streams[id]; sw != nil {
		sw.signal()
	}
}

// remove forgets stream id; a Write waiting for its credit fails.
func (ss *sendWindows) remove(id uint32) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if sw := ss.streams[id]; sw != nil {
		delete(ss.streams, id)
		sw.signal()
	}
}

// take waits until stream id may send, and takes up to n bytes of its
// credit. It fails once the stream was reset or forgotten, the session
// ends (done), or the deadline passes; it reads the deadline again when
// poked.
func (ss *sendWindows) take(id uint32, n int, deadline func() time.Time, done <-chan struct{}) (int, error) {
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		ss.mu.Lock()
		sw := ss.streams[id]
		switch {
		case sw == nil:
			ss.mu.Unlock()
			return 0, yamux.ErrStreamClosed
		case sw.reset:
			ss.mu.Unlock()
			return 0, errYamuxReset
		case sw.credit > 0:
			k := int(min(uint64(n), sw.credit))
			sw.credit -= uint64(k)
			ss.mu.Unlock()
			return k, nil
		}
		if sw.more == nil {
			sw.more = make(chan struct{}, 1)
		}
		more := sw.more
		ss.mu.Unlock()
		var timeout <-chan time.Time
		if dl := deadline(); !dl.IsZero() {
			d := time.Until(dl)
			if d <= 0 {
				return 0, yamux.ErrTimeout
			}
			if timer == nil {
				timer = time.NewTimer(d)
			} else {
				timer.Reset(d)
			}
			timeout = timer.C
		}
		select {
		case <-more:
		case <-done:
			return 0, yamux.ErrSessionShutdown
		case <-timeout:
			return 0, yamux.ErrTimeout
		}
	}
}
