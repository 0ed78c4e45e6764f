//go:build netlab && linux

package netlab

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/homeport/homeport/config"
)

var (
	longRun  = flag.Bool("netlab.long", false, "run the long variants: the uplink outage lasts 30 s instead of 10 s")
	showLogs = flag.Bool("netlab.logs", false, "print the relay's, agent's and servers' output even when a test passes")
	binDir   = flag.String("netlab.bin", "", "run the relay and agent in this directory instead of building them from this tree")
)

// The lab's addresses. The home LAN is private; everything else uses the
// documentation ranges of RFC 5737, which stand for public addresses here.
const (
	homeIP   = "192.168.7.2"  // the home PC, on the LAN
	homerLAN = "192.168.7.1"  // the home router's LAN side
	homerWAN = "198.51.100.2" // the home router's WAN side: the NAT's outside address
	inetHome = "198.51.100.1" // the internet router, towards the home
	inetVPS  = "203.0.113.1"  // the internet router, towards the VPS
	inetUser = "192.0.2.1"    // the internet router, towards the remote user
	vpsIP    = "203.0.113.10" // the VPS, running the relay
	userIP   = "192.0.2.20"   // the remote user

	// With withUserNAT the remote user sits behind a home router of its
	// own: its LAN is private, and the internet sees the router's
	// outside address.
	userLANIP = "192.168.9.2" // the remote user, on its LAN
	userrLAN  = "192.168.9.1" // the user's router's LAN side
	userrWAN  = "192.0.2.30"  // the user's router's WAN side: its NAT's outside address

	relayPort  = 7000 // the relay's agent port (TCP and UDP)
	webPort    = 8080 // the web tunnel's public port, and nginx's port at home
	sshPort    = 2222 // the SSH tunnel's public port, and sshd's port at home
	directPort = 8081 // nginx on the VPS, for transfers that bypass the tunnel

	bigSize   = 50 << 20 // the large download
	smallSize = 1 << 10  // each of the small requests
	sshSize   = 20 << 20 // the file copied with scp
)

// roles are the lab's namespaces, one per machine.
var roles = []string{"home", "homer", "inet", "vps", "user"}

// cable is one of the lab's cables: a veth pair created directly inside
// the two namespaces it joins, so that nothing ever appears in the
// namespace the tests run in.
type cable struct{ a, aIf, aAddr, b, bIf, bAddr string }

// links are the lab's cables.
var links = []cable{
	{"home", "eth0", homeIP + "/24", "homer", "lan0", homerLAN + "/24"},
	{"homer", "wan0", homerWAN + "/24", "inet", "home0", inetHome + "/24"}, // the home uplink
	{"vps", "eth0", vpsIP + "/24", "inet", "vps0", inetVPS + "/24"},
	{"user", "eth0", userIP + "/24", "inet", "user0", inetUser + "/24"},
}

// userNATLinks replace the user's cable in a lab built withUserNAT: the
// user's LAN, and its router's line to the internet router.
var userNATLinks = []cable{
	{"user", "eth0", userLANIP + "/24", "userr", "lan0", userrLAN + "/24"},
	{"userr", "wan0", userrWAN + "/24", "inet", "user0", inetUser + "/24"},
}

// uplink is the home uplink as seen from the internet router: the
// impairments act on it.
const uplinkIf = "home0"

var (
	runDir  string // this run's binaries and shared data; removed by TestMain
	skipWhy string // why this machine cannot run the lab, if it cannot

	buildOnce sync.Once
	buildErr  error

	dataOnce sync.Once
	dataErr  error
	bigSum   [32]byte // sha256 of www/big.bin
	sshSum   [32]byte // sha256 of www/ssh.bin
	smallTxt []byte   // contents of www/small.txt

	netemOnce sync.Once
	netemErr  error // why netem cannot be used, if it cannot

	labSeq atomic.Int32
)

// nsPattern matches the namespaces of a run of these tests; the number is
// the process ID of the test binary that made them.
var nsPattern = regexp.MustCompile(`^netlab(\d+)-\d+-[a-z]+$`)

func TestMain(m *testing.M) {
	flag.Parse()
	skipWhy = prerequisites()
	if skipWhy == "" {
		sweepStale()
	}
	dir, err := os.MkdirTemp("", "homeport-netlab-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "netlab:", err)
		os.Exit(1)
	}
	runDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// prerequisites returns why the lab cannot run here, or "".
func prerequisites() string {
	if os.Geteuid() != 0 {
		return "netlab needs root (it creates network namespaces and firewall rules): run the tests as root, e.g. in CI or with sudo"
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return "netlab needs the ip command (Debian package iproute2)"
	}
	probe := fmt.Sprintf("netlab%d-0-probe", os.Getpid())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if out, err := exec.CommandContext(ctx, "ip", "netns", "add", probe).CombinedOutput(); err != nil {
		return fmt.Sprintf("ip netns is unavailable here (%v: %s); netlab needs network namespaces", err, strings.TrimSpace(string(out)))
	}
	if out, err := exec.CommandContext(ctx, "ip", "netns", "del", probe).CombinedOutput(); err != nil {
		return fmt.Sprintf("ip netns del %s: %v: %s", probe, err, strings.TrimSpace(string(out)))
	}
	return ""
}

// sweepStale removes the namespaces of earlier runs whose test binary is
// gone (killed before its cleanup ran), and the processes left in them.
func sweepStale() {
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		return
	}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		m := nsPattern.FindStringSubmatch(f[0])
		if m == nil {
			continue
		}
		pid, _ := strconv.Atoi(m[1])
		if pid == os.Getpid() || processAlive(pid) {
			continue
		}
		killAllIn(f[0], 5*time.Second)
		if err := exec.Command("ip", "netns", "del", f[0]).Run(); err == nil {
			fmt.Fprintf(os.Stderr, "netlab: removed namespace %s left by an earlier run\n", f[0])
		}
	}
}

