package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// A delaying forwarder stands for the internet path between two hosts on
// loopback: it listens on 127.0.0.1 and forwards to an address, and every
// byte it carries goes through a model of a path, each direction alike and
// on its own:
//
//   - a bottleneck link of wan.rate bytes per second that sends one
//     packet after the other: a packet of n bytes has left n/rate after
//     the one before it, or after its own arrival if the link was idle;
//   - in front of it a drop-tail queue that holds wan.queue's worth of
//     bytes at that rate: a packet that would wait longer is dropped;
//   - after it the one-way propagation delay, wan.delay (half the round
//     trip).
//
// A packet thus arrives at the far end when the bottleneck has sent it,
// plus the delay; packets keep their order; and at most rate×(delay +
// queue) bytes are on the way in each direction, what a real path of that
// rate, delay and buffering holds. The rate counts IP packets with their
// headers (IPv4), so that TCP and QUIC each pay their own overhead.
//
// The UDP forwarder puts each datagram through the model (28 bytes of
// IPv4 and UDP headers counted) and drops it if the queue is full, as a
// router does. It keeps one flow, with a socket to the target, per client
// address.
//
// The TCP forwarder ends TCP at both sides, client to forwarder and
// forwarder to target, and carries the byte stream between the two in
// chunks of up to tcpChunk bytes, each counted as segments of tcpMSS
// bytes with tcpHeaders bytes of headers. Where a router would drop, it
// stops reading instead: the sender's socket buffer fills and the sender
// waits. Without the rate and that bound the forwarder would take data as
// fast as loopback delivers it, and a plain TCP connection through it
// would not feel the delay at all; with them a bulk transfer runs at the
// bottleneck rate, as a TCP connection whose windows are large enough
// does on a real path. What the model leaves out: the end-to-end
// connection's own slow start and receive window across the delay (both
// of its halves are on loopback), so a plain TCP connection through the
// forwarder shows what the path can carry, not what a given kernel's
// buffer limits would make of it. A protocol with its own windows on top
// (yamux's stream window, QUIC's flow and congestion control) feels the
// full round trip: its window updates and acknowledgements cross the
// delay like everything else. The forwarder also stops reading once a
// direction holds the bytes the path can hold plus a chunk, undelivered
// (a receiver that does not read): nothing piles up without limit.
//
// Each TCP connection and each UDP flow has a path of its own; they do not
// share a bottleneck.

// wan is the model of a path, as above.
type wan struct {
	rate  float64       // bottleneck rate, bytes per second, IP headers counted
	delay time.Duration // one way
	queue time.Duration // what the queue holds, as time at rate
}

func (w wan) String() string {
	return fmt.Sprintf("%s, %v RTT, %v queue", formatRate(w.rate), 2*w.delay, w.queue)
}

// check reports whether the model is usable.
func (w wan) check() error {
	if w.rate < 1e3 || w.rate > 1e12 || w.delay < 0 || w.delay > time.Minute || w.queue < 0 || w.queue > time.Minute {
		return fmt.Errorf("path model %v: want a rate of 8 kbit/s to 8 Tbit/s, a delay and queue of 0 to 1m", w)
	}
	return nil
}

// holds is the most bytes a direction of the path holds: on the wire
// and in the queue.
func (w wan) holds() int {
	return int(w.rate * (w.delay + w.queue).Seconds())
}

// formatRate prints a rate in bytes per second as bits per second.
func formatRate(bytesPerSec float64) string {
	bits := bytesPerSec * 8
	switch {
	case bits >= 1e9:
		return fmt.Sprintf("%g Gbit/s", bits/1e9)
	case bits >= 1e6:
		return fmt.Sprintf("%g Mbit/s", bits/1e6)
	default:
		return fmt.Sprintf("%g kbit/s", bits/1e3)
	}
}

