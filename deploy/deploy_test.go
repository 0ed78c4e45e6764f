// Package deploy_test keeps the deployment files in this directory true to
// the code: the paths the README links exist, the flags and HOMEPORT_*
// variables the systemd units, the compose file, its .env and the
// Dockerfile use are settings of the program that reads them, and the
// configurations they describe load. The checks are structural and run
// offline: neither systemd nor Docker is needed.
package deploy_test

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
	"github.com/spf13/viper"

	"github.com/homeport/homeport/config"
	"github.com/homeport/homeport/internal/cli"
	"github.com/homeport/homeport/internal/examplefill"
)

// agentDrain is how long the agent lets connections finish after SIGTERM
// (shutdownDrain in agent/serve.go, not a setting).
const agentDrain = 10 * time.Second

// program is one of homeport's programs: a binary, or a subcommand of one
// with settings of its own (the visitor is "agent visit").
type program struct {
	name string // as messages call it
	// command is what runs it: the binary's name, then the subcommand.
	command  []string
	settings []config.Setting
	addFlags func(*pflag.FlagSet)
	maxArgs  int // positional arguments its command takes besides flags
	load     func(*pflag.FlagSet) (any, error)
	example  string // annotated configuration in this directory
	// stopTime is how long the program may take to stop after SIGTERM,
	// with cfg (what load returned).
	stopTime func(cfg any) time.Duration
	// stopSetting is the setting stopTime reads, "" for none: a unit must
	// allow for its default too, which a file without it falls back to.
	stopSetting string
}

var programs = map[string]program{
	"relay": {
		name:        "relay",
		command:     []string{"relay"},
		settings:    config.RelaySettings(),
		addFlags:    config.RelayFlags,
		load:        func(fs *pflag.FlagSet) (any, error) { return config.LoadRelay(fs) },
		example:     "relay.example.yaml",
		stopTime:    func(cfg any) time.Duration { return cfg.(config.Relay).ShutdownTimeout },
		stopSetting: "shutdown_timeout",
	},
	"agent": {
		name:     "agent",
		command:  []string{"agent"},
		settings: config.AgentSettings(),
		addFlags: config.AgentFlags,
		load:     func(fs *pflag.FlagSet) (any, error) { return config.LoadAgent(fs) },
		example:  "agent.example.yaml",
		stopTime: func(any) time.Duration { return agentDrain },
	},
	// SIGTERM closes the visitor's listeners and connections at once; a
	// login to the relay under way runs on to its deadline,
	// handshake_timeout after it began (visitor.establish).
	"visitor": {
		name:        "visitor",
		command:     []string{"agent", "visit"},
		settings:    config.VisitorSettings(),
		addFlags:    config.VisitorFlags,
		maxArgs:     1, // the tunnel of a single visit
		load:        func(fs *pflag.FlagSet) (any, error) { return config.LoadVisitor(fs) },
		example:     "visitor.example.yaml",
		stopTime:    func(cfg any) time.Duration { return cfg.(config.Visitor).HandshakeTimeout },
		stopSetting: "handshake_timeout",
	},
}

// progOf returns the program the command line argv runs, and the
// arguments after its command: the binary is known by its base name
// (.exe or not), and the longest subcommand that argv starts with wins.
func progOf(t *testing.T, argv []string) (program, []string) {
	t.Helper()
	if len(argv) == 0 {
		t.Fatal("no command")
	}
	bin := strings.TrimSuffix(path.Base(argv[0]), ".exe")
	var found program
	for _, p := range programs {
		if len(argv) >= len(p.command) && bin == p.command[0] &&
			slices.Equal(argv[1:len(p.command)], p.command[1:]) && len(p.command) > len(found.command) {
			found = p
		}
	}
	if found.name == "" {
		t.Fatalf("%q does not run a homeport program (want relay, agent or agent visit)", argv)
	}
	return found, argv[len(found.command):]
}

// drainFor is how long p may take to stop with cfg, or with the default
// of its stopSetting if that is longer.
func (p program) drainFor(cfg any) time.Duration {
	d := p.stopTime(cfg)
	for _, s := range p.settings {
		if def, err := time.ParseDuration(s.Default); s.Key == p.stopSetting && err == nil {
			d = max(d, def)
		}
	}
	return d
}

// envs are the environment variables p reads.
func (p program) envs() map[string]bool {
	m := map[string]bool{config.EnvPrefix + "CONFIG": true}
	for _, s := range p.settings {
		if s.Env != "" {
			m[s.Env] = true
		}
	}
	return m
}

// flagNames are the long flags of p's command, and "c" for -c (--config).
func (p program) flagNames() map[string]bool {
	fs := pflag.NewFlagSet(p.name, pflag.ContinueOnError)
	p.addFlags(fs)
	m := map[string]bool{"c": true}
	fs.VisitAll(func(f *pflag.Flag) { m[f.Name] = true })
	return m
}

