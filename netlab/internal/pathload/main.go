// Command pathload moves bulk data and 64-byte pings over one TCP
// connection for the test bed's path measures, checking every byte.
//
// Modes:
//
//   - serve: listens on -listen and serves each connection as its first
//     line asks: "down SIZE SEED" sends SIZE bytes of the stream SEED
//     names; "up SIZE SEED" reads that stream, checks it, and writes a
//     progress line "P BYTES" every 100 ms and "D BYTES" at its end (or
//     "E OFFSET" where a byte differs); "echo 0 0" sends back what it
//     reads. It prints "listening" once it listens.
//
//   - down, up: a bulk transfer to or from -addr of at most -size bytes
//     and at most -for long; the receiver checks every byte. It prints
//     one JSON object: the bytes the receiver got in that time, the
//     seconds from the start of the connection, and whether the whole
//     size arrived. An upload's figures are the server's progress, so
//     both directions count what the receiver got, not what the sender
//     handed to its buffers.
//
//   - ping: 64-byte messages (-msg) to an echo server at -addr, one
//     after another with -interval between them, for -for after -wait;
//     it prints one JSON object with the count and the round trips'
//     median, 99th percentile, minimum and maximum.
//
// For example:
//
//	pathload -mode serve -listen 127.0.0.1:9100
//	pathload -mode down -addr 203.0.113.10:9101 -size 67108864 -for 8s
//	pathload -mode ping -addr 203.0.113.10:9101 -for 6s -wait 1s
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

const chunk = 64 << 10

func main() {
	mode := flag.String("mode", "", "serve, down, up or ping")
	listen := flag.String("listen", "127.0.0.1:9100", "serve: the address to listen on")
	addr := flag.String("addr", "", "down, up, ping: the server's address")
	size := flag.Int64("size", 64<<20, "down, up: bytes at most")
	dur := flag.Duration("for", 8*time.Second, "down, up, ping: how long at most")
	seed := flag.Uint64("seed", 1, "down, up: the data stream's seed")
	wait := flag.Duration("wait", 0, "ping: time before the first ping")
	interval := flag.Duration("interval", 20*time.Millisecond, "ping: pause between a pong and the next ping")
	msg := flag.Int("msg", 64, "ping: message size in bytes")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	var (
		res any
		err error
	)
	switch *mode {
	case "serve":
		err = serve(ctx, *listen)
	case "down":
		res, err = down(*addr, *size, *seed, *dur)
	case "up":
		res, err = up(*addr, *size, *seed, *dur)
	case "ping":
		res, err = ping(*addr, *msg, *wait, *dur, *interval)
	default:
		err = fmt.Errorf("-mode %q: want serve, down, up or ping", *mode)
	}
	if res != nil {
		b, _ := json.Marshal(res)
		fmt.Println(string(b))
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "pathload:", err)
		os.Exit(1)
	}
}

// stream is the data of a transfer: ChaCha8 named by its seed, so that
// the receiver can make the same bytes to check against.
type stream struct {
	rng *rand.ChaCha8
}

func newStream(seed uint64) *stream {
	var key [32]byte
	binary.BigEndian.PutUint64(key[:], seed)
	copy(key[8:], "homeport pathload")
	return &stream{rng: rand.NewChaCha8(key)}
}

func (s *stream) fill(p []byte) { _, _ = s.rng.Read(p) }

// checker compares what arrives with the stream, in any pieces.
type checker struct {
	s    *stream
	want []byte
	n    int64 // bytes checked
}

func newChecker(seed uint64) *checker { return &checker{s: newStream(seed)} }

// check checks p, the next bytes; it returns the offset of the first
// byte that differs, or -1.
func (c *checker) check(p []byte) int64 {
	if cap(c.want) < len(p) {
		c.want = make([]byte, len(p))
	}
	w := c.want[:len(p)]
	c.s.fill(w)
	if !bytes.Equal(w, p) {
		for i := range p {
			if p[i] != w[i] {
				return c.n + int64(i)
			}
		}
	}
	c.n += int64(len(p))
	return -1
}

