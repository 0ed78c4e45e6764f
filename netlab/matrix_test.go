//go:build netlab && linux

package netlab

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
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

var (
	matrixMode  = flag.String("netlab.matrix", "quick", "TestPathMatrix and TestLatencyUnderLoad: quick (a few cells) or full")
	matrixRuns  = flag.Int("netlab.matrix.runs", 0, "runs per cell, whose median is reported (0: 1 with quick, 3 with full)")
	matrixFor   = flag.Duration("netlab.matrix.for", 8*time.Second, "each transfer's time limit")
	matrixSize  = flag.Int64("netlab.matrix.size", 64<<20, "each transfer's byte limit")
	matrixCells = flag.String("netlab.matrix.cells", "", "run only the cells whose name (e.g. cubic/rtt50/loss0.5/20M/down) matches this regular expression")
	matrixOut   = flag.String("netlab.matrix.out", "", "write the tables into this Markdown file, between its netlab markers (appended with them when it has none)")
	matrixKeep  = flag.Bool("netlab.matrix.keep", false, "keep the matrix's agents (their sessions) from cell to cell, changing only with the congestion control, instead of starting them for each cell once its path is set")
	matrixCtl   = flag.String("netlab.matrix.sysctl", "", "comma-separated key=value sysctls to set in home, vps and user for the matrix and the latency test, e.g. net.ipv4.tcp_slow_start_after_idle=0")
)

const (
	pathloadPort = 9100 // pathload's server at home (127.0.0.1) and on the VPS
	// minBuffer is the least queue the router in front of the rate limit
	// holds, in time at the rate; it holds a round trip when that is
	// more (a bandwidth-delay product, the textbook size).
	minBuffer = 50 * time.Millisecond
)

// matrixTransports are the agent's transports the matrix measures; each
// runs in an agent of its own, all at once, so that a cell's runs go
// side by side with plain TCP's.
var matrixTransports = []string{"tcp", "quic", "auto"}

// pathCell is one path of the matrix, and the direction of its transfer.
type pathCell struct {
	cc   string // both hosts' TCP congestion control
	rtt  time.Duration
	loss float64 // each way
	mbit int64   // the bottleneck's rate each way, in Mbit/s
	dir  string  // down: to the visitor (home → internet); up: from it
}

func (c pathCell) name() string {
	return fmt.Sprintf("%s/rtt%d/loss%g/%dM/%s", c.cc, c.rtt.Milliseconds(), c.loss*100, c.mbit, c.dir)
}

// rate is the bottleneck in bytes per second, and buffer its router's
// queue in bytes.
func (c pathCell) rate() int64   { return c.mbit * 1_000_000 / 8 }
func (c pathCell) buffer() int64 { return c.rate() * int64(max(c.rtt, minBuffer)) / int64(time.Second) }

// matrixCellList is the matrix: every combination in full, a few cells
// in quick (the default, short enough for CI).
func matrixCellList(full bool) []pathCell {
	if !full {
		return []pathCell{
			{"cubic", 10 * time.Millisecond, 0, 100, "down"},
			{"cubic", 50 * time.Millisecond, 0.005, 20, "down"},
			{"bbr", 50 * time.Millisecond, 0.005, 20, "down"},
		}
	}
	var cells []pathCell
	for _, cc := range []string{"cubic", "bbr"} {
		for _, rtt := range []time.Duration{10 * time.Millisecond, 50 * time.Millisecond, 150 * time.Millisecond} {
			for _, mbit := range []int64{20, 100} {
				for _, loss := range []float64{0, 0.005, 0.02} {
					for _, dir := range []string{"down", "up"} {
						cells = append(cells, pathCell{cc, rtt, loss, mbit, dir})
					}
				}
			}
		}
	}
	return cells
}

func matrixFull(t *testing.T) bool {
	switch *matrixMode {
	case "quick":
		return false
	case "full":
		return true
	}
	t.Fatalf("-netlab.matrix=%q: want quick or full", *matrixMode)
	return false
}

