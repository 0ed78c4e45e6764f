package tunnel

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/yamux"
)

// yamuxSession is the TCP transport's Session: yamux over the TLS link.
// Besides yamux itself it has the link's frame reader and writer, which
// carry what this package adds to yamux without changing its protocol:
// receive windows (window.go), data frames written from the writer's
// goroutine (send.go), and stream resets (see yamuxStream.Abort).
type yamuxSession struct {
	s     *yamux.Session
	heard *heardClock
	fw    *frameWriter
	fr    *frameReader
	sends *sendWindows
	rxs   *rxTable

	end     *endRecord    // why the session ended
	idle    time.Duration // nothing heard for this long: the peer is gone
	ready   atomic.Bool   // s is set
	lastRTT atomic.Int64  // the last round trip measured
}

// numStreams is the number of open streams, for endRecord.
func (s *yamuxSession) numStreams() int {
	if !s.ready.Load() {
		return 0
	}
	return s.s.NumStreams()
}

// EndCause is why the session ended; see Ender.
func (s *yamuxSession) EndCause() EndCause {
	if s.s.IsClosed() {
		// Every other end is noted before yamux closes; yamux closing
		// on its own is noted when it closes the link, just after.
		s.end.note(errMuxClosed)
	}
	n, err := s.end.get()
	c := classifyEnd(err)
	c.Streams, c.RTT = n, time.Duration(s.lastRTT.Load())
	return c
}

// watch is the session's keepalive: it ends the session once nothing at
// all has been heard from the peer for the idle timeout. Anything counts,
// data as much as the answers to the pings that heartbeat sends at least
// every keepalive interval, so a session whose data is still arriving
// stays up however long a ping's answer queues behind that data. (yamux's
// own keepalive, which this replaces, ended a session whose ping was not
// answered within the keepalive timeout: on a slow or lossy link, where
// the answer waits behind the peer's queue of data, a live session.)
func (s *yamuxSession) watch() {
	t := time.NewTimer(s.idle)
	defer t.Stop()
	for {
		select {
		case <-s.s.CloseChan():
			return
		case <-t.C:
		}
		silent := s.heard.silentFor()
		if silent >= s.idle {
			s.end.note(&keepAliveError{silent: silent})
			s.s.Close()
			return
		}
		t.Reset(s.idle - silent)
	}
}

// stream wraps st with its receive buffer, registered when the stream's
// SYN was sent or read, before any of its data could arrive.
func (s *yamuxSession) stream(st *yamux.Stream) *yamuxStream {
	return &yamuxStream{Stream: st, ys: s, rx: s.rxs.open(st.StreamID())}
}

// relayPingPeriod is how often the relay measures the round trip.
const relayPingPeriod = 5 * time.Second

// SilentFor is the time since the relay or agent last sent anything on the
// session; see Silence.
func (s *yamuxSession) SilentFor() time.Duration { return s.heard.silentFor() }

// heartbeat pings the peer at once and then every period until the
// session ends, and notes each round trip. A ping that goes unanswered
// does not end the session: that is watch's job, which hears its answers.
//
// Each ping waits for its answer on a goroutine of its own, so that the
// pings leave every period however long their answers take: on a link
// whose peer sends a long queue of data, each answer waits behind that
// queue, but the pings themselves, on the quiet way, are what tell that
// peer this end is alive (see watch). At most maxPings wait at a time:
// an answer comes within the idle timeout, or never.
func (s *yamuxSession) heartbeat(period time.Duration) {
	t := time.NewTicker(period)
	defer t.Stop()
	maxPings := int(2*s.idle/period) + 1
	waiting := make(chan struct{}, maxPings)
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		select {
		case waiting <- struct{}{}:
			wg.Go(func() {
				defer func() { <-waiting }()
				if rtt, err := s.s.Ping(); err == nil {
					s.fw.wins.sampleRTT(rtt)
					s.lastRTT.Store(int64(rtt))
				}
			})
		default:
		}
		select {
		case <-s.s.CloseChan():
			return
		case <-t.C:
		}
	}
}

var _ Session = (*yamuxSession)(nil)

func (s *yamuxSession) OpenStream(ctx context.Context) (Stream, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	st, err := s.s.OpenStream()
	if err != nil {
		return nil, mapYamuxErr(err)
	}
	return s.stream(st), nil
}

func (s *yamuxSession) AcceptStream(ctx context.Context) (Stream, error) {
	st, err := s.s.AcceptStreamWithContext(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, mapYamuxErr(err)
	}
	return s.stream(st), nil
}

func (s *yamuxSession) Done() <-chan struct{} { return s.s.CloseChan() }

// Close ends the session; unless it had ended already, this end closed it.
func (s *yamuxSession) Close() error {
	if !s.s.IsClosed() {
		s.end.note(errLocalClose)
	}
	return s.s.Close()
}

func (s *yamuxSession) NumStreams() int      { return s.s.NumStreams() }
func (s *yamuxSession) RTT() time.Duration   { return time.Duration(s.fw.wins.rtt.Load()) }
func (s *yamuxSession) LocalAddr() net.Addr  { return s.s.LocalAddr() }
func (s *yamuxSession) RemoteAddr() net.Addr { return s.s.RemoteAddr() }

