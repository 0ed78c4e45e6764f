package tunnel

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/homeport/homeport/internal/leak"
)

// awaitParked waits until n splice directions are parked and no goroutine
// runs a direction that can park.
func awaitParked(t *testing.T, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		idlePoller.mu.Lock()
		parked := len(idlePoller.parked)
		idlePoller.mu.Unlock()
		running := resumedPipes()
		if parked == n && running == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d directions parked and %d goroutines running one, want %d and 0", parked, running, n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// resumedPipes counts the goroutines running a splice direction that can
// park (the one Splice does not run on its caller's goroutine).
func resumedPipes() int {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	return strings.Count(string(buf), "tunnel.(*pipe).resume(")
}

// exchange sends size random bytes from a to b and checks that b reads
// exactly them.
func exchange(t *testing.T, a, b *net.TCPConn, size int, seed uint64) {
	t.Helper()
	want := make([]byte, size)
	rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8)}).Read(want)
	werr := make(chan error, 1)
	go func() {
		_, err := a.Write(want)
		werr <- err
	}()
	got := make([]byte, size)
	_ = b.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(b, got); err != nil {
		t.Fatalf("read %d bytes: %v", size, err)
	}
	_ = b.SetReadDeadline(time.Time{})
	if err := <-werr; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%d bytes arrived changed", size)
	}
}

// TestSpliceParks: both TCP ends of a spliced path go quiet and park; data
// either way, in rounds, wakes them with every byte in order; a half-close
// while parked arrives as EOF and the other way still flows.
func TestSpliceParks(t *testing.T) {
	for _, tt := range transports {
		t.Run(tt.name, func(t *testing.T) {
			leak.Check(t)
			x, y, wait := splicedPath(t, tt.tr)
			for round := range 3 {
				awaitParked(t, 2)
				exchange(t, x, y, 256<<10, uint64(2*round))
				awaitParked(t, 2)
				exchange(t, y, x, 256<<10, uint64(2*round+1))
			}
			awaitParked(t, 2)
			x.CloseWrite()
			expectEOF(t, y, "half-close while parked")
			exchange(t, y, x, 64<<10, 99)
			y.CloseWrite()
			expectEOF(t, x, "after both half-closes")
			wait()
		})
	}
}

// TestSpliceParkedCut: the splice's context ending while both TCP ends are
// parked ends both splices at once and resets the outer connections.
func TestSpliceParkedCut(t *testing.T) {
	for _, tt := range transports {
		t.Run(tt.name, func(t *testing.T) {
			leak.Check(t)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			x, y, wait := splicedPathContext(ctx, t, tt.tr)
			awaitParked(t, 2)
			cancel()
			done := make(chan struct{})
			go func() { wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(5 * time.Second):
				t.Fatal("splices still running 5 s after their context ended")
			}
			for _, c := range []*net.TCPConn{x, y} {
				_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
				if _, err := c.Read(make([]byte, 1)); !errors.Is(err, io.EOF) && !isReset(err) {
					t.Errorf("outer end read %v, want a reset or EOF", err)
				}
			}
			awaitParked(t, 0)
		})
	}
}

// TestSpliceManyParked: more parked connections than one poll returns,
// woken together, each carry their data intact.
func TestSpliceManyParked(t *testing.T) {
	leak.Check(t)
	const paths = 100 // 200 parked directions
	type path struct {
		x, y *net.TCPConn
		wait func()
	}
	var ps []path
	for range paths {
		x, y, wait := splicedPath(t, TCPTransport{})
		ps = append(ps, path{x, y, wait})
	}
	awaitParked(t, 2*paths)
	errs := make(chan error, paths)
	for i, p := range ps {
		go func() {
			want := make([]byte, 32<<10)
			rand.NewChaCha8([32]byte{byte(i)}).Read(want)
			if _, err := p.x.Write(want); err != nil {
				errs <- err
				return
			}
			got := make([]byte, len(want))
			_ = p.y.SetReadDeadline(time.Now().Add(10 * time.Second))
			if _, err := io.ReadFull(p.y, got); err != nil {
				errs <- err
				return
			}
			if !bytes.Equal(got, want) {
				errs <- errors.New("data arrived changed")
				return
			}
			errs <- nil
		}()
	}
	for range paths {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	for _, p := range ps {
		p.x.Close()
		p.y.Close()
		p.wait()
	}
}

func isReset(err error) bool { return errors.Is(err, syscall.ECONNRESET) }
