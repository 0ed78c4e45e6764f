// The TCP transport's layer over yamux.
//
// The TCP transport runs github.com/hashicorp/yamux over the TLS link, and
// wraps it in a layer of its own, in the files named yamux*.go:
//
//	yamux.go        the Session and Stream over yamux; this list
//	yamuxwire.go    frameWriter and frameReader: every byte between yamux
//	                and the link passes through them, frame by frame
//	yamuxrx.go      streamRx: the streams' received data, kept out of yamux
//	yamuxsend.go    sendWindows: the peer's credit, for data frames written
//	                by the stream's own goroutine instead of yamux's sender
//	yamuxwindow.go  recvWindows: the credit granted to the peer
//	yamuxlog.go     yamux's log lines into slog
//
// The layer speaks yamux's protocol unchanged (a stock yamux peer works,
// see yamuxinterop_test.go), but it leans on how yamux itself behaves, not
// only on its protocol. Each of the invariants below was checked against
// yamux v0.1.2, and each has a test in yamuxinvariant_test.go, named
// after its number, that drives a stock yamux session over a pipe and
// watches the frames on the wire: after an upgrade of yamux, a failure
// there names the invariant that broke. Do not upgrade yamux without
// running them.
//
//  Y1. Frames: a 12-byte header of version 0, type (0 data, 1 window
//      update, 2 ping, 3 go-away), flags (SYN 1, ACK 2, FIN 4, RST 8),
//      stream ID and length, big-endian; a client opens odd stream IDs.
//      The layer encodes and decodes headers itself (frameHeader).
//  Y2. Writes: yamux writes to the link from one goroutine, a frame at a
//      time: the header alone, one Write of 12 bytes, then, for a data
//      frame with a length, the whole body in the next Write. frameWriter
//      relies on it to join a header to its body without a lock, and to
//      find every window update yamux sends (a lone header of type 1), so
//      that none of yamux's own credit reaches the peer.
//  Y3. Opening: OpenStream returns once the stream's SYN, a window update,
//      has been written to the link, and AcceptStream once its ACK has.
//      The data frames a stream writes itself (flags 0, see yamuxsend.go)
//      therefore never overtake them, and the layer's tables learn of a
//      stream from that frame before any of its data.
//  Y4. Send credit: a yamux stream may send 256 KiB (baseWindow) before
//      any window update, adds the length of each window update it
//      receives for the stream (those with SYN or ACK too), and takes from
//      it only what its own Write sends. sendWindows counts the same
//      grants and all the data sent, so yamux's credit is never below
//      sendWindows': a small Write handed to yamux never waits in yamux.
//  Y5. Flags only: a data frame header whose length is 0 is acted on for
//      its flags (SYN, ACK, FIN, RST) and no body is read. frameReader
//      keeps the bodies of the streams' data and hands yamux each header
//      with a length of 0.
//  Y6. Unknown streams: the body of a data frame for a stream yamux does
//      not know (closed, or reset) is read and dropped, and the session
//      goes on. frameReader hands yamux such a frame whole.
//  Y7. Resets: a window update with RST makes yamux forget the stream at
//      once (NumStreams no longer counts it; its Read and Write fail with
//      ErrConnectionReset), and yamux answers nothing, not even when the
//      stream is closed after. yamuxStream.Abort hands its own yamux such
//      a RST (frameReader.reset), which yamux reads at the next frame
//      boundary of the link: until the peer's next frame arrives, the
//      stream still counts in NumStreams.
//  Y8. Reads: yamux reads the link from one goroutine. frameReader keeps
//      its place in the peer's frames without a lock.
//  Y9. Ends: yamux closes the link when its session ends, whatever ended
//      it (Close, a failed read, a protocol error). frameReader's failing
//      read then wakes every stream's reader (rxTable.end), and
//      linkConn.Close notes that yamux ended the session.
// Y10. Logs: yamux logs a line per event, starting "[ERR] yamux: " or
//      "[WARN] yamux: ". yamuxLog sorts them into warnings and debug lines.

package tunnel

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/yamux"
)

// yamuxSession is the TCP transport's Session: yamux over the TLS link.
// Besides yamux itself it has the link's frame reader and writer, which
// carry what this package adds to yamux without changing its protocol:
// receive windows (yamuxwindow.go), data frames written from the writer's
// goroutine (yamuxsend.go), and stream resets (see yamuxStream.Abort).
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

// EndCause is why the session ended; see Session.
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
// session; see Session.
func (s *yamuxSession) SilentFor() time.Duration { return s.heard.silentFor() }

// errNoDatagrams: yamux carries streams only.
var errNoDatagrams = fmt.Errorf("session datagrams over TCP: %w", ErrNotSupported)

