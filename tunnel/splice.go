package tunnel

import (
	"context"
	"errors"
	"fmt"
	"io"
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
// read uses a small buffer of the pipe's own; a read that fills it means
// data is flowing, and the pipe takes a large buffer from a pool for as
// long as reads keep filling it, giving it back before it waits again.
const (
	smallBuf = 512
	largeBuf = 32 << 10
)

var largePool = sync.Pool{New: func() any { b := make([]byte, largeBuf); return &b }}

// Splice copies a to b and b to a until both directions have ended. EOF in
// one direction becomes CloseWrite on the other end and the opposite
// direction keeps flowing; an error in either direction, or ctx ending,
// closes both ends. Splice closes a and b before it returns. err is the
// first error other than a clean EOF, or nil.
func Splice(ctx context.Context, a, b HalfCloser) (aToB, bToA int64, err error) {
	var (
		once     sync.Once
		cause    error
		halfDone atomic.Bool
	)
	abort := func(err error) {
		once.Do(func() {
			cause = err
			if err != nil {
				// A cut must not look like an end: reset both ends.
				reset(a)
				reset(b)
			}
			a.Close()
			b.Close()
		})
	}
	stop := context.AfterFunc(ctx, func() { abort(ctx.Err()) })
	defer stop()

	done := make(chan int64, 1)
	go func() { done <- pipe(a, b, &halfDone, abort) }()
	aToB = pipe(b, a, &halfDone, abort)
	bToA = <-done
	abort(nil) // both directions ended: release both ends
	return aToB, bToA, cause
}

// reset makes the coming Close abortive where the end supports it: a TCP
// connection sends RST instead of FIN, a stream resets.
func reset(c HalfCloser) {
	switch c := c.(type) {
	case interface{ SetLinger(int) error }:
		_ = c.SetLinger(0)
	case interface{ Abort() }:
		c.Abort()
	}
}

// pipe copies src to dst. On EOF it half-closes dst; on error it aborts the
// splice. Once one direction has ended, every write of the other must make
// progress within StallTimeout.
func pipe(dst, src HalfCloser, halfDone *atomic.Bool, abort func(error)) int64 {
	small := make([]byte, smallBuf)
	var bp *[]byte // the large buffer, while data flows
	defer func() {
		if bp != nil {
			largePool.Put(bp)
		}
	}()
	// A stream that buffers what arrives (yamux) keeps its buffer at the
	// largest size it ever held, up to the stream window: after a burst,
	// an idle connection would hold megabytes. Once reads have drained it
	// and none came for shrinkAfter, the buffer is released.
	var idle *time.Timer
	if shrink := shrinkFunc(src); shrink != nil {
		idle = time.AfterFunc(time.Hour, shrink)
		idle.Stop()
		defer idle.Stop()
	}
	var n int64
	for {
		buf := small
		if bp != nil {
			buf = *bp
		}
		nr, rerr := src.Read(buf)
		if nr > 0 {
			if halfDone.Load() {
				_ = dst.SetWriteDeadline(time.Now().Add(StallTimeout))
			}
			nw, werr := dst.Write(buf[:nr])
			n += int64(nw)
			if werr != nil {
				abort(fmt.Errorf("write: %w", werr))
				return n
			}
			switch {
			case bp == nil && nr == len(buf):
				bp = largePool.Get().(*[]byte)
			case bp != nil && nr < len(buf):
				largePool.Put(bp) // the next read is likely to wait
				bp = nil
			}
			if idle != nil && nr < len(buf) {
				idle.Reset(shrinkAfter)
			}
		}
		if rerr == nil {
			continue
		}
		if !errors.Is(rerr, io.EOF) {
			abort(fmt.Errorf("read: %w", rerr))
			return n
		}
		if halfDone.Swap(true) {
			// The other direction has ended too; Splice closes both ends.
			_ = dst.CloseWrite()
			return n
		}
		// Bound a write of the other direction already blocked on src.
		_ = src.SetWriteDeadline(time.Now().Add(StallTimeout))
		if err := dst.CloseWrite(); err != nil {
			abort(fmt.Errorf("close write: %w", err))
		}
		return n
	}
}

// shrinkAfter is how long a drained stream buffer may go unused before it
// is released (see pipe).
const shrinkAfter = time.Second

// shrinkFunc returns the function that releases c's receive buffer while
// it is empty, or nil when c has none to release.
func shrinkFunc(c HalfCloser) func() {
	if ca, ok := c.(*cutAware); ok {
		c = ca.Stream
	}
	if s, ok := c.(interface{ Shrink() }); ok {
		return s.Shrink
	}
	return nil
}

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

// Abort resets the stream where the transport can (see Splice).
func (c *cutAware) Abort() {
	if a, ok := c.Stream.(interface{ Abort() }); ok {
		a.Abort()
	}
}
