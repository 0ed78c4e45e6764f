//go:build netlab && linux

package netlab

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The attacker: a sixth machine on the internet, hanging off the internet
// router like the remote user, with many addresses of its own (from
// RFC 2544's benchmarking range), so that a flood is spread over many
// sources as a botnet's would be.
const (
	inetAttacker  = "198.18.0.1"  // the internet router, towards the attacker
	attackerFirst = "198.18.0.10" // the attacker's first address; the others follow
	attackerAddrs = 128           // how many addresses the attacker has

	floodConns = 2000 // TCP connections the attacker holds against the agent port
	floodRate  = 5000 // junk datagrams a second to the agent port (udp flood)
	// floodMin is how long a flood lasts at least: past the relay's 10 s
	// handshake timeout, so that the attacker's first connections have
	// been timed out and replaced while the agent works.
	floodMin = 12 * time.Second
)

// Pass conditions.
const (
	// floodRestartLimit: after a restart during a flood, the agent is
	// logged in and a tunneled request works within this time of its
	// start.
	floodRestartLimit = 2 * time.Second
	// sessionDeadLimit: with the default keepalive (10 s) and keepalive
	// timeout (10 s), a silent relay is declared dead within this time
	// (the agent reconnects, the relay frees the ports).
	sessionDeadLimit = 25 * time.Second
)

// addAttacker adds the attacker's namespace to the lab: a veth pair to the
// internet router (att0 there, eth0 in the attacker), attackerAddrs
// addresses from attackerFirst on, and a default route through the
// router. Like the lab's own, it is created inside the namespaces it
// joins, and the lab's teardown removes it with the others.
func (l *lab) addAttacker() {
	l.t.Helper()
	ns := l.ns("attacker")
	l.must(10*time.Second, "", "ip", "netns", "add", ns)
	l.mu.Lock()
	l.made = append(l.made, ns)
	l.mu.Unlock()
	l.must(5*time.Second, "", "ip", "-n", ns, "link", "set", "lo", "up")
	l.must(5*time.Second, "", "ip", "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", "att0", "netns", l.ns("inet"))
	l.must(5*time.Second, "", "ip", "-n", l.ns("inet"), "addr", "add", inetAttacker+"/24", "dev", "att0")
	l.must(5*time.Second, "", "ip", "-n", l.ns("inet"), "link", "set", "dev", "att0", "gso_max_segs", "1", "up")
	// The addresses in one batch: one ip command instead of 128.
	var b strings.Builder
	for _, a := range attackerIPs() {
		fmt.Fprintf(&b, "addr add %s/24 dev eth0\n", a)
	}
	b.WriteString("link set dev eth0 gso_max_segs 1 up\n")
	fmt.Fprintf(&b, "route add default via %s\n", inetAttacker)
	batch := filepath.Join(l.dir, "attacker.ip")
	if err := os.WriteFile(batch, []byte(b.String()), 0o644); err != nil {
		l.t.Fatal(err)
	}
	l.must(20*time.Second, "", "ip", "-n", ns, "-batch", batch)
	l.must(5*time.Second, "attacker", "sysctl", "-qw", "net.ipv4.ip_forward=0")
	// Strict isolation, as in TestPremise: none of it in the tests' own
	// namespace.
	if own := l.must(5*time.Second, "", "ip", "-o", "-4", "addr", "show"); strings.Contains(own, " 198.18.0.") {
		l.t.Fatalf("the tests' own namespace has an attacker's address:\n%s", own)
	}
}

// attackerIPs are the attacker's addresses.
func attackerIPs() []string {
	var out []string
	for i := range attackerAddrs {
		out = append(out, fmt.Sprintf("198.18.0.%d", 10+i))
	}
	return out
}

// buildFlood builds the attacker program (netlab/internal/flood) into a
// directory of t's.
func buildFlood(t *testing.T) string {
	t.Helper()
	need(t, "go")
	gocmd, _ := exec.LookPath("go")
	out := filepath.Join(t.TempDir(), "flood")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, gocmd, "build", "-o", out, "github.com/homeport/homeport/netlab/internal/flood")
	cmd.Env = cleanEnv()
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build the attacker: %v\n%s", err, b)
	}
	return out
}

