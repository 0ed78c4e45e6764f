package tunnel

import (
	"context"
	"flag"
	"io"
	"net"
	"os"
	"runtime"
	"runtime/pprof"
	"slices"
	"testing"
	"time"
)

// Benchmarks of the tunnel's data path against a direct loopback TCP
// connection, in one process:
//
//	direct:    x <-TCP-> y
//	tcp, quic: x <-TCP-> [Splice] <-stream-> [Splice] <-TCP-> y
//
// go test -run '^$' -bench . -benchtime 2s ./tunnel
//
// The helpers in transport_test.go take a *testing.T; the ones here are
// the same constructions for a testing.TB, so that benchmarks can use
// them.

// benchWrite is the size of each write in BenchmarkSplice.
const benchWrite = 64 << 10

// benchMsg is the size of a message in BenchmarkPingPong.
const benchMsg = 64

// BenchmarkSplice sends data one way, x to y, in 64 KiB writes, and
// reports MB/s. The timer stops when y has read the last byte.
func BenchmarkSplice(b *testing.B) {
	b.Run("direct", func(b *testing.B) {
		x, y := tcpPair(b)
		benchBulk(b, x, y)
	})
	for _, tt := range transports {
		b.Run(tt.name, func(b *testing.B) {
			x, y, wait := splicedPath(b, tt.tr)
			benchBulk(b, x, y)
			x.Close()
			y.Close()
			wait()
		})
	}
}

func benchBulk(b *testing.B, x, y *net.TCPConn) {
	buf := make([]byte, benchWrite)
	for i := range buf {
		buf[i] = byte(i)
	}
	drained := make(chan int64, 1)
	go func() {
		// Not io.Discard itself: its ReadFrom would read 8 KiB at a time.
		n, _ := io.CopyBuffer(struct{ io.Writer }{io.Discard}, y, make([]byte, benchWrite))
		drained <- n
	}()
	b.SetBytes(benchWrite)
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		if _, err := x.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
	x.CloseWrite()
	n := <-drained
	b.StopTimer()
	if want := int64(b.N) * benchWrite; n != want {
		b.Fatalf("y read %d bytes, want %d", n, want)
	}
}

// BenchmarkPingPong sends a 64-byte message from x, which y echoes; one
// op is one round trip. p50-ns and p99-ns are the round trips' median and
// 99th percentile.
func BenchmarkPingPong(b *testing.B) {
	b.Run("direct", func(b *testing.B) {
		x, y := tcpPair(b)
		benchPingPong(b, x, y)
	})
	for _, tt := range transports {
		b.Run(tt.name, func(b *testing.B) {
			x, y, wait := splicedPath(b, tt.tr)
			benchPingPong(b, x, y)
			x.Close()
			y.Close()
			wait()
		})
	}
}

func benchPingPong(b *testing.B, x, y *net.TCPConn) {
	go func() {
		buf := make([]byte, benchMsg)
		for {
			if _, err := io.ReadFull(y, buf); err != nil {
				y.CloseWrite()
				return
			}
			if _, err := y.Write(buf); err != nil {
				return
			}
		}
	}()
	msg, got := make([]byte, benchMsg), make([]byte, benchMsg)
	rtt := func() {
		if _, err := x.Write(msg); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(x, got); err != nil {
			b.Fatal(err)
		}
	}
	for range 100 { // warm up the path
		rtt()
	}
	samples := make([]time.Duration, 0, b.N)
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		start := time.Now()
		rtt()
		samples = append(samples, time.Since(start))
	}
	b.StopTimer()
	slices.Sort(samples)
	b.ReportMetric(float64(samples[len(samples)/2]), "p50-ns")
	b.ReportMetric(float64(samples[len(samples)*99/100]), "p99-ns")
	x.CloseWrite()
}

// idleConns is the number of connections BenchmarkIdleConns holds.
const idleConns = 1000

var idleProfile = flag.String("idleprofile", "", "BenchmarkIdleConns: write a heap profile to this file (suffixed with the transport) while the connections are open")

