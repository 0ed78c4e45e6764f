package resume

import (
	"context"
	"io"
	"net"
	"testing"
	"time"

	"github.com/homeport/homeport/tunnel"
)

// BenchmarkSplice sends data one way through the tunnel's data path,
//
//	x <-TCP-> [Splice] <-stream-> [Splice] <-TCP-> y
//
// over each transport, with the stream plain ("plain") and as a
// resume.Conn ("resume"), in 64 KiB writes. It reports MB/s and the
// process's CPU time (user and system, all goroutines: both splices, both
// sessions, the ack channel) per GB carried.
//
//	go test -run '^$' -bench . -benchtime 2s ./tunnel/resume
func BenchmarkSplice(b *testing.B) {
	for _, tt := range transports {
		b.Run(tt.name+"/plain", func(b *testing.B) {
			agent, relay := sessionPair(b, tt.tr)
			ctx := context.Background()
			accepted := make(chan tunnel.Stream, 1)
			go func() {
				st, err := agent.AcceptStream(ctx)
				if err == nil {
					_, err = io.ReadFull(st, make([]byte, 1))
				}
				if err != nil {
					b.Error(err)
				}
				accepted <- st
			}()
			st1, err := relay.OpenStream(ctx)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := st1.Write([]byte{0}); err != nil {
				b.Fatal(err)
			}
			st2 := <-accepted
			if st2 == nil {
				b.FailNow()
			}
			benchPath(b, st1, st2)
		})
		b.Run(tt.name+"/resume", func(b *testing.B) {
			l := newLink(b, tt.tr, Config{})
			rc, ac := l.open()
			benchPath(b, rc, ac)
		})
	}
}

// benchPath splices a TCP pair onto each end of the stream a-b and
// measures a bulk transfer from x (at a) to y (at b).
func benchPath(b *testing.B, a, bEnd tunnel.Stream) {
	x, xr := tcpPair(b)
	yr, y := tcpPair(b)
	done := make(chan struct{}, 2)
	go func() { tunnel.Splice(context.Background(), xr, a); done <- struct{}{} }()
	go func() { tunnel.Splice(context.Background(), bEnd, yr); done <- struct{}{} }()
	const write = 64 << 10
	buf := make([]byte, write)
	for i := range buf {
		buf[i] = byte(i)
	}
	drained := make(chan int64, 1)
	go func() {
		n, _ := io.CopyBuffer(struct{ io.Writer }{io.Discard}, y, make([]byte, write))
		drained <- n
	}()
	b.SetBytes(write)
	b.ReportAllocs()
	cpu0 := cpuTime()
	start := time.Now()
	n := 0
	for b.Loop() {
		if _, err := x.Write(buf); err != nil {
			b.Fatal(err)
		}
		n++
	}
	x.CloseWrite()
	got := <-drained
	elapsed := time.Since(start)
	cpu := cpuTime() - cpu0
	if want := int64(n) * write; got != want {
		b.Fatalf("y read %d bytes, want %d", got, want)
	}
	gb := float64(got) / 1e9
	b.ReportMetric(float64(cpu.Milliseconds())/gb, "cpu-ms/GB")
	b.ReportMetric(float64(got)/1e6/elapsed.Seconds(), "MB/s-end")
	y.Close()
	x.Close()
	<-done
	<-done
}

// tcpPair returns two connected loopback TCP connections.
func tcpPair(t testing.TB) (*net.TCPConn, *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ch := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		ch <- c
	}()
	a, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c := <-ch
	if c == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { a.Close(); c.Close() })
	return a.(*net.TCPConn), c.(*net.TCPConn)
}
