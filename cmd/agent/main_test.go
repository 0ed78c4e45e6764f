package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func cleanEnv(t *testing.T) {
	t.Helper()
	for _, kv := range os.Environ() {
		if name, _, _ := strings.Cut(kv, "="); strings.HasPrefix(name, "HOMEPORT_") {
			t.Setenv(name, "")
			os.Unsetenv(name)
		}
	}
}

func execute(t *testing.T, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	var out, errOut bytes.Buffer
	cmd := newCommand(&out, &errOut)
	cmd.SetArgs(args)
	err = cmd.ExecuteContext(context.Background())
	return out.String(), errOut.String(), err
}

func writeConfig(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "agent.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestDDNSCommandOnce: "agent ddns --once" reports every record and fails
// when one is not in sync; here the only source fails, so the provider
// (unreachable) is never asked.
func TestDDNSCommandOnce(t *testing.T) {
	cleanEnv(t)
	if _, err := exec.LookPath("false"); err != nil {
		t.Skip("no false command")
	}
	path := writeConfig(t, `ddns:
  names: [home.example.com, {name: v4.example.com, ipv6: false}]
  sources: ["command:false"]
  provider: dyndns2
  dyndns2: {server: "http://127.0.0.1:1", username: u, password: p, nameserver: "127.0.0.1:1"}
`)
	stdout, stderr, err := execute(t, "ddns", "--config", path, "--once")
	if !errors.Is(err, errNotSynced) {
		t.Fatalf("err = %v\nstdout:\n%s\nstderr:\n%s", err, stdout, stderr)
	}
	lines := strings.Split(strings.TrimSpace(stdout), "\n")
	if len(lines) != 3 {
		t.Fatalf("%d lines, want one per name and type:\n%s", len(lines), stdout)
	}
	for i, prefix := range []string{"home.example.com A: FAILED: ", "home.example.com AAAA: FAILED: ", "v4.example.com A: FAILED: "} {
		if !strings.HasPrefix(lines[i], prefix) || !strings.Contains(lines[i], "source command false gave no public") || !strings.HasSuffix(lines[i], "(not read from the provider)") {
			t.Errorf("line %d: %q", i+1, lines[i])
		}
	}
	if !strings.Contains(stderr, `msg="ddns: source failed"`) {
		t.Errorf("stderr:\n%s", stderr)
	}
}

func TestDDNSCommandErrors(t *testing.T) {
	cleanEnv(t)
	for _, tt := range []struct {
		name string
		body string
		want string
	}{
		{"no section", "relay: \"vps.example.com:7000\"\n", "ddns: missing: agent ddns needs a ddns section in "},
		{"only the relay source", "ddns:\n  names: [home.example.com]\n  sources: [relay]\n  provider: cloudflare\n  cloudflare: {api_token: x, zone: example.com}\n",
			"ddns.sources: no source left: the relay and connected_relays sources need the agent's sessions to its relays"},
		{"provider check", "ddns:\n  names: [home.example.com]\n  provider: route53\n  route53: {zone: example.com, profile: \"\"}\n", "ddns: route53: missing credentials"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if tt.name == "provider check" {
				for _, v := range []string{"AWS_ACCESS_KEY_ID", "AWS_PROFILE", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI"} {
					t.Setenv(v, "")
				}
			}
			_, stderr, err := execute(t, "ddns", "--config", writeConfig(t, tt.body), "--once")
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("err = %v, want %q\nstderr:\n%s", err, tt.want, stderr)
			}
		})
	}

	// The tunnel flags are not flags of agent ddns.
	if _, _, err := execute(t, "ddns", "--tunnel", "3390:127.0.0.1:3389"); err == nil || !strings.Contains(err.Error(), "unknown flag: --tunnel") {
		t.Errorf("--tunnel: %v", err)
	}
}

// TestVisitCommand: agent visit reads its own settings and argument, and
// its service command checks the configuration it would start with.
func TestVisitCommand(t *testing.T) {
	cleanEnv(t)
	for _, tt := range []struct {
		name string
		args []string
		want []string
	}{
		{"two tunnels", []string{"visit", "rdp", "ssh", "--listen", "127.0.0.1:3390"}, []string{"accepts at most 1 arg"}},
		{"listen missing", []string{"visit", "rdp", "--relay", "vps:7000"}, []string{"flag --listen: missing", "key: missing", "fingerprint: missing"}},
		{"agent flag", []string{"visit", "rdp", "--tunnel", "3390:127.0.0.1:3389"}, []string{"unknown flag: --tunnel"}},
		{"service install checks", []string{"visit", "service", "install", "rdp", "--relay", "vps:7000"}, []string{"the service would not start", "flag --listen: missing"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := execute(t, tt.args...)
			for _, w := range tt.want {
				if err == nil || !strings.Contains(err.Error(), w) {
					t.Errorf("err = %v, want %q", err, w)
				}
			}
		})
	}
	stdout, _, err := execute(t, "visit", "service", "--help")
	if err != nil || !strings.Contains(stdout, "homeport-visitor") {
		t.Errorf("visit service --help: %v\n%s", err, stdout)
	}
}
