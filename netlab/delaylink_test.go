//go:build netlab && linux

package netlab

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/homeport/homeport/internal/leak"
)

// The delay link: the home uplink built as two TUN devices, homer's wan0
// and inet's home0, with the test process copying IP packets between
// them and holding each for the link's one-way delay. It needs no netem
// qdisc (which not every kernel has) and delays at layer 3, TCP and UDP
// alike.
// Everything else about the uplink stays: the addresses (point-to-point,
// as on a PPP uplink), the NAT on wan0, the impairment chain on home0,
// link down and up.

// linkConfig is how a delay link behaves, the same both ways.
type linkConfig struct {
	delay time.Duration // one way; uplinkDelay changes it later
	rate  int64         // bytes per second each way; 0 for as fast as the copier goes
	// buffer is how many bytes may wait for a rate-limited link, like a
	// router's queue; a packet that would make it longer is dropped.
	// Default 128 KiB; it has no effect without a rate.
	buffer int64
	// limit is how many packets each direction holds at most, waiting
	// and in flight on the delay line; more are dropped. Default 4096
	// (6 MiB, 240 MiB/s at 25 ms).
	limit int
}

// withDelayLink builds the lab's home uplink as a delay link instead of a
// veth pair.
func withDelayLink(cfg linkConfig) labOption {
	return func(l *lab) { l.delayCfg = &cfg }
}

// delayLink copies packets between two packet files (the two TUN
// devices), each way through a bounded delay line.
type delayLink struct {
	cfg     linkConfig
	delayNs atomic.Int64 // the one-way delay now
	ends    [2]*os.File  // homer's wan0, inet's home0
	dirs    [2]*direction
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	closed  sync.Once
	stopErr error

	// rate and buffer are cfg's, or what setRate made them since.
	rate, buffer atomic.Int64
}

// direction is one way of a delay link: a reader that stamps each packet
// with the time it is due and queues it, a writer that sends each when due.
type direction struct {
	name     string
	from, to *os.File
	queue    chan *packet // in order of arrival, so in order of due time
	free     chan *packet
	linkFree time.Time // the reader's: when the rate-limited link is free again

	sent, overflow, queueDrops, writeErrs, readErrs atomic.Int64
	// maxWait is the longest a packet has waited in the router's queue
	// for the rate-limited link, in nanoseconds.
	maxWait atomic.Int64
}

type packet struct {
	buf []byte
	n   int
	due time.Time
}

const (
	tunMTU        = 1500
	packetBufSize = 2048 // more than the MTU, which a TUN device without offloads never exceeds
	defaultLimit  = 4096
	defaultBuffer = 128 << 10
)

// startDelayLink starts copying between a (the home side) and b (the
// internet side). It owns both files from then on: stop closes them.
func startDelayLink(ctx context.Context, cfg linkConfig, a, b *os.File) *delayLink {
	if cfg.limit <= 0 {
		cfg.limit = defaultLimit
	}
	if cfg.buffer <= 0 {
		cfg.buffer = defaultBuffer
	}
	ctx, cancel := context.WithCancel(ctx)
	d := &delayLink{cfg: cfg, ends: [2]*os.File{a, b}, cancel: cancel}
	d.delayNs.Store(int64(cfg.delay))
	d.rate.Store(cfg.rate)
	d.buffer.Store(cfg.buffer)
	for i, name := range []string{"home → internet", "internet → home"} {
		dir := &direction{
			name:  name,
			from:  d.ends[i],
			to:    d.ends[1-i],
			queue: make(chan *packet, cfg.limit),
			// The queue's packets, the one the reader fills and the one
			// the writer sends: the reader never waits for a buffer.
			free: make(chan *packet, cfg.limit+2),
		}
		slab := make([]byte, (cfg.limit+2)*packetBufSize)
		for j := 0; j < cfg.limit+2; j++ {
			dir.free <- &packet{buf: slab[j*packetBufSize : (j+1)*packetBufSize : (j+1)*packetBufSize]}
		}
		d.dirs[i] = dir
		d.wg.Add(2)
		go func() { defer d.wg.Done(); d.read(ctx, dir) }()
		go func() { defer d.wg.Done(); d.write(ctx, dir) }()
	}
	return d
}

