package tunnel

import (
	"context"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/homeport/homeport/internal/leak"
)

// loopbackPair returns both ends of a loopback TCP connection.
func loopbackPair(t *testing.T) (*net.TCPConn, *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	return c.(*net.TCPConn), s.(*net.TCPConn)
}

// TestSpliceCounted: the counters show the bytes each way while the splice
// is still running, and equal what Splice returns at the end.
func TestSpliceCounted(t *testing.T) {
	leak.Check(t)
	x, a := loopbackPair(t) // x is the test's end of a
	b, y := loopbackPair(t) // y is the test's end of b
	var ab, ba atomic.Int64
	type result struct{ ab, ba int64 }
	done := make(chan result, 1)
	go func() {
		n1, n2, err := SpliceCounted(context.Background(), a, b, &ab, &ba)
		if err != nil {
			t.Errorf("splice: %v", err)
		}
		done <- result{n1, n2}
	}()
	const n = 300 << 10
	go x.Write(make([]byte, n))
	if _, err := io.ReadFull(y, make([]byte, n)); err != nil {
		t.Fatal(err)
	}
	if _, err := y.Write(make([]byte, 10)); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(x, make([]byte, 10)); err != nil {
		t.Fatal(err)
	}
	// Counted while the splice runs (the count follows each write at
	// once, but may trail the reader by a moment).
	for deadline := time.Now().Add(10 * time.Second); ab.Load() != n || ba.Load() != 10; {
		if time.Now().After(deadline) {
			t.Fatalf("while running: a->b %d, b->a %d; want %d, 10", ab.Load(), ba.Load(), n)
		}
		time.Sleep(time.Millisecond)
	}
	x.CloseWrite()
	y.CloseWrite()
	select {
	case r := <-done:
		if r.ab != n || r.ba != 10 || ab.Load() != n || ba.Load() != 10 {
			t.Fatalf("at the end: returned %d/%d, counted %d/%d", r.ab, r.ba, ab.Load(), ba.Load())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("splice did not end after both half-closes")
	}
	x.Close()
	y.Close()
}