func matrixRunCount(full bool) int {
	if *matrixRuns > 0 {
		return *matrixRuns
	}
	if full {
		return 3
	}
	return 1
}

// pathBed is a lab on the delay link with pathload's server at home and
// on the VPS, the relay, and an agent per transport, each with a tunnel
// to the server at home.
type pathBed struct {
	*lab
	bin    string // pathload
	relay  *relay
	cc     string           // the congestion control set now
	agents map[string]*proc // by transport, for cc
	ports  map[string]int   // the agents' tunnels' public ports
	ccSeq  int
}

func newPathBed(t *testing.T) *pathBed {
	need(t, "ping", "sysctl")
	l := newLab(t, withDelayLink(linkConfig{delay: 5 * time.Millisecond}))
	b := &pathBed{lab: l, bin: buildPathload(t)}
	for _, s := range [][2]string{{"home", fmt.Sprintf("127.0.0.1:%d", pathloadPort)}, {"vps", fmt.Sprintf("%s:%d", vpsIP, pathloadPort)}} {
		p := l.start(s[0], "pathload-"+s[0], nil, b.bin, "-mode", "serve", "-listen", s[1])
		p.logged = true
		p.await(t, 10*time.Second, "pathload listening in "+s[0], func() bool { return strings.Contains(p.stdout.String(), "listening") })
	}
	if *matrixCtl != "" {
		for _, kv := range strings.Split(*matrixCtl, ",") {
			for _, role := range []string{"home", "vps", "user"} {
				l.must(5*time.Second, role, "sysctl", "-qw", strings.TrimSpace(kv))
			}
			t.Logf("set %s in home, vps and user", kv)
		}
	}
	b.relay = l.startRelay()
	return b
}

// senderTCP summarises the tcp agent's TCP connection to the relay as
// its sending end sees it (the agent's for dir down, the relay's for up):
// congestion window, slow-start threshold, round trip, data not yet sent
// and the socket's send memory (skmem w: bytes queued, tb: its limit).
func (b *pathBed) senderTCP(dir string) string {
	role, sel := "home", "dport"
	if dir == "up" {
		role, sel = "vps", "sport"
	}
	out, err := b.run(5*time.Second, role, "ss", "-tinmH", "state", "established", sel, "=", fmt.Sprintf(":%d", relayPort))
	if err != nil {
		return "ss: " + firstLine(err)
	}
	parts := ssSummary(out, func([]string) string { return "" }, "cwnd:", "ssthresh:", "rtt:", "notsent:", "skmem:", "retrans:")
	if len(parts) == 0 {
		return "no connection"
	}
	return role + ": " + strings.Join(parts, " ")
}

// buildPathload builds netlab/internal/pathload into a directory of t's.
func buildPathload(t *testing.T) string {
	t.Helper()
	need(t, "go")
	gocmd, _ := exec.LookPath("go")
	out := filepath.Join(t.TempDir(), "pathload")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, gocmd, "build", "-o", out, "github.com/homeport/homeport/netlab/internal/pathload")
	cmd.Env = cleanEnv()
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build pathload: %v\n%s", err, b)
	}
	return out
}