// setDelay changes the one-way delay, for the packets that arrive from
// now on.
func (d *delayLink) setDelay(oneWay time.Duration) { d.delayNs.Store(int64(oneWay)) }

// setRate changes the rate limit (bytes per second each way, 0 for
// none) and the router's buffer in front of it (0 for the default), for
// the packets that arrive from now on.
func (d *delayLink) setRate(rate, buffer int64) {
	if buffer <= 0 {
		buffer = defaultBuffer
	}
	d.buffer.Store(buffer)
	d.rate.Store(rate)
}

func (d *delayLink) read(ctx context.Context, dir *direction) {
	var cur *packet
	select {
	case cur = <-dir.free:
	case <-ctx.Done():
		return
	}
	for ctx.Err() == nil {
		n, err := dir.from.Read(cur.buf)
		if err != nil {
			if errors.Is(err, os.ErrClosed) || ctx.Err() != nil {
				return
			}
			// A device going away or a packet too large; not expected,
			// counted, and never a busy loop.
			dir.readErrs.Add(1)
			select {
			case <-time.After(10 * time.Millisecond):
			case <-ctx.Done():
				return
			}
			continue
		}
		now := time.Now()
		due := now
		if rate := d.rate.Load(); rate > 0 {
			bufferTime := time.Duration(d.buffer.Load() * int64(time.Second) / rate)
			start := now
			if dir.linkFree.After(start) {
				start = dir.linkFree
			}
			if start.Sub(now) > bufferTime {
				dir.queueDrops.Add(1) // the router's queue is full
				continue
			}
			if w := int64(start.Sub(now)); w > dir.maxWait.Load() {
				dir.maxWait.Store(w) // the reader alone stores it
			}
			dir.linkFree = start.Add(time.Duration(int64(n) * int64(time.Second) / rate))
			due = dir.linkFree
		}
		cur.n, cur.due = n, due.Add(time.Duration(d.delayNs.Load()))
		select {
		case dir.queue <- cur:
			// The queue holds at most limit packets and the writer one:
			// a free buffer is there.
			select {
			case cur = <-dir.free:
			case <-ctx.Done():
				return
			}
		default:
			dir.overflow.Add(1)
		}
	}
}

func (d *delayLink) write(ctx context.Context, dir *direction) {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		var p *packet
		select {
		case p = <-dir.queue:
		case <-ctx.Done():
			return
		}
		if wait := time.Until(p.due); wait > 0 {
			timer.Reset(wait)
			select {
			case <-timer.C:
			case <-ctx.Done():
				return
			}
		}
		if _, err := dir.to.Write(p.buf[:p.n]); err != nil {
			if errors.Is(err, os.ErrClosed) || ctx.Err() != nil {
				return
			}
			// The far end is down (EIO): the packet is lost, as on a
			// cable whose other end is unplugged.
			dir.writeErrs.Add(1)
		} else {
			dir.sent.Add(1)
		}
		dir.free <- p
	}
}

// stats summarises what each direction carried and dropped.
func (d *delayLink) stats() string {
	var parts []string
	for _, dir := range d.dirs {
		if dir == nil {
			continue
		}
		parts = append(parts, fmt.Sprintf("%s: %d packets sent, %d dropped (link busy), %d dropped (line full), %d not delivered (far end down), %d read errors",
			dir.name, dir.sent.Load(), dir.queueDrops.Load(), dir.overflow.Load(), dir.writeErrs.Load(), dir.readErrs.Load()))
	}
	return strings.Join(parts, "; ")
}

// awaitQuiet waits, up to limit, until the link carries fewer than
// quiet packets (both ways) in 200 ms: the traffic of a transfer that
// ended has drained, and only the sessions' heartbeats are left. It
// reports whether the link went quiet.
func (d *delayLink) awaitQuiet(limit time.Duration, quiet int64) bool {
	total := func() int64 { return d.dirs[0].sent.Load() + d.dirs[1].sent.Load() }
	deadline := time.Now().Add(limit)
	last := total()
	for time.Now().Before(deadline) {
		time.Sleep(200 * time.Millisecond)
		now := total()
		if now-last < quiet {
			return true
		}
		last = now
	}
	return false
}

