//go:build linux

package e2e

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/homeport/homeport/internal/leak"
	"github.com/homeport/homeport/tunnel"
)

// procKiB returns a field of /proc/PID/status given in kB (VmRSS, VmHWM),
// in bytes.
func procKiB(t *testing.T, pid int, field string) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, field+":"); ok {
			n, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				t.Fatalf("/proc/%d/status %s: %v", pid, field, err)
			}
			return n << 10
		}
	}
	t.Fatalf("/proc/%d/status has no %s", pid, field)
	return 0
}

// udpRxQueue returns the bytes waiting in the receive queue of the UDP
// socket on 127.0.0.1:port, or 0 where that is unknown.
func udpRxQueue(port uint16) int64 {
	b, err := os.ReadFile("/proc/net/udp")
	if err != nil {
		return 0
	}
	local := fmt.Sprintf("0100007F:%04X", port)
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) >= 5 && f[1] == local {
			_, rx, _ := strings.Cut(f[4], ":")
			n, _ := strconv.ParseInt(rx, 16, 64)
			return n
		}
	}
	return 0
}

// TestBinaryUDPPausedAgent: 40 visitors send the largest datagrams as
// fast as they can to a UDP tunnel whose agent is stopped (SIGSTOP). The
// relay holds only its queue budget of them: its memory grows by far less
// than the datagrams sent, and it logs the drops. Once the agent goes on
// (SIGCONT), every flow carries datagrams again.
func TestBinaryUDPPausedAgent(t *testing.T) {
	for _, tr := range []string{"tcp", "quic"} {
		t.Run(tr, func(t *testing.T) { testBinaryUDPPausedAgent(t, tr) })
	}
}

func testBinaryUDPPausedAgent(t *testing.T, tr string) {
	leak.Check(t)
	const (
		flows    = 40
		perFlow  = 200 // datagrams per visitor the relay reads while the agent is stopped
		maxGrown = 100 << 20
	)
	target := udpEcho(t, "127.0.0.1:0")
	public := udpFreePort(t)
	// 40 visitors from one address: more than the guard lets in by default.
	r, b := binStartRelay(t, t.TempDir(), freePort(t), "--visitor-max-conns", "100", "--visitor-rate", "6000", "--visitor-burst", "100")
	a := binStartAgent(t, b, []string{fmt.Sprintf("udp:%d:%s", public, target.addr())}, "--transport", tr)
	binAwaitTunnels(a, 1, 15*time.Second)

	visitors := make([]*udpVisitor, flows)
	for i := range visitors {
		visitors[i] = udpDial(t, public)
		if err := visitors[i].exchange(fmt.Appendf(nil, "hello from visitor %d", i)); err != nil {
			t.Fatalf("visitor %d before the agent stops: %v", i, err)
		}
	}
	pid := r.cmd.Process.Pid
	before := procKiB(t, pid, "VmRSS")

	a.signal(syscall.SIGSTOP)
	stopped := true
	defer func() {
		if stopped {
			a.signal(syscall.SIGCONT)
		}
	}()
	// The visitors send as fast as they can until the relay has read
	// flows*perFlow datagrams (what its socket received, less what the
	// kernel dropped there), more than the old queues held.
	big := bytes.Repeat([]byte{'x'}, tunnel.MaxDatagram)
	var (
		wg     sync.WaitGroup
		writes atomic.Int64
		stop   atomic.Bool
	)
	start := time.Now()
	for _, v := range visitors {
		wg.Go(func() {
			for !stop.Load() {
				// An error (ENOBUFS, ECONNREFUSED from an ICMP error) is
				// UDP's way: go on.
				if _, err := v.c.Write(big); err == nil {
					writes.Add(1)
				}
			}
		})
	}
	drops0 := udpDrops(public)
	read := func() int64 { return writes.Load() - int64(udpDrops(public)-drops0) }
	deadline := time.Now().Add(30 * time.Second)
	for read() < flows*perFlow && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	stop.Store(true)
	wg.Wait()
	if drops0 < 0 {
		t.Fatal("cannot read the relay socket's drops from /proc/net/udp")
	}
	sent, got := writes.Load()*int64(len(big)), read()*int64(len(big))
	peak := procKiB(t, pid, "VmHWM")
	t.Logf("%s: %d MiB sent in %v, %d MiB read by the relay; relay RSS %d MiB before, peak %d MiB (grew %d MiB)", tr, sent>>20,
		time.Since(start).Round(time.Millisecond), got>>20, before>>20, peak>>20, (peak-before)>>20)
	if peak-before > maxGrown {
		t.Errorf("relay RSS grew by %d MiB while its agent was stopped, want less than %d MiB", (peak-before)>>20, maxGrown>>20)
	}
	r.await(20*time.Second, "the relay's log of dropped datagrams", func() bool {
		return r.count(`msg="UDP datagrams to the agent dropped`) >= 1
	})

	a.signal(syscall.SIGCONT)
	stopped = false
	// Every flow recovers: what the relay held for it reaches the target
	// and comes back, then a new message is echoed.
	for i, v := range visitors {
		v.sent[string(big)] = true // echoes of the large datagrams, late
		if err := v.exchange(fmt.Appendf(nil, "visitor %d after the agent went on", i)); err != nil {
			t.Errorf("visitor %d after SIGCONT: %v", i, err)
		}
	}
	if !r.running() || !a.running() {
		t.Fatal("relay or agent exited")
	}
}