// floodStats are the attacker's figures (see netlab/internal/flood).
type floodStats struct {
	Mode       string  `json:"mode"`
	Elapsed    float64 `json:"elapsed_s"`
	Final      bool    `json:"final"`
	Open       int64   `json:"open"`
	MaxOpen    int64   `json:"max_open"`
	Dials      int64   `json:"dials"`
	DialErrors int64   `json:"dial_errors"`
	ClosedFast int64   `json:"closed_fast"`
	ClosedSlow int64   `json:"closed_slow"`
	ClosedMid  int64   `json:"closed_mid"`
	Sent       int64   `json:"sent"`
	SendErrors int64   `json:"send_errors"`
	Replies    int64   `json:"replies"`
	Retry      int64   `json:"replies_retry"`
	Initial    int64   `json:"replies_initial"`
	Version    int64   `json:"replies_version"`
	Short      int64   `json:"replies_short"`
	Other      int64   `json:"replies_other"`
}

func (s floodStats) String() string {
	if s.Mode == "udp" {
		return fmt.Sprintf("%d datagrams sent in %.1f s (%.0f/s, %d send errors); replies: %d Retry, %d Initial (refusals), %d short header (stateless resets), %d version negotiation, %d other",
			s.Sent, s.Elapsed, float64(s.Sent)/max(s.Elapsed, 0.001), s.SendErrors, s.Retry, s.Initial, s.Short, s.Version, s.Other)
	}
	return fmt.Sprintf("%d open now (%d at most), %d connections made in %.1f s, %d connects failed; the relay closed %d within 1 s, %d after 5 s or more, %d in between",
		s.Open, s.MaxOpen, s.Dials, s.Elapsed, s.DialErrors, s.ClosedFast, s.ClosedSlow, s.ClosedMid)
}

// flood is the attacker program running in the attacker's namespace.
type flood struct {
	*proc
	started time.Time
}

// startFlood starts the attacker in mode (silent, garbage or udp) against
// the relay's agent port, from all its addresses, for at most limit.
func (l *lab) startFlood(bin, mode string, limit time.Duration) *flood {
	l.t.Helper()
	args := []string{bin, "-mode", mode, "-target", fmt.Sprintf("%s:%d", vpsIP, relayPort),
		"-from", attackerFirst, "-sources", strconv.Itoa(attackerAddrs),
		"-conns", strconv.Itoa(floodConns), "-rate", strconv.Itoa(floodRate),
		"-duration", limit.String(), "-report", "200ms"}
	p := l.start("attacker", "flood-"+mode, nil, args...)
	p.logged = true
	return &flood{proc: p, started: time.Now()}
}

// last returns the attacker's latest figures.
func (f *flood) last() (floodStats, bool) {
	lines := strings.Split(f.stdout.String(), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		var s floodStats
		if json.Unmarshal([]byte(lines[i]), &s) == nil && s.Mode != "" {
			return s, true
		}
	}
	return floodStats{}, false
}

