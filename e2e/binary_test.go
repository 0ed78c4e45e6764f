//go:build unix

package e2e

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/homeport/homeport/config"
	"github.com/homeport/homeport/internal/leak"
	"github.com/homeport/homeport/internal/testenv"
	"github.com/homeport/homeport/relay"
)

// The tests in this file run the relay and agent commands as built for
// users, as separate processes, and look only at what a user sees: the
// printed banner, the exit codes, the logs, the ports and the data
// directory.

// binProcTimeout bounds the life of every started process: a hung test
// never leaves one behind.
const binProcTimeout = 2 * time.Minute

var (
	binDir     string // the built commands; removed by TestMain
	binOnce    sync.Once
	binErr     error // why building failed
	binMissing bool  // there is no go command to build with
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "homeport-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		os.Exit(1)
	}
	binDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// binPath returns the path of the built command name ("relay" or
// "agent"). The commands are built on first use, once per run, so that a
// run of only the in-process tests does not pay for the build.
func binPath(t *testing.T, name string) string {
	t.Helper()
	binOnce.Do(func() {
		start := time.Now()
		binErr = binBuild(binDir)
		if binErr == nil {
			t.Logf("built relay and agent in %v", time.Since(start).Round(time.Millisecond))
		}
	})
	switch {
	case binMissing:
		t.Skipf("cannot build the commands: %v", binErr)
	case binErr != nil:
		t.Fatal(binErr)
	}
	return filepath.Join(binDir, name)
}

// binBuild builds ./cmd/relay and ./cmd/agent into dir, with the race
// detector when this test binary has it, so that a race in the commands
// fails the tests as well (the race runtime exits with status 66).
func binBuild(dir string) error {
	gocmd, err := exec.LookPath("go")
	if err != nil {
		binMissing = true
		return err
	}
	args := []string{"build", "-o", dir + string(filepath.Separator)}
	if binRace() {
		args = append(args, "-race")
	}
	args = append(args, "github.com/homeport/homeport/cmd/relay", "github.com/homeport/homeport/cmd/agent")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, gocmd, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("go %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return nil
}

// binRace reports whether this test binary was built with -race.
func binRace() bool {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return false
	}
	for _, s := range bi.Settings {
		if s.Key == "-race" {
			return s.Value == "true"
		}
	}
	return false
}

// binEnv is this process's environment without HOMEPORT_ variables, which
// would change the commands' settings. Unless GORACE says otherwise, a
// race-enabled command waits 100 ms instead of a second at exit for
// reports from other goroutines.
func binEnv() []string {
	env := config.WithoutSettings(os.Environ())
	if _, ok := os.LookupEnv("GORACE"); !ok {
		env = append(env, "GORACE=atexit_sleep_ms=100")
	}
	return env
}

// binProc is a running relay or agent process.
type binProc struct {
	t      *testing.T
	name   string
	cmd    *exec.Cmd
	stdout logBuf
	stderr logBuf
	done   chan struct{} // closed when the process has exited
	state  *os.ProcessState
}

// binStart starts the command name with args. The process is killed when
// the test ends, if it is still running; its output is logged if the test
// failed.
func binStart(t *testing.T, name string, args ...string) *binProc {
	t.Helper()
	return binStartVia(t, name, binPath(t, name), args...)
}

// binStartVia is binStart running program (a built binary, or a shell
// that execs one) for the binary name.
func binStartVia(t *testing.T, name, program string, args ...string) *binProc {
	t.Helper()
	return binStartWith(t, name, program, nil, args...)
}

// binStartWith is binStartVia with setup, when not nil, changing the
// command before it starts.
func binStartWith(t *testing.T, name, program string, setup func(*exec.Cmd), args ...string) *binProc {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), binProcTimeout)
	p := &binProc{t: t, name: name, done: make(chan struct{})}
	p.cmd = exec.CommandContext(ctx, program, args...)
	p.cmd.Env = binEnv()
	p.cmd.Stdout, p.cmd.Stderr = &p.stdout, &p.stderr
	p.cmd.WaitDelay = 5 * time.Second
	if setup != nil {
		setup(p.cmd)
	}
	if err := p.cmd.Start(); err != nil {
		cancel()
		t.Fatal(err)
	}
	go func() {
		defer cancel()
		_ = p.cmd.Wait()
		p.state = p.cmd.ProcessState
		close(p.done)
	}()
	t.Cleanup(func() {
		if p.running() {
			_ = p.cmd.Process.Kill()
		}
		select {
		case <-p.done:
		case <-time.After(testenv.Deadline(15 * time.Second)):
			t.Errorf("%s (pid %d) did not exit after SIGKILL", name, p.cmd.Process.Pid)
		}
		if strings.Contains(p.stderr.String(), "WARNING: DATA RACE") {
			t.Errorf("%s: data race", name)
		}
		if t.Failed() {
			t.Logf("%s %s\n--- stdout:\n%s--- stderr:\n%s", name, strings.Join(args, " "), &p.stdout, &p.stderr)
		}
	})
	return p
}

