//go:build netlab && linux

package netlab

import (
	"bytes"
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The bufferbloat link: a slow home uplink behind a deep router buffer,
// 2 Mbit/s each way, 4 MiB of buffer (about 16.8 s at that rate), 50 ms
// round trip, no loss. A loss-based TCP (CUBIC) and quic-go's congestion
// control both grow their windows until the buffer overflows, so a
// download through the tunnel queues many seconds of data at the home
// router, and every packet the agent sends after it, its answers to the
// relay's keepalive pings too, waits as long.
const (
	bloatRTT    = 50 * time.Millisecond
	bloatRate   = 2_000_000 / 8 // bytes per second
	bloatBuffer = 4 << 20
	// bloatStreams downloads of bloatSize each run at once, as a
	// download manager's or a browser's. The tunnel's downloads alone
	// build less queue than this test needs: one held about 1 MiB in
	// flight (3.6 s of queue), twelve reached 9 s with a namespace's
	// default socket buffers, and over QUIC the queue stays under a
	// second (quic-go leaves slow start as soon as the round trip
	// grows). Beside them, the home PC uploads bloatUpload straight to
	// the VPS, as a backup would: a TCP flow that fills the router's
	// buffer.
	bloatStreams = 8
	bloatSize    = 1 << 20
	bloatUpload  = 6 << 20 // 14 MiB in all, about 60 s at the link's rate
	// bloatQueue is the queue delay the download must reach to make its
	// point: the relay's keepalive timeout (10 s) and more.
	bloatQueue = 11 * time.Second
	// bloatXferMax bounds the download: 9 MiB at a third of the rate.
	bloatXferMax = 120 * time.Second
)

// TestBufferbloat: a home uplink of 2 Mbit/s each way with a 4 MiB
// router buffer (about 16.8 s of queue), 50 ms round trip and no loss
// (the delay link), TCP's congestion control loss-based (CUBIC or Reno).
// From the remote user, 8 downloads of 1 MiB at once from nginx at home
// through the web tunnel; beside them, a direct upload of 6 MiB from the
// home PC to nginx on the VPS. The queue at the home router grows past
// 10 s, and the agent's answers to the relay's keepalive pings wait in
// it behind the data. Passes when every transfer completes with the
// right sha256, the queue really reached 11 s, and no session between
// the agent and the relay ended (the relay logs no "agent session down",
// the agent no "relay session down"; on a failure the test prints those
// lines with their cause=): a session whose answers come late because
// the link is full is alive. The longest queue delay, the round trips of
// a ping home → VPS during the transfers and their times are reported.
func TestBufferbloat(t *testing.T) {
	forTransports(t, func(t *testing.T, tr string) {
		l := newLab(t, withDelayLink(linkConfig{delay: bloatRTT / 2, rate: bloatRate, buffer: bloatBuffer}))
		cc := l.lossBasedCC()
		// Linux caps a socket's send buffer, in flight included, at
		// 4 MiB by default (less the buffers' overhead): too little to
		// fill this buffer. Other systems (Windows, macOS) let it grow
		// further, and so does the home PC here.
		l.must(5*time.Second, "home", "sysctl", "-qw", "net.ipv4.tcp_wmem=4096 16384 16777216")
		// And a new network namespace's receive buffers stop at 6 MiB
		// (about 2.2 MB of window, 9 s of this queue): the VPS's grow as
		// far as the host's may.
		l.must(5*time.Second, "vps", "sysctl", "-qw", "net.ipv4.tcp_rmem=4096 131072 33554432")
		_, sum := l.prefixFile(filepath.Join(wwwDir(t), "big.bin"), bloatSize)
		upSrc, upSum := l.prefixFile(filepath.Join(wwwDir(t), "ssh.bin"), bloatUpload)
		upDir := l.startNginx("vps", fmt.Sprintf("%s:%d", vpsIP, directPort))
		l.startNginx("home", fmt.Sprintf("127.0.0.1:%d", webPort))
		r := l.startRelay()
		a := l.startAgent(r, tr)
		if !l.probe(5 * time.Second) {
			t.Fatal("the web tunnel does not work")
		}
		l.checkRTT(bloatRTT)

		// Ping home → VPS during the download: its echo requests wait in
		// the same queue as the agent's packets.
		var (
			wg      sync.WaitGroup
			pingRTT [3]time.Duration
			pingN   int
			pingErr error
		)
		done := make(chan struct{})
		wg.Go(func() {
			pingRTT, pingN, pingErr = l.pingDuring("home", vpsIP, done, 60)
		})
		start := time.Now()
		xs := make([]xfer, bloatStreams)
		errs := make([]error, bloatStreams)
		var (
			dl    sync.WaitGroup
			up    xfer
			upErr error
		)
		dl.Go(func() { up, upErr = l.directUploadFile(upDir, bloatXferMax, upSrc, upSum) })
		for i := range bloatStreams {
			dl.Go(func() {
				xs[i], errs[i] = l.downloadPart(fmt.Sprintf("download %d", i+1), bloatXferMax, bloatSize, sum)
			})
		}
		dl.Wait()
		took := time.Since(start)
		close(done)
		wg.Wait()

		queue := l.delay.maxQueueDelay(0)
		relayEnds, agentEnds := logLines(r.proc, "agent session down"), logLines(a, "relay session down")
		sessions := a.count(`msg="connected to relay"`)
		var pings string
		if pingErr == nil {
			pings = fmt.Sprintf("%d answered, %s", pingN, fmtRTT(pingRTT))
		} else {
			pings = pingErr.Error()
		}
		t.Logf("bufferbloat over %s (TCP: %s): %d downloads of %d MiB through the tunnel and a direct upload of %d MiB side by side in %v (downloads %v, upload %v); the uplink's queue reached %v (limit %v); ping home → VPS during the download: %s; sessions ended: relay %d, agent %d; the agent connected %d times",
			tr, cc, bloatStreams, bloatSize>>20, bloatUpload>>20, ms(took), xs, up, ms(queue), ms(time.Duration(bloatBuffer*int64(time.Second)/bloatRate)),
			pings, len(relayEnds), len(agentEnds), sessions)
		if upErr != nil {
			t.Errorf("the direct upload failed after %v: %v", ms(took), upErr)
		}
		for _, err := range errs {
			if err != nil {
				t.Errorf("after %v: %v", ms(took), err)
			}
		}
		if queue < bloatQueue {
			t.Errorf("the uplink's queue reached %v, want at least %v: the scenario did not build the queue it is about", ms(queue), bloatQueue)
		}
		if len(relayEnds) > 0 || len(agentEnds) > 0 {
			t.Errorf("sessions between the agent and the relay ended during the download (the agent connected %d times):\nrelay:\n%s\nagent:\n%s",
				sessions, strings.Join(relayEnds, "\n"), strings.Join(agentEnds, "\n"))
		}
	})
}

// pingDuring pings to from role once a second, at most count times,
// until done is closed, and returns the round-trip times ping reports
// (min, avg, max) and how many answers came back.
func (l *lab) pingDuring(role, to string, done <-chan struct{}, count int) (rtt [3]time.Duration, received int, err error) {
	ctx, cancel := context.WithTimeout(l.ctx, time.Duration(count)*time.Second+30*time.Second)
	defer cancel()
	cmd := l.command(ctx, role, "ping", "-n", "-q", "-c", fmt.Sprint(count), "-i", "1", to)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		return rtt, 0, fmt.Errorf("ping %s → %s: %w", role, to, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	select {
	case err = <-exited:
	case <-done:
		// ip netns exec has become ping: SIGINT makes it print its
		// summary and exit.
		_ = syscall.Kill(cmd.Process.Pid, syscall.SIGINT)
		err = <-exited
	}
	out := stdout.String()
	if m := pingRecvRE.FindStringSubmatch(out); m != nil {
		fmt.Sscan(m[1], &received)
	}
	m := pingRTTRE.FindStringSubmatch(out)
	if m == nil {
		return rtt, received, fmt.Errorf("ping %s → %s: %d answers, no round trips (%v): %s", role, to, received, err, strings.TrimSpace(stderr.String()))
	}
	for i := range rtt {
		var f float64
		fmt.Sscan(m[i+1], &f)
		rtt[i] = time.Duration(f * float64(time.Millisecond))
	}
	return rtt, received, nil
}
