//go:build netlab && linux

package netlab

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

var soakFor = flag.Duration("netlab.soak", 0,
	"how long TestLongTransfersUnderLoad keeps starting transfers, per transport (default 2m30s); a longer run needs a longer -timeout")

// The soak's link: a home uplink of 20 Mbit/s each way with a router's
// buffer of about 100 ms in front of it, 50 ms round trip, 1% loss each
// way. At that rate the uplink, not the host, is the bottleneck.
const (
	soakRTT     = 50 * time.Millisecond
	soakRate    = 20_000_000 / 8 // bytes per second
	soakBuffer  = 256 << 10
	soakLoss    = 0.01
	soakSize    = 10 << 20 // each transfer
	soakDefault = 150 * time.Second
	// soakXferMax bounds one transfer: 10 MiB at 50 KiB/s.
	soakXferMax = 200 * time.Second
	// soakMaxXfers bounds each worker's loop in count, whatever the
	// time budget.
	soakMaxXfers = 1000
	// soakMaxFails ends a worker's loop after that many failed transfers.
	soakMaxFails = 3
)

// soakXfer is one transfer of the soak.
type soakXfer struct {
	what  string
	bytes int64
	took  time.Duration
	err   error
}

func (x soakXfer) mibps() float64 { return float64(x.bytes) / x.took.Seconds() / (1 << 20) }

