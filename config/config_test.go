package config

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"github.com/homeport/homeport/internal/examplefill"
)

const fp = "sha256:4f2a9c0d1e8b7a6f5e4d3c2b1a0f9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f"

func TestParsePortRanges(t *testing.T) {
	tests := []struct {
		in      string
		want    PortRanges
		wantErr string
	}{
		{in: "3390", want: PortRanges{{3390, 3390}}},
		{in: "8000-8100, 3390", want: PortRanges{{3390, 3390}, {8000, 8100}}},
		{in: "1-10,5-20,21", want: PortRanges{{1, 21}}},
		{in: "1024-65535", want: PortRanges{{1024, 65535}}},
		{in: "", wantErr: "no ports"},
		{in: "0", wantErr: "1 to 65535"},
		{in: "65536", wantErr: "1 to 65535"},
		{in: "20-10", wantErr: "ends below"},
		{in: "abc", wantErr: "1 to 65535"},
		{in: "10-", wantErr: "1 to 65535"},
	}
	for _, tt := range tests {
		got, err := ParsePortRanges(tt.in)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("ParsePortRanges(%q) = %v, %v; want error containing %q", tt.in, got, err, tt.wantErr)
			}
			continue
		}
		if err != nil || !reflect.DeepEqual(got, tt.want) {
			t.Errorf("ParsePortRanges(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
		}
	}
	r, _ := ParsePortRanges("3390,8000-8100")
	for p, want := range map[uint16]bool{3389: false, 3390: true, 3391: false, 8000: true, 8050: true, 8100: true, 8101: false} {
		if r.Contains(p) != want {
			t.Errorf("Contains(%d) = %v", p, !want)
		}
	}
	if r.String() != "3390,8000-8100" {
		t.Errorf("String() = %q", r.String())
	}
}

func TestParseTunnel(t *testing.T) {
	tests := []struct {
		in      string
		want    Tunnel
		wantErr string
	}{
		{in: "3390:127.0.0.1:3389", want: Tunnel{Name: "tcp-3390", Protocol: "tcp", RemotePort: 3390, Target: "127.0.0.1:3389"}},
		{in: "rdp=3390:127.0.0.1:3389", want: Tunnel{Name: "rdp", Protocol: "tcp", RemotePort: 3390, Target: "127.0.0.1:3389"}},
		{in: "ssh=tcp:2222:nas.lan:22", want: Tunnel{Name: "ssh", Protocol: "tcp", RemotePort: 2222, Target: "nas.lan:22"}},
		{in: "8080:[::1]:80", want: Tunnel{Name: "tcp-8080", Protocol: "tcp", RemotePort: 8080, Target: "[::1]:80"}},
		{in: "udp:5353:127.0.0.1:53", want: Tunnel{Name: "udp-5353", Protocol: "udp", RemotePort: 5353, Target: "127.0.0.1:53"}},
		{in: "dns=UDP:5353:[::1]:53", want: Tunnel{Name: "dns", Protocol: "udp", RemotePort: 5353, Target: "[::1]:53"}},
		{in: "sctp:5353:127.0.0.1:53", wantErr: "want tcp, udp, http or https"},
		{in: "sctp:1:a:1", wantErr: "unknown protocol"},
		{in: "3390", wantErr: "REMOTE_PORT:HOST:PORT"},
		{in: "3390:3389", wantErr: "HOST:PORT"},
		{in: "0:127.0.0.1:3389", wantErr: "1 to 65535"},
		{in: "3390:127.0.0.1:99999", wantErr: "1 to 65535"},
		{in: "3390::3389", wantErr: "host missing"},
		{in: "=3390:127.0.0.1:3389", wantErr: "empty name"},
		{in: "bad name=3390:127.0.0.1:3389", wantErr: "use A-Z, a-z, 0-9"},
		{in: "prüfung=3390:127.0.0.1:3389", wantErr: "use A-Z, a-z, 0-9"},
		{in: strings.Repeat("n", 65) + "=1:a:1", wantErr: "longer than 64"},
		{in: "3390:::1:3389", wantErr: "HOST:PORT"},
		// Private tunnels: no public port; PORT is the visitors' default.
		{in: "rdp=private:3389:127.0.0.1:3389", want: Tunnel{Name: "rdp", Protocol: "tcp", RemotePort: 3389, Target: "127.0.0.1:3389", Private: true}},
		{in: "rdp=private:127.0.0.1:3389", want: Tunnel{Name: "rdp", Protocol: "tcp", Target: "127.0.0.1:3389", Private: true}},
		{in: "rdp=Private:nas.lan:3389", want: Tunnel{Name: "rdp", Protocol: "tcp", Target: "nas.lan:3389", Private: true}},
		{in: "rdp=private:[::1]:3389", want: Tunnel{Name: "rdp", Protocol: "tcp", Target: "[::1]:3389", Private: true}},
		{in: "rdp=private:13389:[::1]:3389", want: Tunnel{Name: "rdp", Protocol: "tcp", RemotePort: 13389, Target: "[::1]:3389", Private: true}},
		{in: "ssh=private:tcp:22:127.0.0.1:22", want: Tunnel{Name: "ssh", Protocol: "tcp", RemotePort: 22, Target: "127.0.0.1:22", Private: true}},
		{in: "rdp-udp=private:udp:3389:127.0.0.1:3389", want: Tunnel{Name: "rdp-udp", Protocol: "udp", RemotePort: 3389, Target: "127.0.0.1:3389", Private: true}},
		{in: "rdp-udp=udp:private:3389:127.0.0.1:3389", want: Tunnel{Name: "rdp-udp", Protocol: "udp", RemotePort: 3389, Target: "127.0.0.1:3389", Private: true}},
		{in: "dns=UDP:PRIVATE:127.0.0.1:53", want: Tunnel{Name: "dns", Protocol: "udp", Target: "127.0.0.1:53", Private: true}},
		{in: "private:3389:127.0.0.1:3389", wantErr: "a private tunnel needs a name, by which visitors reach it; want NAME=private:"},
		{in: "udp:private:127.0.0.1:53", wantErr: "a private tunnel needs a name"},
		{in: "rdp=private:0:127.0.0.1:3389", wantErr: `visitors' port "0": want a number from 1 to 65535`},
		{in: "rdp=private:70000:127.0.0.1:3389", wantErr: `visitors' port "70000"`},
		{in: "rdp=private:3389", wantErr: `target "3389": want HOST:PORT`},
		{in: "rdp=private:127.0.0.1", wantErr: `target "127.0.0.1": want HOST:PORT`},
		{in: "rdp=private::3389", wantErr: "host missing"},
		{in: "rdp=private:sctp:1:a:1", wantErr: `target "sctp:1:a:1": want HOST:PORT`},
		{in: "rdp=private:private:1:a:1", wantErr: `target "private:1:a:1"`},
		{in: "rdp=tcp:udp:1:a:1", wantErr: `unknown protocol "udp"`},
		{in: "bad name=private:1:a:1", wantErr: "use A-Z, a-z, 0-9"},
	}
	for _, tt := range tests {
		got, err := ParseTunnel(tt.in)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("ParseTunnel(%q) = %v, %v; want error containing %q", tt.in, got, err, tt.wantErr)
			}
			continue
		}
		if err != nil || !reflect.DeepEqual(got, tt.want) {
			t.Errorf("ParseTunnel(%q) = %+v, %v; want %+v", tt.in, got, err, tt.want)
		}
		if back, err := ParseTunnel(got.String()); err != nil || !reflect.DeepEqual(back, got) {
			t.Errorf("ParseTunnel(%q) does not read back: %+v, %v", got.String(), back, err)
		}
	}
}

