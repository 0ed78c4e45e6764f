package tunnel

import (
	"cmp"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hashicorp/yamux"
)

// TCPTransport carries sessions over TCP + TLS 1.3 + yamux.
type TCPTransport struct{}

var _ Transport = TCPTransport{}

// tcpKeepAlive is the kernel keepalive on the TCP link, a second line
// behind the session's own pings.
const tcpKeepAlive = 15 * time.Second

// Dial connects to a relay over TCP. The TLS handshake runs in Handshake.
func (TCPTransport) Dial(ctx context.Context, addr string, conf *tls.Config) (Conn, error) {
	d := net.Dialer{KeepAlive: tcpKeepAlive}
	raw, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	bc := &batchConn{Conn: raw}
	return &tlsLink{Conn: tls.Client(bc, conf), raw: bc, client: true}, nil
}

// Listen accepts agents on a TCP address.
func (TCPTransport) Listen(addr string, conf *tls.Config) (Listener, error) {
	lc := net.ListenConfig{KeepAlive: tcpKeepAlive}
	l, err := lc.Listen(context.Background(), "tcp", addr)
	if err != nil {
		return nil, err
	}
	return &tcpListener{l: l, conf: conf}, nil
}

type tcpListener struct {
	l    net.Listener
	conf *tls.Config
}

// Accept returns the next link. Accept does not honour ctx while blocked;
// Close unblocks it.
func (l *tcpListener) Accept(ctx context.Context) (Conn, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	raw, err := l.l.Accept()
	if err != nil {
		return nil, err
	}
	bc := &batchConn{Conn: raw}
	return &tlsLink{Conn: tls.Server(bc, l.conf), raw: bc}, nil
}

func (l *tcpListener) Addr() net.Addr { return l.l.Addr() }
func (l *tcpListener) Close() error   { return l.l.Close() }

// tlsLink is a TLS connection before and while it becomes a yamux session.
type tlsLink struct {
	*tls.Conn
	raw    *batchConn // the TCP connection under TLS
	client bool
}

// Handshake runs the TLS handshake. A relay that refuses the link (see
// Refuse) closes it before the handshake: the client reads ErrBusy.
func (c *tlsLink) Handshake(ctx context.Context) error {
	err := c.HandshakeContext(ctx)
	if c.client && (errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET)) {
		err = fmt.Errorf("%w (or not a homeport relay): closed before the TLS handshake: %w", ErrBusy, err)
	}
	return err
}

func (c *tlsLink) Mux(cfg SessionConfig) (Session, error) {
	yc := yamuxConfig(cfg)
	var s *yamux.Session
	var err error
	heard := newHeardClock()
	wins := newRecvWindows(normalizeSessionConfig(cfg))
	sends := newSendWindows()
	fr := &frameReader{Conn: &readClock{Conn: c.Conn, heard: heard}, sends: sends}
	conn := &frameWriter{Conn: fr, raw: c.raw, wins: wins, sends: sends}
	if c.client {
		s, err = yamux.Client(conn, yc)
	} else {
		s, err = yamux.Server(conn, yc)
	}
	if err != nil {
		return nil, fmt.Errorf("yamux: %w", err)
	}
	ys := &yamuxSession{s: s, heard: heard, fw: conn, fr: fr, sends: sends}
	// The agent pings every second: what it hears back tells it early
	// that the link went quiet (see SilentFor), and its own packets keep
	// the home router's NAT mapping alive. The relay pings less often.
	// Each answer measures the round trip for the receive windows.
	period := min(yc.KeepAliveInterval, heartbeatMax)
	if !c.client {
		period = relayPingPeriod
	}
	go ys.heartbeat(period)
	return ys, nil
}

// heardClock remembers when the peer was last heard from.
type heardClock struct {
	since time.Time    // monotonic base of last
	last  atomic.Int64 // nanoseconds after since
}

func newHeardClock() *heardClock { return &heardClock{since: time.Now()} }

func (c *heardClock) touch() { c.last.Store(int64(time.Since(c.since))) }

// silentFor is the time since the peer was last heard from.
func (c *heardClock) silentFor() time.Duration {
	return time.Since(c.since) - time.Duration(c.last.Load())
}

// readClock is a link that notes when it last delivered bytes.
type readClock struct {
	net.Conn
	heard *heardClock
}

