package tunnel

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/yamux"
)

// frameWriter joins a yamux data frame's 12-byte header to the start of
// its body, so that the header shares the first TLS record and the frame
// leaves in one system call instead of two. yamux writes the header and
// then, for a data frame with a length, its body, from its one send
// goroutine; every other write passes straight through.
//
// TLS writes each record of at most 16 KiB with a system call of its own;
// through raw, a frame's records leave together in one.
//
// It also writes frames of this package's own between yamux's, one frame
// at a time (mu): the data frames of yamuxStream.Write (see sendWindows),
// the grants of the streams' receive windows, whose credit it also
// rewrites in yamux's own window updates (see recvWindows), and stream
// resets.
type frameWriter struct {
	net.Conn
	raw  *batchConn
	wins *recvWindows // nil: window updates pass as yamux wrote them
	rxs  *rxTable     // told of the credit granted; nil in tests
	// sends learns of the streams this end opens; nil in tests.
	sends *sendWindows
	hdr   [yamuxHeaderSize]byte
	held  bool
	buf   []byte // header and up to a record of body

	mu  sync.Mutex // one frame at a time on Conn: yamux's and grants
	ctl [yamuxHeaderSize]byte
}

// frameBufKeep is the largest frame for which batchConn keeps its buffer.
const frameBufKeep = 64 << 10

// A yamux frame header: version, type, flags, stream ID, length (of the
// body for a data frame, the credit for a window update).
const (
	yamuxHeaderSize       = 12
	yamuxTypeData         = 0
	yamuxTypeWindowUpdate = 1
	yamuxTypeGoAway       = 3
	yamuxVersion          = 0
	yamuxFlagSYN          = 1
	yamuxFlagACK          = 2
	yamuxFlagFIN          = 4
	yamuxFlagRST          = 8
)

// frameHeader is a yamux frame header of yamuxHeaderSize bytes.
type frameHeader []byte

func (h frameHeader) typ() byte          { return h[1] }
func (h frameHeader) flags() uint16      { return binary.BigEndian.Uint16(h[2:]) }
func (h frameHeader) id() uint32         { return binary.BigEndian.Uint32(h[4:]) }
func (h frameHeader) length() uint32     { return binary.BigEndian.Uint32(h[8:]) }
func (h frameHeader) setLength(n uint32) { binary.BigEndian.PutUint32(h[8:], n) }

// encodeHeader encodes a yamux frame header in h and returns it.
func encodeHeader(h []byte, typ byte, flags uint16, id, length uint32) frameHeader {
	h[0], h[1] = 0, typ
	binary.BigEndian.PutUint16(h[2:], flags)
	binary.BigEndian.PutUint32(h[4:], id)
	binary.BigEndian.PutUint32(h[8:], length)
	return h[:yamuxHeaderSize]
}