// TestBinaryUDPPausedRelay: a UDP target sends the largest datagrams as
// fast as it can to 4 flows whose relay is stopped (SIGSTOP). The agent
// holds only its queue budget of them and logs the drops; once the relay
// goes on (SIGCONT), every flow carries datagrams again.
func TestBinaryUDPPausedRelay(t *testing.T) {
	for _, tr := range []string{"tcp", "quic"} {
		t.Run(tr, func(t *testing.T) { testBinaryUDPPausedRelay(t, tr) })
	}
}

func testBinaryUDPPausedRelay(t *testing.T, tr string) {
	leak.Check(t)
	const flows = 4
	big := bytes.Repeat([]byte{'x'}, tunnel.MaxDatagram)
	// The target echoes, and answers "flood" with large datagrams as fast
	// as it can until the test stops it.
	var (
		wg     sync.WaitGroup
		stop   atomic.Bool
		sent   atomic.Int64
		floods atomic.Int32
	)
	t.Cleanup(func() { stop.Store(true); wg.Wait() })
	target := udpServe(t, "127.0.0.1:0", func(pc *net.UDPConn, from netip.AddrPort, p []byte) {
		if string(p) != "flood" {
			pc.WriteToUDPAddrPort(p, from)
			return
		}
		floods.Add(1)
		wg.Go(func() {
			for !stop.Load() {
				if _, err := pc.WriteToUDPAddrPort(big, from); err == nil {
					sent.Add(1)
				}
			}
		})
	})
	public := udpFreePort(t)
	r, b := binStartRelay(t, t.TempDir(), freePort(t))
	a := binStartAgent(t, b, []string{fmt.Sprintf("udp:%d:%s", public, target.addr())}, "--transport", tr)
	binAwaitTunnels(a, 1, 15*time.Second)
	visitors := make([]*udpVisitor, flows)
	for i := range visitors {
		visitors[i] = udpDial(t, public)
		if err := visitors[i].exchange(fmt.Appendf(nil, "hello from visitor %d", i)); err != nil {
			t.Fatalf("visitor %d before the relay stops: %v", i, err)
		}
	}

	for _, v := range visitors {
		if _, err := v.c.Write([]byte("flood")); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 10*time.Second, "the target flooding every flow", func() bool { return floods.Load() == flows })

	r.signal(syscall.SIGSTOP)
	stopped := true
	defer func() {
		if stopped {
			r.signal(syscall.SIGCONT)
		}
	}()
	a.await(30*time.Second, "the agent's log of dropped datagrams", func() bool {
		return a.count(`msg="UDP datagrams to the relay dropped`) >= 1
	})
	var rxq int64 // what the kernel holds for the agent's flow sockets
	for _, p := range target.senders() {
		rxq += udpRxQueue(p.Port())
	}
	stop.Store(true)
	wg.Wait()
	t.Logf("%s: target sent %d MiB toward the stopped relay; the agent's flow sockets held %d KiB in the kernel", tr, sent.Load()*int64(len(big))>>20, rxq>>10)
	r.signal(syscall.SIGCONT)
	stopped = false
	for i, v := range visitors {
		v.sent[string(big)] = true // the flood, late
		if err := v.exchange(fmt.Appendf(nil, "visitor %d after the relay went on", i)); err != nil {
			t.Errorf("visitor %d after SIGCONT: %v", i, err)
		}
	}
	if !r.running() || !a.running() {
		t.Fatal("relay or agent exited")
	}
}
