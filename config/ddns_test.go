package config

import (
	"fmt"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
)

// agentBase is the part of an agent configuration that is not ddns.
var agentBase = `relay: "vps.example.com:7000"
token: "0123456789abcdef0123"
fingerprint: "` + fp + `"
tunnels: ["3390:127.0.0.1:3389"]
`

func TestDDNSProviders(t *testing.T) {
	tests := []struct {
		provider string
		section  string
		check    func(*DDNS) bool
	}{
		{"cloudflare", "cloudflare: {api_token: cf-token-123, zone: example.com}", func(d *DDNS) bool {
			return *d.Cloudflare == DDNSCloudflare{APIToken: "cf-token-123", Zone: "example.com"}
		}},
		{"alidns", "alidns: {access_key_id: LTAI5t, access_key_secret: s3cret, zone: example.com, region_id: cn-shanghai}", func(d *DDNS) bool {
			return *d.AliDNS == DDNSAliDNS{AccessKeyID: "LTAI5t", AccessKeySecret: "s3cret", RegionID: "cn-shanghai", Zone: "example.com"}
		}},
		{"route53", "route53: {access_key_id: AKIA1, secret_access_key: s3cret, zone: example.com., hosted_zone_id: Z1D633PJN98FT9}", func(d *DDNS) bool {
			return *d.Route53 == DDNSRoute53{AccessKeyID: "AKIA1", SecretAccessKey: "s3cret", HostedZoneID: "Z1D633PJN98FT9", Zone: "example.com."}
		}},
		{"route53", "route53: {profile: dns, zone: example.com}", func(d *DDNS) bool {
			return *d.Route53 == DDNSRoute53{Profile: "dns", Zone: "example.com"}
		}},
		{"dnspod", "dnspod: {secret_id: AKID1, secret_key: s3cret, zone: example.com}", func(d *DDNS) bool {
			return *d.DNSPod == DDNSDNSPod{SecretID: "AKID1", SecretKey: "s3cret", Zone: "example.com"}
		}},
		{"rfc2136", "rfc2136: {server: \"ns1.example.com:53\", zone: example.com, key_name: homeport, key_secret: c2VjcmV0, key_algorithm: HMAC-SHA512, default_ttl: 1m, timeout: 5s}", func(d *DDNS) bool {
			return *d.RFC2136 == DDNSRFC2136{Server: "ns1.example.com:53", Zone: "example.com", KeyName: "homeport", KeySecret: "c2VjcmV0", KeyAlgorithm: "hmac-sha512", DefaultTTL: time.Minute, Timeout: 5 * time.Second}
		}},
		{"dyndns2", "dyndns2: {server: \"https://dynupdate.no-ip.com\", username: me, password: pw, nameserver: ns1.no-ip.com}", func(d *DDNS) bool {
			return *d.DynDNS2 == DDNSDynDNS2{Server: "https://dynupdate.no-ip.com", Username: "me", Password: "pw", Nameserver: "ns1.no-ip.com"}
		}},
		{"webhook", "webhook: {url: \"https://dns.example.net/update?host={name}&ip={addr}\", method: post, body: '{\"ip\": \"{addr}\"}', headers: {Authorization: \"Bearer x\"}, ok_body: OK, nameserver: \"[2001:db8::53]:53\"}", func(d *DDNS) bool {
			w := d.Webhook
			return w.URL == "https://dns.example.net/update?host={name}&ip={addr}" && w.Method == "POST" && w.Body == `{"ip": "{addr}"}` &&
				reflect.DeepEqual(w.Headers, map[string]Secret{"authorization": "Bearer x"}) && w.OKBody == "OK" && w.Nameserver == "[2001:db8::53]:53"
		}},
	}
	for _, tt := range tests {
		t.Run(tt.provider, func(t *testing.T) {
			cleanEnv(t)
			name := "home.example.com"
			if tt.provider == "duckdns" {
				name = "myhome.duckdns.org"
			}
			body := fmt.Sprintf("ddns:\n  names: [%s]\n  provider: %s\n  %s\n", name, tt.provider, tt.section)
			c, err := LoadRelay(relayFlags(t, "--config", writeFile(t, "relay.yaml", body)))
			if err != nil {
				t.Fatalf("%v\n%s", err, body)
			}
			d := c.DDNS
			if d == nil || d.Provider != tt.provider || !tt.check(d) {
				t.Fatalf("got %+v", d)
			}
			set := 0
			for _, p := range []any{d.Cloudflare, d.AliDNS, d.Route53, d.DuckDNS, d.DNSPod, d.RFC2136, d.DynDNS2, d.Webhook} {
				if !reflect.ValueOf(p).IsNil() {
					set++
				}
			}
			if set != 1 {
				t.Errorf("%d provider sections set, want 1", set)
			}
		})
	}

	t.Run("duckdns", func(t *testing.T) {
		cleanEnv(t)
		body := "ddns:\n  names: [myhome.duckdns.org]\n  provider: duckdns\n  duckdns: {token: 01234567-89ab-cdef-0123-456789abcdef}\n"
		c, err := LoadRelay(relayFlags(t, "--config", writeFile(t, "relay.yaml", body)))
		if err != nil {
			t.Fatal(err)
		}
		if *c.DDNS.DuckDNS != (DDNSDuckDNS{Token: "01234567-89ab-cdef-0123-456789abcdef"}) {
			t.Errorf("got %+v", c.DDNS.DuckDNS)
		}
	})
}

