package config

import (
	"fmt"
	"strings"
	"testing"
)

// TestDashboardConfig: the dashboard is off by default; on loopback it
// needs no password; elsewhere it does, from the file, the environment or
// a password file (trimmed); the password never shows in %v.
func TestDashboardConfig(t *testing.T) {
	const pw = "correct-horse-battery"
	pwFile := writeFile(t, "pw", "  "+pw+"\n")
	tests := []struct {
		name string
		args []string
		env  map[string]string
		file string
		want Dashboard
	}{
		{name: "off", want: Dashboard{}},
		{name: "loopback", args: []string{"--dashboard-addr", "127.0.0.1:8080"}, want: Dashboard{Addr: "127.0.0.1:8080"}},
		{name: "localhost", env: map[string]string{"HOMEPORT_DASHBOARD_ADDR": "localhost:0"}, want: Dashboard{Addr: "localhost:0"}},
		{name: "ipv6 loopback", file: "dashboard_addr: \"[::1]:8080\"\n", want: Dashboard{Addr: "[::1]:8080"}},
		{name: "public with password", file: "dashboard_addr: \":8443\"\ndashboard_password: " + pw + "\n",
			want: Dashboard{Addr: ":8443", Password: pw}},
		{name: "public with password file", args: []string{"--dashboard-addr", "0.0.0.0:8443", "--dashboard-password-file", pwFile},
			want: Dashboard{Addr: "0.0.0.0:8443", Password: pw}},
		{name: "password in the environment", args: []string{"--dashboard-addr", "192.0.2.1:8443"}, env: map[string]string{"HOMEPORT_DASHBOARD_PASSWORD": pw},
			want: Dashboard{Addr: "192.0.2.1:8443", Password: pw}},
		{name: "tls", file: "dashboard_addr: \":8443\"\ndashboard_password: " + pw + "\ndashboard_tls_cert: c.pem\ndashboard_tls_key: k.pem\n",
			want: Dashboard{Addr: ":8443", Password: pw, TLSCert: "c.pem", TLSKey: "k.pem"}},
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
			c, err := LoadRelay(relayFlags(t, args...))
			if err != nil {
				t.Fatal(err)
			}
			if c.Dashboard != tt.want {
				t.Errorf("dashboard %+v, want %+v", c.Dashboard, tt.want)
			}
			if s := fmt.Sprintf("%v %+v %#v", c, c, c); strings.Contains(s, pw) {
				t.Errorf("the password shows in the formatted configuration: %s", s)
			}
		})
	}
}

// TestDashboardConfigErrors: each mistake is named with its setting and
// the fix.
func TestDashboardConfigErrors(t *testing.T) {
	pw := "correct-horse-battery"
	tests := []struct {
		name string
		args []string
		env  map[string]string
		file string
		want []string
	}{
		{name: "public without password", args: []string{"--dashboard-addr", "0.0.0.0:8080"},
			want: []string{"flag --dashboard-addr", "reachable from the network", "no password", "set dashboard_password or dashboard_password_file", "127.0.0.1:8080", "SSH tunnel"}},
		{name: "all addresses without password", file: "dashboard_addr: \":8080\"\n",
			want: []string{"dashboard_addr in", "relay.yaml", "reachable from the network"}},
		{name: "host name without password", env: map[string]string{"HOMEPORT_DASHBOARD_ADDR": "vps.example.com:8080"},
			want: []string{"environment variable HOMEPORT_DASHBOARD_ADDR", "reachable from the network"}},
		{name: "no port", args: []string{"--dashboard-addr", "127.0.0.1"}, want: []string{"flag --dashboard-addr", "want HOST:PORT"}},
		{name: "bad port", args: []string{"--dashboard-addr", "127.0.0.1:http"}, want: []string{"flag --dashboard-addr", "not a number"}},
		{name: "short password", file: "dashboard_addr: \":8080\"\ndashboard_password: short-pw\n",
			want: []string{"dashboard_password in", "shorter than 12 characters"}},
		{name: "empty password", args: []string{"--dashboard-addr", "127.0.0.1:8080"}, env: map[string]string{"HOMEPORT_DASHBOARD_PASSWORD": ""},
			want: []string{"HOMEPORT_DASHBOARD_PASSWORD", "empty"}},
		{name: "short password file", args: []string{"--dashboard-addr", ":8080", "--dashboard-password-file", writeFile(t, "short", "short-pw\n")},
			want: []string{"flag --dashboard-password-file", "shorter than 12 characters"}},
		{name: "missing password file", args: []string{"--dashboard-addr", ":8080", "--dashboard-password-file", "/nonexistent/pw"},
			want: []string{"flag --dashboard-password-file", "/nonexistent/pw", "no such file"}},
		{name: "password and file", file: "dashboard_addr: \":8080\"\ndashboard_password: " + pw + "\ndashboard_password_file: " + writeFile(t, "pw", pw) + "\n",
			want: []string{"dashboard_password_file in", "not both"}},
		{name: "password without addr", file: "dashboard_password: " + pw + "\n",
			want: []string{"dashboard_password in", "no effect without dashboard_addr"}},
		{name: "cert without key", file: "dashboard_addr: \":8080\"\ndashboard_password: " + pw + "\ndashboard_tls_cert: c.pem\n",
			want: []string{"dashboard_tls_cert in", "go together"}},
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
			if strings.Contains(err.Error(), pw) {
				t.Errorf("error %q shows the password", err)
			}
		})
	}
}