// anyEnv is every variable either program reads; each accepts the other's
// variables, so one environment (or image) can serve both.
func anyEnv() map[string]bool {
	m := programs["relay"].envs()
	for k := range programs["agent"].envs() {
		m[k] = true
	}
	return m
}

// checkFlagNames reports each flag in args that p does not have. Long
// flags only (besides -c): they are what deployment files should spell out.
func checkFlagNames(t *testing.T, p program, args []string, where string) {
	t.Helper()
	known := p.flagNames()
	for _, a := range args {
		if !strings.HasPrefix(a, "-") || a == "-" {
			continue
		}
		name, _, _ := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if !known[name] {
			t.Errorf("%s: %s is not a flag of the %s", where, a, p.name)
		}
	}
}

// parseFlags parses args with the program's own flag set, as its command
// does, so wrong values and missing arguments fail here too.
func parseFlags(p program, args []string) (*pflag.FlagSet, error) {
	fs := pflag.NewFlagSet(p.name, pflag.ContinueOnError)
	fs.SetOutput(io.Discard)
	p.addFlags(fs)
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > p.maxArgs {
		return nil, fmt.Errorf("unexpected arguments %q: the %s takes %d", fs.Args(), p.name, p.maxArgs)
	}
	return fs, nil
}

// setConfigFlag returns args with the value of --config (or -c) replaced.
func setConfigFlag(args []string, file string) ([]string, bool) {
	out := slices.Clone(args)
	for i, a := range out {
		switch {
		case (a == "--config" || a == "-c") && i+1 < len(out):
			out[i+1] = file
			return out, true
		case strings.HasPrefix(a, "--config="):
			out[i] = "--config=" + file
			return out, true
		}
	}
	return out, false
}

// isolateEnv leaves exactly env as the process's HOMEPORT_ variables for the
// rest of the test.
func isolateEnv(t *testing.T, env map[string]string) {
	t.Helper()
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(name, config.EnvPrefix) {
			t.Setenv(name, "") // restored after the test
			os.Unsetenv(name)
		}
	}
	for k, v := range env {
		t.Setenv(k, v)
	}
}

var envName = regexp.MustCompile(config.EnvPrefix + `[A-Z0-9_]+`)

// checkEnvNames reports every HOMEPORT_ name in text, comments included,
// that is not in known.
func checkEnvNames(t *testing.T, text string, known map[string]bool, where string) {
	t.Helper()
	for _, name := range envName.FindAllString(text, -1) {
		if !known[name] {
			t.Errorf("%s: %s is not a homeport setting", where, name)
		}
	}
}

func read(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestReadmeLinks checks that every deploy/ path the README names exists.
func TestReadmeLinks(t *testing.T) {
	re := regexp.MustCompile(`\bdeploy/[A-Za-z0-9._/-]*[A-Za-z0-9_]`)
	var paths []string
	for _, p := range re.FindAllString(read(t, "../README.md"), -1) {
		if !slices.Contains(paths, p) {
			paths = append(paths, p)
		}
	}
	for _, want := range []string{"deploy/Dockerfile", "deploy/docker-compose.yml", "deploy/systemd/homeport-relay.service", "deploy/systemd/homeport-visitor.service"} {
		if !slices.Contains(paths, want) {
			t.Errorf("README no longer names %s; found %q", want, paths)
		}
	}
	for _, p := range paths {
		t.Run(p, func(t *testing.T) {
			if _, err := os.Stat("../" + p); err != nil {
				t.Errorf("README names %s: %v", p, err)
			}
		})
	}
}

// TestReadmeServiceInstall checks the README's Windows service commands:
// each "service install" takes flags of the program it installs, which
// the service starts with, and is followed by starting the service by its
// real name.
func TestReadmeServiceInstall(t *testing.T) {
	readme := read(t, "../README.md")
	install := regexp.MustCompile(`(?m)^\s*((?:\S+\\)?agent\.exe(?: \S+)*?) service install((?: .*)?)$`)
	found := map[string]bool{}
	for _, m := range install.FindAllStringSubmatch(readme, -1) {
		where := "README: " + strings.TrimSpace(m[0])
		p, rest := progOf(t, strings.Fields(m[1]))
		if len(rest) > 0 {
			t.Errorf("%s: %q before service: the %s takes no such arguments", where, rest, p.name)
		}
		found[p.name] = true
		args := strings.Fields(m[2])
		checkFlagNames(t, p, args, where)
		if _, err := parseFlags(p, args); err != nil {
			t.Errorf("%s: %v", where, err)
		}
		if start := "sc.exe start " + cli.ServiceName(p.name); !strings.Contains(readme, start) {
			t.Errorf("%s: the README never starts it with %s", where, start)
		}
	}
	for _, want := range []string{"agent", "visitor"} {
		if !found[want] {
			t.Errorf("README: no service install command for the %s", want)
		}
	}
}

// TestEnvFileNotIgnored checks that git tracks deploy/.env, which the
// README tells users to edit.
func TestEnvFileNotIgnored(t *testing.T) {
	git, err := exec.LookPath("git")
	if err != nil {
		t.Skip("no git")
	}
	err = exec.Command(git, "check-ignore", "-q", ".env").Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		t.Error("git ignores deploy/.env")
	case errors.As(err, &ee) && ee.ExitCode() == 1: // not ignored
	default:
		t.Skipf("git check-ignore: %v (not a git checkout?)", err)
	}
}