// TestDDNSFull loads every key outside the provider section, in the
// agent and in a TOML and a JSON file.
func TestDDNSFull(t *testing.T) {
	cleanEnv(t)
	want := &DDNS{
		Names: []DDNSName{
			{Name: "home.example.com", IPv4: true, IPv6: true},
			{Name: "v6.example.com", IPv6: true, TTL: 5 * time.Minute},
		},
		Sources: []DDNSSource{
			{Kind: DDNSSourceRelay},
			{Kind: DDNSSourceInterface, Interface: "eth0"},
			{Kind: DDNSSourceHTTP},
			{Kind: DDNSSourceCommand, Command: []string{"sh", "-c", "echo 203.0.113.5"}},
		},
		HTTPURLs:         []string{"https://api.ipify.org", "https://ifconfig.co/ip"},
		IPv6Suffix:       netip.MustParseAddr("::1234"),
		Interval:         10 * time.Minute,
		ForceRefresh:     0,
		MinWriteInterval: 2 * time.Minute,
		Provider:         "cloudflare",
		Cloudflare:       &DDNSCloudflare{APIToken: "cf-token", ZoneToken: "cf-zone-token", Zone: "example.com"},
	}
	files := map[string]string{
		"agent.yaml": agentBase + `ddns:
  names: ["Home.Example.com.", {name: "v6.example.com", ipv4: false, ipv6: true, ttl: 5m}]
  sources: [relay, "interface:eth0", http, "command:sh -c 'echo 203.0.113.5'"]
  http_urls: ["https://api.ipify.org", "https://ifconfig.co/ip"]
  ipv6_suffix: "::1234"
  interval: 10m
  force_refresh: 0s
  min_write_interval: 2m
  provider: cloudflare
  cloudflare: {api_token: cf-token, zone_token: cf-zone-token, zone: example.com}
`,
		"agent.toml": `relay = "vps.example.com:7000"
token = "0123456789abcdef0123"
fingerprint = "` + fp + `"
tunnels = ["3390:127.0.0.1:3389"]

[ddns]
names = ["home.example.com", { name = "v6.example.com", ipv4 = false, ipv6 = true, ttl = "5m" }]
sources = ["relay", "interface:eth0", "http", "command:sh -c \"echo 203.0.113.5\""]
http_urls = ["https://api.ipify.org", "https://ifconfig.co/ip"]
ipv6_suffix = "::1234"
interval = "10m"
force_refresh = "0s"
min_write_interval = "2m"
provider = "cloudflare"

[ddns.cloudflare]
api_token = "cf-token"
zone_token = "cf-zone-token"
zone = "example.com"
`,
		"agent.json": `{"relay": "vps.example.com:7000", "token": "0123456789abcdef0123", "fingerprint": "` + fp + `",
  "tunnels": ["3390:127.0.0.1:3389"],
  "ddns": {"names": ["home.example.com", {"name": "v6.example.com", "ipv4": false, "ipv6": "yes", "ttl": "5m"}],
    "sources": ["relay", "interface:eth0", "http", "command:sh -c 'echo 203.0.113.5'"],
    "http_urls": ["https://api.ipify.org", "https://ifconfig.co/ip"], "ipv6_suffix": "::1234",
    "interval": "10m", "force_refresh": "0s", "min_write_interval": "2m",
    "provider": "cloudflare", "cloudflare": {"api_token": "cf-token", "zone_token": "cf-zone-token", "zone": "example.com"}}}`,
	}
	for name, body := range files {
		t.Run(name, func(t *testing.T) {
			c, err := LoadAgent(agentFlags(t, "--config", writeFile(t, name, body)))
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(c.DDNS, want) {
				t.Errorf("got  %#v\nwant %#v", c.DDNS, want)
			}
		})
	}
}