func (c *readClock) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 {
		c.heard.touch()
	}
	return n, err
}

func yamuxConfig(cfg SessionConfig) *yamux.Config {
	cfg = normalizeSessionConfig(cfg)
	return &yamux.Config{
		AcceptBacklog:          cfg.AcceptBacklog,
		EnableKeepAlive:        true,
		KeepAliveInterval:      cfg.KeepAlive,
		ConnectionWriteTimeout: cfg.KeepAliveTimeout,
		// recvWindows grants the credit (at most the stream window);
		// yamux only checks what arrives against what it believes it
		// granted, which is up to twice this.
		MaxStreamWindowSize: 2 * cfg.StreamWindow,
		// A stream whose peer never acknowledges it within this time
		// means the peer is stuck: yamux then ends the session.
		StreamOpenTimeout: 30 * time.Second,
		// No close timeout: a half-closed stream may legitimately carry
		// data the other way for hours. Splice bounds a stalled peer.
		StreamCloseTimeout: 0,
		Logger:             log.New(io.Discard, "", 0),
	}
}

// frameWriter joins a yamux data frame's 12-byte header to the start of
// its body, so that the header shares the first TLS record and the frame
// leaves in one system call instead of two. yamux writes the header and
// then, for a data frame with a length, its body, from its one send
// goroutine; every other write passes straight through.
//
// TLS writes each record of at most 16 KiB with a system call of its own;
// through raw, a frame's records leave together in one.
//
// It also carries the streams' receive windows (see recvWindows): it
// rewrites the credit of yamux's window updates and sends the grants
// yamux would not, between frames.
type frameWriter struct {
	net.Conn
	raw  *batchConn
	wins *recvWindows // nil: window updates pass as yamux wrote them
	// sends learns of the streams this end opens; nil in tests.
	sends *sendWindows
	hdr   [yamuxHeaderSize]byte
	held  bool
	buf   []byte // header and up to a record of body

	mu  sync.Mutex // one frame at a time on Conn: yamux's and grants
	ctl [yamuxHeaderSize]byte
}

const (
	yamuxHeaderSize = 12
	yamuxTypeData   = 0
	frameBufKeep    = 64 << 10 // batchConn keeps a buffer for frames this large
)

func (w *frameWriter) Write(p []byte) (int, error) {
	if !w.held && len(p) == yamuxHeaderSize {
		switch {
		case p[1] == yamuxTypeData && binary.BigEndian.Uint32(p[8:]) > 0:
			copy(w.hdr[:], p)
			w.held = true
			return len(p), nil
		case p[1] == yamuxTypeWindowUpdate && w.wins != nil:
			w.mu.Lock()
			defer w.mu.Unlock()
			copy(w.ctl[:], p)
			switch flags := binary.BigEndian.Uint16(p[2:]); {
			case flags&yamuxFlagSYN != 0:
				w.sends.opened(binary.BigEndian.Uint32(p[4:]), 0)
			case flags&yamuxFlagRST != 0:
				w.sends.remove(binary.BigEndian.Uint32(p[4:]))
			}
			w.wins.outgoing(w.ctl[:], time.Now())
			if _, err := w.Conn.Write(w.ctl[:]); err != nil {
				return 0, err
			}
			return len(p), nil
		}
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.held {
		return w.Conn.Write(p)
	}
	w.held = false
	if err := w.writeFrame(w.hdr[:], p); err != nil {
		return 0, err
	}
	return len(p), nil
}

// writeData writes a data frame of stream id (see sendWindows).
func (w *frameWriter) writeData(id uint32, body []byte) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	var h [yamuxHeaderSize]byte
	h[1] = yamuxTypeData
	binary.BigEndian.PutUint32(h[4:], id)
	binary.BigEndian.PutUint32(h[8:], uint32(len(body)))
	return w.writeFrame(h[:], body)
}

// writeFrame writes a frame's header and body; w.mu is held. The header
// and the first record's worth of body are joined in buf; the rest of the
// body goes to TLS as it is, without a copy.
func (w *frameWriter) writeFrame(hdr, body []byte) error {
	head := min(len(body), maxRecord-yamuxHeaderSize)
	w.buf = append(append(w.buf[:0], hdr...), body[:head]...)
	if w.raw != nil && head < len(body) {
		return w.raw.batch(func() error { return w.writeTwo(body[head:]) })
	}
	return w.writeTwo(body[head:])
}