// unit is a parsed systemd unit file: section, then key, then its values
// in order (a key may repeat).
type unit map[string]map[string][]string

func (u unit) get(section, key string) string {
	v := u[section][key]
	if len(v) == 0 {
		return ""
	}
	return v[len(v)-1]
}

// words splits every value of a list-valued key into words.
func (u unit) words(section, key string) []string {
	var out []string
	for _, v := range u[section][key] {
		out = append(out, strings.Fields(v)...)
	}
	return out
}

func parseUnit(text string) (unit, error) {
	u := unit{}
	section := ""
	sc := bufio.NewScanner(strings.NewReader(text))
	n, pending := 0, ""
	for sc.Scan() {
		n++
		line := strings.TrimSpace(sc.Text())
		if pending == "" && (line == "" || line[0] == '#' || line[0] == ';') {
			continue
		}
		if strings.HasSuffix(line, `\`) {
			pending += strings.TrimSuffix(line, `\`) + " "
			continue
		}
		line, pending = pending+line, ""
		if strings.HasPrefix(line, "[") {
			if !strings.HasSuffix(line, "]") {
				return nil, fmt.Errorf("line %d: bad section header %q", n, line)
			}
			section = line[1 : len(line)-1]
			if u[section] != nil {
				return nil, fmt.Errorf("line %d: section [%s] again", n, section)
			}
			u[section] = map[string][]string{}
			continue
		}
		key, value, ok := strings.Cut(line, "=")
		switch {
		case section == "":
			return nil, fmt.Errorf("line %d: %q before the first section", n, line)
		case !ok || strings.TrimSpace(key) == "":
			return nil, fmt.Errorf("line %d: %q is not KEY=VALUE", n, line)
		}
		key = strings.TrimSpace(key)
		u[section][key] = append(u[section][key], strings.TrimSpace(value))
	}
	if pending != "" {
		return nil, errors.New("file ends in a continued line")
	}
	return u, sc.Err()
}

// systemdDuration reads a time span such as "30s", "1min 30s" or "30".
func systemdDuration(s string) (time.Duration, error) {
	s = strings.ReplaceAll(strings.TrimSpace(s), " ", "")
	if n, err := strconv.Atoi(s); err == nil {
		return time.Duration(n) * time.Second, nil
	}
	return time.ParseDuration(strings.ReplaceAll(s, "min", "m"))
}

// systemdUnits are the systemd units in this directory, each with the
// program it runs and the Restart= it wants.
var systemdUnits = []struct {
	file    string
	program string
	restart string
}{
	{file: "systemd/homeport-relay.service", program: "relay", restart: "on-failure"},
	{file: "systemd/homeport-agent.service", program: "agent", restart: "always"},
	{file: "systemd/homeport-visitor.service", program: "visitor", restart: "always"},
}

func TestSystemdUnits(t *testing.T) {
	for _, tt := range systemdUnits {
		t.Run(tt.program, func(t *testing.T) {
			text := read(t, tt.file)
			u, err := parseUnit(text)
			if err != nil {
				t.Fatalf("%s: %v", tt.file, err)
			}
			for _, s := range []string{"Unit", "Service", "Install"} {
				if u[s] == nil {
					t.Errorf("%s: no [%s] section", tt.file, s)
				}
			}
			if u["Service"] == nil {
				t.FailNow()
			}

			execs := u["Service"]["ExecStart"]
			if len(execs) != 1 {
				t.Fatalf("%s: %d ExecStart lines, want 1", tt.file, len(execs))
			}
			if strings.ContainsAny(execs[0], `"'$%`) {
				t.Fatalf("%s: ExecStart uses quoting, variables or specifiers, which this test does not read: %s", tt.file, execs[0])
			}
			argv := strings.Fields(execs[0])
			p, flags := progOf(t, argv)
			if p.name != tt.program {
				t.Errorf("%s: ExecStart runs the %s (%s), want the %s (%s)", tt.file, p.name, strings.Join(p.command, " "),
					tt.program, strings.Join(programs[tt.program].command, " "))
			}
			if want := "/usr/local/bin/" + p.command[0]; argv[0] != want {
				t.Errorf("%s: ExecStart runs %s, want %s", tt.file, argv[0], want)
			}
			checkFlagNames(t, p, flags, tt.file+": ExecStart")
			if _, err := parseFlags(p, flags); err != nil {
				t.Errorf("%s: ExecStart: %v", tt.file, err)
			}
			checkEnvNames(t, text, p.envs(), tt.file)

			// Load the configuration the unit describes, with the example
			// file in place of the installed one: as it stands, it is
			// refused for its placeholders; with them filled in, it loads.
			args, ok := setConfigFlag(flags, p.example)
			if !ok {
				t.Errorf("%s: ExecStart has no --config", tt.file)
			}
			isolateEnv(t, nil)
			fs, err := parseFlags(p, args)
			if err != nil {
				t.Fatalf("%s: ExecStart with %s: %v", tt.file, p.example, err)
			}
			if _, err := p.load(fs); !errors.Is(err, config.ErrPlaceholder) || !strings.Contains(err.Error(), "is a placeholder") {
				t.Errorf("%s: ExecStart with %s as it stands: %v; want its placeholders refused", tt.file, p.example, err)
			}
			filled := filepath.Join(t.TempDir(), p.example)
			if err := os.WriteFile(filled, []byte(examplefill.New().Fill(read(t, p.example))), 0o600); err != nil {
				t.Fatal(err)
			}
			args, _ = setConfigFlag(flags, filled)
			if fs, err = parseFlags(p, args); err != nil {
				t.Fatalf("%s: ExecStart with %s: %v", tt.file, filled, err)
			}
			cfg, err := p.load(fs)
			if err != nil {
				t.Fatalf("%s: ExecStart with %s, its placeholders filled in, does not load: %v", tt.file, p.example, err)
			}
			drain := p.drainFor(cfg)
			if r, ok := cfg.(config.Relay); ok {
				dir := u.get("Service", "StateDirectory")
				if dir == "" {
					t.Errorf("%s: no StateDirectory for the relay's data", tt.file)
				} else if want := path.Join("/var/lib", dir); r.DataDir != want {
					t.Errorf("%s: the relay keeps its data in %s, but StateDirectory is %s", tt.file, r.DataDir, want)
				}
			}

			svc := []struct{ key, want string }{
				{"Type", "simple"},
				{"Restart", tt.restart},
				{"NoNewPrivileges", "yes"},
				{"ProtectSystem", "strict"},
				{"ProtectHome", "yes"},
				{"PrivateTmp", "yes"},
				{"PrivateDevices", "yes"},
				{"SystemCallFilter", "@system-service"},
				{"LimitNOFILE", "65536"},
			}
			for _, c := range svc {
				if got := u.get("Service", c.key); got != c.want {
					t.Errorf("%s: %s=%s, want %s", tt.file, c.key, got, c.want)
				}
			}
			if u.get("Service", "DynamicUser") != "yes" && u.get("Service", "User") == "" {
				t.Errorf("%s: runs as root: set DynamicUser=yes or User=", tt.file)
			}
			if u.get("Service", "RestartSec") == "" {
				t.Errorf("%s: no RestartSec", tt.file)
			}
			if sig := u.get("Service", "KillSignal"); sig != "" && sig != "SIGTERM" {
				t.Errorf("%s: KillSignal=%s; the programs drain on SIGTERM", tt.file, sig)
			}
			stop, err := systemdDuration(u.get("Service", "TimeoutStopSec"))
			if err != nil || stop <= drain {
				t.Errorf("%s: TimeoutStopSec=%q, want more than the %v the %s may take to stop", tt.file, u.get("Service", "TimeoutStopSec"), drain, tt.program)
			}
			families := u.words("Service", "RestrictAddressFamilies")
			for _, f := range []string{"AF_INET", "AF_INET6"} {
				if !slices.Contains(families, f) {
					t.Errorf("%s: RestrictAddressFamilies lacks %s", tt.file, f)
				}
			}
			// Ambient capabilities outside the bounding set are dropped.
			if _, limited := u["Service"]["CapabilityBoundingSet"]; limited {
				bounding := u.words("Service", "CapabilityBoundingSet")
				for _, c := range u.words("Service", "AmbientCapabilities") {
					if !slices.Contains(bounding, c) {
						t.Errorf("%s: AmbientCapabilities %s is not in CapabilityBoundingSet, so it has no effect", tt.file, c)
					}
				}
			}
			for _, key := range []string{"Wants", "After"} {
				if !slices.Contains(u.words("Unit", key), "network-online.target") {
					t.Errorf("%s: %s lacks network-online.target", tt.file, key)
				}
			}
			if !slices.Contains(u.words("Install", "WantedBy"), "multi-user.target") {
				t.Errorf("%s: not WantedBy=multi-user.target", tt.file)
			}
		})
	}
}

