package resume

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// frameLen is the length of every frame this package sends: a kind byte,
// a stream ID and a value, both u64 big-endian. One fixed length keeps the
// decoder to a single bounded read.
const frameLen = 17

// kind is a frame's first byte.
type kind byte

// Frame kinds. The first frame of a stream names what the stream is for
// (open, resume, ackChannel); the accepting side answers a resume with
// resumed or refused; an ack channel then carries ack and reset records.
const (
	kindOpen       kind = 0x01 // opener -> accepter: a new stream; value 0
	kindResume     kind = 0x02 // resumer -> accepter: value = bytes consumed
	kindResumed    kind = 0x03 // accepter -> resumer: value = bytes consumed
	kindRefused    kind = 0x04 // accepter -> resumer: value = refusal code
	kindAckChannel kind = 0x05 // first on an ack channel; ID 0, value 0
	kindAck        kind = 0x06 // on an ack channel: value = bytes consumed
	kindReset      kind = 0x07 // on an ack channel: the stream was reset; value 0
)

// Refusal codes, the value of a refused frame.
const (
	refuseUnknown   uint64 = 1 // no stream with that ID to resume
	refuseBadOffset uint64 = 2 // consumed count outside what was sent
	refuseClosed    uint64 = 3 // the registry is closing
)

// ErrProtocol is wrapped by the error of a frame or record that breaks
// this package's protocol: a malformed frame, a consumed count beyond
// what was sent. A stream that receives one on its own streams is reset.
var ErrProtocol = errors.New("resume protocol error")

type frame struct {
	kind  kind
	id    uint64
	value uint64
}

// put encodes f into b.
func (f frame) put(b []byte) {
	_ = b[frameLen-1]
	b[0] = byte(f.kind)
	binary.BigEndian.PutUint64(b[1:9], f.id)
	binary.BigEndian.PutUint64(b[9:17], f.value)
}

// parseFrame decodes one frame from b, which holds exactly frameLen
// bytes, and checks what every frame of its kind must satisfy.
func parseFrame(b []byte) (frame, error) {
	if len(b) != frameLen {
		return frame{}, fmt.Errorf("%w: frame of %d bytes, want %d", ErrProtocol, len(b), frameLen)
	}
	f := frame{kind: kind(b[0]), id: binary.BigEndian.Uint64(b[1:9]), value: binary.BigEndian.Uint64(b[9:17])}
	switch f.kind {
	case kindAckChannel:
		if f.id != 0 || f.value != 0 {
			return frame{}, fmt.Errorf("%w: ack channel frame with ID %#x and value %d, want 0 and 0", ErrProtocol, f.id, f.value)
		}
		return f, nil
	case kindOpen, kindReset:
		if f.value != 0 {
			return frame{}, fmt.Errorf("%w: %s frame for stream %016x with value %d, want 0", ErrProtocol, f.kind, f.id, f.value)
		}
	case kindRefused:
		if f.value < refuseUnknown || f.value > refuseClosed {
			return frame{}, fmt.Errorf("%w: refused frame for stream %016x with unknown code %d", ErrProtocol, f.id, f.value)
		}
	case kindResume, kindResumed, kindAck:
		if f.value > maxOffset {
			return frame{}, fmt.Errorf("%w: %s frame for stream %016x: consumed count %d beyond %d", ErrProtocol, f.kind, f.id, f.value, uint64(maxOffset))
		}
	default:
		return frame{}, fmt.Errorf("%w: unknown frame kind %#02x", ErrProtocol, byte(f.kind))
	}
	if f.id == 0 {
		return frame{}, fmt.Errorf("%w: %s frame for stream ID 0", ErrProtocol, f.kind)
	}
	return f, nil
}

// maxOffset bounds a consumed count: 2^62 bytes, far beyond any stream,
// so that offset arithmetic (a count plus the end of stream) never wraps.
const maxOffset = 1 << 62

func (k kind) String() string {
	switch k {
	case kindOpen:
		return "open"
	case kindResume:
		return "resume"
	case kindResumed:
		return "resumed"
	case kindRefused:
		return "refused"
	case kindAckChannel:
		return "ack channel"
	case kindAck:
		return "ack"
	case kindReset:
		return "reset"
	}
	return fmt.Sprintf("kind %#02x", byte(k))
}

// refusalWords puts a refusal code in words.
func refusalWords(code uint64) string {
	switch code {
	case refuseUnknown:
		return "the peer does not know the stream"
	case refuseBadOffset:
		return "the peer found the consumed count outside what it sent"
	case refuseClosed:
		return "the peer is closing"
	}
	return fmt.Sprintf("code %d", code)
}
