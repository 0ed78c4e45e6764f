// Command flood is the test bed's attacker: run inside the lab's attacker
// namespace (ip netns exec), it floods the relay's agent port from many
// source addresses, and prints what it sees as one JSON object a line.
//
// Modes:
//
//   - silent: -conns TCP connections that send nothing. Each slot dials
//     again, after -pause, whenever the relay closes its connection.
//   - garbage: the same, but every connection first sends a few bytes and
//     then stalls: even slots random bytes, odd slots the start of a TLS
//     record announcing a ClientHello that never comes.
//   - udp: 1200-byte datagrams at -rate a second, every other one shaped
//     like a QUIC Initial (version 1, a new random destination connection
//     ID each, random payload), the others random; replies are counted
//     by kind (a Retry shows the relay demanding address validation).
//
// It stops after -duration, or at SIGTERM or SIGINT, closes everything and
// prints its final figures with "final": true.
//
//	flood -mode silent -target 203.0.113.10:7000 -from 198.18.0.10 -sources 128 -conns 2000 -duration 60s
package main

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

type options struct {
	mode     string
	target   string
	from     netip.Addr
	sources  int
	conns    int
	pause    time.Duration
	rate     int
	duration time.Duration
	every    time.Duration
}

func main() {
	opts, err := parseFlags(os.Args[1:])
	if err != nil {
		fmt.Fprintln(os.Stderr, "flood:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	ctx, cancel := context.WithTimeout(ctx, opts.duration)
	err = run(ctx, opts, os.Stdout)
	cancel()
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "flood:", err)
		os.Exit(1)
	}
}

func parseFlags(args []string) (options, error) {
	fs := flag.NewFlagSet("flood", flag.ContinueOnError)
	var o options
	var from string
	fs.StringVar(&o.mode, "mode", "silent", "silent, garbage or udp")
	fs.StringVar(&o.target, "target", "", "the relay's agent port, HOST:PORT")
	fs.StringVar(&from, "from", "", "the first source address (IPv4)")
	fs.IntVar(&o.sources, "sources", 1, "how many consecutive source addresses, from -from on")
	fs.IntVar(&o.conns, "conns", 2000, "TCP connections to hold (silent, garbage)")
	fs.DurationVar(&o.pause, "pause", time.Second, "how long a slot waits before dialing again after its connection ended (jittered ±50%)")
	fs.IntVar(&o.rate, "rate", 5000, "datagrams a second (udp)")
	fs.DurationVar(&o.duration, "duration", time.Minute, "how long to flood, at most 10m")
	fs.DurationVar(&o.every, "report", 500*time.Millisecond, "interval between figures on standard output")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	a, err := netip.ParseAddr(from)
	switch {
	case err != nil || !a.Is4():
		return o, fmt.Errorf("-from %q: want an IPv4 address", from)
	case o.mode != "silent" && o.mode != "garbage" && o.mode != "udp":
		return o, fmt.Errorf("-mode %q: want silent, garbage or udp", o.mode)
	case o.sources < 1 || o.sources > 1<<12:
		return o, fmt.Errorf("-sources %d: want 1 to 4096", o.sources)
	case o.conns < 1 || o.conns > 1<<16:
		return o, fmt.Errorf("-conns %d: want 1 to 65536", o.conns)
	case o.rate < 1 || o.rate > 1e6:
		return o, fmt.Errorf("-rate %d: want 1 to 1000000", o.rate)
	case o.duration <= 0 || o.duration > 10*time.Minute:
		return o, fmt.Errorf("-duration %v: want up to 10m", o.duration)
	case o.pause < 0 || o.pause > time.Minute:
		return o, fmt.Errorf("-pause %v: want up to 1m", o.pause)
	case o.every < 10*time.Millisecond:
		return o, fmt.Errorf("-report %v: want at least 10ms", o.every)
	}
	if _, _, err := net.SplitHostPort(o.target); err != nil {
		return o, fmt.Errorf("-target %q: %w", o.target, err)
	}
	o.from = a
	return o, nil
}

