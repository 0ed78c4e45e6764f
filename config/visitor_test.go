package config

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
)

const testKey = "visitor-key-0123456789"

func visitorFlags(t *testing.T, args ...string) *pflag.FlagSet {
	t.Helper()
	fs := pflag.NewFlagSet("visitor", pflag.ContinueOnError)
	VisitorFlags(fs)
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	return fs
}

func TestVisitorLoad(t *testing.T) {
	tests := []struct {
		name  string
		args  []string
		env   map[string]string
		file  string
		check func(t *testing.T, c Visitor)
	}{
		{
			name: "one tunnel on the command line",
			args: []string{"rdp", "--relay", "vps:7000", "--fingerprint", fp, "--listen", "127.0.0.1:3390"},
			env:  map[string]string{"HOMEPORT_KEY": testKey},
			check: func(t *testing.T, c Visitor) {
				want := []Visit{{Tunnel: "rdp", Protocol: "tcp", Listen: "127.0.0.1:3390"}}
				if !reflect.DeepEqual(c.Visits, want) {
					t.Errorf("visits %+v, want %+v", c.Visits, want)
				}
				if c.Key != testKey || c.Transport != TransportTCP || c.HandshakeTimeout != 10*time.Second ||
					c.ReconnectMax != 30*time.Second || c.ID == "" || c.Session.StreamWindow != 16<<20 || len(c.Warnings) != 0 {
					t.Errorf("defaults: %+v", c)
				}
			},
		},
		{
			name: "udp, key flag warned",
			args: []string{"dns", "--udp", "-l", "127.0.0.1:5353", "--relay", "vps:7000", "--fingerprint", fp, "--key", testKey, "--transport", "QUIC", "--id", "laptop"},
			check: func(t *testing.T, c Visitor) {
				want := []Visit{{Tunnel: "dns", Protocol: "udp", Listen: "127.0.0.1:5353"}}
				if !reflect.DeepEqual(c.Visits, want) || c.Transport != TransportQUIC || c.ID != "laptop" {
					t.Errorf("got %+v", c)
				}
				if len(c.Warnings) != 1 || !strings.Contains(c.Warnings[0].Msg, "process list") || c.Warnings[0].Setting != "flag --key" {
					t.Errorf("warnings %+v, want one about the key in the process list", c.Warnings)
				}
			},
		},
		{
			name: "file with visits and key_file",
			file: "relay: vps:7000\nfingerprint: " + fp + "\nkey_file: KEYFILE\nvisits:\n  - {tunnel: rdp, listen: 127.0.0.1:3390}\n  - {tunnel: rdp-udp, protocol: UDP, listen: \"127.0.0.1:3390\"}\n  - {tunnel: ssh, listen: \"[::1]:2222\"}\n",
			check: func(t *testing.T, c Visitor) {
				want := []Visit{
					{Tunnel: "rdp", Protocol: "tcp", Listen: "127.0.0.1:3390"},
					{Tunnel: "rdp-udp", Protocol: "udp", Listen: "127.0.0.1:3390"},
					{Tunnel: "ssh", Protocol: "tcp", Listen: "[::1]:2222"},
				}
				if !reflect.DeepEqual(c.Visits, want) || c.Key != testKey {
					t.Errorf("got %+v", c)
				}
			},
		},
		{
			name: "listener others can reach is warned",
			args: []string{"rdp", "--relay", "vps:7000", "--fingerprint", fp, "--listen", ":3390"},
			env:  map[string]string{"HOMEPORT_KEY": testKey},
			check: func(t *testing.T, c Visitor) {
				if len(c.Warnings) != 1 || !strings.Contains(c.Warnings[0].Msg, "other machines may reach") {
					t.Errorf("warnings %+v, want one about the listener", c.Warnings)
				}
			},
		},
		{
			name: "agent settings in the environment are not the visitor's concern",
			args: []string{"rdp", "--relay", "vps:7000", "--fingerprint", fp, "--listen", "127.0.0.1:3390"},
			env:  map[string]string{"HOMEPORT_KEY": testKey, "HOMEPORT_TOKEN": "something-else-0123456", "HOMEPORT_ALLOW_PORTS": "1-2"},
			check: func(t *testing.T, c Visitor) {
				if c.Key != testKey {
					t.Errorf("key %q", c.Key)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cleanEnv(t)
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			args := tt.args
			if tt.file != "" {
				kf := writeFile(t, "visitor.key", testKey+"\n")
				args = append(args, "--config", writeFile(t, "visitor.yaml", strings.ReplaceAll(tt.file, "KEYFILE", kf)))
			}
			c, err := LoadVisitor(visitorFlags(t, args...))
			if err != nil {
				t.Fatal(err)
			}
			tt.check(t, c)
		})
	}
}

func TestVisitorErrors(t *testing.T) {
	ok := []string{"--relay", "vps:7000", "--key", testKey, "--fingerprint", fp}
	tests := []struct {
		name    string
		args    []string // after ok, unless bare
		bare    bool
		env     map[string]string
		file    string // with ok's settings
		want    []string
		notWant []string
	}{
		{name: "nothing", bare: true, want: []string{"relay: missing", "key: missing", "HOMEPORT_KEY", "fingerprint: missing", "visits: none"}},
		{name: "bad relay", args: []string{"rdp", "-l", "127.0.0.1:1", "--relay", "vps"}, want: []string{"flag --relay", "HOST:PORT"}},
		{name: "short key", args: []string{"rdp", "-l", "127.0.0.1:1", "--key", "abc"}, want: []string{"flag --key:", "shorter than 16", "visitor key"}},
		{name: "placeholder key", args: []string{"rdp", "-l", "127.0.0.1:1", "--key", "<the visitor key the relay printed>"}, want: []string{"flag --key:", "is a placeholder", "visitor.key"}},
		{name: "placeholder key in env", bare: true, args: []string{"rdp", "-l", "127.0.0.1:1", "--relay", "vps:7000", "--fingerprint", fp},
			env: map[string]string{"HOMEPORT_KEY": "<key>"}, want: []string{"environment variable HOMEPORT_KEY:", "is a placeholder"}},
		{name: "key and key file", args: []string{"rdp", "-l", "127.0.0.1:1", "--key-file", "/nonexistent"}, want: []string{"flag --key-file", "key or key_file, not both"}},
		{name: "missing key file", bare: true, args: []string{"rdp", "-l", "127.0.0.1:1", "--relay", "vps:7000", "--fingerprint", fp, "--key-file", "/nonexistent/key"},
			want: []string{"flag --key-file", "/nonexistent/key"}},
		{name: "bad transport", args: []string{"rdp", "-l", "127.0.0.1:1", "--transport", "udp"}, want: []string{"flag --transport", "want auto, tcp or quic"}},
		{name: "bad fingerprint", args: []string{"rdp", "-l", "127.0.0.1:1", "--fingerprint", "sha256:abcd"}, want: []string{"flag --fingerprint", "64 hex"}},
		{name: "pin and ca", args: []string{"rdp", "-l", "127.0.0.1:1", "--ca-file", "ca.pem"}, want: []string{"either fingerprint or ca_file"}},
		{name: "tunnel without listen", args: []string{"rdp"}, want: []string{"flag --listen: missing", `tunnel "rdp"`}},
		{name: "listen without tunnel", args: []string{"--listen", "127.0.0.1:3390"}, want: []string{"name the tunnel too"}},
		{name: "two tunnels on the command line", args: []string{"rdp", "ssh", "-l", "127.0.0.1:1"}, want: []string{"give one tunnel"}},
		{name: "bad listen", args: []string{"rdp", "-l", "127.0.0.1"}, want: []string{`tunnel "rdp" (argument) with flag --listen`, "HOST:PORT"}},
		{name: "listen port 0", args: []string{"rdp", "-l", "127.0.0.1:0"}, want: []string{"flag --listen", "1 to 65535"}},
		{name: "bad tunnel name", args: []string{"r d p", "-l", "127.0.0.1:1"}, want: []string{"use A-Z"}},
		{name: "argument and file", args: []string{"rdp", "-l", "127.0.0.1:1"}, file: "visits:\n  - {tunnel: a, listen: 127.0.0.1:1}\n", want: []string{`tunnel "rdp" on the command line or a visits list`}},
		{name: "file item without listen", file: "visits:\n  - {tunnel: a, listen: 127.0.0.1:1}\n  - {tunnel: rdp}\n",
			want: []string{"visits in ", "item 2", `tunnel "rdp"`, "listen: missing"}, notWant: []string{"item 1"}},
		{name: "file item without tunnel", file: "visits:\n  - {listen: 127.0.0.1:1}\n", want: []string{"item 1", "tunnel: missing"}},
		{name: "file item protocol", file: "visits:\n  - {tunnel: a, protocol: sctp, listen: 127.0.0.1:1}\n", want: []string{"item 1", `tunnel "a"`, `protocol "sctp"`}},
		{name: "file item unknown key", file: "visits:\n  - {tunnel: a, port: 1, listen: 127.0.0.1:1}\n", want: []string{"item 1", `unknown key "port"`}},
		{name: "file item not a section", file: "visits:\n  - rdp\n", want: []string{"item 1", "want a section"}},
		{name: "two on one address", file: "visits:\n  - {tunnel: a, listen: 127.0.0.1:1}\n  - {tunnel: b, listen: 127.0.0.1:1}\n",
			want: []string{"item 2", `tunnel "b"`, "item 1 listens there already"}},
		{name: "listen flag with file", args: []string{"-l", "127.0.0.1:1"}, file: "visits:\n  - {tunnel: a, listen: 127.0.0.1:2}\n", want: []string{"each item of visits has its own listen"}},
		{name: "agent key in file", file: "token: x\n", want: []string{`"token"`, "other program"}},
		{name: "visits in environment", env: map[string]string{"HOMEPORT_VISITS": "x"}, args: []string{"rdp", "-l", "127.0.0.1:1"}, want: []string{"HOMEPORT_VISITS", "only be set in a config file"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cleanEnv(t)
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			var args []string
			if !tt.bare {
				args = append(args, ok...)
			}
			args = append(args, tt.args...)
			if tt.file != "" {
				args = append(args, "--config", writeFile(t, "visitor.yaml", tt.file))
			}
			_, err := LoadVisitor(visitorFlags(t, args...))
			if err == nil {
				t.Fatal("loaded; want an error")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
			for _, w := range tt.notWant {
				if strings.Contains(err.Error(), w) {
					t.Errorf("error %q names %q, which was right", err, w)
				}
			}
		})
	}
}

// TestVisitorKeyFileLoose: a key file others may read loads, with a
// warning naming the file and the fix.
func TestVisitorKeyFileLoose(t *testing.T) {
	if os.Getenv("GOOS") == "windows" || filepath.Separator == '\\' {
		t.Skip("no mode bits on Windows")
	}
	cleanEnv(t)
	kf := writeFile(t, "key", testKey)
	if err := os.Chmod(kf, 0o644); err != nil {
		t.Fatal(err)
	}
	c, err := LoadVisitor(visitorFlags(t, "rdp", "-l", "127.0.0.1:1", "--relay", "vps:7000", "--fingerprint", fp, "--key-file", kf))
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Warnings) != 1 || c.Warnings[0].File != kf || !strings.Contains(c.Warnings[0].Fix, "chmod 600") {
		t.Errorf("warnings %+v", c.Warnings)
	}
}

// TestVisitorEnvShared: one environment serves the relay, the agent and
// the visitor: the visitor's HOMEPORT_KEY is no error to the others.
func TestVisitorEnvShared(t *testing.T) {
	cleanEnv(t)
	t.Setenv("HOMEPORT_KEY", testKey)
	t.Setenv("HOMEPORT_KEY_FILE", "")
	if _, err := LoadAgent(agentFlags(t, "--relay", "vps:7000", "--token", "0123456789abcdef", "--fingerprint", fp, "--tunnel", "3390:127.0.0.1:3389")); err != nil {
		t.Errorf("agent: %v", err)
	}
	if _, err := LoadRelay(relayFlags(t, "--data-dir", t.TempDir())); err != nil {
		t.Errorf("relay: %v", err)
	}
	// In a file, the visitor's keys are named as the visitor's.
	_, err := LoadAgent(agentFlags(t, "--config", writeFile(t, "agent.yaml", "visits: []\n")))
	if err == nil || !strings.Contains(err.Error(), `"visits": it is a setting of the other program`) {
		t.Errorf("agent file with visits: %v", err)
	}
}