// TestSystemdInstall checks the install steps in the units' comments: a
// file they put in /etc/homeport (the configuration, which holds the
// token) is readable by root and the service's user only. Mode 0640
// goes with the unit's Group, which the steps create; mode 0600 owned by
// root suits only the EnvironmentFile, which systemd reads as root.
func TestSystemdInstall(t *testing.T) {
	for _, tt := range systemdUnits {
		file := tt.file
		t.Run(file, func(t *testing.T) {
			text := read(t, file)
			u, err := parseUnit(text)
			if err != nil {
				t.Fatalf("%s: %v", file, err)
			}
			group, user := u.get("Service", "Group"), u.get("Service", "User")
			envFile := strings.TrimPrefix(u.get("Service", "EnvironmentFile"), "-")
			if !regexp.MustCompile(`(?m)^#\s+useradd .*\s` + regexp.QuoteMeta(user) + `$`).MatchString(text) {
				t.Errorf("%s: the steps do not create the user %s that the unit runs as", file, user)
			}
			installs := 0
			for _, line := range strings.Split(text, "\n") {
				i := strings.Index(line, "install ")
				if !strings.HasPrefix(strings.TrimSpace(line), "#") || i < 0 || !strings.Contains(line, "/etc/homeport/") {
					continue
				}
				f := strings.Fields(strings.Trim(line[i:], `"`))
				opt := map[string]string{"-m": "", "-o": "root", "-g": "root"}
				dest, dir := "", false
				for j := 1; j < len(f); j++ {
					switch a := f[j]; a {
					case "-m", "-o", "-g":
						if j+1 < len(f) {
							opt[a] = f[j+1]
							j++
						}
					case "-d":
						dir = true
					default:
						dest = a
					}
				}
				if dir || !strings.HasPrefix(dest, "/etc/homeport/") {
					continue
				}
				mode, owner, grp := opt["-m"], opt["-o"], opt["-g"]
				installs++
				switch {
				case mode == "0640" && owner == "root" && grp == group:
				case mode == "0600" && owner == "root" && dest == envFile:
				case mode == "0600" && owner == user:
				default:
					t.Errorf("%s: %q installs %s with mode %s, %s:%s; want 0640 root:%s (or 0600 for the service's user, or root's EnvironmentFile)",
						file, strings.TrimSpace(line), dest, mode, owner, grp, group)
				}
			}
			if installs == 0 {
				t.Errorf("%s: no step installs a file into /etc/homeport", file)
			}
		})
	}
}

