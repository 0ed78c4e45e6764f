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

// steadyDownload has the target send on one connection for warmup + d
// and returns the bytes read after the warmup and the time they took: the
// transfer once it runs steady, past TCP's slow start and any window's
// growth.
func steadyDownload(ctx context.Context, addr string, warmup, d time.Duration) (int64, time.Duration, error) {
	c, err := dial(ctx, addr)
	if err != nil {
		return 0, 0, err
	}
	defer c.Close()
	defer closeOnCancel(ctx, []*net.TCPConn{c})()
	start := time.Now()
	from, stop := start.Add(warmup), start.Add(warmup+d)
	_ = c.SetWriteDeadline(stop.Add(ioLimit))
	_ = c.SetReadDeadline(stop)
	if _, err := c.Write([]byte{modeSource}); err != nil {
		return 0, 0, err
	}
	var (
		buf         = make([]byte, chunk)
		total, at0  int64
		first, last time.Time // reads after the warmup
		readErr     error
	)
	for {
		n, err := c.Read(buf)
		now := time.Now()
		total += int64(n)
		if first.IsZero() && !now.Before(from) {
			first, at0 = now, total // this read's bytes came before
		} else if n > 0 && !first.IsZero() {
			last = now
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			break
		}
		if err != nil {
			readErr = err
			break
		}
	}
	if readErr != nil {
		return 0, 0, readErr
	}
	// As in download: stop the target, and drain uncounted.
	_ = c.SetReadDeadline(stop.Add(ioLimit))
	if err := c.CloseWrite(); err != nil {
		return 0, 0, err
	}
	if _, err := io.CopyBuffer(io.Discard, c, buf); err != nil {
		return 0, 0, fmt.Errorf("draining after the run: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return 0, 0, err
	}
	if !last.After(first) {
		return 0, 0, fmt.Errorf("no data after the warmup of %v", warmup)
	}
	return total - at0, last.Sub(first), nil
}

// steadyUpload sends data on one connection for warmup + d and returns
// the bytes the target read after the warmup and the time they took, from
// the counts it reports on the way (modeCount): the transfer once it runs
// steady. The reports cross the path back, each late by the same one-way
// time, which leaves the rate as it is.
func steadyUpload(ctx context.Context, addr string, warmup, d time.Duration) (int64, time.Duration, error) {
	c, err := dial(ctx, addr)
	if err != nil {
		return 0, 0, err
	}
	defer c.Close()
	defer closeOnCancel(ctx, []*net.TCPConn{c})()
	start := time.Now()
	from, stop := start.Add(warmup), start.Add(warmup+d)
	_ = c.SetDeadline(stop.Add(ioLimit))
	type count struct {
		at time.Time
		n  int64
	}
	var counts []count
	readDone := make(chan error, 1)
	go func() {
		var b [8]byte
		for {
			if _, err := io.ReadFull(c, b[:]); err != nil {
				readDone <- err
				return
			}
			counts = append(counts, count{time.Now(), int64(binary.BigEndian.Uint64(b[:]))})
		}
	}()
	buf := make([]byte, chunk)
	for i := range buf {
		buf[i] = byte(i * 13)
	}
	werr := writeUntil(c, append([]byte{modeCount}, buf...), buf, stop)
	if werr == nil {
		werr = c.CloseWrite()
	}
	if werr != nil {
		c.Close() // ends the reading too
	}
	rerr := <-readDone
	if err := ctx.Err(); err != nil {
		return 0, 0, err
	}
	if werr != nil {
		return 0, 0, werr
	}
	if !errors.Is(rerr, io.EOF) {
		return 0, 0, fmt.Errorf("reading the counts: %w", rerr)
	}
	// The first count after the warmup and the last before the stop.
	var first, last count
	for _, r := range counts {
		if first.at.IsZero() && !r.at.Before(from) {
			first = r
		}
		if !r.at.After(stop) {
			last = r
		}
	}
	if first.at.IsZero() || !last.at.After(first.at) {
		return 0, 0, fmt.Errorf("too few counts after the warmup of %v (%d in all)", warmup, len(counts))
	}
	return last.n - first.n, last.at.Sub(first.at), nil
}

// writeUntil writes first, then buf over and over, until stop.
func writeUntil(c *net.TCPConn, first, buf []byte, stop time.Time) error {
	if _, err := c.Write(first); err != nil {
		return err
	}
	for time.Now().Before(stop) {
		if _, err := c.Write(buf); err != nil {
			return err
		}
	}
	return nil
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
	return holdEach(ctx, n, func(int) string { return addr }, 1)
}

// holdEach is hold with connection i to addrOf(i), each tried up to
// tries times, a second apart.
func holdEach(ctx context.Context, n int, addrOf func(i int) string, tries int) ([]*net.TCPConn, error) {
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
				var err error
				for try := range tries {
					if try > 0 {
						if err = sleep(ctx, time.Second); err != nil {
							break
						}
					}
					if conns[i], err = echoOnce(ctx, addrOf(i)); err == nil {
						break
					}
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

// echoOnce dials addr and completes one echo.
func echoOnce(ctx context.Context, addr string) (*net.TCPConn, error) {
	c, err := dial(ctx, addr)
	if err != nil {
		return nil, err
	}
	_ = c.SetDeadline(time.Now().Add(dialTimeout))
	var b [1]byte
	if _, err = c.Write([]byte{modeEcho}); err == nil {
		_, err = io.ReadFull(c, b[:])
	}
	if err != nil {
		c.Close()
		return nil, err
	}
	_ = c.SetDeadline(time.Time{})
	return c, nil
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