// TestDDNSDefaults: sources default to the relay's view in the agent and
// to http in the relay and in "agent ddns"; the intervals and the
// services have defaults too.
func TestDDNSDefaults(t *testing.T) {
	cleanEnv(t)
	section := "ddns:\n  names: [home.example.com]\n  provider: dyndns2\n  dyndns2: {server: \"https://dyn.example.net\", username: u, password: p, nameserver: ns1.example.net}\n"
	r, err := LoadRelay(relayFlags(t, "--config", writeFile(t, "relay.yaml", section)))
	if err != nil {
		t.Fatal(err)
	}
	want := &DDNS{
		Names:            []DDNSName{{Name: "home.example.com", IPv4: true, IPv6: true}},
		Sources:          []DDNSSource{{Kind: DDNSSourceHTTP}},
		HTTPURLs:         DefaultHTTPURLs,
		Interval:         5 * time.Minute,
		ForceRefresh:     24 * time.Hour,
		MinWriteInterval: time.Minute,
		Provider:         "dyndns2",
		DynDNS2:          &DDNSDynDNS2{Server: "https://dyn.example.net", Username: "u", Password: "p", Nameserver: "ns1.example.net"},
	}
	if !reflect.DeepEqual(r.DDNS, want) {
		t.Errorf("relay:\n got %#v\nwant %#v", r.DDNS, want)
	}

	path := writeFile(t, "agent.yaml", agentBase+section)
	a, err := LoadAgent(agentFlags(t, "--config", path))
	if err != nil {
		t.Fatal(err)
	}
	if want := []DDNSSource{{Kind: DDNSSourceRelay}}; !reflect.DeepEqual(a.DDNS.Sources, want) {
		t.Errorf("agent sources %v, want %v", a.DDNS.Sources, want)
	}
	s, err := LoadAgentDDNS(agentDDNSFlags(t, "--config", path, "--log-level", "debug"))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(s.DDNS, want) || s.Log.Level != "debug" {
		t.Errorf("agent ddns:\n got %#v %+v\nwant %#v", s.DDNS, s.Log, want)
	}

	noDDNS, err := LoadAgent(agentFlags(t, "--config", writeFile(t, "agent.yaml", agentBase)))
	if err != nil || noDDNS.DDNS != nil {
		t.Errorf("without a ddns section: %v, %v", err, noDDNS.DDNS)
	}
}