const (
	// tcpMSS and tcpHeaders are a TCP segment's payload and IPv4 and
	// TCP headers (with timestamps) on a 1500-byte MTU.
	tcpMSS     = 1448
	tcpHeaders = 52
	// udpHeaders are the IPv4 and UDP headers of a datagram.
	udpHeaders = 28
	// tcpChunk is the most the TCP forwarder reads at once: 131 µs at
	// 1 Gbit/s, 1.3 ms at 100 Mbit/s.
	tcpChunk = 16 << 10
	// maxDatagram is the largest datagram the UDP forwarder carries.
	maxDatagram = 64 << 10
	// udpFlowIdle ends a UDP flow that carried nothing either way for
	// this long.
	udpFlowIdle = time.Minute
	// udpMaxFlows bounds the UDP forwarder's flows; datagrams of further
	// clients are dropped.
	udpMaxFlows = 64
	// udpSocketBuffer is asked for the UDP sockets (the kernel may grant
	// less): a burst must wait in the model's queue, not be lost before.
	udpSocketBuffer = 4 << 20
)

// tcpWire is the size on the wire of n bytes of a TCP stream.
func tcpWire(n int) int { return n + (n+tcpMSS-1)/tcpMSS*tcpHeaders }

// udpWire is the size on the wire of a datagram of n bytes.
func udpWire(n int) int { return n + udpHeaders }

// shaper is one direction's bottleneck and delay. Only one goroutine uses
// it.
type shaper struct {
	w    wan
	free time.Time // when the bottleneck has sent all it was given
}

// wait is how long a packet arriving at now would wait in the queue.
func (s *shaper) wait(now time.Time) time.Duration {
	return max(s.free.Sub(now), 0)
}

// full reports whether the queue is full at now: a packet arriving then
// would wait longer than the queue holds.
func (s *shaper) full(now time.Time) bool { return s.wait(now) > s.w.queue }

// send puts a packet of n bytes (on the wire) arriving at now through the
// bottleneck and returns when it reaches the far end. A packet of 0 bytes
// (a FIN) arrives right after the packets before it.
func (s *shaper) send(now time.Time, n int) time.Time {
	start := now.Add(s.wait(now))
	s.free = start.Add(time.Duration(float64(n) / s.w.rate * float64(time.Second)))
	return s.free.Add(s.w.delay)
}

// parcel is data in flight: a datagram, or part of a TCP stream, or the
// stream's end.
type parcel struct {
	data []byte
	at   time.Time // when it reaches the far end
	eof  bool
}

// lane carries one direction's chunks, in order, from the goroutine that
// reads them to the one that delivers them. It holds at most limit bytes
// (and always at least one chunk).
type lane struct {
	limit int
	more  chan struct{} // a chunk was added, or the lane closed
	room  chan struct{} // a chunk was taken

	mu     sync.Mutex
	q      []parcel
	held   int
	closed bool
}

func newLane(limit int) *lane {
	return &lane{limit: limit, more: make(chan struct{}, 1), room: make(chan struct{}, 1)}
}

func wake(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// offer adds c if the lane has room for it and is open.
func (l *lane) offer(c parcel) bool {
	l.mu.Lock()
	ok := !l.closed && (l.held == 0 || l.held+len(c.data) <= l.limit)
	if ok {
		l.q = append(l.q, c)
		l.held += len(c.data)
	}
	l.mu.Unlock()
	if ok {
		wake(l.more)
	}
	return ok
}

// put adds c, waiting for room; false when ctx ends first.
func (l *lane) put(ctx context.Context, c parcel) bool {
	for !l.offer(c) {
		select {
		case <-l.room:
		case <-ctx.Done():
			return false
		}
	}
	return true
}

// close ends the lane: the chunks in it are still taken, none is added.
func (l *lane) close() {
	l.mu.Lock()
	l.closed = true
	l.mu.Unlock()
	wake(l.more)
}

// take removes the first chunk, waiting for one; false when the lane is
// closed and empty, or ctx ends.
func (l *lane) take(ctx context.Context) (parcel, bool) {
	for {
		l.mu.Lock()
		if len(l.q) > 0 {
			c := l.q[0]
			l.q[0] = parcel{}
			l.q = l.q[1:]
			l.held -= len(c.data)
			l.mu.Unlock()
			wake(l.room)
			return c, true
		}
		closed := l.closed
		l.mu.Unlock()
		if closed {
			return parcel{}, false
		}
		select {
		case <-l.more:
		case <-ctx.Done():
			return parcel{}, false
		}
	}
}

// sleepUntil waits until at, on timer t; false when ctx ends first.
func sleepUntil(ctx context.Context, t *time.Timer, at time.Time) bool {
	d := time.Until(at)
	if d <= 0 {
		return ctx.Err() == nil
	}
	t.Reset(d)
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		t.Stop()
		return false
	}
}