// stats are the flood's figures, printed as JSON.
type stats struct {
	Mode    string  `json:"mode"`
	Elapsed float64 `json:"elapsed_s"`
	Final   bool    `json:"final,omitempty"`

	// TCP.
	Open       int64 `json:"open"`        // connections open now
	MaxOpen    int64 `json:"max_open"`    // most open at once
	Dials      int64 `json:"dials"`       // connections made
	DialErrors int64 `json:"dial_errors"` // connects that failed
	ClosedFast int64 `json:"closed_fast"` // closed by the relay within 1 s
	ClosedSlow int64 `json:"closed_slow"` // closed by the relay after 5 s or more
	ClosedMid  int64 `json:"closed_mid"`  // in between

	// UDP.
	Sent          int64 `json:"sent"`
	SendErrors    int64 `json:"send_errors"`
	Replies       int64 `json:"replies"`
	RepliesRetry  int64 `json:"replies_retry"`   // QUIC Retry packets
	RepliesInit   int64 `json:"replies_initial"` // QUIC Initial packets (a refusal)
	RepliesVN     int64 `json:"replies_version"` // version negotiation
	RepliesShort  int64 `json:"replies_short"`   // short header: stateless resets
	RepliesOthers int64 `json:"replies_other"`
}

type counters struct {
	open, maxOpen, dials, dialErrs, fast, slow, mid            atomic.Int64
	sent, sendErrs, replies, retry, initial, vn, short, others atomic.Int64
}

func (c *counters) snapshot(mode string, elapsed time.Duration) stats {
	return stats{
		Mode: mode, Elapsed: elapsed.Seconds(),
		Open: c.open.Load(), MaxOpen: c.maxOpen.Load(), Dials: c.dials.Load(), DialErrors: c.dialErrs.Load(),
		ClosedFast: c.fast.Load(), ClosedSlow: c.slow.Load(), ClosedMid: c.mid.Load(),
		Sent: c.sent.Load(), SendErrors: c.sendErrs.Load(), Replies: c.replies.Load(),
		RepliesRetry: c.retry.Load(), RepliesInit: c.initial.Load(), RepliesVN: c.vn.Load(),
		RepliesShort: c.short.Load(), RepliesOthers: c.others.Load(),
	}
}

func run(ctx context.Context, o options, out io.Writer) error {
	if o.mode != "udp" {
		// Each connection is a descriptor; Go raises the soft limit to
		// the hard one at start; this checks that it is enough.
		if err := raiseNoFile(uint64(o.conns) + 64); err != nil {
			return err
		}
	}
	sources := make([]netip.Addr, o.sources)
	a := o.from
	for i := range sources {
		sources[i] = a
		a = a.Next()
	}
	var c counters
	start := time.Now()
	enc := json.NewEncoder(out)
	var wg sync.WaitGroup
	var err error
	if o.mode == "udp" {
		err = floodUDP(ctx, &wg, &c, o, sources)
	} else {
		floodTCP(ctx, &wg, &c, o, sources)
	}
	t := time.NewTicker(o.every)
	for err == nil && ctx.Err() == nil {
		select {
		case <-ctx.Done():
		case <-t.C:
			_ = enc.Encode(c.snapshot(o.mode, time.Since(start)))
		}
	}
	t.Stop()
	wg.Wait()
	s := c.snapshot(o.mode, time.Since(start))
	s.Final = true
	_ = enc.Encode(s)
	return err
}

// floodTCP starts one goroutine per connection slot; they end with ctx.
func floodTCP(ctx context.Context, wg *sync.WaitGroup, c *counters, o options, sources []netip.Addr) {
	for i := range o.conns {
		d := net.Dialer{
			LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(sources[i%len(sources)], 0)),
			Timeout:   3 * time.Second,
			KeepAlive: -1, // silent means silent
		}
		var payload []byte
		if o.mode == "garbage" {
			payload = garbage(i)
		}
		// Slots start spread over the first 100 ms, as a script would.
		delay := time.Duration(i) * 100 * time.Millisecond / time.Duration(o.conns)
		wg.Go(func() {
			if !sleep(ctx, delay) {
				return
			}
			for ctx.Err() == nil {
				held, ok := holdOne(ctx, &d, o.target, payload, c)
				if ok && ctx.Err() == nil {
					switch {
					case held < time.Second:
						c.fast.Add(1)
					case held >= 5*time.Second:
						c.slow.Add(1)
					default:
						c.mid.Add(1)
					}
				}
				if !sleep(ctx, o.pause/2+time.Duration(mrand.Int64N(int64(o.pause)+1))) {
					return
				}
			}
		})
	}
}