// writeTwo writes buf, then rest if any.
func (w *frameWriter) writeTwo(rest []byte) error {
	if _, err := w.Conn.Write(w.buf); err != nil || len(rest) == 0 {
		return err
	}
	_, err := w.Conn.Write(rest)
	return err
}

// grant sends stream id's peer the credit it is due, if any (see
// recvWindows), between two of yamux's frames.
func (w *frameWriter) grant(id uint32) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	delta := w.wins.grant(id, time.Now())
	if delta == 0 {
		return nil
	}
	_, err := w.Conn.Write(windowUpdate(w.ctl[:], 0, id, delta))
	return err
}

// reset sends the peer a RST of stream id, between two of yamux's frames.
func (w *frameWriter) reset(id uint32) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	_, err := w.Conn.Write(windowUpdate(w.ctl[:], yamuxFlagRST, id, 0))
	return err
}

// windowUpdate encodes a yamux window update in h and returns it.
func windowUpdate(h []byte, flags uint16, id, delta uint32) []byte {
	h[0], h[1] = 0, yamuxTypeWindowUpdate
	binary.BigEndian.PutUint16(h[2:], flags)
	binary.BigEndian.PutUint32(h[4:], id)
	binary.BigEndian.PutUint32(h[8:], delta)
	return h[:yamuxHeaderSize]
}

// frameReader is the link as yamux reads it. It follows the peer's frames
// so that it can hand yamux frames of this end's own between two of them:
// the RST of a stream this end aborted (see yamuxStream.Abort). While
// some are waiting, a read stops at the end of the frame it is in.
type frameReader struct {
	net.Conn
	sends *sendWindows // told of the peer's window updates; nil in tests
	hdr   [yamuxHeaderSize]byte
	hdrN  int    // bytes of the current header read so far
	body  uint32 // bytes of the current frame's body still to come

	mu      sync.Mutex
	own     []byte // frames to hand yamux at the next frame boundary
	pending atomic.Bool
}

func (r *frameReader) Read(p []byte) (int, error) {
	if r.pending.Load() {
		if r.hdrN == 0 && r.body == 0 {
			r.mu.Lock()
			n := copy(p, r.own)
			r.own = r.own[n:]
			r.pending.Store(len(r.own) > 0)
			r.mu.Unlock()
			return n, nil
		}
		if rest := r.rest(); len(p) > rest {
			p = p[:rest]
		}
	}
	n, err := r.Conn.Read(p)
	r.follow(p[:n])
	return n, err
}

// rest is what remains of the frame being read.
func (r *frameReader) rest() int {
	if r.hdrN > 0 {
		return yamuxHeaderSize - r.hdrN
	}
	return int(r.body)
}

// follow moves through the frames in b.
func (r *frameReader) follow(b []byte) {
	for len(b) > 0 {
		if r.body > 0 {
			k := min(uint32(len(b)), r.body)
			r.body -= k
			b = b[k:]
			continue
		}
		k := copy(r.hdr[r.hdrN:], b)
		r.hdrN += k
		b = b[k:]
		if r.hdrN == yamuxHeaderSize {
			r.hdrN = 0
			switch r.hdr[1] {
			case yamuxTypeData:
				r.body = binary.BigEndian.Uint32(r.hdr[8:])
			case yamuxTypeWindowUpdate:
				if r.sends != nil {
					r.sends.incoming(r.hdr[:])
				}
			}
		}
	}
}

// reset hands this end's yamux a RST of stream id from the peer.
func (r *frameReader) reset(id uint32) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.own = append(r.own, windowUpdate(make([]byte, yamuxHeaderSize), yamuxFlagRST, id, 0)...)
	r.pending.Store(true)
}

// maxRecord is the most plaintext one TLS record carries.
const maxRecord = 16 << 10

// batchConn is the TCP connection under TLS. Inside batch, what TLS writes
// is collected and sent with one system call when batch ends; otherwise
// writes pass straight through (the handshake, alerts, key updates).
type batchConn struct {
	net.Conn
	mu  sync.Mutex
	on  bool
	buf []byte
}