// maxQueueDelay is the longest a packet has waited in the queue of the
// rate-limited link going home → internet (i == 0) or internet → home
// (i == 1).
func (d *delayLink) maxQueueDelay(i int) time.Duration {
	return time.Duration(d.dirs[i].maxWait.Load())
}

// stop stops the copiers, closes both ends (which removes the TUN
// devices) and waits up to d for the goroutines to end. It may be called
// more than once.
func (d *delayLink) stop(wait time.Duration) error {
	d.closed.Do(func() {
		d.cancel()
		var errs []error
		for _, f := range d.ends {
			if f != nil {
				errs = append(errs, f.Close())
			}
		}
		done := make(chan struct{})
		go func() { d.wg.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(wait):
			errs = append(errs, fmt.Errorf("delay link: copiers still running %v after stop", wait))
		}
		d.stopErr = errors.Join(errs...)
	})
	return d.stopErr
}

// setCarrier turns the home end's carrier on or off, as a veth's does
// when its peer goes down or up.
func (d *delayLink) setCarrier(on bool) error {
	v := 0
	if on {
		v = 1
	}
	rc, err := d.ends[0].SyscallConn()
	if err != nil {
		return fmt.Errorf("TUNSETCARRIER: %w", err)
	}
	var ioErr error
	if err := rc.Control(func(fd uintptr) { ioErr = unix.IoctlSetPointerInt(int(fd), unix.TUNSETCARRIER, v) }); err != nil {
		return fmt.Errorf("TUNSETCARRIER: %w", err)
	}
	if ioErr != nil {
		return fmt.Errorf("TUNSETCARRIER %d: %w", v, ioErr)
	}
	return nil
}

// openTUN creates the TUN device ifName in the network namespace ns (a
// name of ip netns) and returns it open, non-blocking (so that closing it
// ends a pending read). The device lives as long as the file.
func openTUN(ctx context.Context, ns, ifName string) (*os.File, error) {
	type result struct {
		f   *os.File
		err error
	}
	done := make(chan result, 1)
	var inThread func()
	inThread = func() {
		// This goroutine's thread joins the lab's namespace for the
		// open and is never unlocked: it ends with the goroutine, so
		// no other goroutine ever runs in that namespace.
		runtime.LockOSThread()
		if unix.Gettid() == unix.Getpid() {
			// The main thread, though, is never ended but parked, and
			// it is the one whose namespace ip netns pids reads: the
			// lab's teardown would take the tests for a process of
			// the lab. Keep it locked (so that it runs nothing else)
			// while another thread does the work, then give it back,
			// never having left this namespace.
			inner := make(chan struct{})
			go func() { defer close(inner); inThread() }()
			<-inner
			runtime.UnlockOSThread()
			return
		}
		f, err := openTUNHere(ns, ifName)
		done <- result{f, err}
	}
	go inThread()
	select {
	case r := <-done:
		return r.f, r.err
	case <-ctx.Done():
		go func() {
			if r := <-done; r.f != nil {
				r.f.Close()
			}
		}()
		return nil, fmt.Errorf("open TUN %s in %s: %w", ifName, ns, ctx.Err())
	}
}

// openTUNHere moves the calling thread, which must be locked and never
// unlocked, into namespace ns and creates the TUN device there.
func openTUNHere(ns, ifName string) (*os.File, error) {
	nsFD, err := unix.Open(filepath.Join("/var/run/netns", ns), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open namespace %s: %w", ns, err)
	}
	defer unix.Close(nsFD)
	if err := unix.Setns(nsFD, unix.CLONE_NEWNET); err != nil {
		return nil, fmt.Errorf("setns %s: %w", ns, err)
	}
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("open /dev/net/tun: %w", err)
	}
	ifr, err := unix.NewIfreq(ifName)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("TUN %s: %w", ifName, err)
	}
	ifr.SetUint16(unix.IFF_TUN | unix.IFF_NO_PI)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("TUNSETIFF %s in %s: %w", ifName, ns, err)
	}
	return os.NewFile(uintptr(fd), "tun "+ns+"/"+ifName), nil
}

