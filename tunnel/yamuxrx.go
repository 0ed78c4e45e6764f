package tunnel

import (
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/hashicorp/yamux"
)

// Receive buffers of yamux streams.
//
// yamux keeps what arrives for a stream in a bytes.Buffer of its own. The
// buffer is made at the stream's first data and kept until the stream is
// shrunk, and while the reader lags by more than half of it, it is
// reallocated (and cleared) at every frame instead of slid: a bulk
// transfer allocated a tenth of its bytes again (BenchmarkSplice). yamux
// also checks what arrives only against the window it believes it gave,
// not the smaller credit recvWindows grants.
//
// So frameReader keeps the bodies of the streams' data frames itself, in
// pooled chunks (streamRx) that a stream holds only while data waits for
// its reader, checks each against the credit granted, and hands yamux
// the headers with a length of 0: yamux still sees every frame and its
// flags (SYN, ACK, FIN, RST) and runs the streams' states, and
// yamuxStream reads from the streamRx.

// streamRx is what arrived for one stream and was not read yet. One
// goroutine fills it (the session's frameReader), one reads it.
type streamRx struct {
	done <-chan struct{} // the session's end

	mu       sync.Mutex
	chunks   []*[]byte  // queued data: (*chunks[0])[off:] is next
	first    [2]*[]byte // chunks' array while the queue is short
	off      int
	n        int    // bytes queued
	recvd    uint64 // bytes received in all
	limit    uint64 // credit given to the peer in all
	filling  bool   // the last chunk is being filled outside mu
	fin      bool   // the peer's end of stream: io.EOF once drained
	rst      bool   // the peer reset the stream
	closed   bool   // closed or reset at this end
	deadline time.Time
	wake     chan struct{} // data, an end, or a new deadline
}

func newStreamRx(done <-chan struct{}) *streamRx {
	return &streamRx{done: done, limit: baseWindow, wake: make(chan struct{}, 1)}
}

// read copies queued data into p, waiting for some; then it reports the
// stream's end as yamux would: io.EOF after the peer's FIN (or the
// session's end), yamux.ErrConnectionReset after its RST (at once, as
// yamux does), yamux.ErrTimeout at the read deadline.
func (rx *streamRx) read(p []byte) (int, error) {
	rx.mu.Lock()
	defer rx.mu.Unlock()
	if err := rx.waitLocked(); err != nil {
		return 0, err
	}
	total := 0
	for total < len(p) && rx.n > 0 {
		c := *rx.chunks[0]
		k := copy(p[total:], c[rx.off:])
		total += k
		rx.off += k
		rx.n -= k
		if rx.off == len(c) && (len(rx.chunks) > 1 || !rx.filling) {
			putChunk(rx.chunks[0])
			rx.chunks[0] = nil
			rx.chunks = rx.chunks[1:]
			rx.off = 0
		}
	}
	if len(rx.chunks) == 0 {
		rx.chunks = rx.first[:0]
	}
	return total, nil
}

// waitLocked waits until data is queued or the stream has ended; rx.mu
// is held, and released while waiting.
func (rx *streamRx) waitLocked() error {
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		switch {
		case rx.rst:
			return errYamuxReset
		case rx.closed:
			return yamux.ErrStreamClosed
		case !rx.deadline.IsZero() && !time.Now().Before(rx.deadline):
			// A deadline that has passed fails the Read even with
			// data queued, as a net.Conn's does.
			return yamux.ErrTimeout
		case rx.n > 0:
			return nil
		case rx.fin:
			return io.EOF
		case isClosed(rx.done):
			// The session ended before the peer's end of stream: the
			// stream was cut, which is not an end of its data (as over
			// QUIC, whose streams then read the connection's error).
			return ErrStreamCut
		}
		var expire <-chan time.Time
		if !rx.deadline.IsZero() {
			d := time.Until(rx.deadline)
			if d <= 0 {
				return yamux.ErrTimeout
			}
			if timer == nil {
				timer = time.NewTimer(d)
			} else {
				timer.Reset(d)
			}
			expire = timer.C
		}
		rx.mu.Unlock()
		select {
		case <-rx.wake:
		case <-rx.done:
		case <-expire:
		}
		rx.mu.Lock()
	}
}

// wait waits until the stream has data or has ended, without reading.
func (rx *streamRx) wait() error {
	rx.mu.Lock()
	defer rx.mu.Unlock()
	return rx.waitLocked()
}