func processAlive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// killAllIn kills every process in namespace ns, by ID, and waits up to d
// for them to be gone. It returns the IDs still there.
func killAllIn(ns string, d time.Duration) []int {
	deadline := time.Now().Add(d)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		out, err := exec.CommandContext(ctx, "ip", "netns", "pids", ns).Output()
		cancel()
		if err != nil {
			return nil // the namespace is gone
		}
		var pids []int
		for _, f := range strings.Fields(string(out)) {
			if pid, err := strconv.Atoi(f); err == nil {
				pids = append(pids, pid)
			}
		}
		if len(pids) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return pids
		}
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// debianPackage names the package that provides a command the lab uses.
var debianPackage = map[string]string{
	"ip": "iproute2", "tc": "iproute2", "iptables": "iptables", "conntrack": "conntrack",
	"sysctl": "procps", "nginx": "nginx", "curl": "curl", "sshd": "openssh-server",
	"ssh": "openssh-client", "scp": "openssh-client", "ssh-keygen": "openssh-client",
	"ping": "iputils-ping", "iperf3": "iperf3", "go": "golang (or Go from go.dev)",
	"ss": "iproute2", "dnsmasq": "dnsmasq-base", "dig": "bind9-dnsutils", "bash": "bash",
	"stress-ng": "stress-ng", "miniupnpd": "miniupnpd-iptables", "iptables-legacy": "iptables",
	"named": "bind9",
}

// need skips the test unless the commands are installed.
func need(t *testing.T, commands ...string) {
	t.Helper()
	for _, c := range commands {
		if _, err := exec.LookPath(c); err != nil {
			t.Skipf("netlab needs the %s command (Debian package %s)", c, debianPackage[c])
		}
	}
}