// TestAgentDDNSLoad: "agent ddns" needs only the ddns section, and
// requires it.
func TestAgentDDNSLoad(t *testing.T) {
	cleanEnv(t)
	path := writeFile(t, "agent.yaml", "ddns:\n  names: [home.example.com]\n  sources: [relay, \"command:/usr/local/bin/myip --v4\"]\n  provider: cloudflare\n  cloudflare: {api_token: t, zone: example.com}\n")
	c, err := LoadAgentDDNS(agentDDNSFlags(t, "--config", path))
	if err != nil {
		t.Fatal(err)
	}
	if want := []DDNSSource{{Kind: DDNSSourceRelay}, {Kind: DDNSSourceCommand, Command: []string{"/usr/local/bin/myip", "--v4"}}}; !reflect.DeepEqual(c.DDNS.Sources, want) {
		t.Errorf("sources %v, want %v", c.DDNS.Sources, want)
	}
	// The agent itself still needs its relay, token and tunnels.
	if _, err := LoadAgent(agentFlags(t, "--config", path)); err == nil {
		t.Error("LoadAgent accepted a file without relay, token and tunnels")
	}

	_, err = LoadAgentDDNS(agentDDNSFlags(t, "--config", writeFile(t, "agent.yaml", agentBase)))
	if err == nil || !strings.Contains(err.Error(), "ddns: missing: agent ddns needs a ddns section in ") {
		t.Errorf("no ddns section: %v", err)
	}
	_, err = LoadAgentDDNS(agentDDNSFlags(t))
	if err == nil || !strings.Contains(err.Error(), "--config") {
		t.Errorf("no file: %v", err)
	}
	// Unknown keys are still errors.
	_, err = LoadAgentDDNS(agentDDNSFlags(t, "--config", writeFile(t, "agent.yaml", agentBase+"tunnel: x\n")))
	if err == nil || !strings.Contains(err.Error(), `unknown setting "tunnel"`) {
		t.Errorf("unknown key: %v", err)
	}
}

func agentDDNSFlags(t *testing.T, args ...string) *pflag.FlagSet {
	t.Helper()
	fs := pflag.NewFlagSet("agent ddns", pflag.ContinueOnError)
	AgentDDNSFlags(fs)
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	return fs
}

