package main

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/homeport/homeport/internal/leak"
)

// The forwarders' tests check what they carry and that the delay is
// there, a lower bound; how fast a loaded machine runs them is not
// checked.

func TestWire(t *testing.T) {
	tests := []struct {
		name      string
		got, want int
	}{
		{"tcp empty", tcpWire(0), 0},
		{"tcp 1 byte", tcpWire(1), 1 + 52},
		{"tcp one full segment", tcpWire(1448), 1500},
		{"tcp 1449 bytes", tcpWire(1449), 1449 + 2*52},
		{"udp 1200 bytes", udpWire(1200), 1228},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("%s: %d bytes on the wire, want %d", tt.name, tt.got, tt.want)
		}
	}
}

// TestShaper sends packets through a 1000 B/s bottleneck with a 10 ms
// delay and a 2 s queue, on a clock of its own.
func TestShaper(t *testing.T) {
	t0 := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	ms := func(n int) time.Time { return t0.Add(time.Duration(n) * time.Millisecond) }
	sh := shaper{w: wan{rate: 1000, delay: 10 * time.Millisecond, queue: 2 * time.Second}}
	steps := []struct {
		name     string
		now      time.Time
		bytes    int
		wantFull bool
		wantAt   time.Time
	}{
		{"idle link: sent in 500 ms, then the delay", ms(0), 500, false, ms(510)},
		{"right behind: waits for the first", ms(0), 1000, false, ms(1510)},
		{"queue of 1.5 s, room left", ms(0), 600, false, ms(2110)},
		{"queue of 2.1 s: full", ms(0), 0, true, time.Time{}},
		{"a FIN comes right after the data", ms(1000), 0, false, ms(2110)},
		{"after the queue drained: at once", ms(5000), 100, false, ms(5110)},
	}
	for _, s := range steps {
		if full := sh.full(s.now); full != s.wantFull {
			t.Errorf("%s: full = %v, want %v", s.name, full, s.wantFull)
		}
		if s.wantFull {
			continue
		}
		if at := sh.send(s.now, s.bytes); !at.Equal(s.wantAt) {
			t.Errorf("%s: arrives at +%v, want +%v", s.name, at.Sub(t0), s.wantAt.Sub(t0))
		}
	}
}

// TestUDPPass drops a datagram that finds the queue full, as a router
// does, on a clock of its own.
func TestUDPPass(t *testing.T) {
	t0 := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	w := wan{rate: 1000, delay: 10 * time.Millisecond, queue: 100 * time.Millisecond}
	f := &udpForwarder{w: w}
	sh := shaper{w: w}
	l := newLane(w.holds() + maxDatagram)
	dgram := make([]byte, 100-udpHeaders) // 100 ms at 1000 B/s
	for i, want := range []struct {
		after              time.Duration
		forwarded, dropped int64
	}{
		{0, 1, 0},                      // idle: sent at once
		{0, 2, 0},                      // waits 100 ms: fits
		{0, 2, 1},                      // would wait 200 ms: dropped
		{150 * time.Millisecond, 3, 1}, // waits 50 ms
	} {
		f.pass(&sh, l, dgram, t0.Add(want.after))
		fw, dr := f.counts()
		if fw != want.forwarded || dr != want.dropped {
			t.Errorf("datagram %d: %d forwarded, %d dropped; want %d, %d", i+1, fw, dr, want.forwarded, want.dropped)
		}
	}
	for i, want := range []time.Duration{110, 210, 310} {
		c, ok := l.take(context.Background())
		if !ok || !c.at.Equal(t0.Add(want*time.Millisecond)) {
			t.Errorf("datagram %d of the lane: arrives at +%v (%v), want +%v", i+1, c.at.Sub(t0), ok, want*time.Millisecond)
		}
	}
}

