package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/homeport/homeport/config"
)

// terminate asks a process to stop gracefully (where signals exist).
var terminate os.Signal = syscall.SIGTERM

// buildBinaries builds the relay and agent commands into dir and returns
// their paths. It needs the go command and the homeport module (run from
// within the repository).
func buildBinaries(ctx context.Context, dir string) (relayBin, agentBin string, err error) {
	gocmd, err := exec.LookPath("go")
	if err != nil {
		return "", "", fmt.Errorf("building relay and agent: %w (or give --relay-bin and --agent-bin)", err)
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	args := []string{"build", "-o", dir + string(filepath.Separator),
		"github.com/homeport/homeport/cmd/relay", "github.com/homeport/homeport/cmd/agent"}
	cmd := exec.CommandContext(ctx, gocmd, args...)
	cmd.Env = childEnv()
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", "", fmt.Errorf("go %s: %v\n%s(run from the homeport repository, or give --relay-bin and --agent-bin)", strings.Join(args, " "), err, out)
	}
	return filepath.Join(dir, exeName("relay")), filepath.Join(dir, exeName("agent")), nil
}

func exeName(name string) string {
	if runtime.GOOS == "windows" {
		return name + ".exe"
	}
	return name
}

// childEnv is this process's environment without HOMEPORT_ variables,
// which would change the relay's and agent's settings.
func childEnv() []string { return config.WithoutSettings(os.Environ()) }

// proc is a started relay or agent. Its standard output and error go to
// files in its directory.
type proc struct {
	name           string
	cmd            *exec.Cmd
	stdout, stderr string // file names
	done           chan struct{}
}

// stopWait bounds a graceful stop; then the process is killed.
const stopWait = 5 * time.Second