// buildDelayLink makes the cable between a's aIf and b's bIf a delay
// link with point-to-point addresses (aAddr and bAddr, whose prefix
// lengths are dropped). The lab's teardown stops it.
func (l *lab) buildDelayLink(a, aIf, aAddr, b, bIf, bAddr string) {
	l.t.Helper()
	ctx, cancel := context.WithTimeout(l.ctx, 10*time.Second)
	defer cancel()
	fa, err := openTUN(ctx, l.ns(a), aIf)
	if err != nil {
		l.t.Fatal(err)
	}
	fb, err := openTUN(ctx, l.ns(b), bIf)
	if err != nil {
		fa.Close()
		l.t.Fatal(err)
	}
	l.delay = startDelayLink(l.ctx, *l.delayCfg, fa, fb)
	host := func(addr string) string { h, _, _ := strings.Cut(addr, "/"); return h }
	for _, end := range []struct{ role, dev, local, peer string }{
		{a, aIf, host(aAddr), host(bAddr)},
		{b, bIf, host(bAddr), host(aAddr)},
	} {
		l.must(5*time.Second, "", "ip", "-n", l.ns(end.role), "addr", "add", end.local, "peer", end.peer, "dev", end.dev)
		l.must(5*time.Second, "", "ip", "-n", l.ns(end.role), "link", "set", "dev", end.dev, "mtu", strconv.Itoa(tunMTU), "up")
	}
}

// pingRTT pings to from role count times and returns the round-trip
// times ping reports (min, avg, max) and how many answers came back.
func (l *lab) pingRTT(role, to string, count int) (rtt [3]time.Duration, received int, err error) {
	out, err := l.run(time.Duration(count)*time.Second+10*time.Second, role,
		"ping", "-n", "-q", "-c", strconv.Itoa(count), "-i", "0.2", "-W", "2", to)
	if m := pingRecvRE.FindStringSubmatch(out); m != nil {
		received, _ = strconv.Atoi(m[1])
	}
	m := pingRTTRE.FindStringSubmatch(out)
	if m == nil {
		if err == nil {
			err = fmt.Errorf("ping wrote %q", out)
		}
		return rtt, received, fmt.Errorf("ping %s → %s: %w", role, to, err)
	}
	for i := range rtt {
		f, _ := strconv.ParseFloat(m[i+1], 64)
		rtt[i] = time.Duration(f * float64(time.Millisecond))
	}
	return rtt, received, nil
}

var (
	pingRTTRE  = regexp.MustCompile(`= ([\d.]+)/([\d.]+)/([\d.]+)/[\d.]+ ms`)
	pingRecvRE = regexp.MustCompile(`(\d+) (?:packets )?received`)
)

func fmtRTT(rtt [3]time.Duration) string {
	f := func(d time.Duration) string {
		return strconv.FormatFloat(float64(d)/float64(time.Millisecond), 'f', 2, 64)
	}
	return fmt.Sprintf("min/avg/max %s/%s/%s ms", f(rtt[0]), f(rtt[1]), f(rtt[2]))
}

// TestDelayLink checks the delay link itself: "line" its copier alone,
// between socket pairs (order, delay, drops when full, the rate limit,
// stop); "lab" the lab built with it: the round trip over the uplink, the
// copier's own throughput, and every impairment of the uplink still
// acting through it (loss, blackhole, link down and up, NAT flush and
// rebinding), with nothing left behind.
func TestDelayLink(t *testing.T) {
	t.Run("line", delayLineRun)
	t.Run("lab", delayLabRun)
}

// packetPair returns the two ends of a packet socket pair: one plays a
// TUN device for the link, the other the kernel behind it.
func packetPair(t *testing.T) (test, link *os.File) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	test, link = os.NewFile(uintptr(fds[0]), "test end"), os.NewFile(uintptr(fds[1]), "link end")
	t.Cleanup(func() { test.Close() })
	return test, link
}

// lineSend writes n packets of size bytes to f, each starting with its
// number, and returns when each was written.
func lineSend(f *os.File, n, size int) ([]time.Time, error) {
	sent := make([]time.Time, n)
	buf := make([]byte, size)
	for i := range n {
		binary.BigEndian.PutUint32(buf, uint32(i))
		sent[i] = time.Now()
		if _, err := f.Write(buf); err != nil {
			return sent, fmt.Errorf("send packet %d: %w", i, err)
		}
	}
	return sent, nil
}

