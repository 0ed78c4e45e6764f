//go:build linux

package e2e

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/homeport/homeport/config"
	"github.com/homeport/homeport/internal/leak"
	"github.com/homeport/homeport/internal/testenv"
	"github.com/homeport/homeport/tunnel"
)

// TestStalledVisitors: 40 visitors that start a download and then read
// nothing, without closing, do not stop a new visitor's download. Over
// QUIC they would: what their streams hold at the relay counts against
// the session's connection window (4 MiB here; 40 initial stream windows
// are 10 MiB) until read. The relay resets the longest stalled of them,
// and says why, until the rest may hold at most half of it; over TCP
// nothing needs a reset.
func TestStalledVisitors(t *testing.T) { forEachTransport(t, testStalledVisitors) }

func testStalledVisitors(t *testing.T, tr string) {
	leak.Check(t)
	chunk := make([]byte, 1<<20)
	rand.NewChaCha8([32]byte{7}).Read(chunk)
	// The target sends 64 MiB to every visitor, and counts what it sent.
	var sent atomic.Int64
	target := serve(t, func(c *net.TCPConn) {
		for range 64 {
			for p := range slices.Chunk(chunk, 64<<10) {
				if _, err := c.Write(p); err != nil {
					return
				}
				sent.Add(int64(len(p)))
			}
		}
	})
	r := startRelayOver(t, tr, func(c *config.Relay) {
		c.Session.StreamWindow = 1 << 20 // connection window 4 MiB
	})
	port := freePort(t)
	a := startAgent(t, agentConfig(r, tcpTunnel("files", port, target)))
	a.waitSession(10 * time.Second)

	// Visitors with a small receive buffer: what the kernel takes for
	// them is little beside what their streams hold.
	d := net.Dialer{Timeout: 5 * time.Second, Control: func(_, _ string, rc syscall.RawConn) error {
		var err error
		_ = rc.Control(func(fd uintptr) { err = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
		return err
	}}
	const stalled = 40
	conns := make([]net.Conn, stalled)
	for i := range conns {
		c, err := d.Dial("tcp", publicAddr(port))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		conns[i] = c
	}
	// Their paths fill: over QUIC until the relay resets the first of
	// them; over TCP until the target can send them no more.
	waitFor(t, 30*time.Second, "the relay to take in every visitor", func() bool {
		ts := r.srv.Status().Tunnels
		return len(ts) == 1 && ts[0].Accepted == stalled
	})
	if tr == config.TransportQUIC {
		waitFor(t, time.Minute, "the relay to reset a stalled visitor", func() bool {
			return strings.Contains(r.logs.String(), tunnel.ErrStalled.Error())
		})
	} else {
		last, still := int64(-1), 0
		waitFor(t, time.Minute, "the stalled visitors' paths to fill", func() bool {
			n := sent.Load()
			if n != last {
				last, still = n, 0
				return false
			}
			still++
			return n > 0 && still >= 100 // 1 s without a byte sent
		})
	}

	c := dial(t, publicAddr(port))
	c.SetReadDeadline(time.Now().Add(testenv.Deadline(30 * time.Second)))
	got := make([]byte, 4<<20)
	if n, err := io.ReadFull(c, got); err != nil {
		t.Fatalf("a new visitor beside %d stalled ones got %d of 4 MiB: %v", stalled, n, err)
	}
	if !bytes.Equal(got, bytes.Repeat(chunk, 4)) {
		t.Fatal("a new visitor's download arrived wrong")
	}
	c.Close()

	if tr != config.TransportQUIC {
		time.Sleep(3 * time.Second) // longer than the QUIC guard's grace
		if strings.Contains(r.logs.String(), tunnel.ErrStalled.Error()) {
			t.Errorf("relay reset a stalled visitor over %s:\n%s", tr, r.logs)
		}
		return
	}
	waitFor(t, 10*time.Second, "the relay to log a stalled visitor's reset", func() bool {
		return strings.Contains(r.logs.String(), tunnel.ErrStalled.Error())
	})
	// A reset visitor reads what its kernel holds, then the reset; one
	// the relay kept reads on.
	var (
		wg     sync.WaitGroup
		mu     sync.Mutex
		resets int
	)
	for _, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.SetReadDeadline(time.Now().Add(testenv.Scale(2 * time.Second)))
			_, err := io.Copy(io.Discard, c)
			if errors.Is(err, syscall.ECONNRESET) {
				mu.Lock()
				resets++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if resets == 0 || resets == stalled {
		t.Errorf("%d of %d stalled visitors were reset; want some, not all", resets, stalled)
	}
	t.Logf("%d of %d stalled visitors reset", resets, stalled)
}