// TestLongTransfersUnderLoad: long transfers through the tunnel, one
// after another, for a time budget, over a home uplink with 50 ms round
// trip, 1% loss each way and a rate limit of 20 Mbit/s (the delay link),
// with TCP's congestion control loss-based (CUBIC or Reno), while
// stress-ng keeps both cores of the host busy. Two loops run side by
// side: HTTP (curl from the remote user through the web tunnel to nginx
// at home: two downloads, then an upload, of 10 MiB) and SSH (scp from
// the remote user through the SSH tunnel: two downloads, then an upload,
// of 10 MiB). Passes when every transfer completes with the right sha256
// and no session between the agent and the relay ended: a session that
// carries data on a slow, lossy link is alive, however late its answers
// to keepalive pings come. The budget is 2m30s per transport;
// -netlab.soak sets another.
func TestLongTransfersUnderLoad(t *testing.T) {
	forTransports(t, func(t *testing.T, tr string) {
		need(t, "stress-ng", "sshd", "ssh", "scp", "ssh-keygen")
		budget := soakDefault
		if *soakFor > 0 {
			budget = *soakFor
		}
		l := newLab(t, withDelayLink(linkConfig{delay: soakRTT / 2, rate: soakRate, buffer: soakBuffer}))
		// The last transfers may start just before the budget is
		// spent, and take up to soakXferMax.
		if dl, _ := l.ctx.Deadline(); time.Until(dl) < budget+soakXferMax+time.Minute {
			t.Fatalf("a soak of %v needs %v more than the test's deadline leaves (%v): pass a longer -timeout",
				budget, soakXferMax+time.Minute, time.Until(dl).Round(time.Second))
		}
		cc := l.lossBasedCC()
		www := wwwDir(t)
		httpSrc, httpSum := l.prefixFile(filepath.Join(www, "big.bin"), soakSize)
		sshSrc, sshSum := l.prefixFile(filepath.Join(www, "ssh.bin"), soakSize)
		upDir := l.startNginx("home", fmt.Sprintf("127.0.0.1:%d", webPort))
		kit := l.startSSHD()
		r := l.startRelay()
		a := l.startAgent(r, tr)
		if !l.probe(5 * time.Second) {
			t.Fatal("the web tunnel does not work")
		}
		l.checkRTT(soakRTT)
		l.uplinkLoss(soakLoss)

		// The CPU hog: a worker on each core, ended by its own timeout
		// if nothing else ends it, and by the lab's cleanup (which kills
		// every process it started) at the latest.
		hogFor := budget + soakXferMax + 30*time.Second
		hog := l.start("home", "stress-ng", nil, "stress-ng", "--cpu", "2", "--timeout", fmt.Sprintf("%ds", int(hogFor.Seconds())), "--quiet")
		hog.logged = true
		t.Cleanup(hog.kill)
		hog.await(t, 10*time.Second, "stress-ng's workers", func() bool { return hogWorkers(hog) >= 2 })

		start := time.Now()
		end := start.Add(budget)
		var (
			mu    sync.Mutex
			xfers []soakXfer
		)
		record := func(x soakXfer) {
			mu.Lock()
			xfers = append(xfers, x)
			mu.Unlock()
			if x.err != nil {
				t.Errorf("%s after %v: %v", x.what, ms(time.Since(start)), x.err)
			}
		}
		loop := func(name string, xfer func(i int) soakXfer) {
			fails := 0
			for i := 0; i < soakMaxXfers && fails < soakMaxFails && time.Now().Before(end); i++ {
				x := xfer(i)
				x.what = fmt.Sprintf("%s %d: %s", name, i+1, x.what)
				record(x)
				if x.err != nil {
					fails++
				}
			}
		}
		var wg sync.WaitGroup
		wg.Go(func() {
			loop("HTTP", func(i int) soakXfer {
				if i%3 == 2 {
					return l.soakUpload(httpSrc, httpSum, upDir, i)
				}
				x, err := l.downloadPart("download", soakXferMax, soakSize, httpSum)
				return soakXfer{what: "download", bytes: x.bytes, took: time.Duration(x.secs * float64(time.Second)), err: err}
			})
		})
		wg.Go(func() {
			loop("SSH", func(i int) soakXfer { return l.soakSCP(kit, sshSrc, sshSum, i%3 == 2, i) })
		})
		loads := l.sampleLoad(&wg)
		ran := time.Since(start)

		// The figures.
		var bytes int64
		var ok int
		var rates []float64
		for _, x := range xfers {
			if x.err == nil {
				ok++
				bytes += x.bytes
				rates = append(rates, x.mibps())
			}
		}
		slices.Sort(rates)
		median := 0.0
		if n := len(rates); n > 0 {
			median = (rates[(n-1)/2] + rates[n/2]) / 2
		}
		dropped := l.uplinkDropped()
		relayEnds, agentEnds := logLines(r.proc, "agent session down"), logLines(a, "relay session down")
		sessions := a.count(`msg="connected to relay"`)
		t.Logf("soak over %s (TCP: %s) for %v (budget %v): %d of %d transfers of %d MiB complete with the right sha256, %.1f MiB in all; per transfer median %.2f MiB/s (%s); the uplink dropped %d packets; load average %s; sessions ended: relay %d, agent %d; the agent connected %d times",
			tr, cc, ms(ran), budget, ok, len(xfers), soakSize>>20, float64(bytes)/(1<<20), median, rateRange(rates),
			dropped, loads, len(relayEnds), len(agentEnds), sessions)
		for _, x := range xfers {
			if x.err == nil {
				t.Logf("  %s: %v, %.2f MiB/s", x.what, ms(x.took), x.mibps())
			}
		}

		if ok < 2 {
			t.Errorf("%d transfers completed, want at least 2", ok)
		}
		if dropped == 0 {
			t.Error("the uplink dropped no packet: the loss impairment did not apply")
		}
		if len(relayEnds) > 0 || len(agentEnds) > 0 || sessions != 1 {
			t.Errorf("sessions between the agent and the relay ended during the soak (the agent connected %d times):\nrelay:\n%s\nagent:\n%s",
				sessions, strings.Join(relayEnds, "\n"), strings.Join(agentEnds, "\n"))
		}
		if !hog.running() {
			t.Errorf("stress-ng ended before the soak did (%v): the host was not busy throughout", hog.err)
		}
	})
}

// lossBasedCC sets TCP's congestion control in home, vps and user, for
// the agent's link to the relay and for the applications, to a
// loss-based one, CUBIC (the default of most systems) or else Reno:
// its rate on a lossy path is bound by the loss (BBR's is not), and it
// fills a router's buffer until the buffer drops (BBR keeps the queue
// short). A namespace may choose only among the allowed ones; where
// neither is, TCP keeps the system's default. It returns the one in use.
func (l *lab) lossBasedCC() string {
	l.t.Helper()
	cc := strings.TrimSpace(l.must(5*time.Second, "home", "sysctl", "-n", "net.ipv4.tcp_congestion_control"))
	allowed := strings.Fields(l.must(5*time.Second, "home", "sysctl", "-n", "net.ipv4.tcp_allowed_congestion_control"))
	if i := slices.IndexFunc([]string{"cubic", "reno"}, func(c string) bool { return slices.Contains(allowed, c) }); i >= 0 {
		cc = []string{"cubic", "reno"}[i]
		for _, role := range []string{"home", "vps", "user"} {
			l.must(5*time.Second, role, "sysctl", "-qw", "net.ipv4.tcp_congestion_control="+cc)
		}
	} else {
		l.t.Logf("neither CUBIC nor Reno may be chosen in a namespace here (allowed: %s): TCP uses %s", strings.Join(allowed, " "), cc)
	}
	return cc
}