func isClosed(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

func (rx *streamRx) notify() {
	select {
	case rx.wake <- struct{}{}:
	default:
	}
}

// setDeadline sets the read deadline; a read waiting learns of it.
func (rx *streamRx) setDeadline(t time.Time) {
	rx.mu.Lock()
	rx.deadline = t
	rx.mu.Unlock()
	rx.notify()
}

// space returns room at the end of the queue for up to want bytes, which
// the filler writes outside mu and then commits.
func (rx *streamRx) space(want uint32) []byte {
	rx.mu.Lock()
	defer rx.mu.Unlock()
	rx.filling = true
	if k := len(rx.chunks); k > 0 {
		if c := *rx.chunks[k-1]; cap(c)-len(c) >= min(int(want), smallBuf) {
			return c[len(c):cap(c)]
		}
	}
	cp := getChunk(want)
	*cp = (*cp)[:0]
	if rx.chunks == nil {
		rx.chunks = rx.first[:0]
	}
	rx.chunks = append(rx.chunks, cp)
	return (*cp)[:cap(*cp)]
}

// commit queues the n bytes the filler wrote into the last space.
func (rx *streamRx) commit(n int) {
	rx.mu.Lock()
	rx.filling = false
	last := rx.chunks[len(rx.chunks)-1]
	*last = (*last)[:len(*last)+n]
	rx.n += n
	rx.recvd += uint64(n)
	if len(*last) == 0 && len(rx.chunks) == 1 && rx.off == 0 {
		// Nothing came (a failed read): give the chunk back.
		putChunk(last)
		rx.chunks = rx.first[:0]
	}
	rx.mu.Unlock()
	if n > 0 {
		rx.notify()
	}
}

// credit adds to the credit given to the peer; the grant that carries it
// is sent after.
func (rx *streamRx) credit(delta uint32) {
	rx.mu.Lock()
	rx.limit += uint64(delta)
	rx.mu.Unlock()
}

// admit checks a data frame of n bytes against the credit, and reports
// whether it is to be kept: not once the stream is closed here.
func (rx *streamRx) admit(n uint32) (keep bool, err error) {
	rx.mu.Lock()
	defer rx.mu.Unlock()
	if rx.closed {
		return false, nil
	}
	if rx.recvd+uint64(n) > rx.limit {
		return false, fmt.Errorf("%w: %d bytes received beyond a credit of %d", ErrMalformed, rx.recvd+uint64(n)-rx.limit, rx.limit)
	}
	return true, nil
}

// peerFlags notes the FIN or RST of a frame from the peer, and reports
// whether the stream is done with at both ends: closed here, ended there.
func (rx *streamRx) peerFlags(flags uint16) (done bool) {
	rx.mu.Lock()
	rx.fin = rx.fin || flags&yamuxFlagFIN != 0
	rx.rst = rx.rst || flags&yamuxFlagRST != 0
	done = rx.closed && (rx.fin || rx.rst)
	rx.mu.Unlock()
	if flags&(yamuxFlagFIN|yamuxFlagRST) != 0 {
		rx.notify()
	}
	return done
}

// close ends reading at this end and releases the queue; data that
// arrives later is dropped. It reports whether the peer has ended the
// stream already.
func (rx *streamRx) close() (ended bool) {
	rx.mu.Lock()
	rx.closed = true
	ended = rx.fin || rx.rst
	if !rx.filling {
		for _, c := range rx.chunks {
			putChunk(c)
		}
		rx.chunks, rx.n, rx.off = nil, 0, 0
	}
	rx.mu.Unlock()
	rx.notify()
	return ended
}

// getChunk returns a pooled buffer for up to want bytes.
func getChunk(want uint32) *[]byte {
	if want <= smallBuf {
		return smallPool.Get().(*[]byte)
	}
	return largePool.Get().(*[]byte)
}

func putChunk(c *[]byte) {
	*c = (*c)[:cap(*c)]
	switch cap(*c) {
	case smallBuf:
		smallPool.Put(c)
	case largeBuf:
		largePool.Put(c)
	}
}

// rxTable is a session's streamRx by stream ID: those of the streams
// this end opened or the peer opened and that are not closed here.
type rxTable struct {
	done    chan struct{} // closed at the session's end (see end)
	endOnce sync.Once
	mu      sync.Mutex
	m       map[uint32]*streamRx
}

func newRxTable() *rxTable {
	return &rxTable{done: make(chan struct{}), m: make(map[uint32]*streamRx)}
}

// end wakes every stream's reader for the session's end: the link failed
// or was closed (yamux closes it when the session ends).
func (t *rxTable) end() { t.endOnce.Do(func() { close(t.done) }) }

// open returns stream id's streamRx, made if new.
func (t *rxTable) open(id uint32) *streamRx {
	t.mu.Lock()
	defer t.mu.Unlock()
	rx := t.m[id]
	if rx == nil {
		rx = newStreamRx(t.done)
		t.m[id] = rx
	}
	return rx
}

func (t *rxTable) get(id uint32) *streamRx {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.m[id]
}

// remove closes and forgets stream id's streamRx at once: the stream is
// reset, and yamux drops what still arrives for it.
func (t *rxTable) remove(id uint32) {
	if rx := t.get(id); rx != nil {
		rx.close()
	}
	t.forget(id)
}

// forget drops stream id's streamRx from the table.
func (t *rxTable) forget(id uint32) {
	t.mu.Lock()
	delete(t.m, id)
	t.mu.Unlock()
}