// BenchmarkIdleConns opens 1000 connections through one session, each
// spliced at both ends as relay and agent do, sends one byte there and
// back on each, and reports what the idle connections hold: heap and
// goroutine stack per connection (both splices, both streams and the four
// TCP ends together). One op opens and closes all of them.
//
// What holds the heap: go test -run '^$' -bench IdleConns -benchtime 1x
// -memprofilerate 1 -idleprofile /tmp/idle ./tunnel, then
// go tool pprof -sample_index inuse_space -top /tmp/idle-tcp.
func BenchmarkIdleConns(b *testing.B) {
	for _, tt := range transports {
		b.Run(tt.name, func(b *testing.B) {
			agent, relay := sessionPair(b, tt.tr)
			var heap, stack float64
			profile := ""
			if *idleProfile != "" {
				profile = *idleProfile + "-" + tt.name
			}
			for b.Loop() {
				h, s := benchIdle(b, agent, relay, profile)
				heap += h
				stack += s
			}
			b.ReportMetric(heap/float64(b.N), "heap-B/conn")
			b.ReportMetric(stack/float64(b.N), "stack-B/conn")
		})
	}
}

// benchIdle opens idleConns spliced connections over the session, the
// relay's end opening the streams as it does for visitors, measures the
// memory they hold, and closes them.
func benchIdle(b *testing.B, agent, relay Session, profile string) (heapPerConn, stackPerConn float64) {
	xl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer xl.Close()
	yl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer yl.Close()
	ctx := context.Background()
	before := memNow()
	var (
		ends []*net.TCPConn
		done = make(chan struct{}, 2*idleConns)
	)
	for range idleConns {
		// Relay: a visitor connects, a stream is opened, Splice.
		x, err := net.Dial("tcp", xl.Addr().String())
		if err != nil {
			b.Fatal(err)
		}
		xr, err := xl.Accept()
		if err != nil {
			b.Fatal(err)
		}
		st1, err := relay.OpenStream(ctx)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := st1.Write([]byte{0}); err != nil {
			b.Fatal(err)
		}
		go func() { Splice(ctx, xr.(*net.TCPConn), st1); done <- struct{}{} }()
		// Agent: the stream is accepted, the target dialed, Splice.
		st2, err := agent.AcceptStream(ctx)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(st2, make([]byte, 1)); err != nil {
			b.Fatal(err)
		}
		yr, err := net.Dial("tcp", yl.Addr().String())
		if err != nil {
			b.Fatal(err)
		}
		y, err := yl.Accept()
		if err != nil {
			b.Fatal(err)
		}
		go func() { Splice(ctx, st2, yr.(*net.TCPConn)); done <- struct{}{} }()
		// One byte there and back.
		var one [1]byte
		if _, err := x.Write(one[:]); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(y, one[:]); err != nil {
			b.Fatal(err)
		}
		if _, err := y.Write(one[:]); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(x, one[:]); err != nil {
			b.Fatal(err)
		}
		ends = append(ends, x.(*net.TCPConn), y.(*net.TCPConn))
	}
	// Idle means idle: long enough for the splices to park and the
	// stream buffers to be released.
	time.Sleep(max(parkAfter, shrinkAfter) + 500*time.Millisecond)
	after := memNow()
	b.StopTimer()
	if profile != "" {
		writeHeapProfile(b, profile)
	}
	for _, c := range ends {
		c.Close()
	}
	for range 2 * idleConns {
		<-done
	}
	b.StartTimer()
	return float64(after.heap-before.heap) / idleConns, float64(after.stack-before.stack) / idleConns
}

func writeHeapProfile(b *testing.B, path string) {
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	if err := pprof.Lookup("heap").WriteTo(f, 0); err != nil {
		b.Fatal(err)
	}
}

type memSample struct{ heap, stack int64 }

// memNow returns the live heap and the goroutine stacks, after a GC.
func memNow() memSample {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return memSample{heap: int64(m.HeapAlloc), stack: int64(m.StackInuse)}
}