// SendDatagram fails with ErrNotSupported: a UDP flow's datagrams go on
// its stream.
func (s *yamuxSession) SendDatagram([]byte) error { return errNoDatagrams }

// ReceiveDatagram fails with ErrNotSupported at once.
func (s *yamuxSession) ReceiveDatagram(context.Context) ([]byte, error) {
	return nil, errNoDatagrams
}

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

// errYamuxReset is read from, and written to, a stream that the peer
// reset (a RST: see yamuxStream.Abort).
var errYamuxReset = fmt.Errorf("%w: %w", ErrStreamReset, yamux.ErrConnectionReset)

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
	// A deadline that has passed fails the Write before it sends
	// anything, as a net.Conn's does, even where credit is at hand (take
	// reads the deadline only while it waits for credit).
	if dl := s.writeDeadline(); !dl.IsZero() && !time.Now().Before(dl) {
		return 0, yamux.ErrTimeout
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
func (s *yamuxStream) Shrink() error {
	s.ys.fw.wins.shrink(s.StreamID(), time.Now())
	return nil
}

// OnCut does nothing: the TCP transport never cuts a stream of a live
// session (its streams share the session by receive windows alone), and
// the streams of a dead one read ErrStreamCut.
func (s *yamuxStream) OnCut(func(error)) {}

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

// newYamuxSession runs yamux on the authenticated TLS link tlsConn, with
// this package's frame reader and writer between the two (see the top of
// this file); raw is the TCP connection under TLS. The client is the end
// that dialed.
func newYamuxSession(tlsConn net.Conn, raw *batchConn, client bool, cfg SessionConfig) (*yamuxSession, error) {
	cfg = normalizeSessionConfig(cfg)
	yc := yamuxConfig(cfg)
	var s *yamux.Session
	var err error
	heard := newHeardClock()
	ys := &yamuxSession{heard: heard, end: &endRecord{}, idle: idleTimeout(cfg)}
	ys.end.streams = ys.numStreams
	wins := newRecvWindows(cfg)
	sends := newSendWindows()
	rxs := newRxTable()
	link := &linkConn{Conn: tlsConn, heard: heard, end: ys.end}
	fr := &frameReader{Conn: link, sends: sends, rxs: rxs, end: ys.end}
	conn := &frameWriter{Conn: fr, raw: raw, wins: wins, sends: sends, rxs: rxs}
	if client {
		s, err = yamux.Client(conn, yc)
	} else {
		s, err = yamux.Server(conn, yc)
	}
	if err != nil {
		return nil, fmt.Errorf("yamux: %w", err)
	}
	ys.s, ys.fw, ys.fr, ys.sends, ys.rxs = s, conn, fr, sends, rxs
	ys.ready.Store(true)
	// The agent pings every second: what it hears back tells it early
	// that the link went quiet (see SilentFor), and its own packets keep
	// the home router's NAT mapping alive. The relay pings less often.
	// Each answer measures the round trip for the receive windows. These
	// pings are the keepalive too (see watch): both ping at least every
	// keepalive interval.
	period := min(cfg.KeepAlive, heartbeatMax)
	if !client {
		period = min(cfg.KeepAlive, relayPingPeriod)
	}
	go ys.heartbeat(period)
	go ys.watch()
	return ys, nil
}

// yamuxConfig is the yamux configuration for cfg, normalized.
func yamuxConfig(cfg SessionConfig) *yamux.Config {
	return &yamux.Config{
		AcceptBacklog: cfg.AcceptBacklog,
		// Not yamux's keepalive: its ping's answer waits behind all the
		// data the peer has queued on the link, so on a slow link it
		// declares dead a session whose data is still arriving (see
		// yamuxSession.watch, which replaces it).
		EnableKeepAlive:   false,
		KeepAliveInterval: cfg.KeepAlive,
		// How long one of yamux's frames (a ping, a stream's opening or
		// end, a small write) may wait to be written. It fails only that
		// frame's caller, and must not fail on a link that is slow but
		// alive: the idle timeout, which ends a link that is not.
		ConnectionWriteTimeout: idleTimeout(cfg),
		// recvWindows grants the credit (at most the stream window),
		// and the data never reaches yamux (see streamRx); what yamux
		// would grant on its own is rewritten.
		MaxStreamWindowSize: cfg.StreamWindow,
		// A stream whose peer never acknowledges it within this time
		// means the peer is stuck: yamux then ends the session.
		StreamOpenTimeout: 30 * time.Second,
		// No close timeout: a half-closed stream may legitimately carry
		// data the other way for hours. Splice bounds a stalled peer.
		StreamCloseTimeout: 0,
		Logger:             log.New(yamuxLog{cfg.Log}, "", 0),
	}
}
