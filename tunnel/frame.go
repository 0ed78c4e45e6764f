package tunnel

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/netip"
)

// Wire format (docs/wire.md): every control message is one frame,
//
//	type   uint8
//	length uint16, big endian, of the payload
//	payload
//
// The length is checked against the reader's limit before any payload byte
// is read, so a peer cannot make us allocate more than the limit.

// ProtocolVersion is the control protocol's version, sent in the challenge
// and the hello.
const ProtocolVersion = 1

// Frame size limits.
const (
	// MaxFrameSize is the hard limit for any frame.
	MaxFrameSize = 16 << 10
	// MaxAuthFrameSize limits frames read before the peer authenticated.
	MaxAuthFrameSize = 512
	frameHeaderSize  = 3
)

// Message types.
const (
	msgChallenge       byte = 0x01 // relay -> agent, pre-auth
	msgHello           byte = 0x02 // agent -> relay, pre-auth
	msgWelcome         byte = 0x03 // relay -> agent, auth ok
	msgReject          byte = 0x04 // relay -> agent, auth failed
	msgRegister        byte = 0x10 // agent -> relay, control stream
	msgRegisterResult  byte = 0x11 // relay -> agent, control stream
	msgGoAway          byte = 0x12 // relay -> agent, control stream
	msgUnregister      byte = 0x13 // agent -> relay, control stream
	msgRegisterPrivate byte = 0x14 // agent -> relay, control stream
	msgRegisterWeb     byte = 0x15 // agent -> relay, control stream
	msgCheckReach      byte = 0x16 // agent -> relay, control stream
	msgReachResult     byte = 0x17 // relay -> agent, control stream
	msgOpen            byte = 0x20 // relay -> agent, first frame of a visitor stream
	msgOpenResult      byte = 0x21 // agent -> relay, first frame back on a visitor stream
	msgOpenFlow        byte = 0x22 // relay -> agent, first frame of a UDP flow stream
	msgVisit           byte = 0x23 // visitor -> relay, first frame of a visitor's stream
)

// Errors of the frame layer.
var (
	ErrFrameTooLarge = errors.New("frame too large")
	ErrMalformed     = errors.New("malformed frame")
	ErrUnexpected    = errors.New("unexpected frame type")
	ErrVersion       = errors.New("unsupported protocol version")
)

// writeFrame writes one frame in a single Write call, so that it becomes one
// TLS record and one stream data frame.
func writeFrame(w io.Writer, typ byte, payload []byte) error {
	if len(payload) > MaxFrameSize {
		return fmt.Errorf("write frame type %#x: %d bytes: %w", typ, len(payload), ErrFrameTooLarge)
	}
	buf := make([]byte, frameHeaderSize+len(payload))
	buf[0] = typ
	binary.BigEndian.PutUint16(buf[1:3], uint16(len(payload)))
	copy(buf[3:], payload)
	_, err := w.Write(buf)
	return err
}

// readFrame reads one frame of at most limit payload bytes. It reads the
// header byte-exactly and never past the frame, so the stream can carry raw
// data right after it.
func readFrame(r io.Reader, limit int) (typ byte, payload []byte, err error) {
	var hdr [frameHeaderSize]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return 0, nil, err
	}
	n := int(binary.BigEndian.Uint16(hdr[1:3]))
	if n > limit {
		return 0, nil, fmt.Errorf("frame type %#x announces %d bytes, limit %d: %w", hdr[0], n, limit, ErrFrameTooLarge)
	}
	payload = make([]byte, n)
	if _, err := io.ReadFull(r, payload); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return 0, nil, err
	}
	return hdr[0], payload, nil
}

// enc builds a payload. Strings are uint16-length-prefixed.
type enc struct{ b []byte }

func (e *enc) u8(v byte)    { e.b = append(e.b, v) }
func (e *enc) u16(v uint16) { e.b = binary.BigEndian.AppendUint16(e.b, v) }
func (e *enc) u32(v uint32) { e.b = binary.BigEndian.AppendUint32(e.b, v) }

// prefixes writes a network list: count u8, then per network its prefix
// length u8, address length u8 (4 or 16) and address.
func (e *enc) prefixes(ps []netip.Prefix) {
	e.u8(byte(len(ps)))
	for _, p := range ps {
		a := p.Addr().AsSlice()
		e.u8(byte(p.Bits()))
		e.u8(byte(len(a)))
		e.b = append(e.b, a...)
	}
}
func (e *enc) bytes(v []byte) { e.b = append(e.b, v...) }

// optStr writes s as a str at the end of a message, or nothing when s is
// empty (see dec.optStr).
func (e *enc) optStr(s string) {
	if s != "" {
		e.str(s)
	}
}
func (e *enc) str(s string) {
	if len(s) > MaxFrameSize {
		s = s[:MaxFrameSize]
	}
	e.u16(uint16(len(s)))
	e.b = append(e.b, s...)
}

// dec reads a payload. The first error sticks; every read is bounds-checked.
type dec struct {
	b   []byte
	err error
}

func (d *dec) fail() {
	if d.err == nil {
		d.err = ErrMalformed
	}
}

func (d *dec) u8() byte {
	if d.err != nil || len(d.b) < 1 {
		d.fail()
		return 0
	}
	v := d.b[0]
	d.b = d.b[1:]
	return v
}

func (d *dec) u16() uint16 {
	if d.err != nil || len(d.b) < 2 {
		d.fail()
		return 0
	}
	v := binary.BigEndian.Uint16(d.b)
	d.b = d.b[2:]
	return v
}

func (d *dec) u32() uint32 {
	if d.err != nil || len(d.b) < 4 {
		d.fail()
		return 0
	}
	v := binary.BigEndian.Uint32(d.b)
	d.b = d.b[4:]
	return v
}

// prefixes reads what enc.prefixes wrote; nil for none.
func (d *dec) prefixes() []netip.Prefix {
	n := int(d.u8())
	if n > MaxPrefixes {
		d.fail()
		return nil
	}
	var out []netip.Prefix
	for i := 0; i < n && d.err == nil; i++ {
		bits := int(d.u8())
		l := int(d.u8())
		if l != 4 && l != 16 {
			d.fail()
			return nil
		}
		a, _ := netip.AddrFromSlice(d.fixed(l))
		p, err := a.Prefix(bits)
		if d.err != nil || err != nil || p.Bits() != bits || p.Addr() != a {
			d.fail() // not a valid, masked network
			return nil
		}
		out = append(out, p)
	}
	return out
}

func (d *dec) fixed(n int) []byte {
	if d.err != nil || len(d.b) < n {
		d.fail()
		return nil
	}
	v := d.b[:n:n]
	d.b = d.b[n:]
	return v
}

// str reads a string of at most max bytes.
func (d *dec) str(max int) string {
	n := int(d.u16())
	if d.err != nil {
		return ""
	}
	if n > max || n > len(d.b) {
		d.fail()
		return ""
	}
	s := string(d.b[:n])
	d.b = d.b[n:]
	return s
}

// optStr reads a str that ends a message and may be absent (a message of
// an older peer): "" when no byte is left.
func (d *dec) optStr(limit int) string {
	if d.err != nil || len(d.b) == 0 {
		return ""
	}
	return d.str(limit)
}

// done reports the first error, or ErrMalformed for trailing bytes.
func (d *dec) done() error {
	if d.err == nil && len(d.b) != 0 {
		d.err = ErrMalformed
	}
	return d.err
}
