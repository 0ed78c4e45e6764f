package tunnel

import (
	"bytes"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/homeport/homeport/internal/leak"
)

// TestStallGuard: streams whose readers never read (visitors that take
// nothing of their downloads) fill a QUIC connection's receive window,
// and a new stream of the session could send nothing. The guard resets
// the longest stalled of them until the rest may hold at most half the
// window: the new stream flows, the reset streams' readers learn why, and
// the others keep what was sent to them, whole.
func TestStallGuard(t *testing.T) {
	leak.Check(t)
	cfg := DefaultSessionConfig()
	cfg.StreamWindow = 1 << 20 // connection window 16 MiB, so a budget of 8 MiB
	agent, relay := sessionPair(t, QUICTransport{Session: cfg})
	// The relay opens the streams (the agent accepts few) and sends; the
	// agent's readers stall: the guard is the same at both ends.
	// 80 streams of 256 KiB (their initial window) fill 16 MiB; 31 fit
	// in the budget: openPair's first byte counts 4 bytes more each.
	const n, keep = 80, 31
	readers := make([]Stream, n)
	for i := range readers {
		w, r := openPair(t, relay, agent)
		readers[i] = r
		go func() { _, _ = io.Copy(io.Discard, w) }() // the writing end reads
		go func() { _, _ = w.Write(pattern(2 << 20)) }()
	}

	w, r := openPair(t, relay, agent)
	go func() { _, _ = io.Copy(io.Discard, w) }()
	go func() { _, _ = w.Write(pattern(1 << 20)) }()
	_ = r.SetReadDeadline(time.Now().Add(20 * time.Second))
	if got, err := io.ReadAll(io.LimitReader(r, 1<<20)); err != nil || len(got) != 1<<20 {
		t.Fatalf("a new stream beside %d stalled ones got %d of 1 MiB: %v", n, len(got), err)
	}
	r.Close()

	// Once every stream has stalled for the grace, the guard has reset
	// all but the newest keep.
	time.Sleep(stallGrace + 2*guardTick)
	agent.(*quicSession).guard.check()
	for i, r := range readers {
		_ = r.SetReadDeadline(time.Now().Add(5 * time.Second))
		buf := make([]byte, 64<<10)
		_, err := io.ReadFull(r, buf)
		if i < n-keep {
			if !errors.Is(err, ErrStalled) {
				t.Errorf("stream %d (stalled longer): read %v, want ErrStalled", i, err)
			}
			continue
		}
		if err != nil || !bytes.Equal(buf, pattern(len(buf))) {
			t.Errorf("stream %d (kept): read %v, or wrong data", i, err)
		}
	}
	for _, r := range readers {
		r.Close()
	}
}

// pattern is n bytes of a repeating sequence.
func pattern(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i % 251)
	}
	return b
}

// TestStallGuardIdle: streams whose readers wait in Read hold nothing,
// however many, and the guard leaves them alone.
func TestStallGuardIdle(t *testing.T) {
	g := newStallGuard(baseWindow, 1<<20, 16<<20)
	g.grace = 0
	streams := make([]*quicStream, 200)
	for i := range streams {
		streams[i] = &quicStream{guard: g}
		g.add(streams[i])
		streams[i].outSince.Store(0) // in Read
	}
	if n := g.check(); n != 0 {
		t.Fatalf("guard reset %d idle streams", n)
	}
}