func stoppedTimer() *time.Timer {
	t := time.NewTimer(time.Hour)
	t.Stop()
	return t
}

// errCut is the end of a direction whose source failed or was closed
// without a FIN.
var errCut = errors.New("the other side ended without a FIN")

// deliver writes the lane's chunks each at its time, and calls fin for the
// stream's end, which is the last chunk. It returns when the lane is
// closed and empty (errCut), ctx ends or a write fails.
func deliver(ctx context.Context, l *lane, write func([]byte) error, fin func() error) error {
	t := stoppedTimer()
	for {
		c, ok := l.take(ctx)
		if !ok {
			if err := ctx.Err(); err != nil {
				return err
			}
			return errCut
		}
		if !sleepUntil(ctx, t, c.at) {
			return ctx.Err()
		}
		if c.eof {
			return fin()
		}
		if err := write(c.data); err != nil {
			return err
		}
	}
}

// tcpForwarder is the TCP delaying forwarder.
type tcpForwarder struct {
	ln     net.Listener
	target string
	w      wan
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu    sync.Mutex
	conns map[net.Conn]struct{}
}

// startTCPForwarder listens on a free port of 127.0.0.1 and forwards each
// connection to target through the model w, until Close or the end of
// ctx.
func startTCPForwarder(ctx context.Context, target string, w wan) (*tcpForwarder, error) {
	if err := w.check(); err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("delaying forwarder: %w", err)
	}
	f := &tcpForwarder{ln: ln, target: target, w: w, conns: make(map[net.Conn]struct{})}
	f.ctx, f.cancel = context.WithCancel(ctx)
	f.wg.Add(2)
	go func() {
		defer f.wg.Done()
		<-f.ctx.Done()
		f.shut()
	}()
	go f.acceptLoop()
	return f, nil
}

// Addr is the address to connect to.
func (f *tcpForwarder) Addr() string { return f.ln.Addr().String() }

// Close stops the forwarder and cuts its connections; it returns once
// all of its goroutines have ended.
func (f *tcpForwarder) Close() error {
	f.cancel()
	f.wg.Wait()
	return nil
}

// shut closes the listener and every connection.
func (f *tcpForwarder) shut() {
	f.ln.Close()
	f.mu.Lock()
	defer f.mu.Unlock()
	for c := range f.conns {
		c.Close()
	}
	f.conns = nil
}

// track adds c to the connections Close cuts; false once closed.
func (f *tcpForwarder) track(c net.Conn) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.conns == nil {
		return false
	}
	f.conns[c] = struct{}{}
	return true
}

func (f *tcpForwarder) untrack(c net.Conn) {
	c.Close()
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.conns, c)
}

func (f *tcpForwarder) acceptLoop() {
	defer f.wg.Done()
	for {
		c, err := f.ln.Accept()
		if err != nil {
			if f.ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			if !sleepUntil(f.ctx, stoppedTimer(), time.Now().Add(10*time.Millisecond)) {
				return
			}
			continue
		}
		if !f.track(c) {
			c.Close()
			return
		}
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			defer f.untrack(c)
			f.serve(c.(*net.TCPConn))
		}()
	}
}