func TestDDNSErrors(t *testing.T) {
	cf := "  provider: cloudflare\n  cloudflare: {api_token: t, zone: example.com}\n"
	tests := []struct {
		name  string
		agent bool // load as the agent; else as the relay
		ddns  string
		want  []string
	}{
		{"not a section", false, "ddns: [a]\n", []string{"ddns in FILE: want a section"}},
		{"unknown key", false, "ddns:\n  names: [home.example.com]\n  provder: cloudflare\n" + cf,
			[]string{`ddns in FILE: unknown key "provder" (did you mean "provider"? want names, sources,`}},
		{"no names", false, "ddns:\n" + cf, []string{"ddns.names in FILE: missing"}},
		{"bad name", false, "ddns:\n  names: [\"https://home.example.com\", home, \"a b.example.com\", home.example.com, HOME.example.com]\n" + cf,
			[]string{"ddns.names item 1 in FILE: \"https://home.example.com\": want a name such as home.example.com, not a URL",
				"ddns.names item 2 in FILE: \"home\": want a fully qualified name",
				"ddns.names item 3 in FILE: \"a b.example.com\": character ' ' is not allowed",
				"ddns.names item 5 in FILE: home.example.com is listed twice"}},
		{"name section", false, "ddns:\n  names: [{name: v6.example.com, ipv4: false, ipv6: nope, ttl: 5}, {name: a.example.com, ipv4: false, ipv6: false}, {host: x}]\n" + cf,
			[]string{`ddns.names item 1.ipv6 in FILE: "nope": want true or false`,
				`ddns.names item 1.ttl in FILE: duration "5" has no unit`,
				"ddns.names item 2 in FILE: a.example.com: ipv4 and ipv6 are both false",
				`ddns.names item 3 in FILE: unknown key "host" (want name, ipv4, ipv6, ttl)`}},
		{"name outside the zone", false, "ddns:\n  names: [home.example.org]\n" + cf,
			[]string{"ddns.names in FILE: home.example.org is not in ddns.cloudflare.zone example.com"}},
		{"sources", true, "ddns:\n  names: [home.example.com]\n  sources: [relay, ftp, \"interface:\", \"command:\", \"command:sh -c 'echo\", \"http:x\", {a: b}]\n" + cf,
			[]string{`ddns.sources item 2 in FILE: "ftp": want relay, connected_relays, http, mapping:TUNNEL, interface:NAME or command:COMMAND`,
				`ddns.sources item 3 in FILE: "interface:": want interface:NAME`,
				`ddns.sources item 4 in FILE: "command:": want command:COMMAND`,
				`ddns.sources item 5 in FILE: "command:sh -c 'echo": unterminated ' quote`,
				`ddns.sources item 6 in FILE: "http:x": http takes no argument`,
				`ddns.sources item 7 in FILE: want relay, connected_relays, http, mapping:TUNNEL, interface:NAME or command:COMMAND as a string`}},
		{"relay source in the relay", false, "ddns:\n  names: [home.example.com]\n  sources: [relay, http]\n" + cf,
			[]string{"ddns.sources item 1 in FILE: relay: only the agent has this source"}},
		{"connected_relays source in the relay", false, "ddns:\n  names: [home.example.com]\n  sources: [http, connected_relays]\n" + cf,
			[]string{"ddns.sources item 2 in FILE: connected_relays: only the agent has this source (the relays it has a session with)"}},
		{"connected_relays with an argument", true, "ddns:\n  names: [home.example.com]\n  sources: [\"connected_relays:x\"]\n" + cf,
			[]string{`ddns.sources item 1 in FILE: "connected_relays:x": connected_relays takes no argument`}},
		{"empty sources", false, "ddns:\n  names: [home.example.com]\n  sources: []\n" + cf,
			[]string{"ddns.sources in FILE: empty"}},
		{"suffix", true, "ddns:\n  names: [home.example.com]\n  ipv6_suffix: \"2001:db8::1\"\n" + cf,
			[]string{"ddns.ipv6_suffix in FILE: 2001:db8::1: the first 64 bits must be zero",
				"ddns.ipv6_suffix in FILE: only interface sources use it"}},
		{"urls and durations", false, "ddns:\n  names: [home.example.com]\n  http_urls: [\"ftp://x\", api.ipify.org]\n  interval: 1s\n  force_refresh: 10m\n  min_write_interval: soon\n" + cf,
			[]string{"ddns.http_urls item 1 in FILE: want an http:// or https:// URL",
				"ddns.http_urls item 2 in FILE: want an http:// or https:// URL",
				"ddns.interval in FILE: 1s is out of range: want 30s to 24h0m0s",
				"ddns.force_refresh in FILE: 10m0s: want at least 1h, or 0s for never",
				"ddns.min_write_interval in FILE: "}},
		{"no provider", false, "ddns:\n  names: [home.example.com]\n",
			[]string{"ddns.provider in FILE: missing: want one of cloudflare, alidns, route53, duckdns, dnspod, rfc2136, dyndns2, webhook"}},
		{"unknown provider", false, "ddns:\n  names: [home.example.com]\n  provider: godaddy\n",
			[]string{`ddns.provider in FILE: "godaddy": want one of cloudflare,`}},
		{"missing provider section", false, "ddns:\n  names: [home.example.com]\n  provider: cloudflare\n",
			[]string{"ddns.cloudflare in FILE: missing: provider cloudflare needs a cloudflare section with api_token, zone_token, zone"}},
		{"other provider section", false, "ddns:\n  names: [home.example.com]\n" + cf + "  route53: {zone: example.com}\n",
			[]string{"ddns.route53 in FILE: provider is cloudflare: remove this section, or set provider: route53"}},
		{"cloudflare", false, "ddns:\n  names: [home.example.com]\n  provider: cloudflare\n  cloudflare: {api_token: \"\", token: x}\n",
			[]string{`ddns.cloudflare in FILE: unknown key "token" (want api_token, zone_token, zone)`}},
		{"cloudflare missing", false, "ddns:\n  names: [home.example.com]\n  provider: cloudflare\n  cloudflare: {api_token: \"\"}\n",
			[]string{"ddns.cloudflare.api_token in FILE: empty", "ddns.cloudflare.zone in FILE: missing"}},
		{"alidns", false, "ddns:\n  names: [home.example.com]\n  provider: alidns\n  alidns: {zone: example.com}\n",
			[]string{"ddns.alidns.access_key_id in FILE: missing", "ddns.alidns.access_key_secret in FILE: missing"}},
		{"route53", false, "ddns:\n  names: [home.example.com]\n  provider: route53\n  route53: {access_key_id: AKIA}\n",
			[]string{"ddns.route53.zone in FILE: missing", "ddns.route53.access_key_id in FILE: access_key_id and secret_access_key go together"}},
		{"duckdns", false, "ddns:\n  names: [home.example.com]\n  provider: duckdns\n  duckdns: {token: abc, resolver: \"ns1.duckdns.org:0\"}\n",
			[]string{"ddns.duckdns.token in FILE: want the 36-character token",
				`ddns.duckdns.resolver in FILE: "ns1.duckdns.org:0": port "0" is not a number from 1 to 65535`,
				"ddns.names in FILE: home.example.com: Duck DNS keeps only names of the form NAME.duckdns.org"}},
		{"dnspod", false, "ddns:\n  names: [home.example.com]\n  provider: dnspod\n  dnspod: {secret_id: x}\n",
			[]string{"ddns.dnspod.secret_key in FILE: missing", "ddns.dnspod.zone in FILE: missing"}},
		{"rfc2136", false, "ddns:\n  names: [home.example.com]\n  provider: rfc2136\n  rfc2136: {server: \"ns1.example.com:x\", zone: example.com, key_secret: \"not base64!\", key_algorithm: md5, timeout: 1h}\n",
			[]string{`ddns.rfc2136.server in FILE: "ns1.example.com:x": port "x"`,
				"ddns.rfc2136.key_name in FILE: missing",
				"ddns.rfc2136.key_secret in FILE: not base64",
				`ddns.rfc2136.key_algorithm in FILE: "md5": want hmac-sha256`,
				"ddns.rfc2136.timeout in FILE: 1h0m0s is out of range"}},
		{"dyndns2", false, "ddns:\n  names: [home.example.com]\n  provider: dyndns2\n  dyndns2: {server: dynupdate.no-ip.com, username: me}\n",
			[]string{"ddns.dyndns2.server in FILE: want an http:// or https:// URL, e.g. https://dynupdate.no-ip.com",
				"ddns.dyndns2.password in FILE: missing", "ddns.dyndns2.nameserver in FILE: missing"}},
		{"webhook", false, "ddns:\n  names: [home.example.com]\n  provider: webhook\n  webhook: {url: \"example.net/{name}\", body: x, headers: [a], nameserver: ns1.example.net}\n",
			[]string{"ddns.webhook.url in FILE: want an http:// or https:// URL",
				"ddns.webhook.body in FILE: a GET request sends no body",
				"ddns.webhook.headers in FILE: want a section of header names and values"}},
		{"webhook method", false, "ddns:\n  names: [home.example.com]\n  provider: webhook\n  webhook: {url: \"https://example.net/\", method: DELETE}\n",
			[]string{`ddns.webhook.method in FILE: "DELETE": want GET, POST, PUT or PATCH`, "ddns.webhook.nameserver in FILE: missing"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cleanEnv(t)
			var (
				path string
				err  error
			)
			if tt.agent {
				path = writeFile(t, "agent.yaml", agentBase+tt.ddns)
				_, err = LoadAgent(agentFlags(t, "--config", path))
			} else {
				path = writeFile(t, "relay.yaml", tt.ddns)
				_, err = LoadRelay(relayFlags(t, "--config", path))
			}
			if err == nil {
				t.Fatalf("loaded:\n%s", tt.ddns)
			}
			for _, w := range tt.want {
				if w = strings.ReplaceAll(w, "FILE", path); !strings.Contains(err.Error(), w) {
					t.Errorf("error does not contain %q:\n%v", w, err)
				}
			}
		})
	}
}