func TestParseValues(t *testing.T) {
	sizes := map[string]uint64{"0": 0, "4096": 4096, "4MiB": 4 << 20, "256 KiB": 256 << 10, "1g": 1 << 30, "12B": 12}
	for in, want := range sizes {
		if got, err := ParseSize(in); err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "MiB", "4 parsecs", "-1", "1.5MiB", "99999999999999999999"} {
		if _, err := ParseSize(in); err == nil {
			t.Errorf("ParseSize(%q) succeeded", in)
		}
	}
	if d, err := ParseDuration("1m30s"); err != nil || d != 90*time.Second {
		t.Errorf("ParseDuration(1m30s) = %v, %v", d, err)
	}
	if _, err := ParseDuration("30"); err == nil || !strings.Contains(err.Error(), `"30s"`) {
		t.Errorf("ParseDuration(30) = %v; want a hint to write 30s", err)
	}
	up := strings.ToUpper(strings.TrimPrefix(fp, "sha256:"))
	var colons []string
	for i := 0; i < len(up); i += 2 {
		colons = append(colons, up[i:i+2])
	}
	for _, in := range []string{fp, up, strings.Join(colons, ":"), " " + fp + " "} {
		if got, err := NormalizeFingerprint(in); err != nil || got != fp {
			t.Errorf("NormalizeFingerprint(%q) = %q, %v", in, got, err)
		}
	}
	for _, in := range []string{"", "sha256:", fp[:70], fp + "00", "sha256:" + strings.Repeat("g", 64)} {
		if _, err := NormalizeFingerprint(in); err == nil {
			t.Errorf("NormalizeFingerprint(%q) succeeded", in)
		}
	}
}

// cleanEnv removes HOMEPORT_ variables for the test's duration.
func cleanEnv(t *testing.T) {
	t.Helper()
	for _, kv := range os.Environ() {
		if name, _, _ := strings.Cut(kv, "="); strings.HasPrefix(name, EnvPrefix) {
			t.Setenv(name, "")
			os.Unsetenv(name)
		}
	}
}

