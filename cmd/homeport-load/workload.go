package main

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// The workloads each dial addr, which is the relay's public port for the
// tunnel or the target itself for the direct path, and take the same
// steps either way.

const (
	// dialTimeout bounds one connect.
	dialTimeout = 10 * time.Second
	// ioLimit bounds any single run's I/O beyond its planned length: a
	// stuck tunnel fails the run instead of hanging it.
	ioLimit = 2 * time.Minute
	// maxSamples caps the latency samples kept per run.
	maxSamples = 1 << 20
)

func dial(ctx context.Context, addr string) (*net.TCPConn, error) {
	d := net.Dialer{Timeout: dialTimeout}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	return c.(*net.TCPConn), nil
}

// dialAll opens n connections to addr; on error it closes those it opened.
func dialAll(ctx context.Context, addr string, n int) ([]*net.TCPConn, error) {
	conns := make([]*net.TCPConn, 0, n)
	for range n {
		c, err := dial(ctx, addr)
		if err != nil {
			closeAll(conns)
			return nil, err
		}
		conns = append(conns, c)
	}
	return conns, nil
}

func closeAll(conns []*net.TCPConn) {
	for _, c := range conns {
		c.Close()
	}
}

// closeOnCancel closes conns when ctx ends, which unblocks their I/O. The
// returned stop must be called when the run is over.
func closeOnCancel(ctx context.Context, conns []*net.TCPConn) (stop func() bool) {
	return context.AfterFunc(ctx, func() { closeAll(conns) })
}

// upload sends data on streams connections at once for d and returns the
// bytes the target acknowledged and the time from start to the last
// acknowledgement.
func upload(ctx context.Context, addr string, streams int, d time.Duration) (int64, time.Duration, error) {
	conns, err := dialAll(ctx, addr, streams)
	if err != nil {
		return 0, 0, err
	}
	defer closeAll(conns)
	defer closeOnCancel(ctx, conns)()
	buf := make([]byte, chunk)
	for i := range buf {
		buf[i] = byte(i * 13)
	}
	var (
		total atomic.Int64
		wg    sync.WaitGroup
		errs  = make(chan error, streams)
	)
	start := time.Now()
	stop := start.Add(d)
	ends := make([]time.Time, streams)
	for i, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = c.SetDeadline(stop.Add(ioLimit))
			if _, err := c.Write([]byte{modeSink}); err != nil {
				errs <- err
				return
			}
			for time.Now().Before(stop) {
				if _, err := c.Write(buf); err != nil {
					errs <- err
					return
				}
			}
			if err := c.CloseWrite(); err != nil {
				errs <- err
				return
			}
			var ack [8]byte
			if _, err := io.ReadFull(c, ack[:]); err != nil {
				errs <- fmt.Errorf("reading the byte count: %w", err)
				return
			}
			ends[i] = time.Now()
			total.Add(int64(binary.BigEndian.Uint64(ack[:])))
		}()
	}
	wg.Wait()
	if err := firstErr(ctx, errs); err != nil {
		return 0, 0, err
	}
	var last time.Time
	for _, t := range ends {
		if t.After(last) {
			last = t
		}
	}
	return total.Load(), last.Sub(start), nil
}

// download has the target send on streams connections at once for d and
// returns the bytes read in that time and the time.
func download(ctx context.Context, addr string, streams int, d time.Duration) (int64, time.Duration, error) {
	conns, err := dialAll(ctx, addr, streams)
	if err != nil {
		return 0, 0, err
	}
	defer closeAll(conns)
	defer closeOnCancel(ctx, conns)()
	var (
		counted atomic.Int64 // bytes read before the deadline
		wg      sync.WaitGroup
		errs    = make(chan error, streams)
	)
	start := time.Now()
	stop := start.Add(d)
	for _, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = c.SetWriteDeadline(stop.Add(ioLimit))
			_ = c.SetReadDeadline(stop)
			if _, err := c.Write([]byte{modeSource}); err != nil {
				errs <- err
				return
			}
			buf := make([]byte, chunk)
			for {
				n, err := c.Read(buf)
				counted.Add(int64(n))
				if errors.Is(err, os.ErrDeadlineExceeded) {
					break
				}
				if err != nil {
					errs <- err
					return
				}
			}
			// Stop the target with an EOF and read what is still on
			// its way, uncounted, so that every connection of the
			// path ends cleanly before the next run.
			_ = c.SetReadDeadline(stop.Add(ioLimit))
			if err := c.CloseWrite(); err != nil {
				errs <- err
				return
			}
			if _, err := io.CopyBuffer(io.Discard, c, buf); err != nil {
				errs <- fmt.Errorf("draining after the run: %w", err)
			}
		}()
	}
	wg.Wait()
	if err := firstErr(ctx, errs); err != nil {
		return 0, 0, err
	}
	return counted.Load(), d, nil
}

