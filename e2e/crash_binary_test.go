//go:build unix

package e2e

import (
	"errors"
	"io"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/homeport/homeport/internal/leak"
	"github.com/homeport/homeport/internal/testenv"
)

// readUntilEnd reads c until it ends, for up to d, and returns the bytes
// read and the error that ended it (nil: a clean end of stream).
func readUntilEnd(c net.Conn, d time.Duration) (int64, error) {
	c.SetReadDeadline(time.Now().Add(d))
	n, err := io.Copy(io.Discard, c)
	return n, err
}

// crashFeed writes to c until a write fails.
func crashFeed(c net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		if _, err := c.Write(buf); err != nil {
			return
		}
	}
}

// TestBinaryRelayCrashResetsVisitor: a visitor downloading through the
// relay when the relay dies (SIGKILL) reads a connection reset, not an
// end of stream it could take for a complete download.
func TestBinaryRelayCrashResetsVisitor(t *testing.T) {
	leak.Check(t)
	target := serve(t, func(c *net.TCPConn) { crashFeed(c) })
	public := freePort(t)
	r, b := binStartRelay(t, t.TempDir(), freePort(t))
	a := binStartAgent(t, b, []string{binTunnel(public, target)})
	binAwaitTunnels(a, 1, 15*time.Second)

	c := dial(t, publicAddr(public))
	if _, err := io.CopyN(io.Discard, c, 1<<20); err != nil {
		t.Fatalf("download before the crash: %v", err)
	}
	if err := r.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	n, err := readUntilEnd(c, 15*time.Second)
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("after the relay died, the visitor's download ended with %v after %d more bytes; want a reset (ECONNRESET)", err, n)
	}
}

// TestBinaryAgentCrashResetsTarget: a target receiving an upload through
// the agent when the agent dies (SIGKILL) reads a connection reset, not an
// end of stream it could take for a complete upload.
func TestBinaryAgentCrashResetsTarget(t *testing.T) {
	leak.Check(t)
	ended := make(chan error, 1)
	got := make(chan struct{})
	target := serve(t, func(c *net.TCPConn) {
		if _, err := io.CopyN(io.Discard, c, 1<<20); err != nil {
			ended <- err
			return
		}
		close(got)
		_, err := readUntilEnd(c, 30*time.Second)
		ended <- err
	})
	public := freePort(t)
	_, b := binStartRelay(t, t.TempDir(), freePort(t))
	a := binStartAgent(t, b, []string{binTunnel(public, target)})
	binAwaitTunnels(a, 1, 15*time.Second)

	c := dial(t, publicAddr(public))
	go crashFeed(c)
	select {
	case <-got:
	case err := <-ended:
		t.Fatalf("upload before the crash: %v", err)
	case <-time.After(testenv.Deadline(15 * time.Second)):
		t.Fatal("no upload reached the target within 15 s")
	}
	if err := a.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-ended:
		if !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("after the agent died, the target's upload ended with %v; want a reset (ECONNRESET)", err)
		}
	case <-time.After(testenv.Deadline(45 * time.Second)):
		t.Fatal("the target's upload did not end within 45 s of the agent's death")
	}
	c.Close()
}

// TestBinaryDownloadEndsCleanly: a complete download through the relay
// and agent binaries ends with a clean end of stream, all bytes there.
func TestBinaryDownloadEndsCleanly(t *testing.T) {
	leak.Check(t)
	const size = 8 << 20
	target := serve(t, func(c *net.TCPConn) {
		if _, err := io.CopyN(c, zeroReader{}, size); err == nil {
			c.CloseWrite()
		}
		io.Copy(io.Discard, c)
	})
	public := freePort(t)
	_, b := binStartRelay(t, t.TempDir(), freePort(t))
	a := binStartAgent(t, b, []string{binTunnel(public, target)})
	binAwaitTunnels(a, 1, 15*time.Second)
	for i := range 3 {
		c := dial(t, publicAddr(public))
		c.CloseWrite()
		n, err := readUntilEnd(c, 30*time.Second)
		c.Close()
		if err != nil || n != size {
			t.Fatalf("download %d: %d of %d bytes, ended with %v; want all and a clean end", i, n, size, err)
		}
	}
}

type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}