func mapYamuxErr(err error) error {
	if errors.Is(err, yamux.ErrSessionShutdown) || errors.Is(err, io.EOF) {
		return fmt.Errorf("%w: %w", ErrSessionClosed, err)
	}
	return err
}

// yamuxStream adapts a yamux stream: yamux's Close is a half-close (FIN,
// reads go on), which is our CloseWrite; our Close also stops local reads
// and writes at once.
type yamuxStream struct {
	*yamux.Stream
	ys     *yamuxSession
	rx     *streamRx
	closed atomic.Bool

	wmu      sync.Mutex // one Write at a time
	wclosed  atomic.Bool
	deadline atomic.Int64 // write deadline, Unix nanoseconds; 0 for none
}

// Write writes p in data frames as the peer's credit allows (see
// sendWindows). A write larger than directMin is written from the
// caller's goroutine; a smaller one is handed to yamux's sender, so that
// a connection's goroutine that only ever writes a little (most of them,
// most of the time) does not grow the stack that TLS needs.
func (s *yamuxStream) Write(p []byte) (int, error) {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if s.wclosed.Load() {
		return 0, yamux.ErrStreamClosed
	}
	id := s.StreamID()
	total := 0
	for total < len(p) {
		n, err := s.ys.sends.take(id, len(p)-total, s.writeDeadline, s.ys.s.CloseChan())
		if err != nil {
			return total, err
		}
		frame := p[total : total+n]
		if len(p) <= directMin {
			// yamux's credit is never less than ours: it sees the same
			// grants, and counts fewer of the bytes sent.
			n, err = s.Stream.Write(frame)
			total += n
			if err != nil {
				return total, err
			}
			continue
		}
		if err := s.ys.fw.writeData(id, frame); err != nil {
			// A frame may be cut short on the link: the session is lost.
			s.ys.s.Close()
			return total, err
		}
		total += n
	}
	return total, nil
}

// directMin is the largest write a yamux stream hands to yamux's sender.
const directMin = smallBuf

func (s *yamuxStream) writeDeadline() time.Time {
	if ns := s.deadline.Load(); ns != 0 {
		return time.Unix(0, ns)
	}
	return time.Time{}
}

func (s *yamuxStream) SetWriteDeadline(t time.Time) error {
	var ns int64
	if !t.IsZero() {
		ns = t.UnixNano()
	}
	s.deadline.Store(ns)
	s.ys.sends.poke(s.StreamID())
	return s.Stream.SetWriteDeadline(t)
}

func (s *yamuxStream) SetReadDeadline(t time.Time) error {
	s.rx.setDeadline(t)
	return nil
}

func (s *yamuxStream) SetDeadline(t time.Time) error {
	s.rx.setDeadline(t)
	return s.SetWriteDeadline(t)
}

var _ Stream = (*yamuxStream)(nil)

// Read reads, and grants the peer more credit once the reader has taken
// half its window (see recvWindows).
func (s *yamuxStream) Read(p []byte) (int, error) {
	n, err := s.rx.read(p)
	if n > 0 && s.ys.fw.wins.consumed(s.StreamID(), n, time.Now()) {
		// A failed write means the session is ending: the reader
		// learns from its next Read.
		_ = s.ys.fw.grant(s.StreamID())
	}
	return n, err
}

// Shrink returns the stream's window to baseWindow if nothing was read
// for shrinkAfter; the splice calls it shrinkAfter after a read that
// drained the stream. (A drained streamRx holds no buffer.)
func (s *yamuxStream) Shrink() {
	s.ys.fw.wins.shrink(s.StreamID(), time.Now())
}

// WaitRead waits until the stream has data or has ended.
func (s *yamuxStream) WaitRead() error {
	return s.rx.wait()
}

// CloseWrite sends a FIN after what a Write in progress sends.
func (s *yamuxStream) CloseWrite() error {
	s.wmu.Lock()
	s.wclosed.Store(true)
	s.wmu.Unlock()
	return s.Stream.Close()
}

// Abort resets the stream, which yamux cannot do itself: the peer is sent
// a RST, so that it reads an error instead of an end, and this end's yamux
// is handed one too (at the next frame boundary of what it reads), so
// that it forgets the stream and its buffer. Close still follows.
func (s *yamuxStream) Abort() {
	id := s.StreamID()
	s.ys.rxs.remove(id)
	s.ys.fw.wins.remove(id)
	s.ys.sends.remove(id)
	_ = s.ys.fw.reset(id) // fails only on a link that is going away
	s.ys.fr.reset(id)
}

func (s *yamuxStream) Close() error {
	if s.closed.Swap(true) {
		return nil
	}
	// Reading ends, a Read in progress too. The queue stays in the
	// table, dropping what arrives, until the peer ends the stream as
	// well; yamux would keep that in its buffer.
	if s.rx.close() {
		s.ys.rxs.forget(s.StreamID())
	}
	s.ys.fw.wins.remove(s.StreamID())
	s.ys.sends.remove(s.StreamID())
	s.wclosed.Store(true)
	err := s.Stream.Close()
	// Unblock a Write in progress. The stream is freed when the peer
	// sends its FIN, which it does once its side of Splice ends.
	_ = s.Stream.SetDeadline(time.Now())
	return err
}