// binPath returns the built relay or agent. Both are built once per run,
// without the race detector: the lab measures throughput.
func binPath(t *testing.T, name string) string {
	t.Helper()
	if *binDir != "" {
		return filepath.Join(*binDir, name)
	}
	buildOnce.Do(func() {
		gocmd, err := exec.LookPath("go")
		if err != nil {
			buildErr = fmt.Errorf("no go command to build the relay and agent with: %w", err)
			return
		}
		start := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		args := []string{"build", "-o", filepath.Join(runDir, "bin") + string(filepath.Separator),
			"github.com/homeport/homeport/cmd/relay", "github.com/homeport/homeport/cmd/agent"}
		if out, err := exec.CommandContext(ctx, gocmd, args...).CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go %s: %v\n%s", strings.Join(args, " "), err, out)
			return
		}
		t.Logf("built relay and agent in %v", time.Since(start).Round(time.Millisecond))
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return filepath.Join(runDir, "bin", name)
}

// wwwDir returns the directory nginx serves: small.txt, big.bin and
// ssh.bin (for scp), made once per run.
func wwwDir(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(runDir, "www")
	dataOnce.Do(func() {
		if dataErr = os.MkdirAll(dir, 0o755); dataErr != nil {
			return
		}
		rng := rand.NewChaCha8([32]byte{'n', 'e', 't', 'l', 'a', 'b'})
		big := make([]byte, bigSize)
		_, _ = rng.Read(big)
		bigSum = sha256.Sum256(big)
		if dataErr = os.WriteFile(filepath.Join(dir, "big.bin"), big, 0o644); dataErr != nil {
			return
		}
		ssh := make([]byte, sshSize)
		_, _ = rng.Read(ssh)
		sshSum = sha256.Sum256(ssh)
		if dataErr = os.WriteFile(filepath.Join(dir, "ssh.bin"), ssh, 0o644); dataErr != nil {
			return
		}
		smallTxt = bytes.Repeat([]byte("homeport netlab 0123456789abcdef\n"), smallSize/33+1)[:smallSize]
		dataErr = os.WriteFile(filepath.Join(dir, "small.txt"), smallTxt, 0o644)
	})
	if dataErr != nil {
		t.Fatal(dataErr)
	}
	return dir
}

// lab is one instance of the topology, with the processes running in it.
// Everything it creates is removed by the test's cleanup, pass or fail.
type lab struct {
	t   *testing.T
	id  string // prefix of the namespace names, unique per run and lab
	dir string // the lab's files
	ctx context.Context

	mu      sync.Mutex
	made    []string // namespaces created, in order
	procs   []*proc
	rebinds int

	delayCfg *linkConfig // build the home uplink as a delay link (withDelayLink)
	delay    *delayLink  // that link, once built
	userNAT  bool        // the remote user is behind a router of its own (withUserNAT)
	vps2     bool        // a second VPS for a second relay (withSecondVPS)
	// homeWAN and homeGW, when set, replace homerWAN and inetHome on the
	// home uplink (withRoutableHomeWAN).
	homeWAN, homeGW string
}

// labOption changes how newLab builds the lab.
type labOption func(*lab)

// withUserNAT puts the remote user behind a home router of its own,
// userr, made like the home's: it masquerades on its WAN side and drops
// unsolicited inbound packets. The user's address is then userLANIP, and
// the internet (the relay) sees userrWAN.
func withUserNAT() labOption { return func(l *lab) { l.userNAT = true } }

// newLab builds the topology; the test is skipped when the machine
// cannot run it.
func newLab(t *testing.T, opts ...labOption) *lab {
	t.Helper()
	if skipWhy != "" {
		t.Skip(skipWhy)
	}
	need(t, "ip", "iptables", "sysctl", "curl")
	limit := 10 * time.Minute
	if dl, ok := t.Deadline(); ok {
		limit = max(time.Until(dl)-15*time.Second, 30*time.Second)
	}
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	l := &lab{
		t:   t,
		id:  fmt.Sprintf("netlab%d-%d", os.Getpid(), labSeq.Add(1)),
		dir: t.TempDir(),
		ctx: ctx,
	}
	for _, o := range opts {
		o(l)
	}
	t.Cleanup(func() {
		l.teardown()
		cancel()
	})
	start := time.Now()
	l.build()
	t.Logf("lab %s: topology up in %v", l.id, time.Since(start).Round(time.Millisecond))
	return l
}

// ns is the name of role's namespace.
func (l *lab) ns(role string) string { return l.id + "-" + role }

func (l *lab) build() {
	roles, links := slices.Clone(roles), slices.Clone(links)
	routes := [][2]string{{"home", homerLAN}, {"homer", inetHome}, {"vps", inetVPS}, {"user", inetUser}}
	routers := []string{"homer"}
	if l.homeWAN != "" {
		for i, k := range links {
			if k.bIf == uplinkIf {
				links[i].aAddr, links[i].bAddr = l.homeWAN+"/24", l.homeGW+"/24"
			}
		}
		routes[1] = [2]string{"homer", l.homeGW}
	}
	if l.userNAT {
		roles = append(roles, "userr")
		links = append(slices.DeleteFunc(links, func(k cable) bool { return k.a == "user" }), userNATLinks...)
		routes = append(slices.DeleteFunc(routes, func(r [2]string) bool { return r[0] == "user" }),
			[2]string{"user", userrLAN}, [2]string{"userr", inetUser})
		routers = append(routers, "userr")
	}
	if l.vps2 {
		roles = append(roles, "vps2")
		links = append(links, vps2Link)
		routes = append(routes, [2]string{"vps2", inetVPS2})
	}
	for _, r := range roles {
		l.must(10*time.Second, "", "ip", "netns", "add", l.ns(r))
		l.mu.Lock()
		l.made = append(l.made, l.ns(r))
		l.mu.Unlock()
		l.must(5*time.Second, "", "ip", "-n", l.ns(r), "link", "set", "lo", "up")
	}
	for _, k := range links {
		if k.bIf == uplinkIf && l.delayCfg != nil {
			l.buildDelayLink(k.a, k.aIf, k.aAddr, k.b, k.bIf, k.bAddr)
			continue
		}
		l.must(5*time.Second, "", "ip", "-n", l.ns(k.a), "link", "add", k.aIf, "type", "veth", "peer", "name", k.bIf, "netns", l.ns(k.b))
		for _, end := range [][3]string{{k.a, k.aIf, k.aAddr}, {k.b, k.bIf, k.bAddr}} {
			l.must(5*time.Second, "", "ip", "-n", l.ns(end[0]), "addr", "add", end[2], "dev", end[1])
			// One packet per buffer, as on a real wire: without this, TCP
			// and UDP segmentation offload send up to 64 KiB as one
			// buffer, and the loss impairment would drop such bursts
			// whole, and far fewer packets than it says.
			l.must(5*time.Second, "", "ip", "-n", l.ns(end[0]), "link", "set", "dev", end[1], "gso_max_segs", "1", "up")
		}
	}
	// Hosts route through their router; the internet router knows only
	// its own networks (no route to the home LAN: it is private).
	for _, r := range routes {
		l.must(5*time.Second, "", "ip", "-n", l.ns(r[0]), "route", "add", "default", "via", r[1])
	}
	for _, r := range roles {
		fwd := "0"
		if r == "inet" || slices.Contains(routers, r) {
			fwd = "1"
		}
		l.must(5*time.Second, r, "sysctl", "-qw", "net.ipv4.ip_forward="+fwd)
	}
	// The home router (and the user's, if any): masquerade on the WAN
	// side (in a chain of its own, so that rebinding can change it), no
	// port forwarding, and like real home routers it drops what nobody
	// inside asked for.
	for _, router := range routers {
		for _, rule := range [][]string{
			{"-t", "nat", "-N", "NETLAB-NAT"},
			{"-t", "nat", "-A", "POSTROUTING", "-o", "wan0", "-j", "NETLAB-NAT"},
			{"-t", "nat", "-A", "NETLAB-NAT", "-j", "MASQUERADE"},
			{"-A", "FORWARD", "-i", "wan0", "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"},
			{"-A", "FORWARD", "-i", "wan0", "-j", "DROP"},
			{"-A", "INPUT", "-i", "wan0", "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"},
			{"-A", "INPUT", "-i", "wan0", "-j", "DROP"},
		} {
			l.must(5*time.Second, router, append([]string{"iptables", "-w", "5"}, rule...)...)
		}
	}
	// The internet router: impairments of the home uplink go in a chain
	// that sees the uplink's traffic both ways.
	for _, rule := range [][]string{
		{"-N", "NETLAB-UPLINK"},
		{"-A", "FORWARD", "-i", uplinkIf, "-j", "NETLAB-UPLINK"},
		{"-A", "FORWARD", "-o", uplinkIf, "-j", "NETLAB-UPLINK"},
	} {
		l.must(5*time.Second, "inet", append([]string{"iptables", "-w", "5"}, rule...)...)
	}
	netemOnce.Do(func() {
		out, err := l.run(5*time.Second, "", "tc", "-n", l.ns("homer"), "qdisc", "add", "dev", "wan0", "root", "netem", "delay", "1ms")
		if err != nil {
			netemErr = fmt.Errorf("tc netem: %v: %s", err, strings.TrimSpace(out))
			l.t.Logf("netem is not available in this kernel (%v): no delay impairment", netemErr)
			return
		}
		_, _ = l.run(5*time.Second, "", "tc", "-n", l.ns("homer"), "qdisc", "del", "dev", "wan0", "root")
	})
}

// teardown kills every process of the lab, then every process left in
// its namespaces, then deletes the namespaces.
func (l *lab) teardown() {
	l.mu.Lock()
	procs, made := slices.Clone(l.procs), slices.Clone(l.made)
	l.mu.Unlock()
	for i := len(procs) - 1; i >= 0; i-- {
		procs[i].kill()
	}
	if l.t.Failed() || *showLogs {
		for _, p := range procs {
			if p.logged {
				p.dump(l.t)
			}
		}
	}
	if l.delay != nil {
		l.t.Logf("delay link: %s", l.delay.stats())
		if err := l.delay.stop(10 * time.Second); err != nil {
			l.t.Errorf("stop the delay link: %v", err)
		}
	}
	for _, ns := range made {
		if left := killAllIn(ns, 10*time.Second); len(left) > 0 {
			l.t.Errorf("namespace %s: processes %v survive SIGKILL", ns, left)
		}
	}
	for _, ns := range made {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if out, err := exec.CommandContext(ctx, "ip", "netns", "del", ns).CombinedOutput(); err != nil {
			l.t.Errorf("ip netns del %s: %v: %s", ns, err, out)
		}
		cancel()
	}
}

// command returns a command running args in role's namespace ("" for the
// tests' own, only ever used for ip -n and tc -n), in a process group of
// its own that is killed when ctx ends.
func (l *lab) command(ctx context.Context, role string, args ...string) *exec.Cmd {
	if role != "" {
		args = append([]string{"ip", "netns", "exec", l.ns(role)}, args...)
	}
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 2 * time.Second
	cmd.Env = cleanEnv()
	return cmd
}

// cleanEnv is this process's environment without HOMEPORT_ variables,
// which would change the relay's and agent's settings.
func cleanEnv() []string { return config.WithoutSettings(os.Environ()) }

// run runs args in role's namespace for at most d and returns its
// standard output; the error includes its standard error.
func (l *lab) run(d time.Duration, role string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(l.ctx, d)
	defer cancel()
	cmd := l.command(ctx, role, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("%s: still running after %v", strings.Join(args, " "), d)
		}
		err = fmt.Errorf("%w: %s", err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), err
}

// must is run that fails the test on error.
func (l *lab) must(d time.Duration, role string, args ...string) string {
	l.t.Helper()
	out, err := l.run(d, role, args...)
	if err != nil {
		where := role
		if where == "" {
			where = "test namespace"
		}
		l.t.Fatalf("[%s] %s: %v", where, strings.Join(args, " "), err)
	}
	return out
}

// logBuf is a concurrency-safe, bounded output sink.
type logBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

const logBufMax = 8 << 20

func (b *logBuf) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.b.Len() < logBufMax {
		b.b.Write(p)
	}
	return len(p), nil
}