// TestDDNSEnv: the ddns section can only come from a file.
func TestDDNSEnv(t *testing.T) {
	cleanEnv(t)
	t.Setenv("HOMEPORT_DDNS", "x")
	if _, err := LoadRelay(relayFlags(t)); err == nil || !strings.Contains(err.Error(), "ddns can only be set in a config file") {
		t.Errorf("HOMEPORT_DDNS: %v", err)
	}
	cleanEnv(t)
	t.Setenv("HOMEPORT_DDNS_PROVIDER", "cloudflare")
	if _, err := LoadRelay(relayFlags(t)); err == nil || !strings.Contains(err.Error(), "not a homeport setting") {
		t.Errorf("HOMEPORT_DDNS_PROVIDER: %v", err)
	}
}

// TestDDNSSecretsHidden: formatting a configuration never shows a secret.
func TestDDNSSecretsHidden(t *testing.T) {
	secrets := []string{"cf-api-token-value", "cf-zone-token-value", "dyn-password-value", "hook-url-token", "hook-header-value", "hook-body-token"}
	d := &DDNS{
		Names:      []DDNSName{{Name: "home.example.com", IPv4: true}},
		Sources:    []DDNSSource{{Kind: DDNSSourceCommand, Command: []string{"/bin/myip", "--key", "cmd-secret-value"}}},
		Provider:   "cloudflare",
		Cloudflare: &DDNSCloudflare{APIToken: Secret(secrets[0]), ZoneToken: Secret(secrets[1]), Zone: "example.com"},
		DynDNS2:    &DDNSDynDNS2{Password: Secret(secrets[2])},
		Webhook:    &DDNSWebhook{URL: Secret("https://x.example/?t=" + secrets[3]), Headers: map[string]Secret{"x-key": Secret(secrets[4])}, Body: Secret(secrets[5])},
	}
	a := Agent{DDNS: d}
	for _, out := range []string{
		fmt.Sprint(a), fmt.Sprintf("%+v", a), fmt.Sprintf("%v", d), fmt.Sprintf("%+v", *d), fmt.Sprintf("%#v", *d),
		fmt.Sprintf("%+v %+v %+v", *d.Cloudflare, *d.DynDNS2, *d.Webhook), fmt.Sprintf("%#v %#v", *d.Cloudflare, *d.Webhook),
		fmt.Sprintf("%s %q", d.Cloudflare.APIToken, d.Cloudflare.APIToken),
	} {
		for _, s := range append(secrets, "cmd-secret-value") {
			if strings.Contains(out, s) {
				t.Errorf("%q shows the secret %q", out, s)
			}
		}
	}
	if s := d.String(); !strings.Contains(s, "home.example.com") || !strings.Contains(s, "cloudflare") {
		t.Errorf("String() = %q", s)
	}
}

