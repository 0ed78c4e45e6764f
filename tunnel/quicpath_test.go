package tunnel

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/homeport/homeport/internal/leak"
)

func TestBulkPhases(t *testing.T) {
	const k = 1 << 10
	type tick struct{ up, down uint64 }
	tests := []struct {
		name  string
		ticks []tick
		want  []int // ticks (by index) that report a flip
	}{
		{"download alone", []tick{{1 * k, 100 * k}, {1 * k, 100 * k}, {1 * k, 100 * k}}, nil},
		{"download then upload", []tick{{1 * k, 200 * k}, {1 * k, 200 * k}, {100 * k, 1 * k}, {100 * k, 1 * k}}, []int{2}},
		{"upload then download", []tick{{300 * k, 2 * k}, {2 * k, 20 * k}}, []int{1}},
		{"a phase too small to count", []tick{{1 * k, 100 * k}, {100 * k, 1 * k}}, nil},
		{"quiet ticks in between change nothing", []tick{{0, 300 * k}, {0, 0}, {1, 1}, {20 * k, 0}}, []int{3}},
		{"busy both ways is no phase", []tick{{0, 300 * k}, {100 * k, 100 * k}, {0, 300 * k}, {50 * k, 0}}, []int{3}},
		{"below the bulk floor", []tick{{0, 300 * k}, {15 * k, 0}}, nil},
		{"not dominant", []tick{{0, 300 * k}, {80 * k, 11 * k}}, nil},
		{"back and forth", []tick{{0, 300 * k}, {300 * k, 0}, {0, 300 * k}}, []int{1, 2}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var b bulkPhases
			var sent, rcvd uint64
			var got []int
			for i, tk := range tt.ticks {
				sent, rcvd = sent+tk.up, rcvd+tk.down
				if b.step(sent, rcvd) {
					got = append(got, i)
				}
			}
			if len(got) != len(tt.want) {
				t.Fatalf("flips at ticks %v, want %v", got, tt.want)
			}
			for i := range got {
				if got[i] != tt.want[i] {
					t.Fatalf("flips at ticks %v, want %v", got, tt.want)
				}
			}
		})
	}
}

func TestStuckSender(t *testing.T) {
	const rtt = 50 * time.Millisecond
	tests := []struct {
		name    string
		n       uint64
		elapsed time.Duration
		want    bool
	}{
		// 32 packets, then one more each round trip.
		{"congestion avoidance from the initial window", 4 * 34 * 1280, 4 * rtt, true},
		// 32, 64, 128, 256 packets.
		{"slow start", 480 * 1280, 4 * rtt, false},
		{"slow start, slowed by a queue", 480 * 1280, 6 * rtt, false},
		{"nothing sent", 0, 4 * rtt, true},
		{"no time", 1, 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := stuck(tt.n, tt.elapsed, rtt); got != tt.want {
				t.Errorf("stuck(%d, %v, %v) = %v, want %v", tt.n, tt.elapsed, rtt, got, tt.want)
			}
		})
	}
}