func (w *frameWriter) Write(p []byte) (int, error) {
	if h := frameHeader(p); !w.held && len(p) == yamuxHeaderSize {
		switch {
		case h.typ() == yamuxTypeData && h.length() > 0:
			copy(w.hdr[:], p)
			w.held = true
			return len(p), nil
		case h.typ() == yamuxTypeWindowUpdate && w.wins != nil:
			w.mu.Lock()
			defer w.mu.Unlock()
			switch {
			case h.flags()&yamuxFlagSYN != 0:
				w.sends.opened(h.id(), 0)
				if w.rxs != nil {
					w.rxs.open(h.id())
				}
			case h.flags()&yamuxFlagRST != 0:
				w.sends.remove(h.id())
				if w.rxs != nil {
					w.rxs.remove(h.id())
				}
			}
			copy(w.ctl[:], p)
			w.wins.outgoing(w.ctl[:], time.Now())
			w.credit(frameHeader(w.ctl[:]))
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
	return w.writeFrame(encodeHeader(h[:], yamuxTypeData, 0, id, uint32(len(body))), body)
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
	h := windowUpdate(w.ctl[:], 0, id, delta)
	w.credit(h)
	_, err := w.Conn.Write(h)
	return err
}

// credit tells the stream's receive buffer of the credit a window update
// is about to grant, before the peer can use it.
func (w *frameWriter) credit(h frameHeader) {
	if w.rxs == nil || h.length() == 0 {
		return
	}
	if rx := w.rxs.get(h.id()); rx != nil {
		rx.credit(h.length())
	}
}

// reset sends the peer a RST of stream id, between two of yamux's frames.
func (w *frameWriter) reset(id uint32) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	_, err := w.Conn.Write(windowUpdate(w.ctl[:], yamuxFlagRST, id, 0))
	return err
}

// windowUpdate encodes a yamux window update in h and returns it.
func windowUpdate(h []byte, flags uint16, id, delta uint32) frameHeader {
	return encodeHeader(h, yamuxTypeWindowUpdate, flags, id, delta)
}

// frameReader is the link as yamux reads it. It reads the peer's frames
// one at a time, so that it can
//   - keep the bodies of the streams' data frames itself (see streamRx),
//     handing yamux the header alone with a length of 0;
//   - tell sendWindows of the peer's window updates;
//   - hand yamux frames of this end's own between two of the peer's: the
//     RST of a stream this end aborted (see yamuxStream.Abort).
type frameReader struct {
	net.Conn
	sends *sendWindows // told of the peer's window updates; nil in tests
	rxs   *rxTable     // nil: every body goes to yamux (tests)
	end   *endRecord   // told of protocol errors; nil in tests
	hdr   [yamuxHeaderSize]byte
	out   []byte // bytes for yamux: a header, or this end's frames
	spare []byte // out's array for this end's frames
	body  uint32 // bytes of a body for yamux still to come

	mu      sync.Mutex
	own     []byte // frames to hand yamux at the next frame boundary
	pending atomic.Bool
}

func (r *frameReader) Read(p []byte) (int, error) {
	n, err := r.read(p)
	if err != nil && r.end != nil && !errors.Is(err, net.ErrClosed) {
		// A protocol error found here (the link's own errors were
		// noted under it).
		r.end.note(err)
	}
	if err != nil && r.rxs != nil {
		// yamux ends the session on a read error, and closes the link
		// when it ends for another reason, which ends a read too.
		r.rxs.end()
	}
	return n, err
}

func (r *frameReader) read(p []byte) (int, error) {
	for {
		if len(r.out) > 0 {
			n := copy(p, r.out)
			r.out = r.out[n:]
			return n, nil
		}
		if r.body > 0 {
			if uint32(len(p)) > r.body {
				p = p[:r.body]
			}
			n, err := r.Conn.Read(p)
			r.body -= uint32(n)
			return n, err
		}
		if r.pending.Load() {
			r.mu.Lock()
			r.spare = append(r.spare[:0], r.own...)
			r.own = r.own[:0]
			r.pending.Store(false)
			r.mu.Unlock()
			r.out = r.spare
			continue
		}
		if err := r.next(); err != nil {
			return 0, err
		}
	}
}

// next reads the peer's next frame header, and a data frame's body if it
// is kept here, and sets what yamux is to read of the frame.
func (r *frameReader) next() error {
	if _, err := io.ReadFull(r.Conn, r.hdr[:]); err != nil {
		return err
	}
	h := frameHeader(r.hdr[:])
	id, flags := h.id(), h.flags()
	r.out = r.hdr[:]
	r.check(h)
	switch h.typ() {
	case yamuxTypeWindowUpdate:
		if r.sends != nil {
			r.sends.incoming(r.hdr[:])
		}
		if rx := r.stream(id, flags); rx != nil && rx.peerFlags(flags) {
			r.rxs.forget(id)
		}
	case yamuxTypeData:
		rx := r.stream(id, flags)
		if rx == nil {
			r.body = h.length()
			return nil
		}
		if err := r.keep(rx, id, h.length()); err != nil {
			return err
		}
		if rx.peerFlags(flags) {
			r.rxs.forget(id)
		}
		h.setLength(0)
	}
	return nil
}

// check notes a frame that ends the session when yamux reads it (see
// endRecord): one of another version or type, or a go-away for an error.
// yamux itself reads it, ends the session and logs it.
func (r *frameReader) check(h frameHeader) {
	if r.end == nil {
		return
	}
	switch {
	case h[0] != yamuxVersion:
		r.end.note(fmt.Errorf("%w: %d", yamux.ErrInvalidVersion, h[0]))
	case h.typ() > yamuxTypeGoAway:
		r.end.note(fmt.Errorf("%w: %d", yamux.ErrInvalidMsgType, h.typ()))
	case h.typ() == yamuxTypeGoAway && h.length() != 0:
		r.end.note(&peerGoAway{code: h.length()})
	}
}

// stream returns the streamRx of stream id, registering one for a stream
// the peer opens (SYN); nil for a stream this end does not know.
func (r *frameReader) stream(id uint32, flags uint16) *streamRx {
	if r.rxs == nil {
		return nil
	}
	if flags&yamuxFlagSYN != 0 {
		return r.rxs.open(id)
	}
	return r.rxs.get(id)
}

// keep reads a data frame's body of n bytes into rx, or drops it if rx is
// closed. A peer that sends beyond the credit it was given breaks the
// protocol: the session ends, as yamux would end it.
func (r *frameReader) keep(rx *streamRx, id, n uint32) error {
	keep, err := rx.admit(n)
	if err != nil {
		return fmt.Errorf("stream %d: %w", id, err)
	}
	if !keep {
		_, err := io.CopyN(io.Discard, r.Conn, int64(n))
		return err
	}
	for n > 0 {
		buf := rx.space(n)
		if uint32(len(buf)) > n {
			buf = buf[:n]
		}
		k, err := r.Conn.Read(buf)
		rx.commit(k)
		n -= uint32(k)
		if err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return err
		}
	}
	return nil
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
//
// A failed write breaks it for good, as crypto/tls breaks itself after a
// failed write: TLS took the batched records as sent, so anything written
// after a record cut short would reach the peer as a corrupt stream
// ("bad record MAC") instead of a dead one.
type batchConn struct {
	net.Conn
	mu  sync.Mutex
	on  bool
	buf []byte
	err error // the first write error; every later write fails with it
}

func (b *batchConn) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.err != nil {
		return 0, b.err
	}
	if b.on {
		b.buf = append(b.buf, p...)
		return len(p), nil
	}
	n, err := b.Conn.Write(p)
	if err != nil {
		b.err = err
	}
	return n, err
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
	err := b.err
	if err == nil && len(b.buf) > 0 {
		if _, err = b.Conn.Write(b.buf); err != nil {
			b.err = err
		}
	}
	if cap(b.buf) > frameBufKeep+maxRecord {
		b.buf = nil
	} else {
		b.buf = b.buf[:0]
	}
	return cmp.Or(werr, err)
}

// linkConn is the link under yamux and this package's frames: it notes
// when it last delivered bytes, and why it failed first (see endRecord).
type linkConn struct {
	net.Conn
	heard *heardClock
	end   *endRecord
}

func (c *linkConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 {
		c.heard.touch()
	}
	if err != nil {
		c.end.noteLink("read", err)
	}
	return n, err
}

func (c *linkConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	if err != nil {
		c.end.noteLink("write", err)
	}
	return n, err
}

// Close is called by yamux when the session ends; when nothing else said
// why by then, yamux ended it on its own.
func (c *linkConn) Close() error {
	c.end.note(errMuxClosed)
	return c.Conn.Close()
}