// serve connects client to the target and carries both directions until
// both have ended with a FIN, either fails, or the forwarder closes.
func (f *tcpForwarder) serve(client *net.TCPConn) {
	ctx, cancel := context.WithCancel(f.ctx)
	defer cancel()
	d := net.Dialer{Timeout: dialTimeout}
	c, err := d.DialContext(ctx, "tcp", f.target)
	if err != nil {
		return
	}
	if !f.track(c) {
		c.Close()
		return
	}
	defer f.untrack(c)
	up := c.(*net.TCPConn)
	var wg sync.WaitGroup
	for _, dir := range [][2]*net.TCPConn{{client, up}, {up, client}} {
		src, dst := dir[0], dir[1]
		l := newLane(f.w.holds() + tcpChunk)
		wg.Add(2)
		go func() {
			defer wg.Done()
			pumpTCP(ctx, src, l, f.w)
		}()
		go func() {
			defer wg.Done()
			err := deliver(ctx, l, func(b []byte) error {
				_, err := dst.Write(b)
				return err
			}, dst.CloseWrite)
			if err != nil {
				// Cut both: the pumps' reads end, and so the
				// other direction.
				cancel()
				client.Close()
				up.Close()
			}
		}()
	}
	wg.Wait()
}

// pumpTCP reads src into l through the model w until src's FIN (which it
// passes on), an error or the end of ctx. It closes l.
func pumpTCP(ctx context.Context, src *net.TCPConn, l *lane, w wan) {
	defer l.close()
	sh := shaper{w: w}
	t := stoppedTimer()
	buf := make([]byte, tcpChunk)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			// The queue is full: the sender waits, as TCP's
			// congestion control would make it.
			now := time.Now()
			if sh.full(now) && !sleepUntil(ctx, t, now.Add(sh.wait(now)-w.queue)) {
				return
			}
			c := parcel{data: bytes.Clone(buf[:n]), at: sh.send(time.Now(), tcpWire(n))}
			if !l.put(ctx, c) {
				return
			}
		}
		if errors.Is(err, io.EOF) {
			l.put(ctx, parcel{eof: true, at: sh.send(time.Now(), 0)})
			return
		}
		if err != nil {
			return
		}
	}
}

// udpForwarder is the UDP delaying forwarder.
type udpForwarder struct {
	conn   *net.UDPConn // the listening socket, which clients send to
	target *net.UDPAddr
	w      wan
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	forwarded, dropped atomic.Int64 // datagrams, both directions

	mu    sync.Mutex
	flows map[netip.AddrPort]*udpFlow
}

// udpFlow is one client's traffic: a socket of its own to the target,
// and the model's two directions.
type udpFlow struct {
	client   netip.AddrPort
	up       *net.UDPConn // connected to the target
	toTarget *lane
	sh       shaper // towards the target; used by the listening loop only
	toClient *lane
	last     atomic.Int64 // unix nanoseconds of the last datagram from the client
	cancel   context.CancelFunc
}

// startUDPForwarder listens on a free UDP port of 127.0.0.1 and forwards
// the datagrams of each client address to target through the model w,
// until Close or the end of ctx.
func startUDPForwarder(ctx context.Context, target string, w wan) (*udpForwarder, error) {
	if err := w.check(); err != nil {
		return nil, err
	}
	to, err := net.ResolveUDPAddr("udp", target)
	if err != nil {
		return nil, fmt.Errorf("delaying forwarder: %w", err)
	}
	conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return nil, fmt.Errorf("delaying forwarder: %w", err)
	}
	setUDPBuffers(conn)
	f := &udpForwarder{conn: conn, target: to, w: w, flows: make(map[netip.AddrPort]*udpFlow)}
	f.ctx, f.cancel = context.WithCancel(ctx)
	f.wg.Add(2)
	go func() {
		defer f.wg.Done()
		<-f.ctx.Done()
		f.shut()
	}()
	go f.readLoop()
	return f, nil
}

func setUDPBuffers(c *net.UDPConn) {
	_ = c.SetReadBuffer(udpSocketBuffer)
	_ = c.SetWriteBuffer(udpSocketBuffer)
}

// Addr is the address to send to.
func (f *udpForwarder) Addr() string { return f.conn.LocalAddr().String() }

// Close stops the forwarder and its flows; it returns once all of its
// goroutines have ended.
func (f *udpForwarder) Close() error {
	f.cancel()
	f.wg.Wait()
	return nil
}

// counts returns the datagrams forwarded and dropped so far, both
// directions.
func (f *udpForwarder) counts() (forwarded, dropped int64) {
	return f.forwarded.Load(), f.dropped.Load()
}