func serve(ctx context.Context, addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	go func() { <-ctx.Done(); ln.Close() }()
	fmt.Println("listening")
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			time.Sleep(50 * time.Millisecond) // e.g. out of descriptors: never spin
			continue
		}
		wg.Go(func() {
			defer c.Close()
			if err := handle(c.(*net.TCPConn)); err != nil {
				fmt.Fprintf(os.Stderr, "pathload: %s: %v\n", c.RemoteAddr(), err)
			}
		})
	}
}

// handle serves one connection as its first line asks.
func handle(c *net.TCPConn) error {
	_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
	br := bufio.NewReaderSize(c, chunk)
	line, err := br.ReadString('\n')
	if err != nil {
		return fmt.Errorf("request line: %w", err)
	}
	_ = c.SetReadDeadline(time.Time{})
	f := strings.Fields(line)
	if len(f) != 3 {
		return fmt.Errorf("request line %q: want OP SIZE SEED", line)
	}
	size, err1 := strconv.ParseInt(f[1], 10, 64)
	seed, err2 := strconv.ParseUint(f[2], 10, 64)
	if err := errors.Join(err1, err2); err != nil || size < 0 {
		return fmt.Errorf("request line %q: %v", line, err)
	}
	switch f[0] {
	case "down":
		s := newStream(seed)
		buf := make([]byte, chunk)
		for left := size; left > 0; {
			n := min(left, chunk)
			s.fill(buf[:n])
			if _, err := c.Write(buf[:n]); err != nil {
				return nil // the client stopped: its time was up
			}
			left -= n
		}
		_ = c.CloseWrite()
		_, _ = io.Copy(io.Discard, br)
		return nil
	case "up":
		return serveUp(c, br, seed)
	case "echo":
		_, err := io.Copy(c, br)
		return err
	}
	return fmt.Errorf("request line %q: unknown operation", line)
}

// serveUp checks an upload and reports its progress.
func serveUp(c *net.TCPConn, br *bufio.Reader, seed uint64) error {
	var got atomic.Int64
	done := make(chan string, 1)
	go func() {
		chk := newChecker(seed)
		buf := make([]byte, chunk)
		for {
			n, err := br.Read(buf)
			if n > 0 {
				if off := chk.check(buf[:n]); off >= 0 {
					done <- fmt.Sprintf("E %d\n", off)
					return
				}
				got.Store(chk.n)
			}
			if err == io.EOF {
				done <- fmt.Sprintf("D %d\n", chk.n)
				return
			}
			if err != nil {
				done <- ""
				return
			}
		}
	}()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case last := <-done:
			if last != "" {
				_, _ = io.WriteString(c, last)
			}
			return nil
		case <-tick.C:
			if _, err := fmt.Fprintf(c, "P %d\n", got.Load()); err != nil {
				return nil // the client stopped: its time was up
			}
		}
	}
}

// bulkResult is what a bulk transfer printed.
type bulkResult struct {
	Bytes    int64   `json:"bytes"`
	Secs     float64 `json:"secs"`
	Complete bool    `json:"complete"`
}

func dial(addr string, op string, size int64, seed uint64) (*net.TCPConn, error) {
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return nil, err
	}
	if _, err := fmt.Fprintf(c, "%s %d %d\n", op, size, seed); err != nil {
		c.Close()
		return nil, fmt.Errorf("%s: request: %w", addr, err)
	}
	return c.(*net.TCPConn), nil
}

func down(addr string, size int64, seed uint64, d time.Duration) (*bulkResult, error) {
	start := time.Now()
	c, err := dial(addr, "down", size, seed)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	_ = c.SetReadDeadline(start.Add(d))
	chk := newChecker(seed)
	buf := make([]byte, chunk)
	for chk.n < size {
		n, err := c.Read(buf)
		if n > 0 {
			if off := chk.check(buf[:n]); off >= 0 {
				return nil, fmt.Errorf("%s: byte %d differs from what was sent", addr, off)
			}
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("%s: after %d bytes: %w", addr, chk.n, err)
		}
	}
	res := &bulkResult{Bytes: chk.n, Secs: time.Since(start).Seconds(), Complete: chk.n == size}
	if chk.n == 0 {
		return res, fmt.Errorf("%s: no byte arrived in %v", addr, d)
	}
	return res, nil
}

