package tunnel

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// HalfCloser is one end of a splice: a connection whose write side can be
// closed alone. *net.TCPConn and Stream satisfy it.
type HalfCloser interface {
	io.ReadWriteCloser
	CloseWrite() error
	SetWriteDeadline(t time.Time) error
}

// StallTimeout bounds how long, after one direction of a splice has ended,
// a write in the other direction may make no progress before the splice is
// aborted. It frees both ends when a peer went away without a word, yet lets
// a half-closed connection carry data the other way for as long as it moves.
const StallTimeout = 30 * time.Second

// Copy buffers. A connection waits for data most of its life, so a waiting
// read uses a small buffer; a read that fills it means data is flowing,
// and the pipe takes a large buffer for as long as reads keep filling it,
// giving it back before it waits again. Both come from pools. A stream
// waits for data without a buffer (Stream.WaitRead), and so holds none
// while it waits.
const (
	smallBuf = 512
	largeBuf = 32 << 10
)

var (
	smallPool = sync.Pool{New: func() any { b := make([]byte, smallBuf); return &b }}
	largePool = sync.Pool{New: func() any { b := make([]byte, largeBuf); return &b }}
)

// Splice copies a to b and b to a until both directions have ended. EOF in
// one direction becomes CloseWrite on the other end and the opposite
// direction keeps flowing; an error in either direction, or ctx ending,
// closes both ends. Splice closes a and b before it returns. err is the
// first error other than a clean EOF, or nil.
//
// A TCP end is reset, not closed with a FIN, if this process dies during
// the splice: its linger is zero until the splice ends cleanly (see
// resetOnCrash), so that a peer of a raw protocol never takes a crash
// for a complete transfer. A half-close still sends a FIN.
//
// One direction runs on the caller's goroutine, the other on a goroutine
// of its own. Where that one reads a TCP connection (on Linux), it parks
// once the connection has sent nothing for a moment (parkAfter): its
// goroutine ends, and a new one takes over when data or the end arrives,
// so that an idle connection keeps one goroutine instead of two.
func Splice(ctx context.Context, a, b HalfCloser) (aToB, bToA int64, err error) {
	return SpliceCounted(ctx, a, b, nil, nil)
}

// SpliceCounted is Splice that also adds the bytes written each way to
// the counters given (nil: none) as they go, so that a long transfer shows
// in totals read meanwhile (status, metrics). One atomic add per write.
func SpliceCounted(ctx context.Context, a, b HalfCloser, countAB, countBA *atomic.Int64) (aToB, bToA int64, err error) {
	var (
		once     sync.Once
		cause    error
		halfDone atomic.Bool
		ab, ba   *pipe
	)
	resetOnCrash(a, true)
	resetOnCrash(b, true)
	abort := func(err error) {
		once.Do(func() {
			cause = err
			if err != nil {
				// A cut must not look like an end: reset both ends.
				reset(a)
				reset(b)
			} else {
				resetOnCrash(a, false)
				resetOnCrash(b, false)
			}
			a.Close()
			b.Close()
			// A parked direction wakes, reads its closed end and stops.
			ab.unpark()
			ba.unpark()
		})
	}
	ab = newPipe(b, a, &halfDone, abort)
	ba = newPipe(a, b, &halfDone, abort)
	ab.count, ba.count = countAB, countBA
	own, caller := ba, ab
	if own.park == nil && caller.park != nil {
		own, caller = ab, ba
	}
	caller.park = nil // the caller waits for the splice anyway
	own.done = make(chan struct{})
	// A stream that its transport cuts (see Stream.OnCut) ends the
	// splice. Only now: the cut may come at once, from the transport's
	// goroutine, and abort wakes both pipes.
	for _, end := range [...]HalfCloser{a, b} {
		if st, ok := end.(Stream); ok {
			st.OnCut(abort)
		}
	}
	stop := context.AfterFunc(ctx, func() { abort(ctx.Err()) })
	defer stop()

	go own.resume()
	caller.run()
	caller.finish()
	<-own.done
	abort(nil) // both directions ended: release both ends
	return ab.n, ba.n, cause
}