// dotenv reads a Compose .env file: the variables it sets, and the names
// of commented-out assignments ("# NAME=value"), offered as options.
func dotenv(t *testing.T, text string) (vars map[string]string, commented []string) {
	t.Helper()
	vars = map[string]string{}
	assign := regexp.MustCompile(`^#\s*([A-Za-z_][A-Za-z0-9_]*)=`)
	for i, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		if line[0] == '#' {
			if m := assign.FindStringSubmatch(line); m != nil {
				commented = append(commented, m[1])
			}
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok || strings.ContainsAny(k, " \t") {
			t.Fatalf(".env line %d: %q is not NAME=VALUE", i+1, line)
		}
		if strings.ContainsAny(v, `"'#$ `) {
			t.Fatalf(".env line %d: %q: keep values plain (no quotes, spaces, # or $)", i+1, line)
		}
		vars[k] = v
	}
	return vars, commented
}

// varRef matches Compose interpolation: ${NAME}, ${NAME:-default},
// ${NAME-default}, ${NAME:?error}, ${NAME?error}, $NAME and $$.
var varRef = regexp.MustCompile(`\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)`)

// interpolate substitutes vars into s as Compose does.
func interpolate(s string, vars map[string]string) (string, error) {
	var errs []error
	out := varRef.ReplaceAllStringFunc(s, func(ref string) string {
		if ref == "$$" {
			return "$"
		}
		m := varRef.FindStringSubmatch(ref)
		name, op, arg := m[1]+m[4], m[2], m[3]
		v, set := vars[name]
		switch op {
		case ":-":
			if v == "" {
				return arg
			}
		case "-":
			if !set {
				return arg
			}
		case ":?", "?":
			if !set || (op == ":?" && v == "") {
				errs = append(errs, fmt.Errorf("%s: %s", name, arg))
			}
		}
		return v
	})
	return out, errors.Join(errs...)
}

// refs lists the variables s refers to, and whether each has a default.
func refs(s string) map[string]bool {
	out := map[string]bool{}
	for _, m := range varRef.FindAllStringSubmatch(s, -1) {
		if name := m[1] + m[4]; name != "" {
			out[name] = out[name] || strings.HasSuffix(m[2], "-")
		}
	}
	return out
}

// service is the part of a Compose service this test reads.
type service struct {
	raw         map[string]any
	command     []string
	environment []string // NAME=VALUE, before interpolation
	ports       []string
	volumes     []string
}

