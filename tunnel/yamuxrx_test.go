package tunnel

import (
	"bytes"
	"context"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/hashicorp/yamux"
)

// fill queues b in rx as frameReader does.
func fill(rx *streamRx, b []byte) {
	for len(b) > 0 {
		buf := rx.space(uint32(len(b)))
		n := copy(buf, b)
		rx.commit(n)
		b = b[n:]
	}
}

// TestStreamRx: what a stream's reader gets, in order, and how each kind
// of end shows, as yamux's own streams show them.
func TestStreamRx(t *testing.T) {
	data := bytes.Repeat([]byte("0123456789"), 10000) // 100,000 bytes: chunks of both sizes
	tests := []struct {
		name  string
		end   func(rx *streamRx, session chan struct{})
		data  bool // the data is read before the end shows
		want  error
		check func(error) bool
	}{
		{"FIN", func(rx *streamRx, _ chan struct{}) { rx.peerFlags(yamuxFlagFIN) }, true, io.EOF, nil},
		{"session end", func(_ *streamRx, s chan struct{}) { close(s) }, true, ErrStreamCut, nil}, // a cut, not an end of data
		{"peer reset", func(rx *streamRx, _ chan struct{}) { rx.peerFlags(yamuxFlagRST) }, false, yamux.ErrConnectionReset, nil},
		{"closed here", func(rx *streamRx, _ chan struct{}) { rx.close() }, false, yamux.ErrStreamClosed, nil},
		{"deadline", func(rx *streamRx, _ chan struct{}) { rx.setDeadline(time.Now().Add(50 * time.Millisecond)) }, true, nil,
			func(err error) bool { var ne interface{ Timeout() bool }; return errors.As(err, &ne) && ne.Timeout() }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			session := make(chan struct{})
			rx := newStreamRx(session)
			done := make(chan struct{})
			var got []byte
			var rerr error
			go func() {
				defer close(done)
				buf := make([]byte, 3000)
				for range 1000 {
					n, err := rx.read(buf)
					got = append(got, buf[:n]...)
					if err != nil {
						rerr = err
						return
					}
				}
			}()
			fill(rx, data[:50000])
			time.Sleep(10 * time.Millisecond) // a reader waiting, and one not
			fill(rx, data[50000:])
			if tt.data {
				for range 500 { // until the reader has it all
					rx.mu.Lock()
					drained := rx.n == 0
					rx.mu.Unlock()
					if drained {
						break
					}
					time.Sleep(time.Millisecond)
				}
			}
			tt.end(rx, session)
			select {
			case <-done:
			case <-time.After(5 * time.Second):
				t.Fatal("read did not end")
			}
			if tt.data && !bytes.Equal(got, data) {
				t.Errorf("read %d bytes, want the %d written, in order", len(got), len(data))
			}
			if tt.check != nil && !tt.check(rerr) || tt.check == nil && !errors.Is(rerr, tt.want) {
				t.Errorf("read ended with %v, want %v", rerr, tt.want)
			}
			if tt.data && len(rx.chunks) > 0 {
				t.Errorf("a drained stream holds %d chunks", len(rx.chunks))
			}
		})
	}
}

// TestCreditEnforced: a peer that sends a stream more than the credit it
// was given breaks the protocol, and the session ends, as yamux ends it;
// up to the credit, everything arrives.
func TestCreditEnforced(t *testing.T) {
	for _, tt := range []struct {
		name string
		size int
		ok   bool
	}{
		{"within", baseWindow, true},
		{"beyond", baseWindow + 1, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c, s := pinnedPair(t, TCPTransport{})
			server, err := s.Mux(DefaultSessionConfig())
			if err != nil {
				t.Fatal(err)
			}
			defer server.Close()
			defer c.Close()
			// The peer speaks yamux by hand: it opens stream 1 and sends
			// its data without waiting for any grant.
			frame := yamuxFrame(yamuxTypeWindowUpdate, yamuxFlagSYN, 1, nil, 0)
			frame = append(frame, yamuxFrame(yamuxTypeData, 0, 1, bytes.Repeat([]byte("x"), tt.size), uint32(tt.size))...)
			go func() { _, _ = c.Write(frame) }()
			go func() { _, _ = io.Copy(io.Discard, c) }()
			if tt.ok {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				st, err := server.AcceptStream(ctx)
				if err != nil {
					t.Fatal(err)
				}
				_ = st.SetReadDeadline(time.Now().Add(5 * time.Second))
				if n, err := io.ReadFull(st, make([]byte, tt.size)); err != nil {
					t.Fatalf("read %d of %d bytes: %v", n, tt.size, err)
				}
				return
			}
			select {
			case <-server.Done():
			case <-time.After(5 * time.Second):
				t.Fatal("session still up after the peer sent beyond its credit")
			}
		})
	}
}