func (b *logBuf) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// proc is a long-running process in one of the lab's namespaces.
type proc struct {
	name   string
	role   string
	args   []string
	logged bool // dump its output when the test fails
	cmd    *exec.Cmd
	stdout logBuf
	stderr logBuf
	done   chan struct{}
	err    error // Wait's result, once done is closed
}

// start starts args in role's namespace with extra environment env. The
// process is killed by the lab's cleanup at the latest.
func (l *lab) start(role, name string, env []string, args ...string) *proc {
	l.t.Helper()
	p := &proc{name: name, role: role, args: args, done: make(chan struct{})}
	p.cmd = l.command(l.ctx, role, args...)
	p.cmd.Env = append(p.cmd.Env, env...)
	p.cmd.Stdout, p.cmd.Stderr = &p.stdout, &p.stderr
	if err := p.cmd.Start(); err != nil {
		l.t.Fatalf("start %s: %v", name, err)
	}
	l.mu.Lock()
	l.procs = append(l.procs, p)
	l.mu.Unlock()
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	return p
}

func (p *proc) running() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// kill sends SIGKILL to the process's group and waits for it to exit.
func (p *proc) kill() {
	if p.running() {
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	}
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
	}
}

// wait waits up to d for the process to exit; it reports whether it did
// and Wait's error.
func (p *proc) wait(d time.Duration) (exited bool, err error) {
	select {
	case <-p.done:
		return true, p.err
	case <-time.After(d):
		return false, nil
	}
}