func startProc(name, bin, dir string, args ...string) (*proc, error) {
	p := &proc{
		name:   name,
		stdout: filepath.Join(dir, name+".stdout"),
		stderr: filepath.Join(dir, name+".log"),
		done:   make(chan struct{}),
	}
	out, err := os.Create(p.stdout)
	if err != nil {
		return nil, err
	}
	defer out.Close()
	errf, err := os.Create(p.stderr)
	if err != nil {
		return nil, err
	}
	defer errf.Close()
	p.cmd = exec.Command(bin, args...)
	p.cmd.Env = childEnv()
	p.cmd.Stdout, p.cmd.Stderr = out, errf
	p.cmd.SysProcAttr = childAttr()
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	go func() {
		_ = p.cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

func (p *proc) running() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// stop ends the process: SIGTERM (a graceful stop), then SIGKILL after
// stopWait. It returns once the process is gone.
func (p *proc) stop() {
	if !p.running() {
		return
	}
	if err := p.cmd.Process.Signal(terminate); err != nil {
		_ = p.cmd.Process.Kill()
	}
	select {
	case <-p.done:
		return
	case <-time.After(stopWait):
	}
	_ = p.cmd.Process.Kill()
	<-p.done
}

// logText returns what the process wrote to stderr (its log).
func (p *proc) logText() string {
	b, _ := os.ReadFile(p.stderr)
	return string(b)
}

// logTail returns the last lines of the process's log, for errors.
func (p *proc) logTail() string {
	lines := strings.Split(strings.TrimSpace(p.logText()), "\n")
	if len(lines) > 8 {
		lines = lines[len(lines)-8:]
	}
	return p.name + " log:\n    " + strings.Join(lines, "\n    ")
}

// await polls cond every 20 ms for up to d; the process exiting first is
// an error.
func (p *proc) await(ctx context.Context, d time.Duration, what string, cond func() bool) error {
	deadline := time.Now().Add(d)
	for !cond() {
		if !p.running() {
			return fmt.Errorf("%s exited (%v) while waiting for %s\n%s", p.name, p.cmd.ProcessState, what, p.logTail())
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no %s after %v\n%s", what, d, p.logTail())
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	return nil
}

// bannerRE matches the agent command the relay prints: the token (or
// <token>, when it is not shown), the relay's address and fingerprint.
// oldBannerRE matches it as relays before the token moved to the
// environment printed it, for --relay-bin.
var (
	bannerRE    = regexp.MustCompile(`(?m)^  HOMEPORT_TOKEN='([^']*)' agent --relay (\S+) --fingerprint (\S+) `)
	oldBannerRE = regexp.MustCompile(`(?m)^  agent --relay (\S+) --token (\S+) --fingerprint (\S+) `)
)

// parseBanner returns the relay address, token and fingerprint of the
// relay's banner in out; the token comes from the token file in dataDir
// when the banner shows <token> (its output is not a terminal).
func parseBanner(out, dataDir string) (relayAddr, token, fingerprint string, ok bool) {
	if m := bannerRE.FindStringSubmatch(out); m != nil {
		relayAddr, token, fingerprint = m[2], m[1], m[3]
	} else if m := oldBannerRE.FindStringSubmatch(out); m != nil {
		relayAddr, token, fingerprint = m[1], m[2], m[3]
	} else {
		return "", "", "", false
	}
	if token == "<token>" {
		b, err := os.ReadFile(filepath.Join(dataDir, "token"))
		if err != nil {
			return "", "", "", false
		}
		token = strings.TrimSpace(string(b))
	}
	return relayAddr, token, fingerprint, true
}

// pair is a relay and an agent with one tunnel to the target.
type pair struct {
	relay, agent *proc
	public       string // the tunnel's public address on the relay
	dir          string
	stopVia      func() // stops what the agent connects through, if anything
}

// pairOptions change how a pair runs.
type pairOptions struct {
	// via, if set, starts what the agent connects to instead of the
	// relay's agent port (a delaying forwarder to it) and returns its
	// address and how to stop it.
	via func(ctx context.Context, relayAddr string) (addr string, stop func(), err error)
	// args are more flags for both relay and agent.
	args []string
	// relayArgs are more flags for the relay only; tunnels are more
	// --tunnel values for the agent, each awaited as ready.
	relayArgs, tunnels []string
}

// visitorLimit lifts the relay's per-visitor limits: the load comes from
// one address, at rates far beyond what the defaults allow.
const visitorLimit = "1048576"

// startPair starts a relay and an agent over transport with a tunnel to
// targetAddr, in a new directory under workDir, and waits for the tunnel
// to be ready. A public port taken in the meantime by someone else is
// retried with another.
func startPair(ctx context.Context, b binaries, transport, targetAddr, workDir string, o pairOptions) (*pair, error) {
	var err error
	for attempt := 0; attempt < 3; attempt++ {
		var p *pair
		if p, err = tryPair(ctx, b, transport, targetAddr, workDir, o); err == nil {
			return p, nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
	}
	return nil, err
}

func tryPair(ctx context.Context, b binaries, transport, targetAddr, workDir string, o pairOptions) (*pair, error) {
	dir, err := os.MkdirTemp(workDir, transport+"-")
	if err != nil {
		return nil, err
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	p := &pair{dir: dir, public: net.JoinHostPort("127.0.0.1", strconv.Itoa(port))}
	p.relay, err = startProc("relay", b.relay, dir, append([]string{
		"--data-dir", filepath.Join(dir, "data"),
		"--listen", "127.0.0.1:0", // the relay finds a port free for TCP and UDP
		"--bind-addr", "127.0.0.1",
		"--advertise", "127.0.0.1",
		"--allow-ports", strconv.Itoa(port),
		"--shutdown-timeout", "1s",
		"--max-handshakes-per-ip", "1024",
		"--visitor-max-conns", visitorLimit,
		"--visitor-rate", visitorLimit,
		"--visitor-burst", visitorLimit,
		"--visitor-ban-after", "0",
	}, append(o.args, o.relayArgs...)...)...)
	if err != nil {
		return nil, err
	}
	var relayAddr, token, fingerprint string
	err = p.relay.await(ctx, 20*time.Second, "relay banner", func() bool {
		out, _ := os.ReadFile(p.relay.stdout)
		var ok bool
		relayAddr, token, fingerprint, ok = parseBanner(string(out), filepath.Join(dir, "data"))
		return ok
	})
	if err != nil {
		p.stop()
		return nil, err
	}
	if o.via != nil {
		if relayAddr, p.stopVia, err = o.via(ctx, relayAddr); err != nil {
			p.stop()
			return nil, err
		}
	}
	agentArgs := []string{
		"--relay", relayAddr, "--token", token, "--fingerprint", fingerprint,
		"--transport", transport,
		"--id", "homeport-load",
		"--tunnel", fmt.Sprintf("load=%d:%s", port, targetAddr),
	}
	for _, t := range o.tunnels {
		agentArgs = append(agentArgs, "--tunnel", t)
	}
	p.agent, err = startProc("agent", b.agent, dir, append(agentArgs, o.args...)...)
	if err != nil {
		p.stop()
		return nil, err
	}
	err = p.agent.await(ctx, 20*time.Second, "tunnels ready", func() bool {
		return strings.Count(p.agent.logText(), `msg="tunnel ready"`) >= 1+len(o.tunnels)
	})
	if err == nil && !strings.Contains(p.agent.logText(), "transport="+transport) {
		err = fmt.Errorf("agent did not connect over %s\n%s", transport, p.agent.logTail())
	}
	if err != nil {
		p.stop()
		return nil, err
	}
	return p, nil
}

// stop stops the agent first, as an operator would, then what it
// connected through, then the relay.
func (p *pair) stop() {
	if p.agent != nil {
		p.agent.stop()
	}
	if p.stopVia != nil {
		p.stopVia()
	}
	if p.relay != nil {
		p.relay.stop()
	}
}

// check returns an error if relay or agent has exited.
func (p *pair) check() error {
	for _, pr := range []*proc{p.relay, p.agent} {
		if !pr.running() {
			return fmt.Errorf("%s exited (%v)\n%s", pr.name, pr.cmd.ProcessState, pr.logTail())
		}
	}
	return nil
}

// warnings sums up the warnings and errors in the relay's and agent's
// logs: message and count.
func (p *pair) warnings() []string {
	var out []string
	msgRE := regexp.MustCompile(`msg="([^"]*)"|msg=(\S+)`)
	for _, pr := range []*proc{p.relay, p.agent} {
		counts := map[string]int{}
		var order []string
		for line := range strings.Lines(pr.logText()) {
			if !strings.Contains(line, "level=WARN") && !strings.Contains(line, "level=ERROR") {
				continue
			}
			m := msgRE.FindStringSubmatch(line)
			if m == nil {
				continue
			}
			msg := m[1] + m[2]
			if counts[msg] == 0 {
				order = append(order, msg)
			}
			counts[msg]++
		}
		for _, msg := range order {
			out = append(out, fmt.Sprintf("%s logged %q %d×", pr.name, msg, counts[msg]))
		}
	}
	return out
}

// freePort returns a TCP port on loopback that was free a moment ago.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// binaries are the relay and agent commands to run.
type binaries struct{ relay, agent string }

func (b binaries) check() error {
	for _, path := range []string{b.relay, b.agent} {
		st, err := os.Stat(path)
		if err != nil {
			return err
		}
		if st.IsDir() {
			return errors.New(path + " is a directory")
		}
	}
	return nil
}