// useCC sets TCP's congestion control in home, vps and user to cc and
// starts the agents afresh (a TCP connection keeps the congestion
// control it was made with). It returns why cc cannot be used here, or
// "".
func (b *pathBed) useCC(cc string) string {
	b.t.Helper()
	if b.cc == cc {
		return ""
	}
	avail := strings.Fields(b.must(5*time.Second, "home", "sysctl", "-n", "net.ipv4.tcp_available_congestion_control"))
	if !slices.Contains(avail, cc) {
		out, err := b.run(30*time.Second, "", "modprobe", "tcp_"+cc)
		avail = strings.Fields(b.must(5*time.Second, "home", "sysctl", "-n", "net.ipv4.tcp_available_congestion_control"))
		if !slices.Contains(avail, cc) {
			return fmt.Sprintf("the kernel has no %s congestion control (available: %s; modprobe tcp_%s: %v %s)", cc, strings.Join(avail, " "), cc, err, strings.TrimSpace(out))
		}
	}
	// A namespace other than the machine's may choose only the allowed
	// ones (a machine-wide list, here e.g. "reno bbr" without CUBIC): the
	// list is widened for the test and put back by its cleanup.
	const allowedKey = "net.ipv4.tcp_allowed_congestion_control"
	allowed := strings.TrimSpace(b.must(5*time.Second, "", "sysctl", "-n", allowedKey))
	if !slices.Contains(strings.Fields(allowed), cc) {
		if out, err := b.run(5*time.Second, "", "sysctl", "-qw", allowedKey+"="+allowed+" "+cc); err != nil {
			return fmt.Sprintf("%s is not among the congestion controls a namespace may choose (%s), and adding it failed: %v %s", cc, allowed, err, out)
		}
		b.t.Logf("%s: %s widened from %q for the test", cc, allowedKey, allowed)
		b.t.Cleanup(func() {
			if out, err := exec.Command("sysctl", "-qw", allowedKey+"="+allowed).CombinedOutput(); err != nil {
				b.t.Errorf("put %s back to %q: %v %s", allowedKey, allowed, err, out)
			}
		})
	}
	for _, role := range []string{"home", "vps", "user"} {
		if out, err := b.run(5*time.Second, role, "sysctl", "-qw", "net.ipv4.tcp_congestion_control="+cc); err != nil {
			return fmt.Sprintf("a namespace may not choose %s: %v %s", cc, err, out)
		}
		if got := strings.TrimSpace(b.must(5*time.Second, role, "sysctl", "-n", "net.ipv4.tcp_congestion_control")); got != cc {
			return fmt.Sprintf("%s's congestion control is %s after setting %s", role, got, cc)
		}
	}
	for _, a := range b.agents {
		a.stop()
	}
	b.cc, b.agents, b.ports = cc, map[string]*proc{}, map[string]int{}
	b.ccSeq++
	for i, tr := range matrixTransports {
		// Ports and ids of their own per congestion control: the relay
		// may still hold the killed agents' QUIC sessions for a while.
		port := pathloadPort + 10*b.ccSeq + i + 1
		b.ports[tr] = port
		b.agents[tr] = b.startPathAgent(tr, fmt.Sprintf("home-%s-%s", tr, cc), port)
	}
	return ""
}

// stop ends the process with SIGTERM (an agent then says goodbye to the
// relay, which frees its id and ports at once), or SIGKILL after 10 s.
func (p *proc) stop() {
	if p.running() {
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGTERM)
	}
	if exited, _ := p.wait(10 * time.Second); !exited {
		p.kill()
	}
}

// startPathAgent starts an agent at home with transport tr and id, and
// one tunnel, public port to pathload's server at home, and waits until
// it is ready.
func (b *pathBed) startPathAgent(tr, id string, port int) *proc {
	b.t.Helper()
	p := b.start("home", "agent-"+id, []string{"HOMEPORT_TOKEN=" + b.relay.token}, binPath(b.t, "agent"),
		"--relay", fmt.Sprintf("%s:%d", vpsIP, relayPort),
		"--fingerprint", b.relay.fingerprint,
		"--transport", tr,
		"--id", id,
		"--tunnel", fmt.Sprintf("pl=%d:127.0.0.1:%d", port, pathloadPort))
	p.logged = true
	p.await(b.t, 30*time.Second, "agent "+id+"'s tunnel", func() bool { return p.count(`msg="tunnel ready"`) >= 1 })
	if got := p.logField("connected to relay", "transport"); tr != "auto" && got != tr {
		b.t.Fatalf("agent %s connected over %q, want %q", id, got, tr)
	}
	return p
}