// awaitRamp waits until every slot has dialed (TCP) or a second's worth
// of datagrams has gone out (UDP), then a second more for the relay to
// take it all in.
func (f *flood) awaitRamp(t *testing.T) {
	t.Helper()
	ramped := func(s floodStats) bool { return s.Dials+s.DialErrors >= floodConns || s.Sent >= floodRate }
	deadline := time.Now().Add(15 * time.Second)
	for s, _ := f.last(); !ramped(s); s, _ = f.last() {
		if !f.running() || time.Now().After(deadline) {
			t.Fatalf("the flood did not get going within 15 s: %v; %s", s, f.stderr.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(time.Second)
}

// stop ends the flood (SIGTERM: the attacker closes everything and prints
// its final figures; SIGKILL if it does not exit) and returns the figures.
func (f *flood) stop(t *testing.T) floodStats {
	t.Helper()
	if f.running() {
		_ = syscall.Kill(-f.cmd.Process.Pid, syscall.SIGTERM)
	}
	if exited, err := f.wait(10 * time.Second); !exited {
		t.Errorf("the attacker did not stop within 10 s of SIGTERM")
		f.kill()
	} else if err != nil {
		t.Errorf("the attacker: %v: %s", err, strings.TrimSpace(f.stderr.String()))
	}
	s, _ := f.last()
	if !s.Final {
		t.Errorf("the attacker printed no final figures")
	}
	return s
}

// usage is what a process uses, from /proc.
type usage struct {
	fds, threads int
	rssKiB       int64
}

func (u usage) String() string {
	return fmt.Sprintf("%d fds, %d threads, %.1f MiB RSS", u.fds, u.threads, float64(u.rssKiB)/1024)
}

// procUsage reads pid's descriptors, threads and resident memory.
func procUsage(pid int) (usage, error) {
	var u usage
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return u, fmt.Errorf("descriptors of %d: %w", pid, err)
	}
	u.fds = len(fds)
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return u, fmt.Errorf("status of %d: %w", pid, err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, _ := strings.Cut(sc.Text(), ":")
		fields := strings.Fields(v)
		if len(fields) == 0 {
			continue
		}
		switch k {
		case "VmRSS":
			u.rssKiB, _ = strconv.ParseInt(fields[0], 10, 64)
		case "Threads":
			u.threads, _ = strconv.Atoi(fields[0])
		}
	}
	return u, sc.Err()
}

// usageSampler reads a process's usage every interval and keeps the
// highest of each figure.
type usageSampler struct {
	cancel context.CancelFunc
	done   chan struct{}
	mu     sync.Mutex
	peak   usage
}

func sampleUsage(ctx context.Context, pid int, every time.Duration) *usageSampler {
	ctx, cancel := context.WithCancel(ctx)
	s := &usageSampler{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(s.done)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			if u, err := procUsage(pid); err == nil {
				s.mu.Lock()
				s.peak = usage{fds: max(s.peak.fds, u.fds), threads: max(s.peak.threads, u.threads), rssKiB: max(s.peak.rssKiB, u.rssKiB)}
				s.mu.Unlock()
			}
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	return s
}

// stop ends the sampling and returns the peaks.
func (s *usageSampler) stop() usage {
	s.cancel()
	<-s.done
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.peak
}

// netCounters reads role's kernel counters (/proc/net/snmp and
// /proc/net/netstat) as "TcpExt.ListenOverflows" and the like.
func (l *lab) netCounters(role string) map[string]int64 {
	out, err := l.run(5*time.Second, role, "cat", "/proc/net/snmp", "/proc/net/netstat")
	if err != nil {
		l.t.Logf("kernel counters in %s: %v", role, err)
		return nil
	}
	m := map[string]int64{}
	lines := strings.Split(out, "\n")
	for i := 0; i+1 < len(lines); i++ {
		names, values := strings.Fields(lines[i]), strings.Fields(lines[i+1])
		if len(names) < 2 || len(names) != len(values) || names[0] != values[0] {
			continue
		}
		prefix := strings.TrimSuffix(names[0], ":")
		for j := 1; j < len(names); j++ {
			if v, err := strconv.ParseInt(values[j], 10, 64); err == nil {
				m[prefix+"."+names[j]] = v
			}
		}
		i++
	}
	return m
}

// established counts the established TCP connections in role's namespace
// whose local port is port.
func (l *lab) established(role string, port int) int {
	out, err := l.run(10*time.Second, role, "ss", "-Htn", "state", "established", "sport", "=", fmt.Sprintf(":%d", port))
	if err != nil {
		l.t.Logf("ss in %s: %v", role, err)
		return -1
	}
	return strings.Count(out, "\n")
}

// listening returns which of ports have a listening TCP socket in role's
// namespace.
func (l *lab) listening(role string, ports ...int) []int {
	out, err := l.run(5*time.Second, role, "ss", "-Hltn")
	if err != nil {
		l.t.Logf("ss in %s: %v", role, err)
		return ports // unknown: not freed
	}
	var found []int
	for _, p := range ports {
		if strings.Contains(out, fmt.Sprintf(":%d ", p)) {
			found = append(found, p)
		}
	}
	return found
}

// restart is one restart of the agent and how long its steps took.
type restart struct {
	sig       syscall.Signal
	exit      time.Duration // from the signal to the old agent's exit
	login     time.Duration // from the new agent's start to "connected to relay"; -1: never
	works     time.Duration // from its start to the end of the first tunneled request that worked
	ok        bool          // a tunneled request worked at all (within 30 s)
	transport string        // what the new agent logged in over
}

func (r restart) String() string {
	how := map[syscall.Signal]string{syscall.SIGTERM: "SIGTERM", syscall.SIGKILL: "SIGKILL"}[r.sig]
	login := "never logged in"
	if r.login >= 0 {
		login = "logged in after " + ms(r.login)
	}
	works := "no tunneled request worked within " + ms(r.works)
	if r.ok {
		works = "a tunneled request done after " + ms(r.works)
	}
	return fmt.Sprintf("%s (old agent gone in %s), new agent %s (%s), %s", how, ms(r.exit), login, r.transport, works)
}

// restartAgent stops the agent with sig, as a user or a service manager
// would, and starts it again at once; it measures how long the new one
// takes to log in and to carry a request.
func (l *lab) restartAgent(r *relay, a *proc, tr string, sig syscall.Signal) (*proc, restart) {
	l.t.Helper()
	rs := restart{sig: sig, login: -1}
	t0 := time.Now()
	_ = syscall.Kill(-a.cmd.Process.Pid, sig)
	if exited, _ := a.wait(15 * time.Second); !exited {
		l.t.Errorf("the agent did not exit within 15 s of signal %v", sig)
		a.kill()
	}
	rs.exit = time.Since(t0)
	start := time.Now()
	na := l.launchAgent(r, tr)
	rs.works, rs.ok = l.awaitRequest(start, 30*time.Second)
	// The log reaches us through a pipe, a moment after the request
	// may have worked.
	for wait := time.Now().Add(5 * time.Second); time.Now().Before(wait); time.Sleep(10 * time.Millisecond) {
		if times := na.logTimes("connected to relay"); len(times) > 0 {
			rs.login = times[0].Sub(start)
			break
		}
	}
	rs.transport = na.logField("connected to relay", "transport")
	return na, rs
}

// awaitRequest probes like awaitTunnel, every 50 ms with 500 ms each, and
// returns the time from since to the end of the first probe that worked:
// an upper bound, which includes starting curl.
func (l *lab) awaitRequest(since time.Time, limit time.Duration) (time.Duration, bool) {
	for {
		begin := time.Now()
		if l.probe(500 * time.Millisecond) {
			return time.Since(since), true
		}
		if time.Since(since) > limit {
			return time.Since(since), false
		}
		time.Sleep(max(0, 50*time.Millisecond-time.Since(begin)))
	}
}

// latencies fetches small.txt n times in a row through the tunnel from
// the remote user, each on a new connection; it returns how long each
// that worked took, and how many failed.
func (l *lab) latencies(n int) ([]time.Duration, int) {
	out, err := l.run(time.Duration(n)*5*time.Second+10*time.Second, "user", "curl", "-sS", "--max-time", "5",
		"-H", "Connection: close", "-o", "/dev/null", "-w", "%{http_code} %{size_download} %{time_total}\n",
		fmt.Sprintf("%s?n=[1-%d]", tunnelURL("small.txt"), n))
	if err != nil {
		l.t.Logf("latency requests: %s", firstLine(err))
	}
	var times []time.Duration
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) != 3 || f[0] != "200" || f[1] != strconv.Itoa(smallSize) {
			continue
		}
		if secs, err := strconv.ParseFloat(f[2], 64); err == nil {
			times = append(times, time.Duration(secs*float64(time.Second)))
		}
	}
	return times, n - len(times)
}

// spread summarises durations: median, 90th percentile and maximum.
func spread(ds []time.Duration) string {
	if len(ds) == 0 {
		return "none"
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	q := func(p float64) time.Duration { return s[min(len(s)-1, int(p*float64(len(s))))] }
	return fmt.Sprintf("median %s, p90 %s, max %s", ms(q(0.5)), ms(q(0.9)), ms(s[len(s)-1]))
}

// requests runs smallRequests (n requests, 8 at a time) from a clean
// output directory, so that files of an earlier run cannot count.
func (l *lab) requests(n int) (ok int, took time.Duration, err error) {
	if err := os.RemoveAll(filepath.Join(l.dir, "small")); err != nil {
		return 0, 0, err
	}
	return l.smallRequests(n, 8)
}

// TestAgentPortFlood: an attacker on the internet, with 128 addresses,
// floods the relay's agent port: 2,000 TCP connections that send nothing
// (silent), or a few bytes and then nothing (garbage: random bytes, or the
// start of a TLS record), each dialed again about a second after the
// relay closes it; or 5,000 datagrams a second of junk and QUIC-Initial-shaped
// packets to the agent port's UDP side (udp). During the flood the agent
// is restarted twice (SIGTERM, then SIGKILL) and tunneled requests run.
// The agent must log in and carry a request within 2 s of each restart,
// every tunneled request must work, and after the flood the relay's
// descriptors must return to what they were. With -netlab.long, the relay
// itself is also restarted during a silent flood (relay-restart).
func TestAgentPortFlood(t *testing.T) {
	if skipWhy != "" {
		t.Skip(skipWhy)
	}
	bin := buildFlood(t)
	for _, kind := range []string{"silent", "garbage", "udp"} {
		t.Run(kind, func(t *testing.T) {
			forTransports(t, func(t *testing.T, tr string) { floodRun(t, bin, kind, tr) })
		})
	}
	if *longRun {
		t.Run("relay-restart", func(t *testing.T) {
			forTransports(t, func(t *testing.T, tr string) { floodRelayRestart(t, bin, tr) })
		})
	}
}

func floodRun(t *testing.T, bin, kind, tr string) {
	l := newLab(t)
	l.addAttacker()
	r, a := l.up(tr)
	pid := r.cmd.Process.Pid

	// Without a flood, for comparison.
	a, calm1 := l.restartAgent(r, a, tr, syscall.SIGTERM)
	a, calm2 := l.restartAgent(r, a, tr, syscall.SIGKILL)
	calmLat, calmFailed := l.latencies(20)
	rest, err := procUsage(pid)
	if err != nil {
		t.Fatal(err)
	}
	netBefore := l.netCounters("vps")
	t.Logf("without a flood over %s: relay %v; restarts: %v; %v; 20 requests one after another: %s, %d failed",
		tr, rest, calm1, calm2, spread(calmLat), calmFailed)

	fl := l.startFlood(bin, kind, 2*time.Minute)
	sampler := sampleUsage(l.ctx, pid, 200*time.Millisecond)
	defer sampler.stop()
	fl.awaitRamp(t)

	report := func(when string) int {
		est := l.established("vps", relayPort)
		u, _ := procUsage(pid)
		s, _ := fl.last()
		t.Logf("%s flood over %s, %s in: attacker: %v; relay: %d established TCP connections on its agent port, %v",
			kind, tr, ms(time.Since(fl.started)), s, est, u)
		return est
	}
	held := report("ramped up")
	// What the flood must hold for the relay to feel it: silent, up to
	// the relay's cap on logins in progress (1024); garbage, the half of
	// the slots that stall (the other half the relay closes at once).
	if want := map[string]int{"silent": 1000, "garbage": 800}[kind]; held < want {
		t.Errorf("the %s flood holds only %d connections to the agent port, want at least %d: it does not load the relay", kind, held, want)
	}

	// During the flood: a restart, requests at once and one after another.
	a, rs1 := l.restartAgent(r, a, tr, syscall.SIGTERM)
	t.Logf("%s flood over %s: restart 1: %v", kind, tr, rs1)
	ok1, took1, err1 := l.requests(200)
	t.Logf("%s flood over %s: 200 requests (8 at a time, a new connection each): %d worked in %s (%.0f requests/s), err %v",
		kind, tr, ok1, ms(took1), float64(ok1)/took1.Seconds(), err1)
	lat, latFailed := l.latencies(20)
	t.Logf("%s flood over %s: 20 requests one after another: %s, %d failed (without the flood: %s)",
		kind, tr, spread(lat), latFailed, spread(calmLat))

	// Past the relay's handshake timeout: the flood's first connections
	// have been closed by the relay and dialed again.
	time.Sleep(time.Until(fl.started.Add(floodMin)))
	report("past the handshake timeout")
	lost := a.count(`msg="session lost; reconnecting"`)
	a, rs2 := l.restartAgent(r, a, tr, syscall.SIGKILL)
	t.Logf("%s flood over %s: restart 2: %v", kind, tr, rs2)
	ok2, took2, err2 := l.requests(100)
	t.Logf("%s flood over %s: 100 more requests: %d worked in %s, err %v", kind, tr, ok2, ms(took2), err2)
	lost += a.count(`msg="session lost; reconnecting"`)

	peak := sampler.stop()
	final := fl.stop(t)
	stopped := time.Now()
	t.Logf("%s flood over %s ended after %s: attacker: %v; relay at its peak: %v", kind, tr, ms(stopped.Sub(fl.started)), final, peak)

	// After: the relay lets go of what the flood made it hold.
	var after usage
	settled := time.Duration(-1)
	for time.Since(stopped) < 20*time.Second {
		if after, err = procUsage(pid); err != nil {
			t.Fatal(err)
		}
		if after.fds <= rest.fds+8 {
			settled = time.Since(stopped)
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	netAfter := l.netCounters("vps")
	diff := func(k string) int64 { return netAfter[k] - netBefore[k] }
	t.Logf("%s flood over %s: after the flood the relay is back to %v in %s (before: %v); relay host's kernel during it: %d listen queue overflows, %d SYN cookies sent, %d UDP datagrams in, %d dropped for a full receive buffer",
		kind, tr, after, ms(settled), rest, diff("TcpExt.ListenOverflows"), diff("TcpExt.SyncookiesSent"), diff("Udp.InDatagrams"), diff("Udp.RcvbufErrors"))

	for i, rs := range []restart{rs1, rs2} {
		calm := []restart{calm1, calm2}[i]
		switch {
		case !rs.ok:
			t.Errorf("restart %d during the flood: %v", i+1, rs)
		case rs.works > floodRestartLimit:
			t.Errorf("restart %d during the flood: a tunneled request worked only %s after the agent's start, want at most %v (without the flood: %s)",
				i+1, ms(rs.works), floodRestartLimit, ms(calm.works))
		case rs.transport != tr:
			t.Errorf("restart %d during the flood: the agent logged in over %q, want %q", i+1, rs.transport, tr)
		}
	}
	if ok1 != 200 || err1 != nil {
		t.Errorf("during the flood %d of 200 requests worked: %v", ok1, err1)
	}
	if ok2 != 100 || err2 != nil {
		t.Errorf("during the flood %d of 100 requests worked: %v", ok2, err2)
	}
	if latFailed > 0 {
		t.Errorf("during the flood %d of 20 requests one after another failed", latFailed)
	}
	if lost > 0 {
		t.Errorf("the agent lost its session %d times during the flood", lost)
	}
	if settled < 0 {
		t.Errorf("20 s after the flood the relay still has %v, before it had %v", after, rest)
	}
	if kind == "udp" && float64(final.Sent) < 0.8*floodRate*final.Elapsed {
		t.Errorf("the attacker sent %d datagrams in %.1f s, want about %d a second: it did not load the relay", final.Sent, final.Elapsed, floodRate)
	}
}

// floodRelayRestart: during a silent flood the relay is killed and started
// again 2 s later (a service manager's restart delay). The relay
// remembers which addresses logged in lately (they may go past the cap on
// logins in progress) only in memory: the restarted relay does not know
// the agent any more, and the agent must win one of the slots that the
// flood, dialing again all the while, takes as soon as the relay is back.
func floodRelayRestart(t *testing.T, bin, tr string) {
	const away, limit = 2 * time.Second, 30 * time.Second
	l := newLab(t)
	l.addAttacker()
	r, a := l.up(tr)
	fl := l.startFlood(bin, "silent", 3*time.Minute)
	fl.awaitRamp(t)
	sessions := a.count(`msg="connected to relay"`)
	r.kill()
	time.Sleep(away)
	r = l.startRelay()
	rec, ok := l.awaitTunnel(r.ready, 90*time.Second)
	reconnected := "never"
	if times := a.logTimes("connected to relay"); len(times) > sessions {
		reconnected = ms(times[sessions].Sub(r.ready)) + " after the relay was back"
	}
	refused := a.count(`msg="connecting to relay failed; retrying"`)
	s := fl.stop(t)
	t.Logf("relay restarted (away %v) during a silent flood over %s: agent reconnected %s; tunnel works %s after the relay was back (%v); the agent logged %d failed attempts (%s); attacker: %v",
		away, tr, reconnected, ms(rec), ok, refused, a.logField("connecting to relay failed; retrying", "err"), s)
	if !ok || rec > limit {
		t.Errorf("after a relay restart during the flood the tunnel worked only %s after the relay was back (%v), want at most %v: the restarted relay no longer trusts the agent's address, and the flood takes every slot for logins",
			ms(rec), ok, limit)
	}
}

// vpsChain makes the internet router's chain for the VPS's link (NETLAB-VPS,
// both ways), empty; the test's cleanup removes it.
func (l *lab) vpsChain() {
	l.t.Helper()
	ipt := []string{"iptables", "-w", "5"}
	l.must(5*time.Second, "inet", append(ipt, "-N", "NETLAB-VPS")...)
	jumps := [][]string{{"FORWARD", "-i", "vps0", "-j", "NETLAB-VPS"}, {"FORWARD", "-o", "vps0", "-j", "NETLAB-VPS"}}
	l.t.Cleanup(func() {
		for _, j := range jumps {
			if _, err := l.run(5*time.Second, "inet", append(append(ipt, "-D"), j...)...); err != nil {
				l.t.Logf("remove the VPS chain's jump: %v", err)
			}
		}
		for _, op := range []string{"-F", "-X"} {
			if _, err := l.run(5*time.Second, "inet", append(ipt, op, "NETLAB-VPS")...); err != nil {
				l.t.Logf("iptables %s NETLAB-VPS: %v", op, err)
			}
		}
	})
	for _, j := range jumps {
		l.must(5*time.Second, "inet", append(append(ipt, "-I"), j...)...)
	}
}

// vpsBlackhole drops everything to and from the VPS at the internet
// router (on), or nothing; it returns the packets dropped since the last
// call.
func (l *lab) vpsBlackhole(on bool) int64 {
	l.t.Helper()
	dropped := l.chainDropped("NETLAB-VPS")
	l.must(5*time.Second, "inet", "iptables", "-w", "5", "-F", "NETLAB-VPS")
	if on {
		l.must(5*time.Second, "inet", "iptables", "-w", "5", "-A", "NETLAB-VPS", "-j", "DROP")
	}
	return dropped
}

// TestRelayBlackhole: the VPS vanishes from the network without a word:
// the internet router drops everything to and from it (no FIN, no RST, no
// ICMP) for 30 s (90 s with -netlab.long), the relay and the agent left
// running with the default keepalive settings (a ping every 10 s, 10 s to
// answer). The agent must declare the session dead within 25 s, the relay
// must free the tunnels' public ports within 25 s, and a tunneled request
// from the remote user must work within 2 s of the VPS's return.
func TestRelayBlackhole(t *testing.T) {
	outage := 30 * time.Second
	if *longRun {
		outage = 90 * time.Second
	}
	forTransports(t, func(t *testing.T, tr string) { blackholeRun(t, tr, outage) })
}

func blackholeRun(t *testing.T, tr string, outage time.Duration) {
	l := newLab(t)
	r, a := l.up(tr)
	l.vpsChain()
	// The tunnel idle for a moment, as it mostly is.
	time.Sleep(time.Second)
	sessions := a.count(`msg="connected to relay"`)
	// The agent's link to the relay, to watch it end: its TCP connection
	// or its QUIC socket.
	links := l.agentSockets(tr)
	if len(links) == 0 {
		t.Fatalf("the agent has no %s socket to the relay", tr)
	}
	down := time.Now()
	l.vpsBlackhole(true)

	// During the outage: a request must fail (the outage is real); the
	// relay's public ports are watched from inside the VPS, the agent's
	// link from inside the home PC.
	time.Sleep(time.Second)
	if l.probe(2 * time.Second) {
		t.Error("a tunneled request worked while the VPS was blackholed")
	}
	freed, closed := time.Duration(-1), time.Duration(-1)
	noticed := func() bool { _, ok := firstAfter(a.logTimes("session lost; reconnecting"), down); return ok }
	for {
		if freed < 0 && len(l.listening("vps", webPort, sshPort)) == 0 {
			freed = time.Since(down)
		}
		if closed < 0 {
			now := l.agentSockets(tr)
			gone := true
			for port := range links {
				gone = gone && (now[port] == "" || tr == "tcp" && now[port] != "ESTAB")
			}
			if gone {
				closed = time.Since(down)
			}
		}
		past := time.Since(down)
		// The outage lasts its time, longer (up to 15 s) if the agent or
		// the relay has not reacted yet, to measure when they do.
		if past >= outage && (freed >= 0 && noticed() || past >= outage+15*time.Second) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	var dialing string
	if tr == "tcp" {
		dialing = l.socketStates("home", "tcp", relayPort)
	}
	dropped := l.vpsBlackhole(false)
	up := time.Now()
	rec, ok := l.awaitTunnel(up, 60*time.Second)

	agentDead, relayDead, reconnected := "never", "never", "never"
	agentAfter := time.Duration(-1)
	if ts, ok := firstAfter(a.logTimes("session lost; reconnecting"), down); ok {
		agentAfter = ts.Sub(down)
		agentDead = fmt.Sprintf("%s (%s)", ms(agentAfter), a.logField("session lost; reconnecting", "err"))
	}
	if ts, ok := firstAfter(r.logTimes("agent session down"), down); ok {
		relayDead = fmt.Sprintf("%s (%s)", ms(ts.Sub(down)), r.logField("agent session down", "reason"))
	}
	if times := a.logTimes("connected to relay"); len(times) > sessions {
		if ts, ok := firstAfter(times[sessions:], up); ok {
			reconnected = ms(ts.Sub(up)) + " after the VPS was back"
		} else {
			reconnected = fmt.Sprintf("during the outage (%s after it began)", ms(times[sessions].Sub(down)))
		}
	}
	at := func(d time.Duration) string {
		if d < 0 {
			return "never"
		}
		return "by " + ms(d)
	}
	t.Logf("VPS blackholed for %s over %s (%d packets dropped): agent logged the session dead after %s; its link to the relay (%s) was closed %s; relay ended the session after %s, its public ports were free %s",
		ms(up.Sub(down)), tr, dropped, agentDead, linkNames(links), at(closed), relayDead, at(freed))
	t.Logf("over %s: the agent's log during the outage: %s", tr, logSince(a, down, up))
	if dialing != "" {
		t.Logf("over %s: at the VPS's return the agent's sockets to the relay: %s", tr, dialing)
	}
	t.Logf("over %s: agent reconnected %s; a tunneled request works %s after the VPS was back", tr, reconnected, ms(rec))

	switch {
	case agentAfter < 0:
		t.Errorf("the agent never logged the session dead (outage %s; its link was closed %s)", ms(up.Sub(down)), at(closed))
	case agentAfter > sessionDeadLimit:
		t.Errorf("the agent logged the session dead only after %s, want at most %v", ms(agentAfter), sessionDeadLimit)
	}
	switch {
	case freed < 0:
		t.Errorf("the relay still listens on the tunnels' public ports after %s of silence", ms(up.Sub(down)))
	case freed > sessionDeadLimit:
		t.Errorf("the relay freed the tunnels' public ports only after %s, want at most %v", ms(freed), sessionDeadLimit)
	}
	switch {
	case !ok:
		t.Errorf("no tunneled request worked within %s of the VPS's return", ms(rec))
	case rec > recoveryLimit:
		t.Errorf("a tunneled request worked only %s after the VPS was back, want at most %v", ms(rec), recoveryLimit)
	}
}

// agentSockets returns the home PC's sockets that may carry the agent's
// session, by local port, with their states: over TCP its connections to
// the relay's agent port, over QUIC every UDP socket (the agent's are not
// connected; nothing else at home uses UDP).
func (l *lab) agentSockets(tr string) map[int]string {
	args := []string{"ss", "-Htna", "dport", "=", fmt.Sprintf(":%d", relayPort)}
	if tr == "quic" {
		args = []string{"ss", "-Huan"}
	}
	out, err := l.run(5*time.Second, "home", args...)
	if err != nil {
		l.t.Logf("ss at home: %v", err)
		return nil
	}
	m := map[int]string{}
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) < 5 {
			continue
		}
		if i := strings.LastIndex(f[3], ":"); i >= 0 {
			if port, err := strconv.Atoi(f[3][i+1:]); err == nil {
				m[port] = f[0]
			}
		}
	}
	return m
}

func linkNames(links map[int]string) string {
	var ports []string
	for p := range links {
		ports = append(ports, "port "+strconv.Itoa(p))
	}
	slices.Sort(ports)
	return strings.Join(ports, ", ")
}

var logMsgRE = regexp.MustCompile(`(?:^| )msg=("(?:[^"\\]|\\.)*"|\S+)`)

// logSince lists p's log messages from from to to, each with its time
// after from; at most 12.
func logSince(p *proc, from, to time.Time) string {
	var out []string
	for _, line := range strings.Split(p.stderr.String(), "\n") {
		m, t := logMsgRE.FindStringSubmatch(line), logTimeRE.FindStringSubmatch(line)
		if m == nil || t == nil {
			continue
		}
		ts, err := time.Parse(time.RFC3339Nano, t[1])
		if err != nil || ts.Before(from.Truncate(time.Millisecond)) || ts.After(to) {
			continue
		}
		if len(out) == 12 {
			out = append(out, "…")
			break
		}
		out = append(out, fmt.Sprintf("+%s %s", ms(ts.Sub(from)), strings.Trim(m[1], `"`)))
	}
	if len(out) == 0 {
		return "nothing"
	}
	return strings.Join(out, "; ")
}

// socketStates lists role's sockets (proto tcp or udp) to port on the
// relay: their states and, for TCP, retransmission figures.
func (l *lab) socketStates(role, proto string, port int) string {
	out, err := l.run(5*time.Second, role, "ss", "-Hna"+proto[:1]+"i", "dport", "=", fmt.Sprintf(":%d", port))
	if err != nil {
		return "ss: " + firstLine(err)
	}
	parts := ssSummary(out, func(f []string) string { return f[0] }, "rto:", "backoff:", "retrans:", "lastsnd:")
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, " ")
}