func (b *batchConn) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.on {
		b.buf = append(b.buf, p...)
		return len(p), nil
	}
	return b.Conn.Write(p)
}

// batch runs write, which writes through TLS, and sends what it wrote at
// once. A write error is reported as it would be without batching.
func (b *batchConn) batch(write func() error) error {
	b.mu.Lock()
	b.on = true
	b.mu.Unlock()
	werr := write()
	b.mu.Lock()
	defer b.mu.Unlock()
	b.on = false
	var err error
	if len(b.buf) > 0 {
		_, err = b.Conn.Write(b.buf)
	}
	if cap(b.buf) > frameBufKeep+maxRecord {
		b.buf = nil
	} else {
		b.buf = b.buf[:0]
	}
	return cmp.Or(werr, err)
}

type yamuxSession struct {
	s     *yamux.Session
	heard *heardClock
	fw    *frameWriter
	fr    *frameReader
	sends *sendWindows
}

func (s *yamuxSession) stream(st *yamux.Stream) *yamuxStream {
	return &yamuxStream{Stream: st, ys: s}
}

// relayPingPeriod is how often the relay measures the round trip.
const relayPingPeriod = 5 * time.Second

// SilentFor is the time since the relay or agent last sent anything on the
// session; see Silence.
func (s *yamuxSession) SilentFor() time.Duration { return s.heard.silentFor() }

// heartbeat pings the peer at once and then every period until the
// session ends, and notes each round trip. A ping that goes unanswered
// does not end the session: that is the keepalive's job, with its own
// timeout.
func (s *yamuxSession) heartbeat(period time.Duration) {
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		if rtt, err := s.s.Ping(); err == nil {
			s.fw.wins.sampleRTT(rtt)
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
func (s *yamuxSession) Close() error          { return s.s.Close() }
func (s *yamuxSession) NumStreams() int       { return s.s.NumStreams() }
func (s *yamuxSession) LocalAddr() net.Addr   { return s.s.LocalAddr() }
func (s *yamuxSession) RemoteAddr() net.Addr  { return s.s.RemoteAddr() }

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

func (s *yamuxStream) SetDeadline(t time.Time) error {
	_ = s.Stream.SetReadDeadline(t)
	return s.SetWriteDeadline(t)
}

var _ Stream = (*yamuxStream)(nil)

// Read reads, and grants the peer more credit once the reader has taken
// half its window (see recvWindows).
func (s *yamuxStream) Read(p []byte) (int, error) {
	n, err := s.Stream.Read(p)
	if n > 0 && s.ys.fw.wins.consumed(s.StreamID(), n) {
		// A failed write means the session is ending: the reader
		// learns from its next Read.
		_ = s.ys.fw.grant(s.StreamID())
	}
	return n, err
}

// Shrink releases the stream's buffer, if empty, and returns its window
// to baseWindow; the splice calls it once the stream has been idle.
func (s *yamuxStream) Shrink() {
	s.Stream.Shrink()
	s.ys.fw.wins.shrink(s.StreamID())
}

// WaitRead waits until the stream has data or has ended: yamux's Read of
// no bytes does.
func (s *yamuxStream) WaitRead() error {
	_, err := s.Stream.Read(nil)
	return err
}

func (s *yamuxStream) CloseWrite() error {
	s.wclosed.Store(true)
	return s.Stream.Close()
}

// Abort resets the stream, which yamux cannot do itself: the peer is sent
// a RST, so that it reads an error instead of an end, and this end's yamux
// is handed one too (at the next frame boundary of what it reads), so
// that it forgets the stream and its buffer. Close still follows.
func (s *yamuxStream) Abort() {
	id := s.StreamID()
	s.ys.fw.wins.remove(id)
	s.ys.sends.remove(id)
	_ = s.ys.fw.reset(id) // fails only on a link that is going away
	s.ys.fr.reset(id)
}

func (s *yamuxStream) Close() error {
	if s.closed.Swap(true) {
		return nil
	}
	s.ys.fw.wins.remove(s.StreamID())
	s.ys.sends.remove(s.StreamID())
	s.wclosed.Store(true)
	err := s.Stream.Close()
	// Unblock any Read or Write in progress. The stream is freed when the
	// peer sends its FIN, which it does once its side of Splice ends.
	_ = s.Stream.SetDeadline(time.Now())
	return err
}
