package main

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// The target is the service behind the tunnel, and the far end of the
// direct path. It runs in a process of its own (this command, started with
// targetArg), as a real service would: a path within one process would
// make the direct figures unfairly good.
//
// The first byte a client sends picks what a connection does:
const (
	// modeEcho: the mode byte and everything after it come back.
	modeEcho = 'e'
	// modeSink: everything is read and dropped; after the client's EOF
	// the target answers with the count of bytes read (8 bytes, big
	// endian) and closes.
	modeSink = 's'
	// modeSource: the target writes until the client's EOF, then closes.
	modeSource = 'g'
	// modeQuery: the target answers with the number of other connections
	// it serves (8 bytes, big endian) and closes.
	modeQuery = 'q'
	// modeCount: as modeSink, and on the way the target also sends the
	// count of bytes read so far each time it has read another
	// countEvery bytes.
	modeCount = 'c'
)

// countEvery is how often modeCount reports its count.
const countEvery = 256 << 10

// targetArg, as the only argument, makes this command the target.
const targetArg = "__target"

// chunk is the size of reads and writes in bulk transfers.
const chunk = 64 << 10

// echoBuf is the echo's read buffer: small, since thousands of idle
// connections each hold one.
const echoBuf = 4 << 10

// target serves the modes above on a loopback port.
type target struct {
	ln     net.Listener
	active atomic.Int64 // connections being served
	wg     sync.WaitGroup

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
}

func startTarget() (*target, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	t := &target{ln: ln, conns: make(map[net.Conn]struct{})}
	t.wg.Add(1)
	go t.acceptLoop()
	return t, nil
}

func (t *target) addr() string { return t.ln.Addr().String() }

func (t *target) acceptLoop() {
	defer t.wg.Done()
	for {
		c, err := t.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			time.Sleep(10 * time.Millisecond) // out of descriptors: wait
			continue
		}
		if !t.track(c) {
			c.Close()
			return
		}
		t.wg.Add(1)
		go func() {
			defer t.wg.Done()
			defer t.untrack(c)
			t.serve(c.(*net.TCPConn))
		}()
	}
}

func (t *target) track(c net.Conn) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return false
	}
	t.conns[c] = struct{}{}
	t.active.Add(1)
	return true
}

func (t *target) untrack(c net.Conn) {
	c.Close()
	t.mu.Lock()
	delete(t.conns, c)
	t.mu.Unlock()
	t.active.Add(-1)
}

// close stops the target and every connection it serves.
func (t *target) close() {
	t.ln.Close()
	t.mu.Lock()
	t.closed = true
	for c := range t.conns {
		c.Close()
	}
	t.mu.Unlock()
	t.wg.Wait()
}

// serve serves one connection. Errors end it: the client decides what a
// run's outcome is.
func (t *target) serve(c *net.TCPConn) {
	var mode [1]byte
	if _, err := io.ReadFull(c, mode[:]); err != nil {
		return
	}
	switch mode[0] {
	case modeQuery:
		_, _ = c.Write(binary.BigEndian.AppendUint64(nil, uint64(t.active.Load()-1)))
	case modeEcho:
		buf := make([]byte, echoBuf)
		buf[0] = modeEcho
		n := 1
		for {
			if _, err := c.Write(buf[:n]); err != nil {
				return
			}
			var err error
			if n, err = c.Read(buf); err != nil {
				return
			}
		}
	case modeSink, modeCount:
		buf := make([]byte, chunk)
		var total, reported uint64
		for {
			n, err := c.Read(buf)
			total += uint64(n)
			if mode[0] == modeCount && total-reported >= countEvery {
				reported = total
				if _, err := c.Write(binary.BigEndian.AppendUint64(nil, total)); err != nil {
					return
				}
			}
			if errors.Is(err, io.EOF) {
				_, _ = c.Write(binary.BigEndian.AppendUint64(nil, total))
				return
			}
			if err != nil {
				return
			}
		}
	case modeSource:
		// The client's EOF (or any end of its side) stops the writing.
		var stop atomic.Bool
		go func() {
			_, _ = io.Copy(io.Discard, c)
			stop.Store(true)
		}()
		buf := make([]byte, chunk)
		for i := range buf {
			buf[i] = byte(i * 7)
		}
		for !stop.Load() {
			if _, err := c.Write(buf); err != nil {
				return
			}
		}
	}
}

// runTarget is the target process: it serves on a loopback port, prints
// the address, and exits when its standard input ends (its parent closed
// it, or died).
func runTarget(stdin io.Reader, stdout io.Writer) error {
	t, err := startTarget()
	if err != nil {
		return err
	}
	defer t.close()
	if _, err := fmt.Fprintf(stdout, "listening %s\n", t.addr()); err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, stdin)
	return nil
}

// targetProc is the running target process.
type targetProc struct {
	cmd   *exec.Cmd
	stdin io.Closer
	addr  string
	done  chan struct{}
}

// startTargetProc starts this command as the target and returns once it
// listens.
func startTargetProc(stderr io.Writer) (*targetProc, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	p := &targetProc{cmd: exec.Command(exe, targetArg), done: make(chan struct{})}
	p.cmd.Stderr = stderr
	p.cmd.SysProcAttr = childAttr()
	if p.stdin, err = p.cmd.StdinPipe(); err != nil {
		return nil, err
	}
	out, err := p.cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting the target: %w", err)
	}
	go func() {
		_ = p.cmd.Wait()
		close(p.done)
	}()
	line := make(chan string, 1)
	go func() {
		s, _ := bufio.NewReader(out).ReadString('\n')
		line <- s
		_, _ = io.Copy(io.Discard, out)
	}()
	select {
	case s := <-line:
		if addr, ok := strings.CutPrefix(strings.TrimSpace(s), "listening "); ok {
			p.addr = addr
			return p, nil
		}
		p.close()
		return nil, fmt.Errorf("target said %q, not its address", s)
	case <-time.After(10 * time.Second):
		p.close()
		return nil, errors.New("target did not start within 10s")
	}
}

// active returns the number of connections the target serves.
func (p *targetProc) active(ctx context.Context) (int64, error) {
	c, err := dial(ctx, p.addr)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(dialTimeout))
	if _, err := c.Write([]byte{modeQuery}); err != nil {
		return 0, err
	}
	var b [8]byte
	if _, err := io.ReadFull(c, b[:]); err != nil {
		return 0, err
	}
	return int64(binary.BigEndian.Uint64(b[:])), nil
}

// awaitIdle waits until the target serves no connection, for up to d:
// the end of one run must not overlap the next.
func (p *targetProc) awaitIdle(ctx context.Context, d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		n, err := p.active(ctx)
		if err != nil {
			return fmt.Errorf("asking the target: %w", err)
		}
		if n == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("target still serves %d connections %v after the run", n, d)
		}
		if err := sleep(ctx, 10*time.Millisecond); err != nil {
			return err
		}
	}
}

// close stops the target: its standard input ends, then, if it is still
// there after stopWait, it is killed.
func (p *targetProc) close() {
	p.stdin.Close()
	select {
	case <-p.done:
	case <-time.After(stopWait):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}