func TestLane(t *testing.T) {
	l := newLane(10)
	for _, tt := range []struct {
		n    int
		want bool
	}{{20, true}, {1, false}} { // one chunk always fits; then none
		if got := l.offer(parcel{data: make([]byte, tt.n)}); got != tt.want {
			t.Errorf("offer %d bytes: %v, want %v", tt.n, got, tt.want)
		}
	}
	ctx := context.Background()
	if c, ok := l.take(ctx); !ok || len(c.data) != 20 {
		t.Fatalf("take: %d bytes, %v", len(c.data), ok)
	}
	if !l.offer(parcel{data: make([]byte, 4)}) || !l.offer(parcel{data: make([]byte, 6)}) || l.offer(parcel{data: make([]byte, 1)}) {
		t.Error("a lane of 10 bytes does not hold 4 + 6, or holds 1 more")
	}
	l.close()
	if l.offer(parcel{}) {
		t.Error("a closed lane takes more")
	}
	for _, want := range []int{4, 6} {
		if c, ok := l.take(ctx); !ok || len(c.data) != want {
			t.Errorf("take after close: %d bytes, %v; want %d", len(c.data), ok, want)
		}
	}
	if _, ok := l.take(ctx); ok {
		t.Error("take on a closed, empty lane returned a chunk")
	}
}

// testWAN is a path fast enough for a short test and slow enough to be
// felt: 1 Gbit/s, 50 ms round trip.
var testWAN = wan{rate: 125e6, delay: 25 * time.Millisecond, queue: 20 * time.Millisecond}

// startTestTCPForwarder starts the load target and a forwarder to it; both
// stop when the test ends.
func startTestTCPForwarder(t *testing.T, w wan) (*tcpForwarder, context.CancelFunc) {
	t.Helper()
	tg, err := startTarget()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(tg.close)
	ctx, cancel := context.WithCancel(context.Background())
	f, err := startTCPForwarder(ctx, tg.addr(), w)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		f.Close()
	})
	return f, cancel
}

func dialTest(t *testing.T, addr string) *net.TCPConn {
	t.Helper()
	c, err := dial(context.Background(), addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(time.Minute))
	return c
}

func TestTCPForwarder(t *testing.T) {
	leak.Check(t)
	f, _ := startTestTCPForwarder(t, testWAN)

	t.Run("echo keeps order and content", func(t *testing.T) {
		data := make([]byte, 4<<20)
		rand.Read(data)
		c := dialTest(t, f.Addr())
		werr := make(chan error, 1)
		go func() {
			_, err := c.Write(append([]byte{modeEcho}, data...))
			if err == nil {
				err = c.CloseWrite()
			}
			werr <- err
		}()
		got, err := io.ReadAll(c) // to the target's FIN, after it saw ours
		if err := errors.Join(err, <-werr); err != nil {
			t.Fatal(err)
		}
		if len(got) != 1+len(data) || got[0] != modeEcho || sha256.Sum256(got[1:]) != sha256.Sum256(data) {
			t.Errorf("echo returned %d bytes of %d, or others", len(got), 1+len(data))
		}
	})

	t.Run("half-close: the answer after our FIN arrives", func(t *testing.T) {
		c := dialTest(t, f.Addr())
		const n = 1 << 20
		if _, err := c.Write(append([]byte{modeSink}, make([]byte, n)...)); err != nil {
			t.Fatal(err)
		}
		if err := c.CloseWrite(); err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(c)
		if err != nil || len(got) != 8 || binary.BigEndian.Uint64(got) != n {
			t.Errorf("sink answered %x, %v; want the count %d, then the end", got, err, n)
		}
	})

	t.Run("a round trip takes at least the RTT", func(t *testing.T) {
		c := dialTest(t, f.Addr())
		b := []byte{modeEcho}
		for i := range 3 {
			start := time.Now()
			if _, err := c.Write(b); err != nil {
				t.Fatal(err)
			}
			if _, err := io.ReadFull(c, b); err != nil {
				t.Fatal(err)
			}
			if rtt := time.Since(start); rtt < 2*testWAN.delay {
				t.Errorf("round trip %d took %v, less than the RTT %v", i+1, rtt, 2*testWAN.delay)
			}
		}
	})
}

