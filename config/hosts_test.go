package config

import (
	"errors"
	"strings"
	"testing"
)

func TestNormalizeHost(t *testing.T) {
	for _, c := range []struct {
		in              string
		wildcard, label bool
		want, err       string
	}{
		{in: "NAS.Example.COM.", want: "nas.example.com"},
		{in: "*.home.example.com", wildcard: true, want: "*.home.example.com"},
		{in: "*.home.example.com", err: "a wildcard is not allowed here"},
		{in: "nas", label: true, want: "nas"},
		{in: "nas", err: "want a name with a domain"},
		{in: "*.com", wildcard: true, err: "want a name with a domain"},
		{in: "xn--bcher-kva.example", want: "xn--bcher-kva.example"},
		{in: "bücher.example", err: `ASCII form "xn--bcher-kva.example"`},
		{in: "xn--zz-.example", err: "begins or ends with '-'"},
		{in: "xn--a.example", err: "not valid punycode"},
		{in: "a..example.com", err: "empty label"},
		{in: "a_b.example.com", err: `"_" is not allowed`},
		{in: "-a.example.com", err: "begins or ends"},
		{in: strings.Repeat("a", 64) + ".example.com", err: "longer than 63"},
		{in: strings.Repeat("a.", 127) + "com", err: "longer than 253"},
		{in: "a.*.example.com", wildcard: true, err: `"*" is not allowed`},
		{in: "", err: "empty"},
	} {
		got, err := NormalizeHost(c.in, c.wildcard, c.label)
		switch {
		case c.err != "" && (err == nil || !strings.Contains(err.Error(), c.err) || !errors.Is(err, ErrHostName)):
			t.Errorf("NormalizeHost(%q) = %q, %v; want an error with %q", c.in, got, err, c.err)
		case c.err == "" && (err != nil || got != c.want):
			t.Errorf("NormalizeHost(%q) = %q, %v; want %q", c.in, got, err, c.want)
		}
	}
}

func TestHostCovers(t *testing.T) {
	for _, c := range []struct {
		pattern, name string
		want          bool
	}{
		{"nas.example.com", "nas.example.com", true},
		{"nas.example.com", "web.example.com", false},
		{"*.example.com", "nas.example.com", true},
		{"*.example.com", "a.b.example.com", true},
		{"*.example.com", "example.com", false},
		{"*.example.com", "*.home.example.com", true},
		{"*.home.example.com", "*.example.com", false},
		{"*.example.com", "nas.example.org", false},
		{"*.example.com", "badexample.com", false},
	} {
		if got := HostCovers(c.pattern, c.name); got != c.want {
			t.Errorf("HostCovers(%q, %q) = %v, want %v", c.pattern, c.name, got, c.want)
		}
	}
	var got []string
	HostCandidates("a.b.example.com", func(h string) bool { got = append(got, h); return false })
	if want := "a.b.example.com *.b.example.com *.example.com *.com"; strings.Join(got, " ") != want {
		t.Errorf("HostCandidates: %q, want %q", got, want)
	}
}

func TestParseWebTunnel(t *testing.T) {
	for _, c := range []struct {
		spec string
		want Tunnel
		err  string
	}{
		{spec: "web=http:NAS.example.com:127.0.0.1:8080", want: Tunnel{Name: "web", Protocol: "http", Host: "nas.example.com", Target: "127.0.0.1:8080"}},
		{spec: "https:nas.example.com:[::1]:8443", want: Tunnel{Name: "https-nas.example.com", Protocol: "https", Host: "nas.example.com", Target: "[::1]:8443"}},
		{spec: "all=http:*.home.example.com:127.0.0.1:80", want: Tunnel{Name: "all", Protocol: "http", Host: "*.home.example.com", Target: "127.0.0.1:80"}},
		{spec: "http:nas:127.0.0.1:80", want: Tunnel{Name: "http-nas", Protocol: "http", Host: "nas", Target: "127.0.0.1:80"}},
		{spec: "web=http:nas.example.com:127.0.0.1", err: "target"},
		{spec: "web=http:bad_name.example.com:127.0.0.1:80", err: "host"},
		{spec: "web=private:http:nas.example.com:127.0.0.1:80", err: "tunnel"},
	} {
		got, err := ParseTunnel(c.spec)
		switch {
		case c.err != "" && (err == nil || !strings.Contains(err.Error(), c.err)):
			t.Errorf("ParseTunnel(%q) = %+v, %v; want an error with %q", c.spec, got, err, c.err)
		case c.err == "" && (err != nil || got.Name != c.want.Name || got.Protocol != c.want.Protocol || got.Host != c.want.Host || got.Target != c.want.Target):
			t.Errorf("ParseTunnel(%q) = %+v, %v; want %+v", c.spec, got, err, c.want)
		case c.err == "":
			if back, err := ParseTunnel(got.String()); err != nil || back.Host != got.Host || back.Protocol != got.Protocol {
				t.Errorf("String %q does not parse back: %+v, %v", got.String(), back, err)
			}
		}
	}
}