func strList(t *testing.T, v any, where string) []string {
	t.Helper()
	if v == nil {
		return nil
	}
	l, ok := v.([]any)
	if !ok {
		t.Fatalf("%s: want a list, got %T", where, v)
	}
	out := make([]string, len(l))
	for i, x := range l {
		out[i] = fmt.Sprint(x)
	}
	return out
}

// parseCompose returns the services and the top-level volumes.
func parseCompose(t *testing.T, text string) (map[string]service, map[string]any) {
	t.Helper()
	v := viper.New()
	v.SetConfigType("yaml")
	if err := v.ReadConfig(strings.NewReader(text)); err != nil {
		t.Fatalf("docker-compose.yml: %v", err)
	}
	raw, ok := v.Get("services").(map[string]any)
	if !ok {
		t.Fatal("docker-compose.yml: no services")
	}
	out := map[string]service{}
	for name, r := range raw {
		m, ok := r.(map[string]any)
		if !ok {
			t.Fatalf("docker-compose.yml: service %s is not a mapping", name)
		}
		where := "docker-compose.yml: " + name
		if _, isMap := m["environment"].(map[string]any); isMap {
			// The YAML reader folds keys to lower case; a list keeps the
			// names as written, so they can be checked.
			t.Fatalf("%s: write environment as a list of NAME=VALUE", where)
		}
		out[name] = service{
			raw:         m,
			command:     strList(t, m["command"], where+": command"),
			environment: strList(t, m["environment"], where+": environment"),
			ports:       strList(t, m["ports"], where+": ports"),
			volumes:     strList(t, m["volumes"], where+": volumes"),
		}
	}
	vols, _ := v.Get("volumes").(map[string]any)
	return out, vols
}

// containerPort returns the container side of a published port such as
// "7000:7000", "127.0.0.1:3390:3390" or "3390/tcp".
func containerPort(spec string) (int, error) {
	s, proto, _ := strings.Cut(spec, "/")
	if proto != "" && proto != "tcp" {
		return 0, fmt.Errorf("%q: not TCP", spec)
	}
	parts := strings.Split(s, ":")
	return strconv.Atoi(parts[len(parts)-1])
}

func published(s service) map[int]bool {
	m := map[int]bool{}
	for _, p := range s.ports {
		if n, err := containerPort(p); err == nil {
			m[n] = true
		}
	}
	return m
}

// dockerfile is the part of the Dockerfile this test reads: its
// instructions, with continuation lines joined, per stage.
type dockerfile struct {
	stages [][]instruction
}

type instruction struct{ cmd, args string }