// setPath makes the uplink c's path, and checks that the round trip is
// there. The loss is set last: ping must not lose its answers.
func (b *pathBed) setPath(c pathCell) {
	b.t.Helper()
	b.uplinkLoss(0)
	b.delay.setDelay(c.rtt / 2)
	b.delay.setRate(c.rate(), c.buffer())
	rtt, _, err := b.pingRTT("home", vpsIP, 5)
	if err != nil {
		b.t.Fatal(err)
	}
	if rtt[0] < c.rtt {
		b.t.Errorf("%s: ping home → VPS: round trip %v, want at least %v", c.name(), rtt[0], c.rtt)
	}
	b.uplinkDropped() // zero the counter
	b.uplinkLoss(c.loss)
}

// bulk is one transfer's result (pathload's).
type bulk struct {
	Bytes    int64   `json:"bytes"`
	Secs     float64 `json:"secs"`
	Complete bool    `json:"complete"`
}

func (x bulk) mbps() float64 {
	if x.Secs <= 0 {
		return 0
	}
	return float64(x.Bytes) * 8 / x.Secs / 1e6
}

// transfer moves data over kind ("plain", or a transport's tunnel) in
// direction dir, bounded by -netlab.matrix.for and .size. Down is from
// the home PC: through the tunnel to the visitor, or plain from the home
// PC to the VPS; up is the other way.
func (b *pathBed) transfer(kind, dir string, seed int) (bulk, error) {
	role, addr, mode := "user", fmt.Sprintf("%s:%d", vpsIP, b.ports[kind]), dir
	if kind == "plain" {
		role, addr = "home", fmt.Sprintf("%s:%d", vpsIP, pathloadPort)
		mode = map[string]string{"down": "up", "up": "down"}[dir]
	}
	out, err := b.run(*matrixFor+90*time.Second, role, b.bin, "-mode", mode, "-addr", addr,
		"-size", strconv.FormatInt(*matrixSize, 10), "-for", matrixFor.String(), "-seed", strconv.Itoa(seed))
	var x bulk
	if jerr := json.Unmarshal([]byte(strings.TrimSpace(out)), &x); jerr != nil && err == nil {
		err = fmt.Errorf("pathload wrote %q: %w", out, jerr)
	}
	if err != nil {
		return x, fmt.Errorf("%s %s: %w", kind, dir, err)
	}
	return x, nil
}

// pings is pathload's ping result: round trips in milliseconds.
type pings struct {
	N   int     `json:"n"`
	P50 float64 `json:"p50_ms"`
	P99 float64 `json:"p99_ms"`
	Min float64 `json:"min_ms"`
	Max float64 `json:"max_ms"`
}

func (p pings) String() string { return fmt.Sprintf("%.0f / %.0f", p.P50, p.P99) }

// pingPong sends 64-byte pings over one connection of kind ("plain":
// home PC to the VPS; else from the visitor through that transport's
// tunnel) for d after wait.
func (b *pathBed) pingPong(kind string, wait, d time.Duration) (pings, error) {
	role, addr := "user", fmt.Sprintf("%s:%d", vpsIP, b.ports[kind])
	if kind == "plain" {
		role, addr = "home", fmt.Sprintf("%s:%d", vpsIP, pathloadPort)
	}
	out, err := b.run(wait+d+90*time.Second, role, b.bin, "-mode", "ping", "-addr", addr, "-wait", wait.String(), "-for", d.String())
	var p pings
	if jerr := json.Unmarshal([]byte(strings.TrimSpace(out)), &p); jerr != nil && err == nil {
		err = fmt.Errorf("pathload wrote %q: %w", out, jerr)
	}
	if err != nil {
		return p, fmt.Errorf("ping-pong over %s: %w", kind, err)
	}
	return p, nil
}

// quiet waits for the uplink to carry only the sessions' heartbeats:
// the last transfer's data has drained.
func (b *pathBed) quiet() {
	if !b.delay.awaitQuiet(30*time.Second, 40) {
		b.t.Logf("the uplink did not go quiet within 30 s (%s)", b.delay.stats())
	}
}

