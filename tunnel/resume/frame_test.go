package resume

import (
	"bytes"
	"errors"
	"testing"
)

// frameCases are frames, valid or not, with whether parseFrame takes
// them; they seed the fuzz tests.
var frameCases = []struct {
	name string
	b    []byte
	ok   bool
}{
	{"open", enc(frame{kindOpen, 7, 0}), true},
	{"open with a count", enc(frame{kindOpen, 7, 1}), false},
	{"resume", enc(frame{kindResume, 7, 1 << 40}), true},
	{"resume beyond 2^62", enc(frame{kindResume, 7, maxOffset + 1}), false},
	{"resumed", enc(frame{kindResumed, ^uint64(0), 0}), true},
	{"refused", enc(frame{kindRefused, 7, refuseBadOffset}), true},
	{"refused, unknown code", enc(frame{kindRefused, 7, 9}), false},
	{"ack channel", enc(frame{kindAckChannel, 0, 0}), true},
	{"ack channel with an ID", enc(frame{kindAckChannel, 1, 0}), false},
	{"ack", enc(frame{kindAck, 3, 12345}), true},
	{"ack for ID 0", enc(frame{kindAck, 0, 1}), false},
	{"reset", enc(frame{kindReset, 3, 0}), true},
	{"unknown kind", enc(frame{kind(0x99), 3, 0}), false},
	{"kind 0", make([]byte, frameLen), false},
	{"short", []byte{1, 2, 3}, false},
	{"long", append(enc(frame{kindOpen, 7, 0}), 0), false},
}

func enc(f frame) []byte {
	b := make([]byte, frameLen)
	f.put(b)
	return b
}

func TestParseFrame(t *testing.T) {
	for _, tc := range frameCases {
		t.Run(tc.name, func(t *testing.T) {
			f, err := parseFrame(tc.b)
			if (err == nil) != tc.ok {
				t.Fatalf("parseFrame: %+v, %v; want ok=%v", f, err, tc.ok)
			}
			if err != nil && !errors.Is(err, ErrProtocol) {
				t.Fatalf("error %v does not wrap ErrProtocol", err)
			}
			if err == nil && !bytes.Equal(enc(f), tc.b) {
				t.Fatalf("%+v encodes to %x, not %x", f, enc(f), tc.b)
			}
		})
	}
}

// FuzzParseFrame: parseFrame never panics, and a frame it takes encodes
// back to the same bytes.
func FuzzParseFrame(f *testing.F) {
	for _, tc := range frameCases {
		f.Add(tc.b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		fr, err := parseFrame(b)
		if err != nil {
			if !errors.Is(err, ErrProtocol) {
				t.Fatalf("error %v does not wrap ErrProtocol", err)
			}
			return
		}
		if !bytes.Equal(enc(fr), b) {
			t.Fatalf("%+v encodes to %x, not %x", fr, enc(fr), b)
		}
		if fr.value > maxOffset {
			t.Fatalf("value %d beyond maxOffset taken", fr.value)
		}
	})
}

// FuzzAckRecords feeds a registry's ack channel decoder records for a
// stream it keeps (with 100 bytes sent and 10 acknowledged) and for
// others: it never panics; the stream's acknowledged count never goes
// back nor beyond what was sent; a record beyond what was sent resets
// that stream alone; a record of another kind is refused.
func FuzzAckRecords(f *testing.F) {
	for _, tc := range frameCases {
		f.Add(tc.b)
	}
	f.Add(append(enc(frame{kindAck, 5, 50}), enc(frame{kindAck, 5, 20})...))
	f.Add(append(enc(frame{kindAck, 5, 101}), enc(frame{kindAck, 6, 1})...))
	f.Add(enc(frame{kindReset, 5, 0}))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := NewRegistry(Config{})
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		c := newConn(r, 5, true)
		c.ring.grow(0, 0, minRing)
		c.sent, c.acked, c.wire = 100, 10, 100
		r.conns[5] = c
		for i := 0; i+frameLen <= len(b); i += frameLen {
			rec := b[i : i+frameLen]
			err := r.applyRecord(rec)
			fr, perr := parseFrame(rec)
			wantErr := perr != nil || fr.kind != kindAck && fr.kind != kindReset
			if (err != nil) != wantErr {
				t.Fatalf("record %x: %v, want an error: %v", rec, err, wantErr)
			}
			c.mu.Lock()
			acked, end := c.acked, c.end
			c.mu.Unlock()
			if acked < 10 || acked > 100 {
				t.Fatalf("acknowledged count %d outside [10, 100]", acked)
			}
			if err == nil && fr.id == 5 && fr.kind == kindAck && fr.value > 100 && !errors.Is(end, ErrProtocol) {
				t.Fatalf("ack of %d bytes of 100 sent: stream end %v, want a protocol error", fr.value, end)
			}
		}
	})
}