// pingPong runs rtts round trips of 64-byte messages, spread over conns
// connections at once, and returns the time of each.
func pingPong(ctx context.Context, addr string, conns, rtts int) ([]time.Duration, error) {
	const msgSize, warmup = 64, 50
	cs, err := dialAll(ctx, addr, conns)
	if err != nil {
		return nil, err
	}
	defer closeAll(cs)
	defer closeOnCancel(ctx, cs)()
	per := max(rtts/conns, 1)
	var (
		wg      sync.WaitGroup
		errs    = make(chan error, conns)
		results = make([][]time.Duration, conns)
		ready   sync.WaitGroup // all connections warmed up
		begin   = make(chan struct{})
	)
	ready.Add(conns)
	for i, c := range cs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = c.SetDeadline(time.Now().Add(ioLimit))
			msg, got := make([]byte, msgSize), make([]byte, msgSize)
			msg[0] = modeEcho
			rtt := func() error {
				if _, err := c.Write(msg); err != nil {
					return err
				}
				_, err := io.ReadFull(c, got)
				return err
			}
			// The mode byte comes back first, then each message.
			var err error
			if _, err = c.Write(msg[:1]); err == nil {
				_, err = io.ReadFull(c, got[:1])
			}
			for range warmup {
				if err == nil {
					err = rtt()
				}
			}
			ready.Done()
			if err != nil {
				errs <- err
				return
			}
			<-begin
			samples := make([]time.Duration, 0, per)
			for range per {
				start := time.Now()
				if err := rtt(); err != nil {
					errs <- err
					return
				}
				samples = append(samples, time.Since(start))
			}
			results[i] = samples
		}()
	}
	ready.Wait()
	close(begin)
	wg.Wait()
	if err := firstErr(ctx, errs); err != nil {
		return nil, err
	}
	var all []time.Duration
	for _, r := range results {
		all = append(all, r...)
	}
	return all, nil
}

// churnResult is one churn run.
type churnResult struct {
	conns    int             // completed connect, echo, close cycles
	elapsed  time.Duration   // run time
	firstB   []time.Duration // connect to first byte, per cycle (capped)
	failures int
	lastErr  error
}

// churn has workers each connect, send one byte, read it back and close,
// over and over, for d.
func churn(ctx context.Context, addr string, workers int, d time.Duration) churnResult {
	var (
		mu  sync.Mutex
		res churnResult
		wg  sync.WaitGroup
	)
	start := time.Now()
	stop := start.Add(d)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var samples []time.Duration
			n, fails := 0, 0
			var lastErr error
			for time.Now().Before(stop) && ctx.Err() == nil {
				t0 := time.Now()
				err := churnOnce(ctx, addr, t0)
				if err != nil {
					fails++
					lastErr = err
					time.Sleep(10 * time.Millisecond) // no spinning on a refusing port
					continue
				}
				n++
				if len(samples) < maxSamples/workers {
					samples = append(samples, time.Since(t0))
				}
			}
			mu.Lock()
			res.conns += n
			res.failures += fails
			res.firstB = append(res.firstB, samples...)
			if lastErr != nil {
				res.lastErr = lastErr
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	res.elapsed = time.Since(start)
	return res
}

// churnOnce is one cycle: connect, one byte there and back, close. The
// connect-to-first-byte time is measured by the caller, from t0.
func churnOnce(ctx context.Context, addr string, t0 time.Time) error {
	c, err := dial(ctx, addr)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(t0.Add(dialTimeout))
	if _, err := c.Write([]byte{modeEcho}); err != nil {
		return err
	}
	var b [1]byte
	if _, err := io.ReadFull(c, b[:]); err != nil {
		return err
	}
	if b[0] != modeEcho {
		return fmt.Errorf("echo returned %q", b[0])
	}
	return nil
}

// hold opens n connections that each complete one echo, end to end, and
// leaves them open and idle. The caller closes them.
func hold(ctx context.Context, addr string, n int) ([]*net.TCPConn, error) {
	const parallel = 32
	conns := make([]*net.TCPConn, n)
	var (
		next atomic.Int64
		wg   sync.WaitGroup
		errs = make(chan error, parallel)
	)
	for range parallel {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= n || ctx.Err() != nil {
					return
				}
				c, err := dial(ctx, addr)
				if err == nil {
					conns[i] = c
					_ = c.SetDeadline(time.Now().Add(dialTimeout))
					var b [1]byte
					if _, err = c.Write([]byte{modeEcho}); err == nil {
						_, err = io.ReadFull(c, b[:])
					}
					_ = c.SetDeadline(time.Time{})
				}
				if err != nil {
					errs <- fmt.Errorf("connection %d of %d: %w", i+1, n, err)
					next.Store(int64(n)) // stop the others
					return
				}
			}
		}()
	}
	wg.Wait()
	if err := firstErr(ctx, errs); err != nil {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
		return nil, err
	}
	return conns, nil
}

// firstErr returns ctx's error if it ended, else the first error sent on
// errs, if any.
func firstErr(ctx context.Context, errs chan error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	select {
	case err := <-errs:
		return err
	default:
		return nil
	}
}