func (f *udpForwarder) shut() {
	f.conn.Close()
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, fl := range f.flows {
		fl.cancel()
		fl.up.Close()
	}
	f.flows = nil
}

// readLoop takes the clients' datagrams.
func (f *udpForwarder) readLoop() {
	defer f.wg.Done()
	buf := make([]byte, maxDatagram)
	for {
		n, from, err := f.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			// Closed, or a fault of the socket itself: the end.
			return
		}
		fl := f.flow(from)
		if fl == nil {
			f.dropped.Add(1)
			continue
		}
		now := time.Now()
		fl.last.Store(now.UnixNano())
		f.pass(&fl.sh, fl.toTarget, buf[:n], now)
	}
}

// pass puts a datagram through the model into l, or drops it when the
// queue is full.
func (f *udpForwarder) pass(sh *shaper, l *lane, b []byte, now time.Time) {
	if sh.full(now) || !l.offer(parcel{data: bytes.Clone(b), at: sh.send(now, udpWire(len(b)))}) {
		f.dropped.Add(1)
		return
	}
	f.forwarded.Add(1)
}

// flow returns the client's flow, started if new; nil when there are too
// many or the target cannot be reached.
func (f *udpForwarder) flow(client netip.AddrPort) *udpFlow {
	f.mu.Lock()
	defer f.mu.Unlock()
	if fl, ok := f.flows[client]; ok || f.flows == nil || len(f.flows) >= udpMaxFlows {
		return fl
	}
	up, err := net.DialUDP("udp", nil, f.target)
	if err != nil {
		return nil
	}
	setUDPBuffers(up)
	limit := f.w.holds() + maxDatagram
	fl := &udpFlow{client: client, up: up, toTarget: newLane(limit), sh: shaper{w: f.w}, toClient: newLane(limit)}
	var ctx context.Context
	ctx, fl.cancel = context.WithCancel(f.ctx)
	f.flows[client] = fl
	f.wg.Add(3)
	go func() {
		defer f.wg.Done()
		_ = deliver(ctx, fl.toTarget, func(b []byte) error {
			_, err := up.Write(b)
			return udpWriteErr(err)
		}, nil)
	}()
	go func() {
		defer f.wg.Done()
		_ = deliver(ctx, fl.toClient, func(b []byte) error {
			_, err := f.conn.WriteToUDPAddrPort(b, client)
			return udpWriteErr(err)
		}, nil)
	}()
	go func() {
		defer f.wg.Done()
		defer f.end(fl)
		f.readTarget(ctx, fl)
	}()
	return fl
}

// udpWriteErr keeps a failed write's error only if the socket is closed:
// any other failure (the target's port closed a moment ago, full kernel
// buffers) loses one datagram, as a network may.
func udpWriteErr(err error) error {
	if errors.Is(err, net.ErrClosed) {
		return err
	}
	return nil
}

// isRefused reports whether err is an ICMP "port unreachable" reported on
// a connected UDP socket.
func isRefused(err error) bool { return errors.Is(err, syscall.ECONNREFUSED) }

// readTarget takes the target's datagrams for the flow's client until the
// flow is idle for udpFlowIdle, or ends.
func (f *udpForwarder) readTarget(ctx context.Context, fl *udpFlow) {
	buf := make([]byte, maxDatagram)
	sh := shaper{w: f.w}
	for ctx.Err() == nil {
		_ = fl.up.SetReadDeadline(time.Now().Add(udpFlowIdle))
		n, err := fl.up.Read(buf)
		now := time.Now()
		switch {
		case errors.Is(err, os.ErrDeadlineExceeded):
			if now.Sub(time.Unix(0, fl.last.Load())) >= udpFlowIdle {
				return
			}
			continue
		case isRefused(err):
			continue // the target's port is closed for now
		case err != nil:
			return
		}
		fl.last.Store(now.UnixNano())
		f.pass(&sh, fl.toClient, buf[:n], now)
	}
}

// end removes the flow and stops its goroutines.
func (f *udpForwarder) end(fl *udpFlow) {
	fl.cancel()
	fl.up.Close()
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.flows[fl.client] == fl {
		delete(f.flows, fl.client)
	}
}