func writeFile(t *testing.T, name, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func relayFlags(t *testing.T, args ...string) *pflag.FlagSet {
	t.Helper()
	fs := pflag.NewFlagSet("relay", pflag.ContinueOnError)
	RelayFlags(fs)
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	return fs
}

func agentFlags(t *testing.T, args ...string) *pflag.FlagSet {
	t.Helper()
	fs := pflag.NewFlagSet("agent", pflag.ContinueOnError)
	AgentFlags(fs)
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	return fs
}

func TestRelayDefaults(t *testing.T) {
	cleanEnv(t)
	c, err := LoadRelay(relayFlags(t))
	if err != nil {
		t.Fatal(err)
	}
	want := Relay{
		DataDir:          DefaultDataDir(),
		Listen:           ":7000",
		AllowPorts:       PortRanges{{1024, 65535}},
		HandshakeTimeout: 10 * time.Second,
		ShutdownTimeout:  10 * time.Second,
		AccessLog:        true,
		QUIC:             true,
		UDPFlowTimeout:   time.Minute,
		UDPMaxFlows:      1024,
		MaxAgents:        10,
		MaxTunnels:       64,
		PortReserve:      15 * time.Minute,
		Guard: Guard{MaxHandshakes: 1024, MaxHandshakesPerIP: 16, AuthBanAfter: 5, AuthBanFor: 15 * time.Minute,
			VisitorMaxConns: 32, VisitorRate: 60, VisitorBurst: 20, VisitorBanAfter: 50, VisitorBanFor: 10 * time.Minute},
		Session: Session{KeepAlive: 10 * time.Second, KeepAliveTimeout: 10 * time.Second, StreamWindow: 16 << 20},
		Log:     Log{Level: "info", Format: "text"},
		ACME:    ACME{CA: DefaultACMECA, HTTP01: true, TLSALPN01: true},
	}
	if !reflect.DeepEqual(c, want) {
		t.Errorf("defaults:\n got %+v\nwant %+v", c, want)
	}
}

// TestPrecedence checks defaults < file < environment < flags, for each
// file format.
func TestPrecedence(t *testing.T) {
	files := map[string]string{
		"relay.yaml": "listen: \":7001\"\nshutdown_timeout: 3s\nsession:\n  keepalive: 2s\n",
		"relay.toml": "listen = \":7001\"\nshutdown_timeout = \"3s\"\n[session]\nkeepalive = \"2s\"\n",
		"relay.json": `{"listen": ":7001", "shutdown_timeout": "3s", "session": {"keepalive": "2s"}}`,
	}
	for name, body := range files {
		t.Run(name, func(t *testing.T) {
			cleanEnv(t)
			path := writeFile(t, name, body)

			c, err := LoadRelay(relayFlags(t, "--config", path))
			if err != nil {
				t.Fatal(err)
			}
			if c.Listen != ":7001" || c.ShutdownTimeout != 3*time.Second || c.Session.KeepAlive != 2*time.Second || c.HandshakeTimeout != 10*time.Second {
				t.Errorf("file: %+v", c)
			}

			t.Setenv("HOMEPORT_LISTEN", ":7002")
			t.Setenv("HOMEPORT_SESSION_KEEPALIVE", "4s")
			c, err = LoadRelay(relayFlags(t, "--config", path))
			if err != nil {
				t.Fatal(err)
			}
			if c.Listen != ":7002" || c.Session.KeepAlive != 4*time.Second || c.ShutdownTimeout != 3*time.Second {
				t.Errorf("env over file: %+v", c)
			}

			c, err = LoadRelay(relayFlags(t, "--config", path, "--listen", ":7003", "--keepalive", "5s"))
			if err != nil {
				t.Fatal(err)
			}
			if c.Listen != ":7003" || c.Session.KeepAlive != 5*time.Second {
				t.Errorf("flag over env: %+v", c)
			}

			// HOMEPORT_CONFIG names the file when --config is absent.
			t.Setenv("HOMEPORT_CONFIG", path)
			os.Unsetenv("HOMEPORT_LISTEN")
			c, err = LoadRelay(relayFlags(t))
			if err != nil || c.Listen != ":7001" {
				t.Errorf("HOMEPORT_CONFIG: %+v, %v", c, err)
			}
		})
	}
}

func TestRelayErrors(t *testing.T) {
	tests := []struct {
		name string
		file string // YAML, "" for none
		env  map[string]string
		args []string
		want []string // substrings of the error
	}{
		{name: "unknown key", file: "listen: \":7000\"\nlisten_addr: x\n", want: []string{`unknown setting "listen_addr"`, "relay.yaml"}},
		{name: "typo suggests", file: "acess_log: true\n", want: []string{`"acess_log"`, `did you mean "access_log"`}},
		{name: "unknown nested", file: "session:\n  keepalve: 1s\n", want: []string{`"session.keepalve"`, `did you mean "session.keepalive"`}},
		{name: "agent key", file: "fingerprint: x\n", want: []string{`"fingerprint"`, "other program"}},
		{name: "section as value", file: "session: 5\n", want: []string{"session must be a section"}},
		{name: "duration unit", file: "handshake_timeout: 30\n", want: []string{"handshake_timeout in", "relay.yaml", `"30s"`}},
		{name: "duration range", args: []string{"--handshake-timeout", "1h"}, want: []string{"flag --handshake-timeout", "out of range"}},
		{name: "bad window", env: map[string]string{"HOMEPORT_SESSION_STREAM_WINDOW": "1KiB"}, want: []string{"HOMEPORT_SESSION_STREAM_WINDOW", "out of range"}},
		{name: "empty token flag", args: []string{"--token", ""}, want: []string{"flag --token", "empty"}},
		{name: "empty token file", file: "token: \"\"\n", want: []string{"token in", "empty"}},
		{name: "empty token env", env: map[string]string{"HOMEPORT_TOKEN": ""}, want: []string{"HOMEPORT_TOKEN", "empty"}},
		{name: "short token", args: []string{"--token", "short"}, want: []string{"shorter than 16"}},
		{name: "bad ports", args: []string{"--allow-ports", "80-70"}, want: []string{"flag --allow-ports", "ends below"}},
		{name: "bad listen", args: []string{"--listen", "7000"}, want: []string{"flag --listen", "HOST:PORT"}},
		{name: "bad bind", args: []string{"--bind-addr", "example.com"}, want: []string{"not an IP address"}},
		{name: "cert without key", args: []string{"--tls-cert", "a.pem"}, want: []string{"tls_cert and tls_key"}},
		{name: "unknown env", env: map[string]string{"HOMEPORT_LISTN": ":1"}, want: []string{"HOMEPORT_LISTN is not a homeport setting", "HOMEPORT_LISTEN"}},
		{name: "file-only env", env: map[string]string{"HOMEPORT_TOKENS": "x"}, want: []string{"only be set in a config file"}},
		{name: "bad log level", args: []string{"--log-level", "loud"}, want: []string{"flag --log-level", "debug, info"}},
		{name: "tokens item", file: "tokens:\n  - name: a\n    secret: 0123456789abcdef\n    port: 1\n", want: []string{"tokens in", `unknown key "port"`}},
		{name: "tokens dup", file: "tokens:\n  - {name: a, secret: 0123456789abcdef}\n  - {name: a, secret: 0123456789abcdeg}\n", want: []string{`two tokens are named "a"`}},
		{name: "tokens same secret", file: "tokens:\n  - {name: a, secret: 0123456789abcdef}\n  - {name: b, secret: 0123456789abcdef}\n", want: []string{"same secret"}},
		{name: "tokens bad ports", file: "tokens:\n  - {name: a, secret: 0123456789abcdef, ports: 0}\n", want: []string{"item 1 (a): ports"}},
		{name: "tokens overlap", file: "tokens:\n  - {name: alice, secret: 0123456789abcdef, ports: \"3390,8000-8010\"}\n  - {name: bob, secret: 0123456789abcdeg, ports: [2222, \"8005-8020\", 3390]}\n",
			want: []string{"tokens in", "relay.yaml", `tokens "alice" and "bob" both list ports 3390,8005-8010: a port listed for a token belongs to that token alone`}},
		{name: "tokens overlap three", file: "tokens:\n  - {name: a, secret: 0123456789abcdef, ports: 5000}\n  - {name: b, secret: 0123456789abcdeg, ports: 6000}\n  - {name: c, secret: 0123456789abcdeh, ports: \"4000-7000\"}\n",
			want: []string{`tokens "a" and "c" both list ports 5000:`, `tokens "b" and "c" both list ports 6000:`}},
		{name: "tokens max_agents zero", file: "tokens:\n  - {name: a, secret: 0123456789abcdef, max_agents: 0}\n", want: []string{"item 1 (a): max_agents: 0 is out of range: want 1 to 65536"}},
		{name: "tokens max_tunnels text", file: "tokens:\n  - {name: a, secret: 0123456789abcdef, max_tunnels: many}\n", want: []string{`item 1 (a): max_tunnels: "many": want a whole number`}},
		{name: "max_agents range", args: []string{"--max-agents", "0"}, want: []string{"flag --max-agents", "0 is out of range: want 1 to 65536"}},
		{name: "max_tunnels env", env: map[string]string{"HOMEPORT_MAX_TUNNELS": "x"}, want: []string{"HOMEPORT_MAX_TUNNELS", `"x": want a whole number`}},
		{name: "max_tunnels flag text", args: []string{"--max-tunnels", "many"}, want: []string{`flag --max-tunnels: "many": want a whole number`}},
		{name: "window flag range", args: []string{"--stream-window", "1KiB"}, want: []string{"flag --stream-window: 1024 bytes is out of range"}},
		{name: "window flag text", args: []string{"--stream-window", "big"}, want: []string{"flag --stream-window", `"big"`}},
		{name: "port_reserve range", file: "port_reserve: 720h\n", want: []string{"port_reserve in", "out of range: want 0s to 168h0m0s"}},
		{name: "two mistakes", args: []string{"--listen", "x", "--log-format", "xml"}, want: []string{"flag --listen", "flag --log-format"}},
		{name: "debug addr public", file: "debug_addr: 0.0.0.0:6060\n", want: []string{"debug_addr in", "relay.yaml", "loopback only"}},
		{name: "debug addr host", env: map[string]string{"HOMEPORT_DEBUG_ADDR": "vps.example.com:6060"}, want: []string{"HOMEPORT_DEBUG_ADDR", "loopback only"}},
		{name: "debug addr form", args: []string{"--debug-addr", "6060"}, want: []string{"flag --debug-addr", "want a loopback HOST:PORT"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cleanEnv(t)
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			args := tt.args
			if tt.file != "" {
				args = append(args, "--config", writeFile(t, "relay.yaml", tt.file))
			}
			_, err := LoadRelay(relayFlags(t, args...))
			if err == nil {
				t.Fatal("loaded; want an error")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

func TestConfigFileErrors(t *testing.T) {
	cleanEnv(t)
	if _, err := LoadRelay(relayFlags(t, "--config", filepath.Join(t.TempDir(), "missing.yaml"))); err == nil || !strings.Contains(err.Error(), "missing.yaml") {
		t.Errorf("missing file: %v", err)
	}
	p := writeFile(t, "relay.ini", "listen=:1\n")
	if _, err := LoadRelay(relayFlags(t, "--config", p)); err == nil || !strings.Contains(err.Error(), ".yaml, .yml, .toml or .json") {
		t.Errorf("ini file: %v", err)
	}
	p = writeFile(t, "relay.yaml", "listen: \":7000\"\n  bad: indent\n")
	if _, err := LoadRelay(relayFlags(t, "--config", p)); err == nil || !strings.Contains(err.Error(), p) || !strings.Contains(err.Error(), "line") {
		t.Errorf("broken YAML: %v", err)
	}
}

func TestRelayTokens(t *testing.T) {
	cleanEnv(t)
	p := writeFile(t, "relay.yaml", `
token: default-secret-0123456789
tokens:
  - name: alice
    secret: alice-secret-0123456789
    ports: "3390, 8000-8010"
  - name: bob
    secret: bob-secret-0123456789ab
    ports: [2222, "9000-9001"]
    max_tunnels: 3
  - secret: anonymous-secret-0123456
    max_agents: 2
max_agents: 4
port_reserve: 5m
`)
	c, err := LoadRelay(relayFlags(t, "--config", p))
	if err != nil {
		t.Fatal(err)
	}
	want := []Token{
		{Name: "default", Secret: "default-secret-0123456789"},
		{Name: "alice", Secret: "alice-secret-0123456789", Ports: PortRanges{{3390, 3390}, {8000, 8010}}},
		{Name: "bob", Secret: "bob-secret-0123456789ab", Ports: PortRanges{{2222, 2222}, {9000, 9001}}, MaxTunnels: 3},
		{Name: "token-3", Secret: "anonymous-secret-0123456", MaxAgents: 2},
	}
	if !reflect.DeepEqual(c.Tokens, want) {
		t.Errorf("tokens:\n got %+v\nwant %+v", c.Tokens, want)
	}
	if c.MaxAgents != 4 || c.MaxTunnels != 64 || c.PortReserve != 5*time.Minute {
		t.Errorf("quotas: max_agents %d, max_tunnels %d, port_reserve %v; want 4, 64 (default), 5m", c.MaxAgents, c.MaxTunnels, c.PortReserve)
	}
	if s := want[1].String(); strings.Contains(s, "secret") {
		t.Errorf("Token.String() shows the secret: %s", s)
	}
}

func TestAgentLoad(t *testing.T) {
	base := []string{"--relay", "vps.example.com:7000", "--token", "0123456789abcdef", "--fingerprint", strings.ToUpper(fp[7:])}
	cleanEnv(t)

	c, err := LoadAgent(agentFlags(t, append(base, "--tunnel", "rdp=3390:127.0.0.1:3389", "--tunnel", "2222:[::1]:22", "--id", "home-pc")...))
	if err != nil {
		t.Fatal(err)
	}
	want := Agent{
		DataDir: DefaultDataDir(),
		Relays:  []RelayEndpoint{{Address: "vps.example.com:7000", Fingerprint: fp, Transport: TransportAuto, Secret: "0123456789abcdef"}},
		Relay:   "vps.example.com:7000", Transport: TransportAuto, Token: "0123456789abcdef", Fingerprint: fp, ID: "home-pc",
		Tunnels: []Tunnel{
			{Name: "rdp", Protocol: "tcp", RemotePort: 3390, Target: "127.0.0.1:3389"},
			{Name: "tcp-2222", Protocol: "tcp", RemotePort: 2222, Target: "[::1]:22"},
		},
		DialTimeout: 5 * time.Second, WakeTime: time.Minute, HandshakeTimeout: 10 * time.Second, ReconnectMax: 30 * time.Second,
		Session: Session{KeepAlive: 10 * time.Second, KeepAliveTimeout: 10 * time.Second, StreamWindow: 16 << 20},
		Log:     Log{Level: "info", Format: "text"},
	}
	if !reflect.DeepEqual(c, want) {
		t.Errorf("agent:\n got %+v\nwant %+v", c, want)
	}

	// A file's tunnels, as spec strings and as sections; --tunnel replaces them.
	p := writeFile(t, "agent.yaml", `
relay: vps.example.com:7000
token: 0123456789abcdef
fingerprint: `+fp+`
tunnels:
  - rdp=3390:127.0.0.1:3389
  - name: web
    remote_port: 8080
    target: 192.168.1.20:80
    allow: [198.51.100.0/24, "2001:db8::/32", 203.0.113.9]
    deny: "198.51.100.66"
    proxy_protocol: v2
`)
	c, err = LoadAgent(agentFlags(t, "--config", p))
	if err != nil {
		t.Fatal(err)
	}
	wantWeb := Tunnel{Name: "web", Protocol: "tcp", RemotePort: 8080, Target: "192.168.1.20:80",
		Allow:         []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24"), netip.MustParsePrefix("2001:db8::/32"), netip.MustParsePrefix("203.0.113.9/32")},
		Deny:          []netip.Prefix{netip.MustParsePrefix("198.51.100.66/32")},
		ProxyProtocol: "v2"}
	if len(c.Tunnels) != 2 || !reflect.DeepEqual(c.Tunnels[1], wantWeb) {
		t.Errorf("file tunnels: %+v", c.Tunnels)
	}
	for _, addr := range []string{"127.0.0.1:6060", "[::1]:0", "localhost:6061"} {
		c, err = LoadAgent(agentFlags(t, "--config", p, "--debug-addr", addr))
		if err != nil || c.DebugAddr != addr {
			t.Errorf("--debug-addr %s: %q, %v", addr, c.DebugAddr, err)
		}
	}
	// Private tunnels take no public port: they share numbers with public
	// ones and each other, not names.
	pp := writeFile(t, "private.yaml", `
relay: vps.example.com:7000
token: 0123456789abcdef
fingerprint: `+fp+`
tunnels:
  - rdp=3389:127.0.0.1:3389
  - rdp-home=private:3389:127.0.0.1:3389
  - name: desk
    private: true
    remote_port: 3389
    target: 192.168.1.20:3389
    visitors: [laptop, phone]
    allow: [198.51.100.0/24]
    proxy_protocol: v2
  - name: dns
    protocol: udp
    private: "yes"
    target: 127.0.0.1:53
    visitors: "laptop, tablet"
  - name: open
    private: false
    remote_port: 3400
    target: 127.0.0.1:1
`)
	c, err = LoadAgent(agentFlags(t, "--config", pp))
	if err != nil {
		t.Fatal(err)
	}
	wantPrivate := []Tunnel{
		{Name: "rdp", Protocol: "tcp", RemotePort: 3389, Target: "127.0.0.1:3389"},
		{Name: "rdp-home", Protocol: "tcp", RemotePort: 3389, Target: "127.0.0.1:3389", Private: true},
		{Name: "desk", Protocol: "tcp", RemotePort: 3389, Target: "192.168.1.20:3389", Private: true, Visitors: []string{"laptop", "phone"},
			Allow: []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24")}, ProxyProtocol: "v2"},
		{Name: "dns", Protocol: "udp", Target: "127.0.0.1:53", Private: true, Visitors: []string{"laptop", "tablet"}},
		{Name: "open", Protocol: "tcp", RemotePort: 3400, Target: "127.0.0.1:1"},
	}
	if !reflect.DeepEqual(c.Tunnels, wantPrivate) {
		t.Errorf("private tunnels:\n got %+v\nwant %+v", c.Tunnels, wantPrivate)
	}
	c, err = LoadAgent(agentFlags(t, "--config", p, "--tunnel", "2222:127.0.0.1:22"))
	if err != nil || len(c.Tunnels) != 1 || c.Tunnels[0].RemotePort != 2222 {
		t.Errorf("--tunnel over file: %+v, %v", c.Tunnels, err)
	}
	t.Setenv("HOMEPORT_TUNNELS", "a=1001:127.0.0.1:1, b=1002:127.0.0.1:2")
	c, err = LoadAgent(agentFlags(t, "--config", p))
	if err != nil || len(c.Tunnels) != 2 || c.Tunnels[1].Name != "b" {
		t.Errorf("HOMEPORT_TUNNELS: %+v, %v", c.Tunnels, err)
	}
}

func TestAgentErrors(t *testing.T) {
	ok := []string{"--relay", "vps:7000", "--token", "0123456789abcdef", "--fingerprint", fp, "--tunnel", "3390:127.0.0.1:3389"}
	tests := []struct {
		name string
		args []string
		file string
		want []string
	}{
		{name: "nothing", want: []string{"relay: missing", "token: missing", "fingerprint: missing", "tunnels"}},
		{name: "bad relay", args: []string{"--relay", "vps"}, want: []string{"flag --relay", "HOST:PORT"}},
		{name: "relay port", args: []string{"--relay", "vps:0"}, want: []string{"flag --relay", "1 to 65535"}},
		{name: "bad transport", args: []string{"--transport", "udp"}, want: []string{"flag --transport", "want auto, tcp or quic"}},
		{name: "short token", args: []string{"--token", "abc"}, want: []string{"flag --token", "shorter than 16"}},
		{name: "bad fingerprint", args: []string{"--fingerprint", "sha256:abcd"}, want: []string{"flag --fingerprint", "64 hex"}},
		{name: "pin and ca", args: []string{"--ca-file", "ca.pem"}, want: []string{"either fingerprint or ca_file"}},
		{name: "server name alone", args: []string{"--server-name", "x"}, want: []string{"only used with ca_file"}},
		{name: "bad tunnel", args: []string{"--tunnel", "3390"}, want: []string{"flag --tunnel", "item 2", "REMOTE_PORT:HOST:PORT"}},
		{name: "dup name", args: []string{"--tunnel", "tcp-3390=3391:127.0.0.1:1"}, want: []string{`two tunnels are named "tcp-3390"`}},
		{name: "dup port", args: []string{"--tunnel", "x=3390:127.0.0.1:1"}, want: []string{"both use remote tcp port 3390"}},
		{name: "same udp port twice", args: []string{"--tunnel", "udp:5353:127.0.0.1:53", "--tunnel", "b=udp:5353:127.0.0.1:54"}, want: []string{"both use remote udp port 5353"}},
		{name: "relay key", file: "allow_ports: 1-2\n", want: []string{`"allow_ports"`, "other program"}},
		{name: "tunnel section key", file: "tunnels:\n  - {name: a, port: 1, target: x:1}\n", want: []string{`unknown key "port"`}},
		{name: "bad allow", file: "tunnels:\n  - {remote_port: 3390, target: x:1, allow: [10.0.0.0/33]}\n", want: []string{"allow:", "want a network"}},
		{name: "proxy on udp", file: "tunnels:\n  - {protocol: udp, remote_port: 53, target: x:1, proxy_protocol: v1}\n", want: []string{"proxy_protocol: only for TCP"}},
		{name: "proxy version", file: "tunnels:\n  - {remote_port: 3390, target: x:1, proxy_protocol: v3}\n", want: []string{"want v1 or v2"}},
		{name: "tunnel section protocol", file: "tunnels:\n  - {protocol: sctp, remote_port: 1, target: x:1}\n", want: []string{"want tcp, udp, http or https"}},
		{name: "private dup name", args: []string{"--tunnel", "tcp-3390=private:127.0.0.1:1"}, want: []string{`two tunnels are named "tcp-3390"`}},
		{name: "private without name", args: []string{"--tunnel", "private:3389:127.0.0.1:3389"}, want: []string{"flag --tunnel", "item 2", "a private tunnel needs a name"}},
		{name: "private section without name", file: "tunnels:\n  - {private: true, remote_port: 3389, target: x:1}\n", want: []string{"item 1", "name missing: a private tunnel needs one, by which visitors reach it"}},
		{name: "private not bool", file: "tunnels:\n  - {name: a, private: maybe, target: x:1}\n", want: []string{"item 1", `private: "maybe": want true or false`}},
		{name: "private bad port", file: "tunnels:\n  - {name: a, private: true, remote_port: 0, target: x:1}\n", want: []string{"remote_port:", "1 to 65535"}},
		{name: "visitors on public", file: "tunnels:\n  - {name: a, remote_port: 3390, target: x:1, visitors: [laptop]}\n", want: []string{"item 1", "visitors: only for a private tunnel (private: true)"}},
		{name: "visitors bad name", file: "tunnels:\n  - {name: a, private: true, target: x:1, visitors: [laptop, \"my phone\"]}\n", want: []string{"item 1", `visitors: "my phone": use A-Z, a-z, 0-9`}},
		{name: "visitors long name", file: "tunnels:\n  - {name: a, private: true, target: x:1, visitors: [" + strings.Repeat("v", 65) + "]}\n", want: []string{"visitors: ", "is longer than 64 bytes"}},
		{name: "visitors twice", file: "tunnels:\n  - {name: a, private: true, target: x:1, visitors: [laptop, phone, laptop]}\n", want: []string{`visitors: "laptop" is listed twice`}},
		{name: "visitors too many", file: "tunnels:\n  - {name: a, private: true, target: x:1, visitors: [" + visitorNames(33) + "]}\n", want: []string{"visitors: 33 names: at most 32"}},
		{name: "visitors not a list", file: "tunnels:\n  - {name: a, private: true, target: x:1, visitors: {laptop: 1}}\n", want: []string{"visitors: want a list of names"}},
		{name: "private no target", file: "tunnels:\n  - {name: a, private: true}\n", want: []string{`target "": want HOST:PORT`}},
		{name: "port mapping not bool", file: "tunnels:\n  - {remote_port: 3390, target: x:1, port_mapping: maybe}\n", want: []string{"item 1", `port_mapping: "maybe": want true, false, or a section with external and methods`}},
		{name: "port mapping key", file: "tunnels:\n  - {remote_port: 3390, target: x:1, port_mapping: {port: 1}}\n", want: []string{"item 1", "port_mapping:", `unknown key "port"`}},
		{name: "port mapping external", file: "tunnels:\n  - {remote_port: 3390, target: x:1, port_mapping: {external: 70000}}\n", want: []string{"port_mapping: external:", "1 to 65535"}},
		{name: "port mapping method", file: "tunnels:\n  - {remote_port: 3390, target: x:1, port_mapping: {methods: [pcp, igd]}}\n", want: []string{`port_mapping: methods: "igd": want pcp, nat-pmp or upnp`}},
		{name: "port mapping private", file: "tunnels:\n  - {name: a, private: true, target: x:1, port_mapping: true}\n", want: []string{"port_mapping: a private tunnel has no public way in by design"}},
		{name: "debug addr public", args: []string{"--debug-addr", "[2001:db8::1]:6060"}, want: []string{"flag --debug-addr", "loopback only"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cleanEnv(t)
			var args []string
			if tt.name != "nothing" && tt.file == "" {
				args = append(args, ok...)
			}
			args = append(args, tt.args...)
			if tt.file != "" {
				args = append(args, "--config", writeFile(t, "agent.yaml", tt.file))
			}
			_, err := LoadAgent(agentFlags(t, args...))
			if err == nil {
				t.Fatal("loaded; want an error")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

// visitorNames is n distinct visitor key names, comma-separated.
func visitorNames(n int) string {
	names := make([]string, n)
	for i := range names {
		names[i] = fmt.Sprintf("v%d", i)
	}
	return strings.Join(names, ", ")
}

// TestExamples loads the example configurations shipped in deploy/, so
// they stay true to the code: as they stand they are refused, naming
// each placeholder; with the placeholders filled in they load, and every
// tunnel of the agent's example is one the relay's example allows for
// the token the agent uses.
func TestExamples(t *testing.T) {
	cleanEnv(t)
	read := func(path string) string {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	relayText, agentText := read("../deploy/relay.example.yaml"), read("../deploy/agent.example.yaml")
	_, err := LoadRelay(relayFlags(t, "--config", "../deploy/relay.example.yaml"))
	checkPlaceholdersRefused(t, "relay example", relayText, err)
	_, err = LoadAgent(agentFlags(t, "--config", "../deploy/agent.example.yaml"))
	checkPlaceholdersRefused(t, "agent example", agentText, err)
	if !examplefill.Placeholder.MatchString(relayText) || !examplefill.Placeholder.MatchString(agentText) {
		t.Error("an example has no placeholder: its secrets would work as they stand")
	}

	fill := examplefill.New()
	r, err := LoadRelay(relayFlags(t, "--config", writeFile(t, "relay.yaml", fill.Fill(relayText))))
	if err != nil {
		t.Fatalf("relay example: %v", err)
	}
	if len(r.Tokens) == 0 {
		t.Error("relay example defines no tokens")
	}
	a, err := LoadAgent(agentFlags(t, "--config", writeFile(t, "agent.yaml", fill.Fill(agentText))))
	if err != nil {
		t.Fatalf("agent example: %v", err)
	}
	if len(a.Tunnels) == 0 {
		t.Error("agent example defines no tunnels")
	}
	visitorText := read("../deploy/visitor.example.yaml")
	_, err = LoadVisitor(visitorFlags(t, "--config", "../deploy/visitor.example.yaml"))
	checkPlaceholdersRefused(t, "visitor example", visitorText, err)
	if !examplefill.Placeholder.MatchString(visitorText) {
		t.Error("the visitor example has no placeholder: its key would work as it stands")
	}
	if v, err := LoadVisitor(visitorFlags(t, "--config", writeFile(t, "visitor.yaml", fill.Fill(visitorText)))); err != nil {
		t.Errorf("visitor example: %v", err)
	} else if len(v.Visits) == 0 {
		t.Error("visitor example defines no visits")
	}

	i := slices.IndexFunc(r.Tokens, func(tok Token) bool { return tok.Secret == a.Token })
	if i < 0 {
		t.Fatalf("the agent example's token is none of the relay example's tokens %v", r.Tokens)
	}
	tok := r.Tokens[i]
	for _, tn := range a.Tunnels {
		if !r.AllowPorts.Contains(tn.RemotePort) {
			t.Errorf("agent example's tunnel %s: the relay example allows ports %s only", tn, r.AllowPorts)
		}
		if tok.Ports != nil && !tok.Ports.Contains(tn.RemotePort) {
			t.Errorf("agent example's tunnel %s: the relay example gives %s ports %s only", tn, tok, tok.Ports)
		}
	}
}

// TestFileValueForms: JSON numbers of any size, upper-case extensions, and
// an empty variable that must not take the blame for the file's mistake.
func TestFileValueForms(t *testing.T) {
	cleanEnv(t)
	path := writeFile(t, "relay.json", `{"allow_ports": [10000, "20000-20010"], "session": {"stream_window": 4194304}}`)
	c, err := LoadRelay(relayFlags(t, "--config", path))
	if err != nil {
		t.Fatal(err)
	}
	if c.Session.StreamWindow != 4194304 || !c.AllowPorts.Contains(10000) || !c.AllowPorts.Contains(20005) {
		t.Errorf("json numbers: %+v", c)
	}

	path = writeFile(t, "RELAY.YAML", "listen: \":7005\"\n")
	if c, err := LoadRelay(relayFlags(t, "--config", path)); err != nil || c.Listen != ":7005" {
		t.Errorf("upper-case extension: %v, %+v", err, c)
	}

	path = writeFile(t, "relay.yaml", "listen: \"7000\"\n")
	t.Setenv("HOMEPORT_LISTEN", "")
	_, err = LoadRelay(relayFlags(t, "--config", path))
	if err == nil || !strings.Contains(err.Error(), "listen in "+path) || strings.Contains(err.Error(), "HOMEPORT_LISTEN") {
		t.Errorf("empty variable over a bad file value: %v", err)
	}
}

// TestFlagTypes: --help names what each flag takes, a number as a number
// (int, size, duration), not as text: pflag shows a flag's Type there.
func TestFlagTypes(t *testing.T) {
	want := map[kind]string{kString: "string", kBool: "bool", kDuration: "duration", kSize: "size", kInt: "int", kPorts: "string", kList: "stringArray"}
	for program, settings := range map[string][]setting{"relay": relaySettings(), "agent": agentSettings()} {
		fs := pflag.NewFlagSet(program, pflag.ContinueOnError)
		addFlags(fs, settings)
		for _, s := range settings {
			if s.flag == "" {
				continue
			}
			f := fs.Lookup(s.flag)
			if got := f.Value.Type(); got != want[s.kind] {
				t.Errorf("%s --%s takes %s; --help says %q, want %q", program, s.flag, s.key, got, want[s.kind])
			}
			if f.DefValue != s.def && s.kind != kBool && s.kind != kDuration && s.kind != kList {
				t.Errorf("%s --%s: default %q, want %q", program, s.flag, f.DefValue, s.def)
			}
		}
	}
}

func TestTunnelPortMapping(t *testing.T) {
	cleanEnv(t)
	file := writeFile(t, "agent.yaml", `relay: "vps.example.com:7000"
token: "0123456789abcdef0123"
fingerprint: "sha256:`+strings.Repeat("ab", 32)+`"
tunnels:
  - {name: a, remote_port: 3390, target: "127.0.0.1:3389", port_mapping: true}
  - {name: b, remote_port: 3391, target: "127.0.0.1:3389", port_mapping: {external: 13389, methods: [upnp, pcp]}}
  - {name: c, remote_port: 3392, target: "127.0.0.1:3389", port_mapping: false}
`)
	cfg, err := LoadAgent(agentFlags(t, "--config", file))
	if err != nil {
		t.Fatal(err)
	}
	got := []*PortMapping{cfg.Tunnels[0].PortMapping, cfg.Tunnels[1].PortMapping, cfg.Tunnels[2].PortMapping}
	want := []*PortMapping{{}, {External: 13389, Methods: []string{"upnp", "pcp"}}, nil}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("port mappings %+v, want %+v", got, want)
	}
}