func TestRelayHosts(t *testing.T) {
	cleanEnv(t)
	p := writeFile(t, "relay.yaml", `
http_addr: ":8080"
https_addr: ":8443"
domain: Example.NET.
tokens:
  - name: alice
    secret: alice-secret-0123456789
    hosts: [nas.example.com, "*.Home.example.com"]
  - name: bob
    secret: bob-secret-0123456789ab
    hosts: "web.example.org"
`)
	c, err := LoadRelay(relayFlags(t, "--config", p))
	if err != nil {
		t.Fatal(err)
	}
	if c.HTTPAddr != ":8080" || c.HTTPSAddr != ":8443" || c.Domain != "example.net" {
		t.Errorf("http_addr %q, https_addr %q, domain %q", c.HTTPAddr, c.HTTPSAddr, c.Domain)
	}
	if h := strings.Join(c.Tokens[0].Hosts, " "); h != "nas.example.com *.home.example.com" {
		t.Errorf("alice's hosts: %q", h)
	}
	for _, bad := range []struct{ body, want string }{
		{`tokens:
  - name: alice
    secret: alice-secret-0123456789
    hosts: ["*.example.com"]
  - name: bob
    secret: bob-secret-0123456789ab
    hosts: [nas.home.example.com]
`, `tokens "alice" and "bob" both claim host names ("*.example.com", "nas.home.example.com")`},
		{`tokens:
  - name: alice
    secret: alice-secret-0123456789
    hosts: [nas_example.com]
`, `item 1 (alice): hosts: invalid host name: "nas_example.com"`},
		{"domain: \"*.example.com\"\n", "a wildcard is not allowed here"},
		{"http_addr: nonsense\n", "http_addr"},
	} {
		_, err := LoadRelay(relayFlags(t, "--config", writeFile(t, "relay.yaml", bad.body)))
		if err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("config %q: error %v, want one with %q", bad.body, err, bad.want)
		}
	}
}

func TestAgentWebTunnelSections(t *testing.T) {
	cleanEnv(t)
	authFile := writeFile(t, "nas.auth", "anna:correct horse\n")
	p := writeFile(t, "agent.yaml", `
relay: "vps.example.com:7000"
token: agent-token-0123456789abcdef
fingerprint: "sha256:c70e6f6e0c2357a18eea2ed7414f1970b3de6b7665de20586a78a0bee929a05b"
tunnels:
  - name: nas
    protocol: http
    host: NAS.example.com
    target: "127.0.0.1:8080"
    auth_file: `+authFile+`
  - protocol: https
    host: "*.home.example.com"
    target: "127.0.0.1:8443"
  - web=http:nas:127.0.0.1:80
`)
	c, err := LoadAgent(agentFlags(t, "--config", p))
	if err != nil {
		t.Fatal(err)
	}
	got := []string{}
	for _, tn := range c.Tunnels {
		got = append(got, tn.String())
	}
	if want := "nas=http:nas.example.com:127.0.0.1:8080 https-all.home.example.com=https:*.home.example.com:127.0.0.1:8443 web=http:nas:127.0.0.1:80"; strings.Join(got, " ") != want {
		t.Errorf("tunnels %q\nwant %q", got, want)
	}
	if c.Tunnels[0].Auth != "anna:correct horse" || strings.Contains(c.Tunnels[0].String(), "horse") {
		t.Errorf("auth %q; String %q", c.Tunnels[0].Auth, c.Tunnels[0].String())
	}
	for _, bad := range []struct{ item, want string }{
		{"{protocol: http, target: \"127.0.0.1:80\"}", "host missing"},
		{"{protocol: https, host: nas.example.com, target: \"127.0.0.1:80\", auth: \"a:b\"}", "auth: only for an http tunnel"},
		{"{protocol: http, host: nas.example.com, target: \"127.0.0.1:80\", auth: nopassword}", "auth: want user:password"},
		{"{protocol: http, host: nas.example.com, remote_port: 80, target: \"127.0.0.1:80\"}", "remote_port: a web tunnel has none"},
		{"{protocol: tcp, host: nas.example.com, remote_port: 80, target: \"127.0.0.1:80\"}", "host: only for a web tunnel"},
		{"{name: nas, protocol: http, host: nas.example.com, target: \"127.0.0.1:80\", private: true}", "cannot be private"},
		{"{protocol: http, host: \"bücher.example\", target: \"127.0.0.1:80\"}", `"xn--bcher-kva.example"`},
	} {
		body := strings.Replace(`relay: "vps.example.com:7000"
token: agent-token-0123456789abcdef
fingerprint: "sha256:c70e6f6e0c2357a18eea2ed7414f1970b3de6b7665de20586a78a0bee929a05b"
tunnels:
  - ITEM
`, "ITEM", bad.item, 1)
		_, err := LoadAgent(agentFlags(t, "--config", writeFile(t, "agent.yaml", body)))
		if err == nil || !strings.Contains(err.Error(), "tunnels") || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("%s: %v; want an error about tunnels with %q", bad.item, err, bad.want)
		}
	}
}