func parseDockerfile(t *testing.T, text string) dockerfile {
	t.Helper()
	var d dockerfile
	pending := ""
	for _, line := range strings.Split(text, "\n") {
		trimmed := strings.TrimSpace(line)
		if trimmed == "" || strings.HasPrefix(trimmed, "#") {
			continue
		}
		if strings.HasSuffix(trimmed, `\`) {
			pending += strings.TrimSuffix(trimmed, `\`) + " "
			continue
		}
		full := pending + trimmed
		pending = ""
		cmd, args, _ := strings.Cut(full, " ")
		in := instruction{strings.ToUpper(cmd), strings.TrimSpace(args)}
		if in.cmd == "FROM" {
			d.stages = append(d.stages, nil)
		}
		if len(d.stages) == 0 {
			t.Fatalf("Dockerfile: %s before FROM", in.cmd)
		}
		d.stages[len(d.stages)-1] = append(d.stages[len(d.stages)-1], in)
	}
	return d
}

// image returns a stage's base image, without --platform.
func (d dockerfile) image(stage int) string {
	for _, f := range strings.Fields(d.stages[stage][0].args) {
		if !strings.HasPrefix(f, "--") {
			return f
		}
	}
	return ""
}

// final returns the values of cmd's instructions in the last stage.
func (d dockerfile) final(cmd string) []string {
	var out []string
	for _, in := range d.stages[len(d.stages)-1] {
		if in.cmd == cmd {
			out = append(out, in.args)
		}
	}
	return out
}

// env returns the final stage's ENV settings, written NAME=VALUE (several
// on a line) or, in the legacy form, NAME VALUE. Values are unquoted.
func (d dockerfile) env() map[string]string {
	m := map[string]string{}
	for _, args := range d.final("ENV") {
		if k, _, ok := strings.Cut(args, "="); ok && !strings.Contains(k, " ") {
			for _, kv := range strings.Fields(args) {
				k, v, _ := strings.Cut(kv, "=")
				m[k] = v
			}
			continue
		}
		k, v, _ := strings.Cut(args, " ")
		m[k] = strings.TrimSpace(v)
	}
	return m
}

func TestDockerfile(t *testing.T) {
	text := read(t, "Dockerfile")
	d := parseDockerfile(t, text)
	if len(d.stages) < 2 {
		t.Fatalf("Dockerfile: %d stages, want a build stage and a final one", len(d.stages))
	}

	m := regexp.MustCompile(`(?m)^go (\d+\.\d+)`).FindStringSubmatch(read(t, "../go.mod"))
	if m == nil {
		t.Fatal("go.mod: no go line")
	}
	if want := "golang:" + m[1]; !strings.HasPrefix(d.image(0), want) {
		t.Errorf("Dockerfile builds with %s; go.mod wants Go %s (%s)", d.image(0), m[1], want)
	}
	var build string
	for _, in := range d.stages[0] {
		if in.cmd == "RUN" && strings.Contains(in.args, "go build") {
			build = in.args
		}
	}
	for _, want := range []string{"CGO_ENABLED=0", "-trimpath", "-s -w", "./cmd/relay", "./cmd/agent"} {
		if !strings.Contains(build, want) {
			t.Errorf("Dockerfile: go build lacks %s: %q", want, build)
		}
	}

	var copied []string
	for _, c := range d.final("COPY") {
		if f := strings.Fields(c); f[len(f)-1] == "/usr/local/bin/" {
			copied = append(copied, f[:len(f)-1]...)
		}
	}
	for _, p := range []string{"relay", "agent"} {
		if !slices.ContainsFunc(copied, func(s string) bool { return path.Base(s) == p }) {
			t.Errorf("Dockerfile: the final stage does not copy %s to /usr/local/bin/", p)
		}
	}

	users := d.final("USER")
	if len(users) == 0 {
		t.Error("Dockerfile: no USER in the final stage")
	} else if u, _, _ := strings.Cut(users[len(users)-1], ":"); u == "root" || u == "0" {
		t.Errorf("Dockerfile: runs as %s", u)
	}

	checkEnvNames(t, text, anyEnv(), "Dockerfile")
	env := d.env()
	dataDir := env[config.EnvPrefix+"DATA_DIR"]
	if dataDir == "" {
		t.Error("Dockerfile: HOMEPORT_DATA_DIR not set")
	}
	if vols := d.final("VOLUME"); !slices.Contains(vols, dataDir) {
		t.Errorf("Dockerfile: VOLUME %q, want the data directory %s", vols, dataDir)
	}

	cmds := d.final("CMD")
	var cmd []string
	if len(cmds) == 0 || json.Unmarshal([]byte(cmds[len(cmds)-1]), &cmd) != nil || len(cmd) == 0 {
		t.Fatalf("Dockerfile: want CMD in exec form, got %q", cmds)
	}
	progOf(t, cmd)

	ignore := read(t, "Dockerfile.dockerignore")
	if !slices.Contains(strings.Fields(ignore), "deploy/.env") {
		t.Error("Dockerfile.dockerignore: deploy/.env (the token) is sent with the build context")
	}
}

func TestCompose(t *testing.T) {
	composeText := read(t, "docker-compose.yml")
	envText := read(t, ".env")
	vars, commented := dotenv(t, envText)
	services, volumes := parseCompose(t, composeText)
	d := parseDockerfile(t, read(t, "Dockerfile"))
	imageEnv := d.env()
	var defaultCmd []string
	if cmds := d.final("CMD"); len(cmds) > 0 {
		_ = json.Unmarshal([]byte(cmds[len(cmds)-1]), &defaultCmd)
	}

	checkEnvNames(t, composeText, anyEnv(), "docker-compose.yml")
	checkEnvNames(t, envText, anyEnv(), ".env")

	// .env and the compose file agree: every variable .env sets or offers
	// is used (Compose ignores the rest silently), and every variable used
	// without a default is set.
	used := refs(composeText)
	for _, k := range append(slices.Sorted(maps.Keys(vars)), commented...) {
		if _, ok := used[k]; !ok {
			t.Errorf(".env: %s is not used in docker-compose.yml", k)
		}
	}
	for k, hasDefault := range used {
		if _, ok := vars[k]; !ok && !hasDefault {
			t.Errorf("docker-compose.yml uses ${%s}, which .env does not set", k)
		}
	}

	missing := false
	for _, name := range []string{"relay", "agent", "web"} {
		if _, ok := services[name]; !ok {
			t.Errorf("docker-compose.yml: no service %s", name)
			missing = true
		}
	}
	if missing {
		t.FailNow()
	}
	if img := fmt.Sprint(services["web"].raw["image"]); !strings.HasPrefix(img, "nginx") {
		t.Errorf("docker-compose.yml: web runs %s, want nginx", img)
	}

	// The relay first: the agent's tunnels are checked against it.
	var relay config.Relay
	for _, name := range []string{"relay", "agent"} {
		t.Run(name, func(t *testing.T) {
			s := services[name]
			where := "docker-compose.yml: " + name
			build, _ := s.raw["build"].(map[string]any)
			ctx, _ := build["context"].(string)
			file, _ := build["dockerfile"].(string)
			if ctx != ".." || file != "deploy/Dockerfile" {
				t.Errorf("%s: build %v, want context .. and dockerfile deploy/Dockerfile", where, build)
			}
			if got := fmt.Sprint(s.raw["restart"]); got != "unless-stopped" {
				t.Errorf("%s: restart %s, want unless-stopped", where, got)
			}

			argv := s.command
			if len(argv) == 0 {
				argv = defaultCmd
			}
			if len(argv) == 0 {
				t.Fatalf("%s: no command", where)
			}
			p, args := progOf(t, argv)
			if p.name != name {
				t.Errorf("%s: runs the %s", where, p.name)
			}
			checkFlagNames(t, p, args, where+": command")

			// The container's environment: the image's, then the service's
			// after interpolation from .env. The token and fingerprint are
			// empty until the user pastes what the relay printed.
			env := maps.Clone(imageEnv)
			known := p.envs()
			for _, kv := range s.environment {
				k, v, ok := strings.Cut(kv, "=")
				if !ok {
					t.Errorf("%s: environment %q: want NAME=VALUE", where, kv)
					continue
				}
				if strings.HasPrefix(k, config.EnvPrefix) && !known[k] {
					t.Errorf("%s: %s is not a setting of the %s", where, k, p.name)
				}
				for ref := range refs(v) {
					if strings.HasPrefix(ref, config.EnvPrefix) && !known[ref] {
						t.Errorf("%s: %s takes ${%s}, which is not a setting of the %s", where, k, ref, p.name)
					}
				}
				val, err := interpolate(v, vars)
				if err != nil {
					t.Errorf("%s: %s: %v", where, k, err)
				}
				env[k] = val
			}
			pasted := map[string]string{
				config.EnvPrefix + "TOKEN":       "pasted-token-0123456789",
				config.EnvPrefix + "FINGERPRINT": "sha256:" + strings.Repeat("0f", 32),
			}
			for k, v := range pasted {
				if got, ok := env[k]; ok && got == "" && p.name == "agent" {
					env[k] = v
				}
			}
			isolateEnv(t, env)
			fs, err := parseFlags(p, args)
			if err != nil {
				t.Fatalf("%s: command: %v", where, err)
			}
			cfg, err := p.load(fs)
			if err != nil {
				t.Fatalf("%s: the %s's settings do not load: %v", where, p.name, err)
			}

			drain := p.drainFor(cfg)
			if g, err := time.ParseDuration(fmt.Sprint(s.raw["stop_grace_period"])); err != nil || g <= drain {
				t.Errorf("%s: stop_grace_period %v, want more than the %v the %s may take to stop", where, s.raw["stop_grace_period"], drain, p.name)
			}

			switch c := cfg.(type) {
			case config.Relay:
				relay = c
				mounted := false
				for _, v := range s.volumes {
					parts := strings.Split(v, ":")
					if len(parts) >= 2 && parts[1] == c.DataDir {
						mounted = true
						if _, ok := volumes[strings.ToLower(parts[0])]; !ok {
							t.Errorf("%s: volume %s is not declared under volumes", where, parts[0])
						}
					}
				}
				if !mounted {
					t.Errorf("%s: no volume on the data directory %s", where, c.DataDir)
				}
				_, port, _ := net.SplitHostPort(c.Listen)
				if n, _ := strconv.Atoi(port); !published(s)[n] {
					t.Errorf("%s: the agent port %s is not published", where, port)
				}
				if c.BindAddr != "" {
					t.Errorf("%s: bind_addr %s; published ports need every address of the container", where, c.BindAddr)
				}
			case config.Agent:
				if relay.AllowPorts == nil {
					t.Fatal("relay settings not loaded")
				}
				pub := published(services["relay"])
				for _, tn := range c.Tunnels {
					if !pub[int(tn.RemotePort)] {
						t.Errorf("%s: tunnel %s: the relay service does not publish port %d", where, tn, tn.RemotePort)
					}
					if !relay.AllowPorts.Contains(tn.RemotePort) {
						t.Errorf("%s: tunnel %s: the relay allows ports %s only", where, tn, relay.AllowPorts)
					}
				}
			}
		})
	}
}

// TestInterpolate pins the Compose substitution the compose test relies on.
func TestInterpolate(t *testing.T) {
	vars := map[string]string{"A": "a", "E": ""}
	tests := []struct {
		in, want string
		err      bool
	}{
		{"${A}", "a", false},
		{"x=$A", "x=a", false},
		{"${E:-d}", "d", false},
		{"${E-d}", "", false},
		{"${U-d}", "d", false},
		{"${U}", "", false},
		{"$${A}", "${A}", false},
		{"${E:?need E}", "", true},
		{"${A:?need A}", "a", false},
	}
	for _, tt := range tests {
		got, err := interpolate(tt.in, vars)
		if got != tt.want || (err != nil) != tt.err {
			t.Errorf("interpolate(%q) = %q, %v; want %q, error %v", tt.in, got, err, tt.want, tt.err)
		}
	}
}