// lineRecv reads packets from f until none has come for quiet, and
// returns their numbers and arrival times.
func lineRecv(f *os.File, max int, quiet time.Duration) ([]int, []time.Time, error) {
	var seqs []int
	var at []time.Time
	buf := make([]byte, packetBufSize)
	for len(seqs) < max {
		if err := f.SetReadDeadline(time.Now().Add(quiet)); err != nil {
			return seqs, at, err
		}
		n, err := f.Read(buf)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			break
		}
		if err != nil {
			return seqs, at, err
		}
		if n < 4 {
			return seqs, at, fmt.Errorf("a packet of %d bytes", n)
		}
		seqs = append(seqs, int(binary.BigEndian.Uint32(buf)))
		at = append(at, time.Now())
	}
	return seqs, at, nil
}

func delayLineRun(t *testing.T) {
	leak.Check(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	type result struct {
		seqs []int
		at   []time.Time
		err  error
	}
	// run sends n packets of size bytes each way through a link with
	// cfg, and returns what arrived at the far ends, and the link's
	// counters.
	run := func(cfg linkConfig, n, size int) (sent [2][]time.Time, got [2]result, d *delayLink) {
		homeT, homeL := packetPair(t)
		inetT, inetL := packetPair(t)
		d = startDelayLink(ctx, cfg, homeL, inetL)
		defer func() {
			if err := d.stop(5 * time.Second); err != nil {
				t.Error(err)
			}
		}()
		var wg sync.WaitGroup
		for i, far := range []*os.File{inetT, homeT} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				got[i].seqs, got[i].at, got[i].err = lineRecv(far, n, cfg.delay+time.Second)
			}()
		}
		for i, near := range []*os.File{homeT, inetT} {
			var err error
			if sent[i], err = lineSend(near, n, size); err != nil {
				t.Fatal(err)
			}
		}
		wg.Wait()
		for i := range got {
			if got[i].err != nil {
				t.Fatalf("%s: %v", d.dirs[i].name, got[i].err)
			}
		}
		return sent, got, d
	}

	t.Run("order-and-delay", func(t *testing.T) {
		const n, delay = 500, 30 * time.Millisecond
		sent, got, d := run(linkConfig{delay: delay}, n, 1400)
		for i, g := range got {
			if len(g.seqs) != n {
				t.Errorf("%s: %d of %d packets arrived (%s)", d.dirs[i].name, len(g.seqs), n, d.stats())
			}
			least, most := time.Hour, time.Duration(0)
			for j, s := range g.seqs {
				if s != j {
					t.Fatalf("%s: packet %d arrived as the %dth", d.dirs[i].name, s, j)
				}
				held := g.at[j].Sub(sent[i][s])
				least, most = min(least, held), max(most, held)
			}
			t.Logf("%s: %d packets in order, each held %v to %v", d.dirs[i].name, len(g.seqs), least.Round(10*time.Microsecond), most.Round(10*time.Microsecond))
			if least < delay {
				t.Errorf("%s: a packet was held only %v, want at least %v", d.dirs[i].name, least, delay)
			}
		}
	})
	t.Run("full", func(t *testing.T) {
		const n, limit = 200, 16
		_, got, d := run(linkConfig{delay: 300 * time.Millisecond, limit: limit}, n, 100)
		for i, g := range got {
			dir := d.dirs[i]
			t.Logf("%s: %d of %d packets arrived; %d dropped as the line was full", dir.name, len(g.seqs), n, dir.overflow.Load())
			if len(g.seqs) > limit+2 || int64(len(g.seqs))+dir.overflow.Load() != n {
				t.Errorf("%s: %d arrived and %d dropped of %d, want at most %d to arrive and the rest dropped", dir.name, len(g.seqs), dir.overflow.Load(), n, limit+2)
			}
		}
	})
	t.Run("rate", func(t *testing.T) {
		const n, size, rate = 50, 1000, 100_000 // 0.5 s at the rate
		sent, got, d := run(linkConfig{rate: rate, buffer: n * size}, n, size)
		for i, g := range got {
			if len(g.seqs) != n {
				t.Fatalf("%s: %d of %d packets arrived (%s)", d.dirs[i].name, len(g.seqs), n, d.stats())
			}
			took := g.at[n-1].Sub(sent[i][0])
			t.Logf("%s: %d bytes at %d bytes/s took %v", d.dirs[i].name, n*size, rate, took.Round(time.Millisecond))
			if want := time.Duration(n * size * int(time.Second) / rate); took < want*9/10 {
				t.Errorf("%s: took %v, want about %v", d.dirs[i].name, took, want)
			}
		}
		_, got, d = run(linkConfig{rate: rate, buffer: 10 * size}, n, size)
		for i, g := range got {
			dir := d.dirs[i]
			t.Logf("%s: with a buffer of %d bytes, %d of %d packets sent at once arrived, %d dropped as the link was busy", dir.name, 10*size, len(g.seqs), n, dir.queueDrops.Load())
			if len(g.seqs) > 12 || int64(len(g.seqs))+dir.queueDrops.Load() != n {
				t.Errorf("%s: %d arrived and %d dropped, want about 11 to arrive and the rest dropped", dir.name, len(g.seqs), dir.queueDrops.Load())
			}
		}
	})
}