// TestQUICCongestionReset runs a transfer that fills a slow path's
// queue, which leaves the receiving side's congestion control out of slow
// start, then one the other way: the agent moves to another socket, and
// the new sender's congestion window grows as in slow start again. It
// asserts on the congestion windows quic-go reports, not on speed.
func TestQUICCongestionReset(t *testing.T) {
	for _, first := range []string{"download", "upload"} {
		t.Run(first+" first", func(t *testing.T) {
			leak.Check(t)
			path := newTestPath(t, 100*time.Millisecond, 50*time.Millisecond)
			agent, relay := sessionPairVia(t, QUICTransport{}, path)
			aq, rq := agent.(*quicSession), relay.(*quicSession)
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			ends := map[string]pipeEnds{"upload": openEnds(ctx, t, agent, relay), "download": openEnds(ctx, t, relay, agent)}
			rates := map[string]*atomic.Int64{"upload": &path.upRate, "download": &path.downRate}
			second, sender := "upload", aq
			if first == "upload" {
				second, sender = "download", rq
			}
			localBefore, remoteBefore := aq.LocalAddr().String(), rq.RemoteAddr().String()

			// The first transfer fills the path's queue: the receiver's
			// own packets are answered behind it. It must see at least 8
			// round trips of its own in each of its rounds (hybrid slow
			// start's minimum): at 40 packets received per PING, 3 MB/s
			// over 200 ms gives about 12.
			rates[first].Store(3 << 20)
			bulk(ctx, t, ends[first], 6<<20, nil)
			rates[first].Store(0)
			if n := aq.resetter.resets.Load(); n != 0 {
				t.Fatalf("%d congestion resets during the first transfer, want 0", n)
			}

			// The second: the agent moves, and the sender starts in
			// slow start again. Stuck in congestion avoidance from 32
			// packets, its window stays under 2.5 times that.
			const initial, size = 32 * 1280, 2 << 20
			got := bulk(ctx, t, ends[second], size, sender.conn)
			if got < 4*initial {
				t.Errorf("sender's congestion window reached %d bytes within %d bytes of %s, want at least %d (slow start)", got, size, second, 4*initial)
			}
			if aq.resetter.resets.Load() == 0 {
				// On a busy machine the first transfer may not have
				// left its receiver stuck; then there is nothing to
				// reset, and the window above grew without.
				t.Log("the first transfer left its receiver in slow start: no reset needed")
			} else {
				if a := aq.LocalAddr().String(); a == localBefore {
					t.Errorf("agent still on %s after its congestion reset", a)
				}
				if a := rq.RemoteAddr().String(); a == remoteBefore {
					t.Errorf("relay still sees the agent at %s after its congestion reset", a)
				}
			}

			// Moves back and forth between two sockets, the first one
			// among them. (The resetter itself may add one move
			// meanwhile, judging the transfer above: three moves land
			// on each socket at least once all the same.)
			seen := map[string]int{}
			for range 3 {
				if err := aq.resetter.reset(); err != nil {
					t.Fatal(err)
				}
				seen[aq.LocalAddr().String()]++
			}
			if len(seen) != 2 || seen[localBefore] == 0 {
				t.Errorf("agent moved between %v, want its first socket %s and one more", seen, localBefore)
			}
			// The session still carries data both ways.
			bulk(ctx, t, ends["upload"], 64<<10, nil)
			bulk(ctx, t, ends["download"], 64<<10, nil)
		})
	}
}

// pipeEnds is a stream, at its writer's end and at its reader's.
type pipeEnds struct{ w, r Stream }

func openEnds(ctx context.Context, t *testing.T, from, to Session) pipeEnds {
	t.Helper()
	w, err := from.OpenStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// A QUIC stream shows at the peer when data comes.
	if _, err := w.Write([]byte{0}); err != nil {
		t.Fatal(err)
	}
	r, err := to.AcceptStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(r, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close(); r.Close() })
	return pipeEnds{w, r}
}

// bulk writes n bytes on p and reads them at the other end. With
// sender set, it returns the largest congestion window the sender
// reported meanwhile.
func bulk(ctx context.Context, t *testing.T, p pipeEnds, n int, sender *quic.Conn) uint64 {
	t.Helper()
	var largest uint64
	read := make(chan int, 1)
	go func() {
		buf := make([]byte, 32<<10)
		got := 0
		for got < n {
			k, err := p.r.Read(buf[:min(len(buf), n-got)])
			got += k
			if err != nil {
				break
			}
		}
		read <- got
	}()
	var wg sync.WaitGroup
	done := make(chan struct{})
	if sender != nil {
		wg.Go(func() {
			tk := time.NewTicker(2 * time.Millisecond)
			defer tk.Stop()
			for {
				select {
				case <-done:
					return
				case <-tk.C:
				}
				largest = max(largest, sender.ConnectionStats().CongestionWindow)
			}
		})
	}
	var werr error
	buf := make([]byte, 16<<10)
	for sent := 0; sent < n && werr == nil; {
		k := min(len(buf), n-sent)
		_, werr = p.w.Write(buf[:k])
		sent += k
	}
	var got int
	select {
	case got = <-read:
	case <-ctx.Done():
		t.Fatal("bulk transfer did not end in time")
	}
	close(done)
	wg.Wait()
	if werr != nil || got != n {
		t.Fatalf("transfer of %d bytes: read %d, write error %v", n, got, werr)
	}
	return largest
}

// sessionPairVia is sessionPair with the client dialling through path.
func sessionPairVia(t *testing.T, tr QUICTransport, path *testPath) (client, server Session) {
	t.Helper()
	cert, fp := testCert(t)
	ln, err := tr.Listen("127.0.0.1:0", ServerTLSConfig(cert))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	path.start(t, ln.Addr().(*net.UDPAddr))
	conf, err := PinnedTLSConfig(fp)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	type res struct {
		c   Conn
		err error
	}
	ch := make(chan res, 1)
	go func() {
		c, err := ln.Accept(ctx)
		if err == nil {
			err = c.Handshake(ctx)
		}
		ch <- res{c, err}
	}()
	c, err := tr.Dial(ctx, path.Addr(), conf)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Handshake(ctx); err != nil {
		c.Close()
		t.Fatal(err)
	}
	r := <-ch
	if r.err != nil {
		c.Close()
		t.Fatal(r.err)
	}
	if client, err = c.Mux(DefaultSessionConfig()); err != nil {
		t.Fatal(err)
	}
	if server, err = r.c.Mux(DefaultSessionConfig()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close(); server.Close() })
	return client, server
}