// TestTCPForwarderClose stops a forwarder in the middle of a transfer: the
// transfer ends, and no goroutine or descriptor is left.
func TestTCPForwarderClose(t *testing.T) {
	for _, how := range []string{"Close", "context"} {
		t.Run(how, func(t *testing.T) {
			leak.Check(t)
			f, cancel := startTestTCPForwarder(t, testWAN)
			c := dialTest(t, f.Addr())
			if _, err := c.Write([]byte{modeSource}); err != nil {
				t.Fatal(err)
			}
			if _, err := io.ReadFull(c, make([]byte, 64<<10)); err != nil {
				t.Fatal(err)
			}
			if how == "Close" {
				f.Close()
			} else {
				cancel()
			}
			_, _ = io.Copy(io.Discard, c) // it ends, with an EOF or a reset
		})
	}
}

// udpEcho answers every datagram with itself until the test ends.
func udpEcho(t *testing.T) string {
	t.Helper()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	setUDPBuffers(c)
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, maxDatagram)
		for {
			n, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			_, _ = c.WriteToUDPAddrPort(buf[:n], from)
		}
	}()
	t.Cleanup(func() {
		c.Close()
		<-done
	})
	return c.LocalAddr().String()
}

func TestUDPForwarder(t *testing.T) {
	leak.Check(t)
	// 10 Mbit/s and a queue that holds all the test sends at once: no
	// drops.
	w := wan{rate: 1.25e6, delay: 25 * time.Millisecond, queue: 2 * time.Second}
	f, err := startUDPForwarder(context.Background(), udpEcho(t), w)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	dialUDP := func(t *testing.T) *net.UDPConn {
		c, err := net.Dial("udp", f.Addr())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		setUDPBuffers(c.(*net.UDPConn))
		_ = c.SetDeadline(time.Now().Add(time.Minute))
		return c.(*net.UDPConn)
	}

	t.Run("datagrams keep order and content", func(t *testing.T) {
		c := dialUDP(t)
		const count, size = 200, 1000
		sent, got := sha256.New(), sha256.New()
		for i := range count {
			d := make([]byte, size)
			rand.Read(d)
			binary.BigEndian.PutUint32(d, uint32(i))
			sent.Write(d)
			if _, err := c.Write(d); err != nil {
				t.Fatal(err)
			}
		}
		buf := make([]byte, maxDatagram)
		for i := range count {
			n, err := c.Read(buf)
			if err != nil {
				t.Fatalf("datagram %d of %d: %v", i+1, count, err)
			}
			if seq := binary.BigEndian.Uint32(buf); n != size || seq != uint32(i) {
				t.Fatalf("datagram %d: number %d, %d bytes", i, seq, n)
			}
			got.Write(buf[:n])
		}
		if string(got.Sum(nil)) != string(sent.Sum(nil)) {
			t.Error("the datagrams came back changed")
		}
	})

	t.Run("a round trip takes at least the RTT", func(t *testing.T) {
		c := dialUDP(t)
		b := make([]byte, 64)
		for i := range 3 {
			start := time.Now()
			if _, err := c.Write(b); err != nil {
				t.Fatal(err)
			}
			if _, err := c.Read(b); err != nil {
				t.Fatal(err)
			}
			if rtt := time.Since(start); rtt < 2*w.delay {
				t.Errorf("round trip %d took %v, less than the RTT %v", i+1, rtt, 2*w.delay)
			}
		}
	})

	t.Run("one flow per client", func(t *testing.T) {
		f.mu.Lock()
		n := len(f.flows)
		f.mu.Unlock()
		if n != 2 {
			t.Errorf("%d flows, want one for each of the 2 clients so far", n)
		}
	})
}