// reset makes the coming Close abortive: a stream resets (Abort), a TCP
// connection sends RST instead of FIN.
func reset(c HalfCloser) {
	switch c := c.(type) {
	case Stream:
		c.Abort()
	case lingerer:
		_ = c.SetLinger(0)
	}
}

// lingerer is a TCP end of a splice (a *net.TCPConn, or a connection
// that embeds one), whose linger decides how its Close ends it.
type lingerer interface {
	SetLinger(sec int) error
}

// resetOnCrash sets a TCP end's linger to zero (on) or back to the
// system's default (off). With a zero linger, the kernel resets the
// connection when the socket is closed, and so when the process dies with
// it open; shutdown (CloseWrite) still sends a FIN. A clean end turns it
// off before it closes. Streams need nothing: their session's end is
// already an error (ErrStreamCut, a QUIC or TCP reset) at the other end.
func resetOnCrash(c HalfCloser, on bool) {
	if c, ok := c.(lingerer); ok {
		sec := -1
		if on {
			sec = 0
		}
		_ = c.SetLinger(sec)
	}
}

// parkAfter is how long a TCP connection may send nothing before the
// direction reading it parks (see Splice). The read deadline that tells
// moves only every parkAfter/2, so a direction parks after half to all of
// it: short enough that a burst of new connections does not leave a
// goroutine stack behind for each, long enough that a connection in use
// does not park between its messages.
const parkAfter = 20 * time.Millisecond

// pipe is one direction of a splice: it copies src to dst. On EOF it
// half-closes dst; on error it aborts the splice. Once one direction has
// ended, every write of the other must make progress within StallTimeout.
type pipe struct {
	dst, src HalfCloser
	stream   Stream // src, if it is a stream
	halfDone *atomic.Bool
	abort    func(error)
	n        int64         // bytes copied
	count    *atomic.Int64 // also counts them, if set
	bp       *[]byte       // the large buffer, while data flows
	shrink   *time.Timer   // releases src's drained buffer once idle
	noShrink atomic.Bool   // src has nothing to release (ErrNotSupported)
	park     *parking      // src's readiness wait, nil where it cannot park
	parkOff  bool          // park failed: wait in Read instead
	deadline time.Time     // src's read deadline, while it can park
	done     chan struct{} // closed when a pipe run by resume has ended
}

func newPipe(dst, src HalfCloser, halfDone *atomic.Bool, abort func(error)) *pipe {
	p := &pipe{dst: dst, src: src, halfDone: halfDone, abort: abort, park: newParking(src)}
	// A stream's receive window grows during a transfer, and what it
	// lets the peer send waits at this end while the reader lags. Once
	// reads have drained the stream and none came for shrinkAfter, the
	// stream gives back what it can (Stream.Shrink).
	if st, ok := src.(Stream); ok {
		p.stream = st
		p.shrink = time.AfterFunc(time.Hour, p.shrinkIdle)
		p.shrink.Stop()
	}
	return p
}

// shrinkIdle shrinks src, which has been drained and idle for
// shrinkAfter; a stream that has nothing to give back is not asked again.
func (p *pipe) shrinkIdle() {
	if err := p.stream.Shrink(); errors.Is(err, ErrNotSupported) {
		p.noShrink.Store(true)
	}
}

// resume runs p on the current goroutine until it ends or parks.
func (p *pipe) resume() {
	if p.run() {
		p.finish()
		close(p.done)
	}
}

// finish releases what p holds once it has ended.
func (p *pipe) finish() {
	if p.bp != nil {
		largePool.Put(p.bp)
		p.bp = nil
	}
	if p.shrink != nil {
		p.shrink.Stop()
	}
}