func (p *binProc) running() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// exitCode waits up to d for the process to exit and returns its status
// (-1 when a signal ended it).
func (p *binProc) exitCode(d time.Duration) int {
	p.t.Helper()
	d = testenv.Deadline(d)
	select {
	case <-p.done:
		return p.state.ExitCode()
	case <-time.After(d):
		p.t.Fatalf("%s still running after %v", p.name, d)
	}
	return 0
}

func (p *binProc) signal(sig os.Signal) {
	p.t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		p.t.Fatalf("%s: %v", p.name, err)
	}
}

// await polls cond for up to d; the process exiting first fails the test.
func (p *binProc) await(d time.Duration, what string, cond func() bool) {
	p.t.Helper()
	d = testenv.Deadline(d)
	deadline := time.Now().Add(d)
	for !cond() {
		if !p.running() {
			if cond() {
				return
			}
			p.t.Fatalf("%s exited (%v) while waiting for %s", p.name, p.state, what)
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// count is how often s occurs in the process's standard error (its log).
func (p *binProc) count(s string) int { return strings.Count(p.stderr.String(), s) }

// binRun runs name with args to completion (at most d) and returns its
// exit status and output.
func binRun(t *testing.T, d time.Duration, name string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	p := binStart(t, name, args...)
	code = p.exitCode(d)
	return code, p.stdout.String(), p.stderr.String()
}

// binBanner is what the relay's banner tells the operator to run.
type binBanner struct {
	relay, token, fingerprint string
}

// binBannerRE matches the agent command of the relay's banner: the token
// in the environment (or <token> where it is not shown), the relay's
// address and its fingerprint.
var binBannerRE = regexp.MustCompile(`(?m)^  HOMEPORT_TOKEN='([^']*)' agent --relay (\S+) --fingerprint (\S+) --tunnel 3390:127\.0\.0\.1:3389$`)

// binBannerOut returns the relay's banner from its output once the whole
// banner is there (it ends with an empty line), with the terminal's line
// ends made plain; "" until then.
func binBannerOut(out string) string {
	out = strings.ReplaceAll(out, "\r\n", "\n")
	i := strings.Index(out, "\nThen point the client")
	if i < 0 || !strings.Contains(out[i:], "\n\n") {
		return ""
	}
	return out
}

// binStartRelay starts the relay on 127.0.0.1:port with data directory
// dataDir, plus extra arguments, and returns it with the agent command its
// banner printed.
func binStartRelay(t *testing.T, dataDir string, port uint16, extra ...string) (*binProc, binBanner) {
	t.Helper()
	p := binStart(t, "relay", append([]string{
		"--data-dir", dataDir,
		"--listen", publicAddr(port),
		"--bind-addr", "127.0.0.1",
		"--advertise", "127.0.0.1"}, extra...)...)
	return p, binAwaitBanner(p, dataDir)
}

// binAwaitBanner waits for the relay p's banner and returns its agent
// command. Its standard output is not a terminal, so the banner shows
// <token>; when it names the token file of dataDir, the token is read
// from there, as the operator would.
func binAwaitBanner(p *binProc, dataDir string) binBanner {
	p.t.Helper()
	var m []string
	p.await(15*time.Second, "the relay's banner", func() bool {
		m = binBannerRE.FindStringSubmatch(binBannerOut(p.stdout.String()))
		return m != nil
	})
	b := binBanner{relay: m[2], token: m[1], fingerprint: m[3]}
	if path := filepath.Join(dataDir, relay.TokenFile); b.token == "<token>" && strings.Contains(p.stdout.String(), path) {
		tok, err := os.ReadFile(path)
		if err != nil {
			p.t.Fatal(err)
		}
		b.token = strings.TrimSpace(string(tok))
	}
	return b
}

// binStartAgent starts an agent with the banner's credentials and the
// given tunnels (REMOTE_PORT:HOST:PORT), plus extra arguments.
func binStartAgent(t *testing.T, b binBanner, tunnels []string, extra ...string) *binProc {
	t.Helper()
	args := []string{"--relay", b.relay, "--token", b.token, "--fingerprint", b.fingerprint}
	for _, tn := range tunnels {
		args = append(args, "--tunnel", tn)
	}
	return binStart(t, "agent", append(args, extra...)...)
}

// binAwaitTunnels waits until the agent has logged n tunnel registrations
// in total.
func binAwaitTunnels(a *binProc, n int, d time.Duration) {
	a.t.Helper()
	a.await(d, fmt.Sprintf("registration %d of the agent's tunnel", n), func() bool {
		return a.count(`msg="tunnel ready"`) >= n
	})
}

func binTunnel(port uint16, target string) string { return fmt.Sprintf("%d:%s", port, target) }

// binRefused reports whether a connection to addr is refused.
func binRefused(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err == nil {
		c.Close()
		return false
	}
	return errors.Is(err, syscall.ECONNREFUSED)
}

// TestBinaryFirstStart: a relay started with no token or key creates its
// data directory and prints the agent command, with <token> in place of
// the token and the file that holds it, since its standard output is not
// a terminal; that command with the token from the file gives a working
// tunnel.
func TestBinaryFirstStart(t *testing.T) {
	leak.Check(t)
	target := serve(t, echo)
	dataDir := filepath.Join(t.TempDir(), "data") // does not exist yet
	relayPort, public := freePort(t), freePort(t)

	r, b := binStartRelay(t, dataDir, relayPort)
	if b.relay != publicAddr(relayPort) {
		t.Errorf("banner: --relay %s, want %s", b.relay, publicAddr(relayPort))
	}
	if _, err := config.NormalizeFingerprint(b.fingerprint); err != nil || !strings.HasPrefix(b.fingerprint, "sha256:") {
		t.Errorf("banner: --fingerprint %q: %v", b.fingerprint, err)
	}
	if len(b.token) < config.MinSecretLen {
		t.Errorf("token %q is too short", b.token)
	}
	out := r.stdout.String()
	if m := binBannerRE.FindStringSubmatch(out); m[1] != "<token>" || strings.Contains(out, b.token) {
		t.Errorf("the banner to a pipe shows the token:\n%s", out)
	}
	if !contains(out, "Put the token kept in "+filepath.Join(dataDir, relay.TokenFile), "standard output is not one") {
		t.Errorf("the banner does not say where the token is:\n%s", out)
	}

	// The data directory holds the token, the visitor key and the key
	// pair, readable by the relay's user only; the printed token is the
	// stored one.
	st, err := os.Stat(dataDir)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm()&0o077 != 0 {
		t.Errorf("%s: mode %v, want no access for group and others", dataDir, st.Mode().Perm())
	}
	for _, f := range []string{relay.TokenFile, relay.VisitorKeyFile, relay.CertFile, relay.KeyFile} {
		path := filepath.Join(dataDir, f)
		st, err := os.Stat(path)
		if err != nil {
			t.Error(err)
			continue
		}
		if st.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %v, want 0600", path, st.Mode().Perm())
		}
		// The log goes to standard error, the banner the test has read
		// to standard output: two pipes, copied apart.
		waitFor(t, 10*time.Second, "the relay's log to mention generating "+path, func() bool {
			return contains(r.stderr.String(), "generated", path)
		})
	}
	// The four files and the control socket (mode 0600 too).
	if entries, _ := os.ReadDir(dataDir); len(entries) != 5 {
		t.Errorf("data directory holds %d entries, want 5 (no temporary files left)", len(entries))
	}
	if st, err := os.Stat(filepath.Join(dataDir, "relay.sock")); err != nil || st.Mode()&os.ModeSocket == 0 || st.Mode().Perm() != 0o600 {
		t.Errorf("control socket: %v, %v; want a socket of mode 0600", st, err)
	}

	a := binStartAgent(t, b, []string{binTunnel(public, target)})
	binAwaitTunnels(a, 1, 15*time.Second)

	data := make([]byte, 8<<20)
	rand.NewChaCha8([32]byte{42}).Read(data)
	start := time.Now()
	got, err := roundTrip(publicAddr(public), data)
	if err != nil {
		t.Fatalf("8 MiB through the tunnel: %v", err)
	}
	if len(got) != len(data) || sha256.Sum256(got) != sha256.Sum256(data) {
		t.Fatalf("got %d of %d bytes back, or a different sha256", len(got), len(data))
	}
	t.Logf("8 MiB there and back in %v", time.Since(start).Round(time.Millisecond))

	// The secret is never logged.
	for _, p := range []*binProc{r, a} {
		if strings.Contains(p.stderr.String(), b.token) {
			t.Errorf("%s log contains the token", p.name)
		}
	}
	if !r.running() || !a.running() {
		t.Fatal("relay or agent exited")
	}
}

// binShellQuote quotes s for a POSIX shell.
func binShellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// binStartRelayOnTerminal starts the relay as binStartRelay does, with its
// standard output on a pseudo-terminal (script from util-linux makes
// one, and copies what the relay writes there to its own output); the
// relay's log goes to logFile. Killing script hangs up the terminal,
// which ends the relay.
func binStartRelayOnTerminal(t *testing.T, dataDir string, port uint16, logFile string) *binProc {
	t.Helper()
	script, err := exec.LookPath("script")
	if err != nil {
		t.Skipf("no script command to run the relay on a terminal: %v", err)
	}
	cmd := "exec " + binShellQuote(binPath(t, "relay")) + " --data-dir " + binShellQuote(dataDir) +
		" --listen " + publicAddr(port) + " --bind-addr 127.0.0.1 --advertise 127.0.0.1 2>>" + binShellQuote(logFile)
	return binStartVia(t, "relay", script, "-qec", cmd, "/dev/null")
}

// TestBinaryTerminalBanner: on a terminal, the relay's first start shows
// the token it generated, in the environment of the agent command and
// never in its arguments or the log; that command, run by a shell as
// printed, gives a working tunnel, and the agent's argument list has no
// token. The second start shows <token> even on a terminal.
func TestBinaryTerminalBanner(t *testing.T) {
	leak.Check(t)
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Skipf("no shell: %v", err)
	}
	target := serve(t, echo)
	dir := t.TempDir()
	dataDir, logFile := filepath.Join(dir, "data"), filepath.Join(dir, "relay.log")
	relayPort, public := freePort(t), freePort(t)

	r := binStartRelayOnTerminal(t, dataDir, relayPort, logFile)
	var m []string
	var out string
	r.await(20*time.Second, "the relay's banner on the terminal", func() bool {
		out = binBannerOut(r.stdout.String())
		m = binBannerRE.FindStringSubmatch(out)
		return m != nil
	})
	stored, err := os.ReadFile(filepath.Join(dataDir, relay.TokenFile))
	if err != nil {
		t.Fatal(err)
	}
	token := strings.TrimSpace(string(stored))
	if m[1] != token {
		t.Fatalf("the banner on a terminal shows token %q; the data directory holds %q", m[1], token)
	}
	if !contains(out, "$env:HOMEPORT_TOKEN='"+token+"'; .\\agent.exe --relay", "shown on this first start only") {
		t.Errorf("no PowerShell command or no word on the token file:\n%s", out)
	}
	for _, line := range strings.Split(out, "\n") {
		if strings.Contains(line, token) && !strings.HasPrefix(line, "  HOMEPORT_TOKEN='"+token+"' agent ") && !strings.HasPrefix(line, "  $env:HOMEPORT_TOKEN='"+token+"'; ") {
			t.Errorf("the token is shown outside the agent command's environment: %q", line)
		}
	}

	// Run the printed line as it is, but for the tunnel, with agent on
	// the PATH; the shell starts the agent in the background and says
	// its process ID.
	line := strings.TrimSpace(m[0])
	line = strings.Replace(line, "--tunnel 3390:127.0.0.1:3389", "--tunnel "+binTunnel(public, target), 1)
	pidFile, runFile := filepath.Join(dir, "agent.pid"), filepath.Join(dir, "run.sh")
	run := "PATH=" + binShellQuote(binDir) + ":$PATH\n" + line + " &\necho $! >" + binShellQuote(pidFile) + "\nwait $!\n"
	if err := os.WriteFile(runFile, []byte(run), 0o600); err != nil {
		t.Fatal(err)
	}
	a := binStartVia(t, "agent", sh, runFile)
	var pid int
	a.await(10*time.Second, "the shell to start the agent", func() bool {
		b, err := os.ReadFile(pidFile)
		if err == nil && strings.HasSuffix(string(b), "\n") {
			pid, err = strconv.Atoi(strings.TrimSpace(string(b)))
		}
		return err == nil && pid > 0
	})
	t.Cleanup(func() { // the agent is the shell's child: end it first
		if p, err := os.FindProcess(pid); err == nil {
			_ = p.Kill()
			_ = p.Release() // its pidfd
		}
	})
	binAwaitTunnels(a, 1, 15*time.Second)
	expectEcho(t, publicAddr(public))
	for _, p := range []int{pid, a.cmd.Process.Pid} {
		argv, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", p))
		if err != nil {
			t.Logf("no argument list of process %d to check: %v", p, err)
			continue
		}
		if strings.Contains(string(argv), token) {
			t.Errorf("process %d has the token in its arguments: %q", p, argv)
		}
		if p == pid && !strings.Contains(string(argv), "--fingerprint") {
			t.Errorf("process %d is not the agent: %q", p, argv)
		}
	}
	if log, err := os.ReadFile(logFile); err != nil || strings.Contains(string(log), token) || !strings.Contains(string(log), "generated") {
		t.Errorf("relay log (%v) has the token, or is not the log:\n%s", err, log)
	}
	if strings.Contains(a.stderr.String(), token) {
		t.Error("the agent logged the token")
	}

	// The second start, on a terminal too, does not show it.
	_ = r.cmd.Process.Kill()
	r.exitCode(15 * time.Second)
	// The terminal's hangup stops the relay as a signal does: it drains
	// for up to its shutdown_timeout (10 s) first.
	t.Cleanup(func() {
		if t.Failed() {
			log, _ := os.ReadFile(logFile)
			t.Logf("relay log:\n%s", log)
		}
	})
	waitFor(t, 40*time.Second, "the relay to end with its terminal", func() bool {
		// Its QUIC socket goes last, after the drain.
		if !binRefused(publicAddr(relayPort)) {
			return false
		}
		pc, err := net.ListenPacket("udp", publicAddr(relayPort))
		if err != nil {
			return false
		}
		pc.Close()
		return true
	})
	r2 := binStartRelayOnTerminal(t, dataDir, relayPort, logFile)
	var out2 string
	r2.await(20*time.Second, "the second start's banner", func() bool {
		out2 = binBannerOut(r2.stdout.String())
		m = binBannerRE.FindStringSubmatch(out2)
		return m != nil
	})
	if m[1] != "<token>" || strings.Contains(out2, token) || !contains(out2, "only on the start that generated it", filepath.Join(dataDir, relay.TokenFile)) {
		t.Errorf("second start on a terminal:\n%s", out2)
	}
}

// TestBinaryTokenFile: relay and agent read the token from files
// (--token-file, HOMEPORT_TOKEN_FILE) and make a working tunnel; a token
// file that other users may read is used, with a warning in the log that
// names the file and the fix; the token itself is never logged.
func TestBinaryTokenFile(t *testing.T) {
	leak.Check(t)
	target := serve(t, echo)
	dir := t.TempDir()
	secret := "file-token-" + strconv.FormatUint(rand.Uint64(), 36) + "-0123456789"
	write := func(name string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(secret+"\n"), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil { // past the umask
			t.Fatal(err)
		}
		return p
	}
	loose, tight := write("relay.token", 0o644), write("agent.token", 0o600)
	relayPort, public := freePort(t), freePort(t)

	r, b := binStartRelay(t, filepath.Join(dir, "data"), relayPort, "--token-file", loose)
	a := binStart(t, "agent", "--relay", b.relay, "--token-file", tight, "--fingerprint", b.fingerprint, "--tunnel", binTunnel(public, target))
	binAwaitTunnels(a, 1, 15*time.Second)
	expectEcho(t, publicAddr(public))
	waitFor(t, 10*time.Second, "the relay's warning about "+loose, func() bool {
		return contains(r.stderr.String(), "level=WARN", "secret file is readable by other users", "file="+loose, "chmod 600 "+loose)
	})
	if strings.Contains(a.stderr.String(), "secret file is readable") {
		t.Errorf("agent warned about %s, mode 0600", tight)
	}

	// The agent's token file by the environment, readable by others.
	envCmd, err := exec.LookPath("env")
	if err != nil {
		t.Skipf("no env command: %v", err)
	}
	public2 := freePort(t)
	a2 := binStartVia(t, "agent", envCmd, "HOMEPORT_TOKEN_FILE="+loose, binPath(t, "agent"),
		"--relay", b.relay, "--fingerprint", b.fingerprint, "--id", "second", "--tunnel", binTunnel(public2, target))
	binAwaitTunnels(a2, 1, 15*time.Second)
	expectEcho(t, publicAddr(public2))
	if !contains(a2.stderr.String(), "level=WARN", "secret file is readable by other users", "environment variable HOMEPORT_TOKEN_FILE", "chmod 600 "+loose) {
		t.Errorf("agent did not warn about %s", loose)
	}
	for _, p := range []*binProc{r, a, a2} {
		if strings.Contains(p.stdout.String()+p.stderr.String(), secret) {
			t.Errorf("%s printed the token", p.name)
		}
	}
}

// TestBinaryRestart: a relay stopped with SIGTERM exits 0 and, started
// again on its data directory, has the same token and key; the running
// agent comes back by itself.
func TestBinaryRestart(t *testing.T) {
	leak.Check(t)
	target := serve(t, echo)
	dataDir := t.TempDir()
	relayPort, public := freePort(t), freePort(t)

	r1, b1 := binStartRelay(t, dataDir, relayPort)
	a := binStartAgent(t, b1, []string{binTunnel(public, target)})
	binAwaitTunnels(a, 1, 15*time.Second)
	expectEcho(t, publicAddr(public))

	start := time.Now()
	r1.signal(syscall.SIGTERM)
	if code := r1.exitCode(15 * time.Second); code != 0 {
		t.Fatalf("relay exited with status %d after SIGTERM", code)
	}
	t.Logf("relay stopped %v after SIGTERM", time.Since(start).Round(time.Millisecond))
	if !strings.Contains(r1.stderr.String(), `msg="relay stopped"`) {
		t.Error(`relay did not log "relay stopped"`)
	}
	waitFor(t, 2*time.Second, "public port refused", func() bool { return binRefused(publicAddr(public)) })
	a.await(5*time.Second, "the agent noticing the relay went away", func() bool {
		return a.count("session lost; reconnecting") >= 1
	})

	r2, b2 := binStartRelay(t, dataDir, relayPort)
	back := time.Now()
	if b2 != b1 {
		t.Errorf("second start printed %+v, first %+v", b2, b1)
	}
	if strings.Contains(r2.stderr.String(), "generated") {
		t.Errorf("second start generated files again")
	}
	if strings.Contains(r1.stdout.String()+r2.stdout.String()+r1.stderr.String()+r2.stderr.String(), b1.token) {
		t.Errorf("a start printed or logged the token")
	}
	binAwaitTunnels(a, 2, 15*time.Second)
	t.Logf("agent back %v after the relay restarted", time.Since(back).Round(time.Millisecond))
	expectEcho(t, publicAddr(public))
	if !a.running() {
		t.Fatal("agent exited")
	}
}

// TestBinaryBadCredentials: an agent with a wrong token or fingerprint
// exits with status 1 at once and says what to fix, without printing the
// secret, over every transport; the relay keeps serving the good agent.
func TestBinaryBadCredentials(t *testing.T) {
	leak.Check(t)
	target := serve(t, echo)
	r, b := binStartRelay(t, t.TempDir(), freePort(t))
	good := freePort(t)
	a := binStartAgent(t, b, []string{binTunnel(good, target)}, "--id", "good")
	binAwaitTunnels(a, 1, 15*time.Second)

	otherKey := sha256.Sum256([]byte("some other relay's key"))
	tests := []struct {
		name, token, fingerprint string
		says                     []string
	}{
		{"wrong token", "wrong-token-0123456789abcdef", b.fingerprint,
			[]string{"relay refused this agent", "authentication failed", "the token is wrong"}},
		{"wrong fingerprint", b.token, fmt.Sprintf("sha256:%x", otherKey),
			[]string{"relay refused this agent", "does not match the pinned fingerprint", "copy the new fingerprint"}},
	}
	for _, tt := range tests {
		for _, transport := range []string{config.TransportAuto, config.TransportTCP, config.TransportQUIC} {
			t.Run(tt.name+" over "+transport, func(t *testing.T) {
				binExpectRefused(t, b, target, tt.token, tt.fingerprint, transport, tt.says)
			})
		}
	}
	waitFor(t, 5*time.Second, "relay log of the failed login", func() bool {
		return contains(r.stderr.String(), "agent authentication failed", "intruder")
	})
	if !r.running() || !a.running() {
		t.Fatal("relay or good agent exited")
	}
	expectEcho(t, publicAddr(good))
}

// binExpectRefused runs an agent with the given credentials against the
// relay of b and checks that it exits with status 1 at once, and that its
// last line says all of says.
func binExpectRefused(t *testing.T, b binBanner, target, token, fingerprint, transport string, says []string) {
	t.Helper()
	start := time.Now()
	code, _, stderr := binRun(t, 10*time.Second, "agent",
		"--relay", b.relay, "--token", token, "--fingerprint", fingerprint, "--transport", transport,
		"--id", "intruder", "--tunnel", binTunnel(freePort(t), target))
	if code != 1 {
		t.Errorf("agent exited with status %d, want 1", code)
	}
	t.Logf("agent exited after %v", time.Since(start).Round(time.Millisecond))
	// main prints the error last, prefixed with the program name.
	lines := strings.Split(strings.TrimSpace(stderr), "\n")
	if last := lines[len(lines)-1]; !strings.HasPrefix(last, "agent: ") || !contains(last, says...) {
		t.Errorf("agent's last word: %q; want it to say %q", last, says)
	}
	if strings.Contains(stderr, b.token) || strings.Contains(stderr, token) {
		t.Error("agent printed a token")
	}
}

// TestBinaryAuthBan: an agent started again and again with a wrong token
// (a service manager restarting it) gets its address banned; the agent
// that starts the ban, and the next one, exit saying what happened and for
// how long, in the relay's words; the same address then logs in at once
// with the right token, and the relay logs that it did so while banned.
func TestBinaryAuthBan(t *testing.T) {
	leak.Check(t)
	target := serve(t, echo)
	r, b := binStartRelay(t, t.TempDir(), freePort(t), "--auth-ban-after", "2", "--auth-ban-for", "10m")
	const wrong = "wrong-token-0123456789abcdef"
	binExpectRefused(t, b, target, wrong, b.fingerprint, config.TransportTCP,
		[]string{"relay refused this agent", "authentication failed: wrong token:", "the token is wrong"})
	banned := []string{"relay refused this agent", "wrong token; this address is banned from logging in for", "after 2 failed logins (a correct token still gets in)", "the token is wrong"}
	binExpectRefused(t, b, target, wrong, b.fingerprint, config.TransportTCP, banned)
	r.await(5*time.Second, "the relay's log of the ban", func() bool { return r.count(`msg="agent address banned after failed logins"`) == 1 })
	binExpectRefused(t, b, target, wrong, b.fingerprint, config.TransportQUIC, banned)

	port := freePort(t)
	a := binStartAgent(t, b, []string{binTunnel(port, target)})
	binAwaitTunnels(a, 1, 15*time.Second)
	expectEcho(t, publicAddr(port))
	r.await(5*time.Second, "the relay's log of the login while banned", func() bool {
		return r.count(`msg="agent logged in from a banned address"`) == 1
	})
	if n := r.count(`msg="agent connection refused"`); n > 0 {
		t.Errorf("relay refused %d agent connections", n)
	}
}

// TestBinaryBadConfig: a bad configuration file stops the command with
// status 1 and an error naming the file and the setting, without a usage
// dump. An unknown key stops loading at once; wrong values are reported
// all together, one per line.
func TestBinaryBadConfig(t *testing.T) {
	leak.Check(t)
	okAgent := "relay: 127.0.0.1:1\ntoken: " + testToken + "\nfingerprint: sha256:" + strings.Repeat("ab", 32) + "\ntunnels: [\"4000:127.0.0.1:1\"]\n"
	tests := []struct {
		name, program, file, content string
		says                         []string
	}{
		{"relay unknown key", "relay", "relay.yaml", "listne: 127.0.0.1:7000\n",
			[]string{`unknown setting "listne"`, `did you mean "listen"`}},
		{"relay bad duration", "relay", "relay.yaml", "handshake_timeout: 10 seconds\n",
			[]string{"handshake_timeout in ", `duration "10 seconds"`}},
		{"relay duration without unit", "relay", "relay.toml", "[session]\nkeepalive = \"15\"\n",
			[]string{"session.keepalive in ", `"15" has no unit`}},
		{"relay unknown key and bad duration", "relay", "relay.yaml", "shutdown_timeout: soon\nadvertize: vps.example.com\n",
			[]string{`unknown setting "advertize"`, `did you mean "advertise"`}},
		{"relay several bad values", "relay", "relay.yaml", "handshake_timeout: 10 seconds\nshutdown_timeout: 5\nlog:\n  level: loud\n",
			[]string{"handshake_timeout in ", "\nshutdown_timeout in ", `"5" has no unit`, "\nlog.level in ", `"loud"`}},
		{"relay profiler on the network", "relay", "relay.yaml", "debug_addr: 0.0.0.0:6060\n",
			[]string{"debug_addr in ", "loopback only"}},
		{"relay dashboard on the network without a password", "relay", "relay.yaml", "dashboard_addr: 0.0.0.0:8080\n",
			[]string{"dashboard_addr in ", "reachable from the network", "set dashboard_password"}},
		{"agent setting of the relay", "agent", "agent.yaml", okAgent + "allow_ports: 3390\n",
			[]string{`unknown setting "allow_ports"`, "setting of the other program"}},
		{"agent bad duration", "agent", "agent.json",
			`{"relay": "127.0.0.1:1", "token": "` + testToken + `", "fingerprint": "sha256:` + strings.Repeat("ab", 32) + `", "tunnels": ["4000:127.0.0.1:1"], "reconnect_max": "1 minute"}`,
			[]string{"reconnect_max in ", `duration "1 minute"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), tt.file)
			if err := os.WriteFile(path, []byte(tt.content), 0o600); err != nil {
				t.Fatal(err)
			}
			args := []string{"--config", path}
			if tt.program == "relay" {
				// Harmless should the file be accepted after all.
				args = append(args, "--data-dir", t.TempDir(), "--listen", "127.0.0.1:0")
			}
			code, stdout, stderr := binRun(t, 10*time.Second, tt.program, args...)
			if code != 1 {
				t.Errorf("%s exited with status %d, want 1", tt.program, code)
			}
			if !contains(stderr, append([]string{tt.program + ": ", path}, tt.says...)...) {
				t.Errorf("%s's error: %q; want the file %s and %q", tt.program, stderr, path, tt.says)
			}
			if strings.Contains(stdout+stderr, "Usage:") {
				t.Errorf("%s printed its usage for a bad file", tt.program)
			}
		})
	}
}

// TestBinaryProfiler: relay and agent started with --debug-addr serve Go's
// profiler on the loopback address they log, showing their own goroutines,
// while the tunnel works.
func TestBinaryProfiler(t *testing.T) {
	leak.Check(t)
	target := serve(t, echo)
	relayPort, public := freePort(t), freePort(t)
	r, b := binStartRelay(t, filepath.Join(t.TempDir(), "data"), relayPort, "--debug-addr", "127.0.0.1:0")
	a := binStartAgent(t, b, []string{binTunnel(public, target)}, "--debug-addr", "127.0.0.1:0")
	binAwaitTunnels(a, 1, 15*time.Second)
	if got, err := roundTrip(publicAddr(public), []byte("hello")); err != nil || string(got) != "hello" {
		t.Fatalf("through the tunnel: %q, %v", got, err)
	}
	urlRE := regexp.MustCompile(`msg="profiler listening" url=(http://127\.0\.0\.1:\d+/debug/pprof/)`)
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 10 * time.Second}
	for _, tt := range []struct {
		p    *binProc
		want string // a function of the program's own
	}{
		{r, "relay.(*publicTunnel).acceptLoop"},
		{a, "agent.(*Agent).serve"},
	} {
		m := urlRE.FindStringSubmatch(tt.p.stderr.String())
		if m == nil {
			t.Errorf("%s did not log the profiler's URL:\n%s", tt.p.name, tt.p.stderr.String())
			continue
		}
		resp, err := client.Get(m[1] + "goroutine?debug=1")
		if err != nil {
			t.Errorf("%s profiler: %v", tt.p.name, err)
			continue
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), tt.want) {
			t.Errorf("%s profiler: %s, goroutines without %s:\n%.400s", tt.p.name, resp.Status, tt.want, body)
		}
	}
	if !r.running() || !a.running() {
		t.Fatal("relay or agent exited")
	}
}

// TestBinaryVersionHelp: version and --help work without any settings.
func TestBinaryVersionHelp(t *testing.T) {
	leak.Check(t)
	for _, program := range []string{"relay", "agent"} {
		code, stdout, stderr := binRun(t, 10*time.Second, program, "version")
		if code != 0 || !regexp.MustCompile(`^homeport `+program+` \S+\n$`).MatchString(stdout) || stderr != "" {
			t.Errorf("%s version: status %d, stdout %q, stderr %q", program, code, stdout, stderr)
		}
	}
	help := map[string][]string{
		"agent": {"Usage:", "agent [flags]", "--relay", "--token", "--fingerprint", "--tunnel", "--config", "HOMEPORT_TOKEN", "REMOTE_PORT:HOST:PORT"},
		"relay": {"Usage:", "relay [flags]", "--data-dir", "--listen", "--allow-ports", "--advertise", "--config", "HOMEPORT_LISTEN"},
	}
	// Numbers show as numbers: what each flag takes, and its default.
	takes := map[string][]string{
		"agent": {`--stream-window size .* \(default 16MiB\)`, `--dial-timeout duration .* \(default 5s\)`},
		"relay": {`--max-agents int .* \(default 10\)`, `--auth-ban-after int .* \(default 5\)`, `--visitor-rate int .* \(default 60\)`,
			`--udp-max-flows int .* \(default 1024\)`, `--stream-window size .* \(default 16MiB\)`, `--udp-flow-timeout duration .* \(default 1m0s\)`},
	}
	for program, says := range help {
		code, stdout, stderr := binRun(t, 10*time.Second, program, "--help")
		if code != 0 || !contains(stdout, says...) || stderr != "" {
			t.Errorf("%s --help: status %d, stderr %q, stdout:\n%s\nwant it to mention %q", program, code, stderr, stdout, says)
		}
		for _, re := range takes[program] {
			if !regexp.MustCompile(`(?m)^ +` + re + `$`).MatchString(stdout) {
				t.Errorf("%s --help has no line matching %q:\n%s", program, re, stdout)
			}
		}
	}
}

// TestBinaryAgentSIGTERM: an agent stopped with SIGTERM exits 0 promptly
// and the relay closes its public port at once.
func TestBinaryAgentSIGTERM(t *testing.T) {
	leak.Check(t)
	target := serve(t, echo)
	r, b := binStartRelay(t, t.TempDir(), freePort(t))
	public := freePort(t)
	a := binStartAgent(t, b, []string{binTunnel(public, target)}, "--id", "home-pc")
	binAwaitTunnels(a, 1, 15*time.Second)
	expectEcho(t, publicAddr(public))

	start := time.Now()
	a.signal(syscall.SIGTERM)
	if code := a.exitCode(5 * time.Second); code != 0 {
		t.Fatalf("agent exited with status %d after SIGTERM", code)
	}
	t.Logf("agent exited %v after SIGTERM", time.Since(start).Round(time.Millisecond))
	waitFor(t, 3*time.Second, "public port refused", func() bool { return binRefused(publicAddr(public)) })
	waitFor(t, 3*time.Second, "relay log of the agent going away", func() bool {
		log := r.stderr.String()
		return contains(log, "agent going away; its ports are closed", "home-pc") && contains(log, "agent session down")
	})
	if !r.running() {
		t.Fatal("relay exited")
	}
	if strings.Contains(r.stderr.String(), "level=ERROR") {
		t.Errorf("relay logged an error for an agent's ordinary shutdown")
	}
}