func up(addr string, size int64, seed uint64, d time.Duration) (*bulkResult, error) {
	start := time.Now()
	c, err := dial(addr, "up", size, seed)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	end := start.Add(d)
	go func() {
		s := newStream(seed)
		buf := make([]byte, chunk)
		_ = c.SetWriteDeadline(end)
		for left := size; left > 0; {
			n := min(left, chunk)
			s.fill(buf[:n])
			if _, err := c.Write(buf[:n]); err != nil {
				return // time is up, or the connection failed (the reader says)
			}
			left -= n
		}
		_ = c.CloseWrite()
	}()
	// The server's progress: what it got, as we learn it.
	_ = c.SetReadDeadline(end)
	res := &bulkResult{}
	sc := bufio.NewScanner(c)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) != 2 {
			return nil, fmt.Errorf("%s: server wrote %q", addr, sc.Text())
		}
		n, err := strconv.ParseInt(f[1], 10, 64)
		if err != nil {
			return nil, fmt.Errorf("%s: server wrote %q", addr, sc.Text())
		}
		switch f[0] {
		case "E":
			return nil, fmt.Errorf("%s: the server found byte %d differs from what was sent", addr, n)
		case "P", "D":
			if n > res.Bytes {
				res.Bytes, res.Secs = n, time.Since(start).Seconds()
			}
			if f[0] == "D" {
				res.Complete = n == size
				if !res.Complete {
					return res, fmt.Errorf("%s: the server got %d of %d bytes", addr, n, size)
				}
				return res, nil
			}
		}
	}
	if err := sc.Err(); err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
		return res, fmt.Errorf("%s: after %d bytes: %w", addr, res.Bytes, err)
	}
	if res.Bytes == 0 {
		return res, fmt.Errorf("%s: the server got no byte in %v", addr, d)
	}
	return res, nil
}

// pingResult is what ping printed: round trips in milliseconds.
type pingResult struct {
	N   int     `json:"n"`
	P50 float64 `json:"p50_ms"`
	P99 float64 `json:"p99_ms"`
	Min float64 `json:"min_ms"`
	Max float64 `json:"max_ms"`
}

func ping(addr string, size int, wait, d, interval time.Duration) (*pingResult, error) {
	if size <= 0 || size > chunk {
		return nil, fmt.Errorf("-msg %d: want 1 to %d", size, chunk)
	}
	c, err := dial(addr, "echo", 0, 0)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	_ = c.SetNoDelay(true)
	time.Sleep(wait)
	end := time.Now().Add(d)
	// Bound each round trip: a ping behind many seconds of queue still
	// counts, a lost connection does not hang.
	_ = c.SetDeadline(end.Add(60 * time.Second))
	out, in := make([]byte, size), make([]byte, size)
	var rtts []time.Duration
	for i := uint64(0); time.Now().Before(end); i++ {
		binary.BigEndian.PutUint64(out, i)
		t0 := time.Now()
		if _, err := c.Write(out); err != nil {
			return nil, fmt.Errorf("%s: ping %d: %w", addr, i, err)
		}
		if _, err := io.ReadFull(c, in); err != nil {
			return nil, fmt.Errorf("%s: pong %d: %w", addr, i, err)
		}
		rtts = append(rtts, time.Since(t0))
		if !bytes.Equal(in, out) {
			return nil, fmt.Errorf("%s: pong %d differs from its ping", addr, i)
		}
		time.Sleep(interval)
	}
	if len(rtts) == 0 {
		return nil, fmt.Errorf("%s: no ping in %v", addr, d)
	}
	slices.Sort(rtts)
	msf := func(x time.Duration) float64 { return float64(x) / float64(time.Millisecond) }
	q := func(p float64) float64 { return msf(rtts[min(len(rtts)-1, int(p*float64(len(rtts))))]) }
	return &pingResult{N: len(rtts), P50: q(0.50), P99: q(0.99), Min: msf(rtts[0]), Max: msf(rtts[len(rtts)-1])}, nil
}