func TestSplitCommand(t *testing.T) {
	for in, want := range map[string][]string{
		"/usr/local/bin/myip":                {"/usr/local/bin/myip"},
		"  sh  -c 'echo 203.0.113.5' ":       {"sh", "-c", "echo 203.0.113.5"},
		`a "b c"d '' x`:                      {"a", "b cd", "", "x"},
		`C:\tools\myip.exe --family 4`:       {`C:\tools\myip.exe`, "--family", "4"},
		`"C:\Program Files\myip\myip.exe"`:   {`C:\Program Files\myip\myip.exe`},
		`sh -c "ip -6 addr | grep 'global'"`: {"sh", "-c", "ip -6 addr | grep 'global'"},
	} {
		got, err := splitCommand(in)
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Errorf("splitCommand(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
}

// TestDDNSMappingSource: mapping:TUNNEL names a TCP tunnel with
// port_mapping; anything else is refused, naming the source's place and
// the reason.
func TestDDNSMappingSource(t *testing.T) {
	base := `relay: "vps.example.com:7000"
token: "0123456789abcdef0123"
fingerprint: "` + fp + `"
tunnels:
  - {name: web, remote_port: 8080, target: "127.0.0.1:80", port_mapping: true}
  - {name: ssh, remote_port: 2222, target: "127.0.0.1:22"}
  - {name: dns, protocol: udp, remote_port: 5353, target: "127.0.0.1:53", port_mapping: true}
ddns:
  names: [home.example.com]
  provider: cloudflare
  cloudflare: {api_token: t, zone: example.com}
`
	cleanEnv(t)
	c, err := LoadAgent(agentFlags(t, "--config", writeFile(t, "agent.yaml", base+"  sources: [mapping:web, http]\n")))
	if err != nil {
		t.Fatal(err)
	}
	if want := []DDNSSource{{Kind: DDNSSourceMapping, Tunnel: "web"}, {Kind: DDNSSourceHTTP}}; !reflect.DeepEqual(c.DDNS.Sources, want) {
		t.Errorf("sources %#v, want %#v", c.DDNS.Sources, want)
	}
	if got := c.DDNS.String(); !strings.Contains(got, "sources mapping:web, http") {
		t.Errorf("String() = %q", got)
	}

	path := writeFile(t, "agent.yaml", base+"  sources: [mapping:webb, mapping:ssh, mapping:dns, \"mapping:\", relay]\n")
	_, err = LoadAgent(agentFlags(t, "--config", path))
	for _, w := range []string{
		`ddns.sources item 1 in FILE: mapping:webb: no tunnel is named "webb" (the tunnels are web, ssh, dns)`,
		`ddns.sources item 2 in FILE: mapping:ssh: tunnel "ssh" has no port_mapping; give it port_mapping: true`,
		`ddns.sources item 3 in FILE: mapping:dns: tunnel "dns" is UDP: the relay cannot verify a UDP mapping from outside`,
		`ddns.sources item 4 in FILE: "mapping:": want mapping:TUNNEL`,
	} {
		if w = strings.ReplaceAll(w, "FILE", path); err == nil || !strings.Contains(err.Error(), w) {
			t.Errorf("error does not contain %q:\n%v", w, err)
		}
	}
	if err != nil && strings.Contains(err.Error(), "item 5") {
		t.Errorf("the relay source was refused too:\n%v", err)
	}

	// The relay keeps no mappings; "agent ddns" reads the file without
	// its tunnels and leaves the source to the updater's builder.
	path = writeFile(t, "relay.yaml", "ddns:\n  names: [home.example.com]\n  sources: [mapping:web]\n  provider: cloudflare\n  cloudflare: {api_token: t, zone: example.com}\n")
	if _, err := LoadRelay(relayFlags(t, "--config", path)); err == nil || !strings.Contains(err.Error(), "ddns.sources item 1 in "+path+": mapping:web: only the agent keeps port mappings") {
		t.Errorf("relay: %v", err)
	}
	s, err := LoadAgentDDNS(agentDDNSFlags(t, "--config", writeFile(t, "agent.yaml", base+"  sources: [mapping:web]\n")))
	if err != nil || !reflect.DeepEqual(s.DDNS.Sources, []DDNSSource{{Kind: DDNSSourceMapping, Tunnel: "web"}}) {
		t.Errorf("agent ddns: %v, %#v", err, s.DDNS)
	}
}