// testPath forwards UDP between clients and a server on loopback like an
// internet path: each way a delay, and optionally a bottleneck of a given
// rate whose queue holds at most queueMax (more is dropped). Each client
// address gets its own socket towards the server, as behind a NAT.
type testPath struct {
	delay, queueMax  time.Duration
	upRate, downRate atomic.Int64 // bytes/s; 0: no bottleneck

	ln       *net.UDPConn
	server   *net.UDPAddr
	up, down *delayLine
	mu       sync.Mutex
	flows    map[netip.AddrPort]*net.UDPConn
	wg       sync.WaitGroup
}

func newTestPath(t *testing.T, delay, queueMax time.Duration) *testPath {
	return &testPath{delay: delay, queueMax: queueMax, flows: map[netip.AddrPort]*net.UDPConn{}}
}

func (p *testPath) Addr() string { return p.ln.LocalAddr().String() }

func (p *testPath) start(t *testing.T, server *net.UDPAddr) {
	t.Helper()
	ln, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	p.ln, p.server = ln, server
	p.up = newDelayLine(p.delay, p.queueMax, &p.upRate)
	p.down = newDelayLine(p.delay, p.queueMax, &p.downRate)
	p.wg.Go(func() { p.up.run() })
	p.wg.Go(func() { p.down.run() })
	p.wg.Go(p.fromClients)
	t.Cleanup(p.close)
}

func (p *testPath) close() {
	p.ln.Close()
	p.mu.Lock()
	for _, c := range p.flows {
		c.Close()
	}
	p.mu.Unlock()
	p.up.close()
	p.down.close()
	p.wg.Wait()
}

func (p *testPath) fromClients() {
	buf := make([]byte, 65536)
	for {
		n, from, err := p.ln.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		p.mu.Lock()
		c, ok := p.flows[from]
		if !ok {
			c, err = net.DialUDP("udp", nil, p.server)
			if err != nil {
				p.mu.Unlock()
				continue
			}
			p.flows[from] = c
			p.wg.Go(func() { p.fromServer(c, from) })
		}
		p.mu.Unlock()
		p.up.send(buf[:n], func(b []byte) { _, _ = c.Write(b) })
	}
}

func (p *testPath) fromServer(c *net.UDPConn, client netip.AddrPort) {
	buf := make([]byte, 65536)
	for {
		n, err := c.Read(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		p.down.send(buf[:n], func(b []byte) { _, _ = p.ln.WriteToUDPAddrPort(b, client) })
	}
}

// delayLine is one direction of a testPath.
type delayLine struct {
	delay, queueMax time.Duration
	rate            *atomic.Int64
	mu              sync.Mutex
	busy            time.Time // when the bottleneck has sent what it holds
	ch              chan packet
	closed          bool
}

type packet struct {
	at    time.Time
	b     []byte
	write func([]byte)
}

func newDelayLine(delay, queueMax time.Duration, rate *atomic.Int64) *delayLine {
	return &delayLine{delay: delay, queueMax: queueMax, rate: rate, ch: make(chan packet, 1<<14)}
}

func (l *delayLine) send(b []byte, write func([]byte)) {
	now := time.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return
	}
	at := now
	if r := l.rate.Load(); r > 0 {
		start := now
		if l.busy.After(now) {
			start = l.busy
		}
		if start.Sub(now) > l.queueMax {
			return // the queue is full
		}
		l.busy = start.Add(time.Duration(float64(len(b)+28) / float64(r) * float64(time.Second)))
		at = l.busy
	}
	select {
	case l.ch <- packet{at: at.Add(l.delay), b: append([]byte(nil), b...), write: write}:
	default: // the forwarder cannot keep up: a drop
	}
}

func (l *delayLine) run() {
	for pk := range l.ch {
		if d := time.Until(pk.at); d > 0 {
			time.Sleep(d)
		}
		pk.write(pk.b)
	}
}

func (l *delayLine) close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.closed {
		l.closed = true
		close(l.ch)
	}
}
