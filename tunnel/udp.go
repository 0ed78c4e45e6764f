package tunnel

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// UDP flows. A UDP tunnel carries each visitor address as one flow: a
// stream opened by the relay with OpenFlow, answered with OpenResult, and
// then datagrams in both directions, each one framed on the stream as
//
//	length u16 | payload
//
// so that boundaries are kept exactly (an empty datagram is a valid one).
// Over QUIC, a datagram that fits in a QUIC DATAGRAM frame (RFC 9221) goes
// there instead, prefixed with its flow number:
//
//	flow u32 | payload
//
// and is then as unreliable as UDP itself; larger ones use the stream.

// MaxDatagram is the largest UDP payload a flow carries (IPv4's limit).
const MaxDatagram = 65507

// ErrDatagramTooLarge is returned by SendDatagram for a datagram that does
// not fit in one QUIC DATAGRAM frame on the current path.
var ErrDatagramTooLarge = errors.New("datagram too large for the session")

// WriteDatagram frames p on a flow's stream in a single Write.
func WriteDatagram(w io.Writer, p []byte) error {
	if len(p) > MaxDatagram {
		return fmt.Errorf("datagram of %d bytes: %w", len(p), ErrFrameTooLarge)
	}
	buf := make([]byte, 2+len(p))
	binary.BigEndian.PutUint16(buf, uint16(len(p)))
	copy(buf[2:], p)
	_, err := w.Write(buf)
	return err
}

// ReadDatagram reads one framed datagram into buf, which must hold
// MaxDatagram bytes, and returns its length. The length is checked before
// the payload is read.
func ReadDatagram(r io.Reader, buf []byte) (int, error) {
	var hdr [2]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return 0, err
	}
	n := int(binary.BigEndian.Uint16(hdr[:]))
	if n > MaxDatagram || n > len(buf) {
		return 0, fmt.Errorf("datagram announces %d bytes, limit %d: %w", n, min(MaxDatagram, len(buf)), ErrFrameTooLarge)
	}
	if _, err := io.ReadFull(r, buf[:n]); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return 0, err
	}
	return n, nil
}

// AppendFlowDatagram appends the session datagram carrying p for flow.
func AppendFlowDatagram(dst []byte, flow uint32, p []byte) []byte {
	dst = binary.BigEndian.AppendUint32(dst, flow)
	return append(dst, p...)
}

// ParseFlowDatagram splits a session datagram into flow and payload.
func ParseFlowDatagram(b []byte) (flow uint32, p []byte, err error) {
	if len(b) < 4 {
		return 0, nil, fmt.Errorf("session datagram of %d bytes: %w", len(b), ErrMalformed)
	}
	return binary.BigEndian.Uint32(b), b[4:], nil
}

// ReceiveFlowDatagrams reads sess's session datagrams until the session or
// ctx ends, and hands each to deliver with its flow number; malformed ones
// are dropped. A session without datagrams (ErrNotSupported) returns at
// once.
func ReceiveFlowDatagrams(ctx context.Context, sess Session, deliver func(flow uint32, p []byte)) {
	for {
		b, err := sess.ReceiveDatagram(ctx)
		if err != nil {
			return
		}
		if flow, p, err := ParseFlowDatagram(b); err == nil {
			deliver(flow, p)
		}
	}
}