func (p *proc) dump(t *testing.T) {
	tail := func(s string) string {
		const keep = 16 << 10
		if len(s) > keep {
			return "…" + s[len(s)-keep:]
		}
		return s
	}
	t.Logf("[%s] %s %s\n--- stdout:\n%s--- stderr:\n%s", p.role, p.name, strings.Join(redact(p.args), " "), tail(p.stdout.String()), tail(p.stderr.String()))
}

// redact hides the value of --token in logged command lines.
func redact(args []string) []string {
	out := slices.Clone(args)
	for i := range out {
		if out[i] == "--token" && i+1 < len(out) {
			out[i+1] = "…"
		}
	}
	return out
}

// count is how often s occurs in the process's standard error (the log).
func (p *proc) count(s string) int { return strings.Count(p.stderr.String(), s) }

// await polls cond every 10 ms for up to d; the process exiting first
// fails the test.
func (p *proc) await(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if !p.running() {
			if cond() {
				return
			}
			t.Fatalf("%s exited (%v) while waiting for %s", p.name, p.err, what)
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// logTimes returns the times of the log lines with message msg.
func (p *proc) logTimes(msg string) []time.Time {
	var out []time.Time
	for _, line := range strings.Split(p.stderr.String(), "\n") {
		if !strings.Contains(line, `msg="`+msg+`"`) && !strings.Contains(line, "msg="+msg+" ") {
			continue
		}
		if m := logTimeRE.FindStringSubmatch(line); m != nil {
			if ts, err := time.Parse(time.RFC3339Nano, m[1]); err == nil {
				out = append(out, ts)
			}
		}
	}
	return out
}

var logTimeRE = regexp.MustCompile(`^time=(\S+)`)

// logField returns the value of key in the last log line with message msg.
func (p *proc) logField(msg, key string) string {
	var val string
	re := regexp.MustCompile(`(?:^| )` + regexp.QuoteMeta(key) + `=("(?:[^"\\]|\\.)*"|\S+)`)
	for _, line := range strings.Split(p.stderr.String(), "\n") {
		if !strings.Contains(line, `msg="`+msg+`"`) {
			continue
		}
		if m := re.FindStringSubmatch(line); m != nil {
			val = strings.Trim(m[1], `"`)
		}
	}
	return val
}

// relay is a running relay on the VPS and the agent command it printed.
type relay struct {
	*proc
	addr               string // its agent address, HOST:PORT
	token, fingerprint string
	ready              time.Time // when it printed its banner
}

// bannerRE matches the agent command of the relay's banner, which shows
// <token> in place of the token: its output is not a terminal.
var bannerRE = regexp.MustCompile(`(?m)^  HOMEPORT_TOKEN='<token>' agent --relay (\S+) --fingerprint (\S+) --tunnel`)

// startRelay starts the relay on the VPS. Its data directory is the lab's,
// so a restarted relay keeps its token and key. The visitor guard's
// limits are raised: the scenarios open many connections from the one
// remote user's address on purpose.
func (l *lab) startRelay() *relay { return l.startRelayConf("", "") }

// startRelayConf starts the relay like startRelay, with the configuration
// file conf ("" for none) whose token is token ("": none, the relay
// generates one into its data directory).
func (l *lab) startRelayConf(conf, token string) *relay {
	l.t.Helper()
	return l.startRelayAt("vps", vpsIP, conf, token)
}

// startRelayAt starts a relay like startRelayConf in role's namespace
// (a VPS) whose address is ip. Its data directory is the lab's
// relay-data, or role-relay-data for a role other than vps.
func (l *lab) startRelayAt(role, ip, conf, token string) *relay {
	l.t.Helper()
	args := []string{binPath(l.t, "relay")}
	if conf != "" {
		args = append(args, "--config", conf)
	}
	dataDir := filepath.Join(l.dir, "relay-data")
	if role != "vps" {
		dataDir = filepath.Join(l.dir, role+"-relay-data")
	}
	args = append(args,
		"--data-dir", dataDir,
		"--listen", fmt.Sprintf("%s:%d", ip, relayPort),
		"--advertise", ip,
		"--allow-ports", "1024-65535",
		"--visitor-rate", "100000",
		"--visitor-burst", "10000",
		"--visitor-max-conns", "1000",
		"--visitor-ban-after", "0")
	name := "relay"
	if role != "vps" {
		name = role + "-relay"
	}
	p := l.start(role, name, nil, args...)
	p.logged = true
	var m []string
	p.await(l.t, 20*time.Second, "the relay's banner", func() bool {
		m = bannerRE.FindStringSubmatch(p.stdout.String())
		return m != nil
	})
	addr := fmt.Sprintf("%s:%d", ip, relayPort)
	if m[1] != addr {
		l.t.Errorf("relay banner: --relay %s, want %s", m[1], addr)
	}
	if token == "" {
		b, err := os.ReadFile(filepath.Join(dataDir, "token"))
		if err != nil {
			l.t.Fatalf("the relay's token: %v", err)
		}
		token = strings.TrimSpace(string(b))
	}
	return &relay{proc: p, addr: addr, token: token, fingerprint: m[2], ready: time.Now()}
}

// startAgent starts the agent at home with transport ("tcp", "quic" or
// "auto") and two tunnels: web (8080 to nginx) and ssh (2222 to sshd),
// and the extra ones (--tunnel values). It waits until all are
// registered.
func (l *lab) startAgent(r *relay, transport string, extra ...string) *proc {
	l.t.Helper()
	return l.startAgentTunnels(r, transport, append(defaultTunnels(), extra...)...)
}

// startAgentTunnels starts the agent at home with transport and exactly
// tunnels (--tunnel values), and waits until all are registered.
func (l *lab) startAgentTunnels(r *relay, transport string, tunnels ...string) *proc {
	l.t.Helper()
	p := l.launchAgentTunnels(r, transport, tunnels...)
	want := len(tunnels)
	p.await(l.t, 30*time.Second, fmt.Sprintf("the agent's %d tunnels", want), func() bool { return p.count(`msg="tunnel ready"`) >= want })
	if transport != "auto" {
		if got := p.logField("connected to relay", "transport"); got != transport {
			l.t.Fatalf("agent connected over %q, want %q", got, transport)
		}
	}
	return p
}

// defaultTunnels are the agent's usual tunnels: web (8080 to nginx) and
// ssh (2222 to sshd).
func defaultTunnels() []string {
	return []string{fmt.Sprintf("web=%d:127.0.0.1:%d", webPort, webPort), fmt.Sprintf("ssh=%d:127.0.0.1:%d", sshPort, sshPort)}
}

// launchAgent starts the agent like startAgent, without waiting.
func (l *lab) launchAgent(r *relay, transport string, extra ...string) *proc {
	l.t.Helper()
	return l.launchAgentTunnels(r, transport, append(defaultTunnels(), extra...)...)
}

// launchAgentTunnels starts the agent like startAgentTunnels, without
// waiting.
func (l *lab) launchAgentTunnels(r *relay, transport string, tunnels ...string) *proc {
	l.t.Helper()
	args := []string{binPath(l.t, "agent"),
		"--relay", fmt.Sprintf("%s:%d", vpsIP, relayPort),
		"--fingerprint", r.fingerprint,
		"--transport", transport,
		"--id", "home-pc"}
	for _, tun := range tunnels {
		args = append(args, "--tunnel", tun)
	}
	p := l.start("home", "agent", []string{"HOMEPORT_TOKEN=" + r.token}, args...)
	p.logged = true
	return p
}

// startNginx runs nginx in role's namespace on listen, serving the shared
// www directory, with /up/ accepting PUT uploads into its own directory
// (returned). It waits until nginx answers.
func (l *lab) startNginx(role, listen string) (upDir string) {
	l.t.Helper()
	need(l.t, "nginx")
	www := wwwDir(l.t)
	dir := filepath.Join(l.dir, "nginx-"+role)
	for _, d := range []string{"tmp", "up"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			l.t.Fatal(err)
		}
	}
	conf := fmt.Sprintf(`# netlab: nginx in the %[4]s namespace
user root;
worker_processes 1;
pid %[1]s/nginx.pid;
error_log stderr warn;
events { worker_connections 1024; }
http {
	access_log off;
	sendfile on;
	tcp_nopush on;
	keepalive_requests 1000;
	default_type application/octet-stream;
	types { text/plain txt; }
	client_body_temp_path %[1]s/tmp/body;
	proxy_temp_path %[1]s/tmp/proxy;
	fastcgi_temp_path %[1]s/tmp/fastcgi;
	uwsgi_temp_path %[1]s/tmp/uwsgi;
	scgi_temp_path %[1]s/tmp/scgi;
	server {
		listen %[2]s;
		root %[3]s;
		location /up/ {
			root %[1]s;
			dav_methods PUT;
			create_full_put_path on;
			client_max_body_size 0;
		}
	}
}
`, dir, listen, www, role)
	path := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		l.t.Fatal(err)
	}
	nginx, _ := exec.LookPath("nginx")
	p := l.start(role, "nginx-"+role, nil, nginx, "-e", "stderr", "-p", dir, "-c", path, "-g", "daemon off;")
	p.logged = true
	url := "http://" + listen + "/small.txt"
	deadline := time.Now().Add(10 * time.Second)
	for {
		if x, err := l.curl(role, 2*time.Second, "-o", "/dev/null", url); err == nil && x.code == 200 {
			return filepath.Join(dir, "up")
		}
		if !p.running() || time.Now().After(deadline) {
			p.dump(l.t)
			l.t.Fatalf("nginx in %s does not answer on %s", role, listen)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// xfer is what curl reports about one transfer.
type xfer struct {
	code  int
	bytes int64 // downloaded, or uploaded for an upload
	secs  float64
}

func (x xfer) mibps() float64 {
	if x.secs <= 0 {
		return 0
	}
	return float64(x.bytes) / x.secs / (1 << 20)
}

func (x xfer) String() string {
	return fmt.Sprintf("%.1f MiB in %.2f s = %.1f MiB/s", float64(x.bytes)/(1<<20), x.secs, x.mibps())
}

const curlWriteOut = "%{http_code} %{size_download} %{size_upload} %{time_total}\n"

// curl runs one curl transfer in role's namespace, at most d long.
func (l *lab) curl(role string, d time.Duration, args ...string) (xfer, error) {
	a := append([]string{"curl", "-sS", "--max-time", fmt.Sprintf("%.1f", d.Seconds()), "-w", curlWriteOut}, args...)
	out, err := l.run(d+5*time.Second, role, a...)
	x, perr := parseXfer(out)
	if err != nil {
		return x, err
	}
	return x, perr
}

func parseXfer(out string) (xfer, error) {
	lines := strings.Split(strings.TrimSpace(out), "\n")
	f := strings.Fields(lines[len(lines)-1])
	if len(f) != 4 {
		return xfer{}, fmt.Errorf("curl wrote %q", out)
	}
	var x xfer
	x.code, _ = strconv.Atoi(f[0])
	down, _ := strconv.ParseInt(f[1], 10, 64)
	up, _ := strconv.ParseInt(f[2], 10, 64)
	x.bytes = max(down, up)
	x.secs, _ = strconv.ParseFloat(f[3], 64)
	return x, nil
}

// tunnelURL is a file's URL through the relay's web tunnel.
func tunnelURL(file string) string { return fmt.Sprintf("http://%s:%d/%s", vpsIP, webPort, file) }

// download fetches the large file through the tunnel from the remote
// user and checks its checksum.
func (l *lab) download(what string, d time.Duration, extra ...string) (xfer, error) {
	return l.downloadPart(what, d, bigSize, bigSum, extra...)
}

// downloadPart fetches the first n bytes of the large file (all of it
// when n is bigSize; else with a range request) through the tunnel from
// the remote user and checks their checksum against want.
func (l *lab) downloadPart(what string, d time.Duration, n int64, want [32]byte, extra ...string) (xfer, error) {
	out := filepath.Join(l.dir, fmt.Sprintf("download-%d.bin", time.Now().UnixNano()))
	defer os.Remove(out)
	code := 200
	if n != bigSize {
		code = 206
		extra = append(slices.Clone(extra), "-r", fmt.Sprintf("0-%d", n-1))
	}
	x, err := l.curl("user", d, append(extra, "-o", out, tunnelURL("big.bin"))...)
	if err != nil {
		return x, fmt.Errorf("%s: %w", what, err)
	}
	if x.code != code {
		return x, fmt.Errorf("%s: HTTP status %d, want %d", what, x.code, code)
	}
	return x, checkSum(out, want)
}

// directUpload sends the large file from the home PC straight to nginx on
// the VPS (through the NAT and the home uplink, not through the tunnel):
// the same direction as a tunneled download, for comparison.
func (l *lab) directUpload(upDir string, d time.Duration) (xfer, error) {
	return l.directUploadFile(upDir, d, filepath.Join(wwwDir(l.t), "big.bin"), bigSum)
}

// directUploadFile is directUpload of the file at src, whose sha256 is
// sum.
func (l *lab) directUploadFile(upDir string, d time.Duration, src string, sum [32]byte) (xfer, error) {
	name := fmt.Sprintf("direct-%d.bin", time.Now().UnixNano())
	x, err := l.curl("home", d, "-T", src,
		fmt.Sprintf("http://%s:%d/up/%s", vpsIP, directPort, name))
	if err != nil {
		return x, fmt.Errorf("direct upload: %w", err)
	}
	if x.code != 201 && x.code != 204 {
		return x, fmt.Errorf("direct upload: HTTP status %d", x.code)
	}
	path := filepath.Join(upDir, name)
	defer os.Remove(path)
	return x, checkSum(path, sum)
}

// checkSum compares the sha256 of the file at path with want.
func checkSum(path string, want [32]byte) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return err
	}
	if got := h.Sum(nil); !bytes.Equal(got, want[:]) {
		return fmt.Errorf("%s: %d bytes with sha256 %x, want %x", path, n, got, want)
	}
	return nil
}

// probe makes one new connection through the web tunnel from the remote
// user and reports whether it fetched small.txt.
func (l *lab) probe(timeout time.Duration) bool {
	x, err := l.curl("user", timeout, "-o", "/dev/null", tunnelURL("small.txt"))
	return err == nil && x.code == 200 && x.bytes == smallSize
}

// awaitTunnel probes every 100 ms until a probe succeeds or limit has
// passed since since; it returns the time from since to the start of the
// first successful probe.
func (l *lab) awaitTunnel(since time.Time, limit time.Duration) (time.Duration, bool) {
	for {
		begin := time.Now()
		if l.probe(time.Second) {
			return begin.Sub(since), true
		}
		if time.Since(since) > limit {
			return time.Since(since), false
		}
		time.Sleep(max(0, 100*time.Millisecond-time.Since(begin)))
	}
}

// Impairments of the home uplink (the cable between homer and inet).

// uplinkLoss drops each packet crossing the home uplink, either way, with
// probability p; 0 clears every impairment of the uplink's chain.
func (l *lab) uplinkLoss(p float64) {
	l.t.Helper()
	l.must(5*time.Second, "inet", "iptables", "-w", "5", "-F", "NETLAB-UPLINK")
	if p > 0 {
		l.must(5*time.Second, "inet", "iptables", "-w", "5", "-A", "NETLAB-UPLINK",
			"-m", "statistic", "--mode", "random", "--probability", strconv.FormatFloat(p, 'f', -1, 64), "-j", "DROP")
	}
}

// uplinkBlackhole drops everything on the home uplink (on) or nothing.
func (l *lab) uplinkBlackhole(on bool) {
	l.t.Helper()
	l.must(5*time.Second, "inet", "iptables", "-w", "5", "-F", "NETLAB-UPLINK")
	if on {
		l.must(5*time.Second, "inet", "iptables", "-w", "5", "-A", "NETLAB-UPLINK", "-j", "DROP")
	}
}

// uplinkLink takes the home uplink down or up, as a cable pulled at the
// internet side: the home router loses its carrier, the internet router
// its route to the home's network.
func (l *lab) uplinkLink(up bool) {
	l.t.Helper()
	state := "down"
	if up {
		state = "up"
	}
	l.must(5*time.Second, "", "ip", "-n", l.ns("inet"), "link", "set", uplinkIf, state)
	if l.delay != nil {
		// A TUN device has no peer to lose: the home end's carrier
		// follows the internet end by hand, as a veth's would.
		if err := l.delay.setCarrier(up); err != nil {
			l.t.Fatal(err)
		}
	}
}

// uplinkDelay adds oneWay of delay each way on the home uplink: the
// delay link's, when the lab has one (withDelayLink), else netem's; the
// test is skipped where neither is available.
func (l *lab) uplinkDelay(oneWay time.Duration) {
	l.t.Helper()
	if l.delay != nil {
		l.delay.setDelay(oneWay)
		return
	}
	if netemErr != nil {
		l.t.Skipf("no delay impairment: %v", netemErr)
	}
	d := fmt.Sprintf("%dus", oneWay.Microseconds())
	l.must(5*time.Second, "", "tc", "-n", l.ns("homer"), "qdisc", "replace", "dev", "wan0", "root", "netem", "delay", d, "limit", "10000")
	l.must(5*time.Second, "", "tc", "-n", l.ns("inet"), "qdisc", "replace", "dev", uplinkIf, "root", "netem", "delay", d, "limit", "10000")
}

// natFlush makes the home router forget every NAT mapping.
func (l *lab) natFlush() {
	l.t.Helper()
	need(l.t, "conntrack")
	l.must(5*time.Second, "homer", "conntrack", "-F")
}

// natRebind makes the home router give every flow a new outside port: it
// moves masquerading to a port range not used before and forgets every
// mapping. It returns the new range.
func (l *lab) natRebind() (lo, hi int) {
	l.t.Helper()
	need(l.t, "conntrack")
	l.mu.Lock()
	l.rebinds++
	n := l.rebinds
	l.mu.Unlock()
	lo, hi = 20000+(n-1)*1000, 20000+(n-1)*1000+999
	ports := fmt.Sprintf("%d-%d", lo, hi)
	ipt := []string{"iptables", "-w", "5", "-t", "nat"}
	l.must(5*time.Second, "homer", append(ipt, "-F", "NETLAB-NAT")...)
	for _, p := range []string{"tcp", "udp"} {
		l.must(5*time.Second, "homer", append(ipt, "-A", "NETLAB-NAT", "-p", p, "-j", "MASQUERADE", "--to-ports", ports)...)
	}
	l.must(5*time.Second, "homer", append(ipt, "-A", "NETLAB-NAT", "-j", "MASQUERADE")...)
	l.must(5*time.Second, "homer", "conntrack", "-F")
	return lo, hi
}

// natMappings returns the outside ports the home router currently maps
// for the agent's flows to the relay, for protocol proto (tcp or udp).
func (l *lab) natMappings(proto string) []int {
	l.t.Helper()
	out, err := l.run(5*time.Second, "homer", "conntrack", "-L", "-p", proto, "--dport", strconv.Itoa(relayPort))
	if err != nil {
		l.t.Logf("conntrack -L: %v", err)
	}
	var ports []int
	for _, line := range strings.Split(out, "\n") {
		// The reply direction's dport is the outside port.
		m := regexp.MustCompile(`dport=(\d+)`).FindAllStringSubmatch(line, -1)
		if len(m) == 2 && strings.Contains(line, "src="+homeIP) {
			p, _ := strconv.Atoi(m[1][1])
			ports = append(ports, p)
		}
	}
	return ports
}