func delayLabRun(t *testing.T) {
	const oneWay = 25 * time.Millisecond
	need(t, "ping", "conntrack")
	leak.Check(t) // after the lab's cleanup: the copiers and the TUN files are gone
	own, err := os.Readlink("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	l := newLab(t, withDelayLink(linkConfig{delay: oneWay}))
	// The threads that opened the TUN devices in the lab's namespaces
	// left the process's own (its main thread's) alone.
	if now, err := os.Readlink("/proc/self/ns/net"); err != nil || now != own {
		t.Fatalf("the tests' namespace is now %s (%v), was %s", now, err, own)
	}

	// Only the lab's two namespaces have the uplink's devices.
	for _, r := range roles {
		out := l.must(5*time.Second, "", "ip", "-n", l.ns(r), "-o", "link", "show")
		for _, dev := range []string{"wan0", "home0"} {
			has := strings.Contains(out, " "+dev+":")
			if want := r == "homer" && dev == "wan0" || r == "inet" && dev == "home0"; has != want {
				t.Errorf("namespace %s has %s: %v, want %v", r, dev, has, want)
			}
		}
	}
	ownAddrs := l.must(5*time.Second, "", "ip", "-o", "-4", "addr", "show")
	for _, ip := range []string{homerWAN, inetHome} {
		if strings.Contains(ownAddrs, " "+ip+"/") || strings.Contains(ownAddrs, " "+ip+" ") {
			t.Errorf("the tests' own namespace has the lab's address %s", ip)
		}
	}

	// The round trip: across the uplink alone, and from the home PC to
	// the VPS (through the NAT).
	for _, p := range [][2]string{{"homer", inetHome}, {"home", vpsIP}} {
		rtt, _, err := l.pingRTT(p[0], p[1], 10)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("ping %s → %s over the delay link (%v each way): %s", p[0], p[1], oneWay, fmtRTT(rtt))
		if rtt[0] < 2*oneWay {
			t.Errorf("ping %s → %s: round trip %v, want at least %v", p[0], p[1], rtt[0], 2*oneWay)
		}
	}

	// The copier's own ceiling, next to the delayed transfer.
	upDir := l.startNginx("vps", fmt.Sprintf("%s:%d", vpsIP, directPort))
	l.uplinkDelay(0)
	x, err := l.directUpload(upDir, 2*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("50 MiB home → VPS over the delay link without delay: %v", x)
	rtt, _, err := l.pingRTT("homer", inetHome, 5)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("ping homer → inet without delay: %s", fmtRTT(rtt))
	l.uplinkDelay(oneWay)
	x, err = l.directUpload(upDir, 2*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("50 MiB home → VPS with %v each way: %v", oneWay, x)

	// Through the tunnel: a request waits at least one round trip of
	// the uplink, the stream's opening to the agent and its answer.
	_, a := l.up("quic")
	ttfb, err := l.firstByte()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("a request through the tunnel over quic: first byte after %v", ms(ttfb))
	if ttfb < 2*oneWay {
		t.Errorf("a request through the tunnel took %v, want at least the uplink's round trip %v", ttfb, 2*oneWay)
	}

	// Loss: in inet's chain, as over the veth pair.
	l.uplinkLoss(0.2)
	_, received, _ := l.pingRTT("home", vpsIP, 20)
	dropped := l.uplinkDropped()
	t.Logf("20%% loss: %d of 20 pings answered; the uplink dropped %d packets", received, dropped)
	if dropped == 0 || received == 20 {
		t.Error("the loss impairment did not act on the delay link")
	}
	l.uplinkLoss(0)

	// Outages: nothing gets through, then everything does again.
	for _, kind := range []string{"blackhole", "down"} {
		fail := func(on bool) {
			if kind == "down" {
				l.uplinkLink(!on)
			} else {
				l.uplinkBlackhole(on)
			}
		}
		fail(true)
		if kind == "down" {
			if out := l.must(5*time.Second, "", "ip", "-n", l.ns("homer"), "link", "show", "wan0"); !strings.Contains(out, "NO-CARRIER") {
				t.Errorf("the uplink is down, but the home router's wan0 has its carrier: %s", out)
			}
		}
		if _, received, _ := l.pingRTT("home", vpsIP, 3); received != 0 {
			t.Errorf("uplink %s: %d pings answered", kind, received)
		}
		if l.probe(2 * time.Second) {
			t.Errorf("uplink %s: a connection through the tunnel worked", kind)
		}
		fail(false)
		up := time.Now()
		rec, ok := l.awaitTunnel(up, 30*time.Second)
		t.Logf("uplink %s and back: tunnel works %v after the uplink's return", kind, ms(rec))
		if !ok {
			t.Errorf("uplink %s: the tunnel did not work again within %v", kind, rec.Round(time.Second))
		}
		if _, received, _ := l.pingRTT("home", vpsIP, 3); received == 0 {
			t.Errorf("uplink %s and back: no ping answered", kind)
		}
	}

	// The NAT: a rebinding moves the agent's QUIC mapping, and the
	// session carries on.
	sessions := a.count(`msg="connected to relay"`)
	lo, hi := l.natRebind()
	if !l.probe(10 * time.Second) {
		t.Error("after a NAT rebinding the tunnel does not work")
	}
	mapped := l.natMappings("udp")
	t.Logf("NAT rebinding to %d-%d: the agent's mappings %v; %d new sessions", lo, hi, mapped, a.count(`msg="connected to relay"`)-sessions)
	moved := false
	for _, p := range mapped {
		moved = moved || p >= lo && p <= hi
	}
	if !moved {
		t.Errorf("after the rebinding no mapping uses the new ports %d-%d: %v", lo, hi, mapped)
	}
	l.natFlush()
	if !l.probe(10 * time.Second) {
		t.Error("after a NAT flush the tunnel does not work")
	}
}

// firstByte makes one request through the web tunnel from the remote
// user and returns the time to its first byte.
func (l *lab) firstByte() (time.Duration, error) {
	out, err := l.run(15*time.Second, "user", "curl", "-sS", "--max-time", "10", "-o", "/dev/null",
		"-w", "%{http_code} %{time_starttransfer}", tunnelURL("small.txt"))
	if err != nil {
		return 0, fmt.Errorf("request through the tunnel: %w", err)
	}
	f := strings.Fields(out)
	if len(f) != 2 || f[0] != "200" {
		return 0, fmt.Errorf("request through the tunnel: curl wrote %q", out)
	}
	secs, err := strconv.ParseFloat(f[1], 64)
	if err != nil {
		return 0, fmt.Errorf("request through the tunnel: %w", err)
	}
	return time.Duration(secs * float64(time.Second)), nil
}

// checkRTT pings the VPS from the home PC (across the NAT and the home
// uplink) and fails the test unless every round trip took at least want.
// It returns what ping measured; without ping it checks nothing.
func (l *lab) checkRTT(want time.Duration) [3]time.Duration {
	l.t.Helper()
	if _, err := exec.LookPath("ping"); err != nil {
		l.t.Logf("no ping command (Debian package iputils-ping): the round trip is not checked")
		return [3]time.Duration{}
	}
	rtt, _, err := l.pingRTT("home", vpsIP, 10)
	if err != nil {
		l.t.Fatal(err)
	}
	l.t.Logf("ping home → VPS: %s", fmtRTT(rtt))
	if rtt[0] < want {
		l.t.Errorf("ping home → VPS: round trip %v, want at least %v", rtt[0], want)
	}
	return rtt
}
