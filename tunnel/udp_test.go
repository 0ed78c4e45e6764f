package tunnel

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"testing"
)

func TestDatagramFraming(t *testing.T) {
	var buf bytes.Buffer
	sizes := []int{0, 1, 1200, MaxDatagram}
	for _, n := range sizes {
		if err := WriteDatagram(&buf, bytes.Repeat([]byte{byte(n)}, n)); err != nil {
			t.Fatal(err)
		}
	}
	if err := WriteDatagram(&buf, make([]byte, MaxDatagram+1)); !errors.Is(err, ErrFrameTooLarge) {
		t.Fatalf("oversized datagram: %v", err)
	}
	p := make([]byte, MaxDatagram)
	for _, want := range sizes {
		n, err := ReadDatagram(&buf, p)
		if err != nil || n != want || !bytes.Equal(p[:n], bytes.Repeat([]byte{byte(want)}, want)) {
			t.Fatalf("datagram of %d: got %d bytes, %v", want, n, err)
		}
	}
	if _, err := ReadDatagram(&buf, p); err != io.EOF {
		t.Fatalf("after the last datagram: %v, want EOF", err)
	}
	// The length is checked before anything is read.
	hdr := binary.BigEndian.AppendUint16(nil, MaxDatagram+1)
	if _, err := ReadDatagram(bytes.NewReader(hdr), p); !errors.Is(err, ErrFrameTooLarge) {
		t.Fatalf("announced oversize: %v", err)
	}
	if _, err := ReadDatagram(bytes.NewReader([]byte{0, 5, 'a'}), p); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("short payload: %v", err)
	}

	b := AppendFlowDatagram(nil, 0xdeadbeef, []byte("dns"))
	flow, payload, err := ParseFlowDatagram(b)
	if err != nil || flow != 0xdeadbeef || string(payload) != "dns" {
		t.Fatalf("flow datagram: %x %q %v", flow, payload, err)
	}
	if _, _, err := ParseFlowDatagram([]byte{1, 2, 3}); !errors.Is(err, ErrMalformed) {
		t.Fatalf("short flow datagram: %v", err)
	}
}

// FuzzDatagrams feeds arbitrary bytes to the two UDP decoders: a flow's
// stream of framed datagrams, and a session datagram. Whatever they accept
// must encode back to the same bytes.
func FuzzDatagrams(f *testing.F) {
	var seed bytes.Buffer
	WriteDatagram(&seed, []byte("query"))
	WriteDatagram(&seed, nil)
	f.Add(seed.Bytes())
	f.Add(AppendFlowDatagram(nil, 7, []byte("x")))
	f.Add([]byte{0xff, 0xff, 1})
	f.Fuzz(func(t *testing.T, data []byte) {
		if flow, p, err := ParseFlowDatagram(data); err == nil {
			if !bytes.Equal(AppendFlowDatagram(nil, flow, p), data) {
				t.Fatalf("flow datagram does not round-trip: %x", data)
			}
		}
		r := bytes.NewReader(data)
		p := make([]byte, MaxDatagram)
		var out bytes.Buffer
		for {
			n, err := ReadDatagram(r, p)
			if err != nil {
				break
			}
			if err := WriteDatagram(&out, p[:n]); err != nil {
				t.Fatal(err)
			}
		}
		if !bytes.HasPrefix(data, out.Bytes()) {
			t.Fatalf("framed datagrams do not round-trip")
		}
	})
}