// garbage is what slot i sends before it stalls.
func garbage(i int) []byte {
	if i%2 == 1 {
		// A TLS handshake record of 512 bytes, of which only the
		// ClientHello's type and the first length byte come.
		return []byte{0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00}
	}
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return b
}

// holdOne makes one connection and keeps it until the relay closes it or
// ctx ends; ok is false when the connect failed.
func holdOne(ctx context.Context, d *net.Dialer, target string, payload []byte, c *counters) (held time.Duration, ok bool) {
	conn, err := d.DialContext(ctx, "tcp4", target)
	if err != nil {
		if ctx.Err() == nil {
			c.dialErrs.Add(1)
		}
		return 0, false
	}
	c.dials.Add(1)
	n := c.open.Add(1)
	for {
		m := c.maxOpen.Load()
		if n <= m || c.maxOpen.CompareAndSwap(m, n) {
			break
		}
	}
	defer c.open.Add(-1)
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	defer conn.Close()
	start := time.Now()
	if len(payload) > 0 {
		_, _ = conn.Write(payload)
	}
	_, _ = io.Copy(io.Discard, conn)
	return time.Since(start), true
}

// floodUDP opens one socket per source address, sends from them in turn at
// o.rate and counts the replies.
func floodUDP(ctx context.Context, wg *sync.WaitGroup, c *counters, o options, sources []netip.Addr) error {
	raddr, err := net.ResolveUDPAddr("udp4", o.target)
	if err != nil {
		return err
	}
	socks := make([]*net.UDPConn, 0, len(sources))
	for _, s := range sources {
		u, err := net.DialUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(s, 0)), raddr)
		if err != nil {
			for _, u := range socks {
				u.Close()
			}
			return fmt.Errorf("udp socket from %v: %w", s, err)
		}
		socks = append(socks, u)
	}
	for _, u := range socks {
		wg.Go(func() { countReplies(u, c) })
	}
	wg.Go(func() {
		defer func() {
			for _, u := range socks {
				u.Close()
			}
		}()
		const tick = 5 * time.Millisecond
		t := time.NewTicker(tick)
		defer t.Stop()
		start := time.Now()
		buf := make([]byte, 1200)
		var n int64
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			// Catch up to the rate, in at most a second's worth at once.
			due := int64(time.Since(start).Seconds() * float64(o.rate))
			for k := 0; n < due && k < o.rate; k++ {
				junkDatagram(buf, n%2 == 0)
				if _, err := socks[n%int64(len(socks))].Write(buf); err != nil {
					c.sendErrs.Add(1)
				} else {
					c.sent.Add(1)
				}
				n++
			}
		}
	})
	return nil
}

// junkDatagram fills b with random bytes, shaped as a QUIC version 1
// Initial packet when initial is true: long header, 8-byte connection IDs,
// no token, and a length that covers the rest.
func junkDatagram(b []byte, initial bool) {
	_, _ = rand.Read(b)
	if !initial {
		b[0] &^= 0x80 // a short header: no connection the relay knows
		return
	}
	b[0] = 0xc3 // long header, fixed bit, Initial, 4-byte packet number
	binary.BigEndian.PutUint32(b[1:], 1)
	b[5] = 8 // destination connection ID: b[6:14]
	b[14] = 8
	// source connection ID: b[15:23]
	b[23] = 0 // no token
	binary.BigEndian.PutUint16(b[24:], 0x4000|uint16(len(b)-26))
}

// countReplies reads what comes back on u until it is closed.
func countReplies(u *net.UDPConn, c *counters) {
	buf := make([]byte, 2048)
	for {
		n, err := u.Read(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// An ICMP error reported on the connected socket: go on,
			// without spinning should it repeat.
			time.Sleep(time.Millisecond)
			continue
		}
		if n == 0 {
			continue
		}
		c.replies.Add(1)
		switch {
		case buf[0]&0x80 == 0:
			c.short.Add(1)
		case n >= 5 && binary.BigEndian.Uint32(buf[1:]) == 0:
			c.vn.Add(1)
		case buf[0]&0x30 == 0x30:
			c.retry.Add(1)
		case buf[0]&0x30 == 0x00:
			c.initial.Add(1)
		default:
			c.others.Add(1)
		}
	}
}

// sleep waits d or until ctx ends; it reports whether ctx is still live.
func sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