// run copies until src ends, and returns true, or until src has been
// idle for parkAfter and p is parked, and returns false: p then belongs
// to the goroutine that resumes it.
func (p *pipe) run() bool {
	for {
		var sp *[]byte // the small buffer, for one read
		buf := []byte(nil)
		if p.bp != nil {
			buf = *p.bp
		} else {
			if p.stream != nil {
				_ = p.stream.WaitRead() // its error comes again from Read
			}
			sp = smallPool.Get().(*[]byte)
			buf = *sp
		}
		parks := p.park != nil && !p.parkOff
		if parks {
			// Moving the deadline costs a timer update: not on every
			// read, so src parks after parkAfter/2 to parkAfter idle.
			if now := time.Now(); now.After(p.deadline.Add(-parkAfter / 2)) {
				p.deadline = now.Add(parkAfter)
				_ = p.park.conn.SetReadDeadline(p.deadline)
			}
		}
		nr, rerr := p.src.Read(buf)
		if nr > 0 {
			if p.halfDone.Load() {
				_ = p.dst.SetWriteDeadline(time.Now().Add(StallTimeout))
			}
			nw, werr := p.dst.Write(buf[:nr])
			p.n += int64(nw)
			if p.count != nil {
				p.count.Add(int64(nw))
			}
			if werr != nil {
				putSmall(sp)
				p.abort(fmt.Errorf("write: %w", werr))
				return true
			}
			switch {
			case p.bp == nil && nr == len(buf):
				p.bp = largePool.Get().(*[]byte)
			case p.bp != nil && nr < len(buf):
				largePool.Put(p.bp) // the next read is likely to wait
				p.bp = nil
			}
			if p.shrink != nil && nr < len(buf) && !p.noShrink.Load() {
				p.shrink.Reset(shrinkAfter)
			}
		}
		putSmall(sp)
		if rerr == nil {
			continue
		}
		if parks && errors.Is(rerr, os.ErrDeadlineExceeded) {
			if p.bp != nil {
				largePool.Put(p.bp)
				p.bp = nil
			}
			if p.park.wait(p) {
				return false
			}
			// Cannot park: wait in Read as without parking.
			_ = p.park.conn.SetReadDeadline(time.Time{})
			p.parkOff = true
			continue
		}
		if !errors.Is(rerr, io.EOF) {
			p.abort(fmt.Errorf("read: %w", rerr))
			return true
		}
		if p.halfDone.Swap(true) {
			// The other direction has ended too; Splice closes both ends.
			_ = p.dst.CloseWrite()
			return true
		}
		// Bound a write of the other direction already blocked on src.
		_ = p.src.SetWriteDeadline(time.Now().Add(StallTimeout))
		if err := p.dst.CloseWrite(); err != nil {
			p.abort(fmt.Errorf("close write: %w", err))
		}
		return true
	}
}

func putSmall(sp *[]byte) {
	if sp != nil {
		smallPool.Put(sp)
	}
}

// unpark resumes p at once if it is parked.
func (p *pipe) unpark() {
	if p.park != nil {
		p.park.cancel(p)
	}
}

// shrinkAfter is how long a drained stream may go unread before its
// receive window falls back (see pipe).
const shrinkAfter = time.Second

// ErrStreamCut is read from a stream whose session ended without notice
// while the stream was open.
var ErrStreamCut = errors.New("session lost, stream cut")

// CutAware wraps a stream of a session that may die: an end of stream read
// once lost reports true is ErrStreamCut instead of io.EOF. A multiplexer
// ends the streams of a dead session with a plain EOF (yamux does), which
// would pass a cut transfer off as a complete one; lost tells the two
// apart by whether the peer announced its leaving (a GoAway) first.
func CutAware(st Stream, lost func() bool) Stream {
	return &cutAware{Stream: st, lost: lost}
}

type cutAware struct {
	Stream
	lost func() bool
}

func (c *cutAware) Read(p []byte) (int, error) {
	n, err := c.Stream.Read(p)
	if err == io.EOF && c.lost() {
		err = ErrStreamCut
	}
	return n, err
}

// WaitRead is the stream's, with an end told apart as in Read.
func (c *cutAware) WaitRead() error {
	err := c.Stream.WaitRead()
	if err == io.EOF && c.lost() {
		err = ErrStreamCut
	}
	return err
}