// soakUpload sends src (sha256 sum) from the remote user through the web
// tunnel to nginx at home, which stores it in upDir, and checks the copy.
func (l *lab) soakUpload(src string, sum [32]byte, upDir string, i int) soakXfer {
	name := fmt.Sprintf("soak-%d.bin", i)
	x, err := l.curl("user", soakXferMax, "-T", src, tunnelURL("up/"+name))
	s := soakXfer{what: "upload", bytes: x.bytes, took: time.Duration(x.secs * float64(time.Second)), err: err}
	path := filepath.Join(upDir, name)
	defer os.Remove(path)
	switch {
	case err != nil:
	case x.code != 201 && x.code != 204:
		s.err = fmt.Errorf("HTTP status %d", x.code)
	default:
		s.err = checkSum(path, sum)
	}
	return s
}

// soakSCP copies src (sha256 sum) with scp through the SSH tunnel, from
// home to the remote user or (up) the other way, and checks the copy.
func (l *lab) soakSCP(kit sshKit, src string, sum [32]byte, up bool, i int) soakXfer {
	dst := filepath.Join(l.dir, fmt.Sprintf("scp-soak-%d.bin", i))
	defer os.Remove(dst)
	from, to, what := fmt.Sprintf("root@%s:%s", kit.host, src), dst, "download"
	if up {
		from, to, what = src, fmt.Sprintf("root@%s:%s", kit.host, dst), "upload"
	}
	s := soakXfer{what: "scp " + what}
	begin := time.Now()
	if _, err := l.run(soakXferMax, "user", kit.scp(from, to)...); err != nil {
		s.err = err
		return s
	}
	s.took = time.Since(begin)
	st, err := os.Stat(src)
	if err != nil {
		s.err = err
		return s
	}
	s.bytes = st.Size()
	s.err = checkSum(dst, sum)
	return s
}

// hogWorkers counts stress-ng's processes in the hog's process group
// other than the hog itself: its CPU workers.
func hogWorkers(hog *proc) int {
	out, err := os.ReadDir("/proc")
	if err != nil {
		return 0
	}
	n := 0
	for _, e := range out {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == hog.cmd.Process.Pid {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid pgrp ...
		_, rest, ok := strings.Cut(string(stat), ") ")
		f := strings.Fields(rest)
		if !ok || len(f) < 3 || !strings.Contains(string(stat), "(stress-ng") {
			continue
		}
		if pgrp, _ := strconv.Atoi(f[2]); pgrp == hog.cmd.Process.Pid {
			n++
		}
	}
	return n
}

// sampleLoad reads the host's one-minute load average every 5 s until wg
// is done, and sums it up.
func (l *lab) sampleLoad(wg *sync.WaitGroup) string {
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	var loads []float64
	tick := time.NewTicker(5 * time.Second)
	defer tick.Stop()
	for {
		if b, err := os.ReadFile("/proc/loadavg"); err == nil {
			if f := strings.Fields(string(b)); len(f) > 0 {
				if v, err := strconv.ParseFloat(f[0], 64); err == nil {
					loads = append(loads, v)
				}
			}
		}
		select {
		case <-done:
			if len(loads) == 0 {
				return "unknown"
			}
			sum := 0.0
			for _, v := range loads {
				sum += v
			}
			return fmt.Sprintf("mean %.1f, max %.1f (1-minute, %d samples, %d cores)", sum/float64(len(loads)), slices.Max(loads), len(loads), runtime.NumCPU())
		case <-tick.C:
		}
	}
}

// logLines returns p's log lines with message msg.
func logLines(p *proc, msg string) []string {
	var out []string
	for _, line := range strings.Split(p.stderr.String(), "\n") {
		if strings.Contains(line, `msg="`+msg+`"`) {
			out = append(out, line)
		}
	}
	return out
}

// rateRange is the least and most of sorted rates.
func rateRange(rates []float64) string {
	if len(rates) == 0 {
		return "none"
	}
	return fmt.Sprintf("%.2f–%.2f", rates[0], rates[len(rates)-1])
}
