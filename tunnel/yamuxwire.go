package tunnel

import (
	"cmp"
	"encoding/binary"
	"net"
	"sync"
	"sync/atomic"
	"time"
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
	yamuxFlagSYN          = 1
	yamuxFlagACK          = 2
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
			case h.flags()&yamuxFlagRST != 0:
				w.sends.remove(h.id())
			}
			copy(w.ctl[:], p)
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
func windowUpdate(h []byte, flags uint16, id, delta uint32) frameHeader {
	return encodeHeader(h, yamuxTypeWindowUpdate, flags, id, delta)
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
			switch h := frameHeader(r.hdr[:]); h.typ() {
			case yamuxTypeData:
				r.body = h.length()
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