// autoOver is the transport the auto agent's session uses now, and how
// many sessions it has had.
func (b *pathBed) autoOver() string {
	a := b.agents["auto"]
	return fmt.Sprintf("%s, %d sessions", a.logField("connected to relay", "transport"), a.count(`msg="connected to relay"`))
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// TestPathMatrix measures one stream's throughput through the tunnel
// over each transport (tcp, quic, auto) next to plain TCP over the same
// path, on a grid of paths made by the delay link: round trip 10, 50,
// 150 ms; random loss 0, 0.5, 2 % each way; a bottleneck of 20 or
// 100 Mbit/s each way behind a router buffer of a round trip at that
// rate (at least 50 ms); each direction; both hosts' TCP congestion
// control CUBIC and BBR. Each transfer is bounded by -netlab.matrix.for
// and -netlab.matrix.size, and every byte is checked. The default
// (-netlab.matrix=quick) runs three cells; -netlab.matrix=full runs the
// 72, with -netlab.matrix.runs runs each (medians), and
// -netlab.matrix.cells picks some by name. With -netlab.matrix.out the
// table goes into that Markdown file. Passes when every transfer
// completes with the right bytes and the path is as asked: the round
// trip by ping, the loss by the packets dropped, the rate by plain TCP's
// throughput not above it.
func TestPathMatrix(t *testing.T) {
	full := matrixFull(t)
	runs := matrixRunCount(full)
	var pick *regexp.Regexp
	if *matrixCells != "" {
		var err error
		if pick, err = regexp.Compile(*matrixCells); err != nil {
			t.Fatalf("-netlab.matrix.cells: %v", err)
		}
	}
	b := newPathBed(t)
	load0 := loadAvg()
	kinds := append([]string{"plain"}, matrixTransports...)
	var rows []string
	skipped := map[string]string{}
	for _, c := range matrixCellList(full) {
		if pick != nil && !pick.MatchString(c.name()) {
			continue
		}
		if _, ok := skipped[c.cc]; ok {
			continue
		}
		// The path first, then the sessions: a session's congestion
		// control keeps what it learnt of the path (the least round
		// trip, the slow-start threshold after losses), and a round
		// trip larger than the least it has seen ends slow start at
		// once, in quic-go and in Linux's CUBIC alike.
		b.setPath(c)
		if !*matrixKeep {
			b.cc = "" // useCC starts new agents
		}
		if why := b.useCC(c.cc); why != "" {
			skipped[c.cc] = why
			t.Logf("skipping the %s cells: %s", c.cc, why)
			continue
		}
		rates := map[string][]float64{}
		failed := map[string]bool{}
		for run := range runs {
			for _, k := range kinds {
				if k == "tcp" {
					t.Logf("%s: before the tcp transfer, %s", c.name(), b.senderTCP(c.dir))
				}
				x, err := b.transfer(k, c.dir, run+1)
				if err != nil {
					t.Errorf("%s: %v", c.name(), err)
					failed[k] = true
				} else {
					rates[k] = append(rates[k], x.mbps())
				}
				b.quiet()
			}
		}
		var dropped int64
		if c.loss > 0 {
			if dropped = b.uplinkDropped(); dropped == 0 {
				t.Errorf("%s: the uplink dropped no packet: the loss impairment did not apply", c.name())
			}
		}
		plain := median(rates["plain"])
		if plain > 1.1*float64(c.mbit) {
			t.Errorf("%s: plain TCP carried %.1f Mbit/s, more than the %d Mbit/s the link allows: the rate limit did not act", c.name(), plain, c.mbit)
		}
		cellText := func(k string) string {
			if failed[k] && len(rates[k]) == 0 {
				return "failed"
			}
			m := median(rates[k])
			if k == "plain" || plain <= 0 {
				return fmt.Sprintf("%.1f", m)
			}
			return fmt.Sprintf("%.1f (%.2f)", m, m/plain)
		}
		cols := []string{c.cc, strconv.FormatInt(c.rtt.Milliseconds(), 10), fmt.Sprintf("%g", c.loss*100), strconv.FormatInt(c.mbit, 10), c.dir}
		for _, k := range kinds {
			cols = append(cols, cellText(k))
		}
		cols = append(cols, b.autoOver())
		row := "| " + strings.Join(cols, " | ") + " |"
		rows = append(rows, row)
		t.Logf("%s: %s (runs %v; %d packets dropped)", c.name(), row, rates, dropped)
	}
	var md strings.Builder
	sessions := "new agents (sessions) for each cell, started once its path is set"
	if *matrixKeep {
		sessions = "the agents (sessions) kept from cell to cell, new with each congestion control"
	}
	fmt.Fprintf(&md, "%s; %d run(s) per cell, medians; each transfer at most %v or %d MiB; %s.\n\n",
		runContext(load0), runs, *matrixFor, *matrixSize>>20, sessions)
	md.WriteString("| cc | RTT ms | loss % | Mbit/s | dir | plain TCP | tcp (ratio) | quic (ratio) | auto (ratio) | auto's transport |\n")
	md.WriteString("| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | --- |\n")
	md.WriteString(strings.Join(rows, "\n") + "\n")
	for cc, why := range skipped {
		fmt.Fprintf(&md, "\nThe %s cells were skipped: %s.\n", cc, why)
	}
	t.Logf("path matrix:\n%s", md.String())
	writeSection(t, "path-matrix", md.String())
}

// latencyPath is the path TestLatencyUnderLoad runs on: a 20 Mbit/s
// home uplink with 50 ms round trip and no loss, where a bulk transfer
// fills the router's buffer and the tunnel's own buffers.
var latencyPath = pathCell{rtt: 50 * time.Millisecond, mbit: 20}

// TestLatencyUnderLoad: a 64-byte ping-pong on one tunnel connection
// while another connection through the same agent session carries a
// bulk transfer (a file copy during a remote-desktop session), per
// transport, on a 20 Mbit/s path with 50 ms round trip (the delay link,
// a router buffer of 50 ms). Next to it, the path's own: ping-pong over
// plain TCP home → VPS alone, and beside a plain TCP bulk transfer. The
// bulk's throughput is reported alone and beside the ping-pong. The
// default runs the download (home → visitor) with CUBIC; -netlab.matrix=full
// both directions with CUBIC and BBR. Passes when every transfer and
// every ping completes with the right bytes.
func TestLatencyUnderLoad(t *testing.T) {
	full := matrixFull(t)
	b := newPathBed(t)
	load0 := loadAvg()
	ccs, dirs := []string{"cubic"}, []string{"down"}
	if full {
		ccs, dirs = []string{"cubic", "bbr"}, []string{"down", "up"}
	}
	d := *matrixFor
	wait := time.Second
	pingFor := max(d-2*wait, time.Second)
	// together runs the bulk transfer and the ping-pong side by side:
	// the pings start a second into the transfer and end before it.
	together := func(bulkKind, pingKind, dir string) (bulk, pings, error) {
		var (
			wg   sync.WaitGroup
			x    bulk
			p    pings
			xErr error
		)
		wg.Go(func() { x, xErr = b.transfer(bulkKind, dir, 7) })
		if bulkKind == "tcp" {
			// Where the pongs wait: the sender's socket, halfway through.
			wg.Go(func() {
				time.Sleep(wait + pingFor/2)
				t.Logf("tcp transport, %s, halfway through the bulk transfer: %s", dir, b.senderTCP(dir))
			})
		}
		p, pErr := b.pingPong(pingKind, wait, pingFor)
		wg.Wait()
		b.quiet()
		return x, p, errors.Join(xErr, pErr)
	}
	var rows []string
	var skipped []string
	for _, cc := range ccs {
		c := latencyPath
		c.cc = cc
		b.setPath(c) // before the agents start: see TestPathMatrix
		if why := b.useCC(cc); why != "" {
			skipped = append(skipped, fmt.Sprintf("The %s rows were skipped: %s.", cc, why))
			t.Logf("skipping %s: %s", cc, why)
			continue
		}
		for _, dir := range dirs {
			c.dir = dir
			idle, err := b.pingPong("plain", 0, pingFor)
			if err != nil {
				t.Fatal(err)
			}
			plainX, loaded, err := together("plain", "plain", dir)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%s: plain TCP ping-pong p50/p99 %v ms idle, %v ms beside plain bulk (%.1f Mbit/s)", c.name(), idle, loaded, plainX.mbps())
			for _, tr := range matrixTransports {
				tIdle, err := b.pingPong(tr, 0, pingFor)
				if err != nil {
					t.Errorf("%s %s: %v", c.name(), tr, err)
					continue
				}
				alone, err := b.transfer(tr, dir, 8)
				b.quiet()
				if err != nil {
					t.Errorf("%s %s: %v", c.name(), tr, err)
					continue
				}
				withX, withP, err := together(tr, tr, dir)
				if err != nil {
					t.Errorf("%s %s: %v", c.name(), tr, err)
					continue
				}
				tname := tr
				if tr == "auto" {
					tname = "auto (" + b.agents["auto"].logField("connected to relay", "transport") + ")"
				}
				row := fmt.Sprintf("| %s | %s | %s | %v | %v | %v | %v | %.1f | %.1f | %.1f |",
					cc, dir, tname, idle, loaded, tIdle, withP, plainX.mbps(), alone.mbps(), withX.mbps())
				rows = append(rows, row)
				t.Logf("%s %s: %s (%d pings under load, max %.0f ms)", c.name(), tr, row, withP.N, withP.Max)
			}
		}
	}
	var md strings.Builder
	fmt.Fprintf(&md, "%s; path: %d ms round trip, %d Mbit/s each way behind a %v router buffer, no loss; each bulk transfer at most %v or %d MiB, pings every 20 ms for %v from 1 s into it.\n\n",
		runContext(load0), latencyPath.rtt.Milliseconds(), latencyPath.mbit, max(latencyPath.rtt, minBuffer), d, *matrixSize>>20, pingFor)
	md.WriteString("| cc | dir | transport | plain ping p50/p99 ms, idle | plain ping beside plain bulk | tunnel ping, idle | tunnel ping beside tunnel bulk | plain bulk Mbit/s | tunnel bulk alone | tunnel bulk beside ping |\n")
	md.WriteString("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n")
	md.WriteString(strings.Join(rows, "\n") + "\n")
	for _, s := range skipped {
		md.WriteString("\n" + s + "\n")
	}
	t.Logf("latency under load:\n%s", md.String())
	writeSection(t, "latency-under-load", md.String())
}

// loadAvg is the machine's load average (1, 5, 15 minutes).
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

// runContext says when, on what and at which commit the figures were
// taken.
func runContext(load0 string) string {
	commit := "unknown commit"
	if out, err := exec.Command("git", "rev-parse", "--short", "HEAD").Output(); err == nil {
		commit = "commit " + strings.TrimSpace(string(out))
		if st, err := exec.Command("git", "status", "--porcelain", "--untracked-files=no").Output(); err == nil && len(strings.TrimSpace(string(st))) > 0 {
			commit += " with local changes"
		}
	}
	kernel := "?"
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		kernel = strings.TrimSpace(string(b))
	}
	return fmt.Sprintf("%s, %s, Linux %s, load average %s at the start and %s at the end",
		time.Now().UTC().Format("2006-01-02"), commit, kernel, load0, loadAvg())
}

// writeSection puts text into the -netlab.matrix.out file between the
// markers of name, or appends it with them when the file has none.
func writeSection(t *testing.T, name, text string) {
	t.Helper()
	if *matrixOut == "" {
		return
	}
	begin, end := "<!-- netlab:"+name+" -->\n", "<!-- /netlab:"+name+" -->\n"
	old, err := os.ReadFile(*matrixOut)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	doc := string(old)
	block := begin + text + end
	i, j := strings.Index(doc, begin), strings.Index(doc, end)
	if i >= 0 && j > i {
		doc = doc[:i] + block + doc[j+len(end):]
	} else {
		if doc != "" && !strings.HasSuffix(doc, "\n\n") {
			doc += "\n"
		}
		doc += block
	}
	if err := os.WriteFile(*matrixOut, []byte(doc), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("wrote the table into %s", *matrixOut)
}
