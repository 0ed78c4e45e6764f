package ddnsbuild

import (
	"bytes"
	"errors"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"github.com/homeport/homeport/config"
	"github.com/homeport/homeport/ddns"
	"github.com/homeport/homeport/internal/examplefill"
)

func base(provider string) *config.DDNS {
	return &config.DDNS{
		Names:            []config.DDNSName{{Name: "home.example.com", IPv4: true, IPv6: true}},
		Sources:          []config.DDNSSource{{Kind: config.DDNSSourceHTTP}},
		HTTPURLs:         config.DefaultHTTPURLs,
		Interval:         5 * time.Minute,
		ForceRefresh:     24 * time.Hour,
		MinWriteInterval: time.Minute,
		Provider:         provider,
	}
}

// TestNewProviders builds every provider from its configuration; nothing
// is contacted.
func TestNewProviders(t *testing.T) {
	tests := []func(*config.DDNS){
		func(c *config.DDNS) { c.Cloudflare = &config.DDNSCloudflare{APIToken: "t", Zone: "example.com"} },
		func(c *config.DDNS) {
			c.AliDNS = &config.DDNSAliDNS{AccessKeyID: "id", AccessKeySecret: "s", Zone: "example.com"}
		},
		func(c *config.DDNS) {
			c.Route53 = &config.DDNSRoute53{AccessKeyID: "AKIA", SecretAccessKey: "s", Zone: "example.com"}
		},
		func(c *config.DDNS) {
			c.Names[0].Name = "myhome.duckdns.org"
			c.DuckDNS = &config.DDNSDuckDNS{Token: "01234567-89ab-cdef-0123-456789abcdef"}
		},
		func(c *config.DDNS) {
			c.DNSPod = &config.DDNSDNSPod{SecretID: "id", SecretKey: "s", Zone: "example.com"}
		},
		func(c *config.DDNS) {
			c.RFC2136 = &config.DDNSRFC2136{Server: "127.0.0.1:53", Zone: "example.com", KeyName: "k", KeySecret: "c2VjcmV0"}
		},
		func(c *config.DDNS) {
			c.DynDNS2 = &config.DDNSDynDNS2{Server: "https://dyn.example.net", Username: "u", Password: "p", Nameserver: "ns1.example.net"}
		},
		func(c *config.DDNS) {
			c.Webhook = &config.DDNSWebhook{URL: "https://hook.example.net/{name}", Headers: map[string]config.Secret{"x-key": "k"}, Nameserver: "ns1.example.net"}
		},
	}
	for i, set := range tests {
		name := config.DDNSProviders[i]
		t.Run(name, func(t *testing.T) {
			c := base(name)
			set(c)
			u, err := New(c, Options{})
			if err != nil {
				t.Fatal(err)
			}
			if _, ok := u.Provider.(timeoutProvider); !ok {
				t.Errorf("provider %T is not bounded by a timeout", u.Provider)
			}
		})
	}

	// The provider's own checks come through.
	c := base("rfc2136")
	c.RFC2136 = &config.DDNSRFC2136{Server: "127.0.0.1:53", Zone: "example.com", KeyName: "k", KeySecret: "!!"}
	if _, err := New(c, Options{}); err == nil || !strings.HasPrefix(err.Error(), "ddns: rfc2136: ") {
		t.Errorf("bad secret: %v", err)
	}
	c = base("cloudflare")
	if _, err := New(c, Options{}); err == nil || !strings.Contains(err.Error(), "ddns.cloudflare: missing") {
		t.Errorf("no section: %v", err)
	}
}

func TestNewSettings(t *testing.T) {
	c := base("dyndns2")
	c.DynDNS2 = &config.DDNSDynDNS2{Server: "https://dyn.example.net", Username: "u", Password: "p", Nameserver: "ns1.example.net"}
	c.Names = append(c.Names, config.DDNSName{Name: "v6.example.com", IPv6: true, TTL: time.Hour})
	c.ForceRefresh = 0
	u, err := New(c, Options{UserAgent: "homeport-ddns/1.2.3"})
	if err != nil {
		t.Fatal(err)
	}
	if u.ForceRefresh >= 0 || u.Interval != 5*time.Minute || u.MinWriteInterval != time.Minute {
		t.Errorf("intervals %v %v %v", u.Interval, u.ForceRefresh, u.MinWriteInterval)
	}
	if want := []ddns.NameConfig{{Name: "home.example.com", IPv4: true, IPv6: true}, {Name: "v6.example.com", IPv6: true, TTL: time.Hour}}; len(u.Names) != 2 || u.Names[0] != want[0] || u.Names[1] != want[1] {
		t.Errorf("names %+v", u.Names)
	}
	if d := u.Provider.(timeoutProvider).p.(*ddns.DynDNS2); d.UserAgent != "homeport-ddns/1.2.3" || d.Password != "p" {
		t.Errorf("dyndns2 %+v", d)
	}
	// http is asked over each family.
	if got := u.Source.Name(); got != "first of (http (IPv4), http (IPv6))" {
		t.Errorf("source %q", got)
	}
	c.Names = c.Names[1:]
	if u, _ = New(c, Options{}); u.Source.Name() != "http (IPv6)" {
		t.Errorf("IPv6 names only: source %q", u.Source.Name())
	}
	if u.Wake != nil {
		t.Error("Wake set without a relay source")
	}
}

func TestNewRelaySource(t *testing.T) {
	c := base("cloudflare")
	c.Cloudflare = &config.DDNSCloudflare{APIToken: "t", Zone: "example.com"}
	c.Sources = []config.DDNSSource{{Kind: config.DDNSSourceRelay}, {Kind: config.DDNSSourceInterface, Interface: "eth0"}, {Kind: config.DDNSSourceCommand, Command: []string{"/bin/myip", "--secret"}}}
	ra := ddns.NewRelayAddr()
	u, err := New(c, Options{Relay: ra})
	if err != nil {
		t.Fatal(err)
	}
	if got := u.Source.Name(); got != "first of (relay, interface eth0, command myip)" {
		t.Errorf("source %q", got)
	}
	if u.Wake == nil {
		t.Error("no Wake with a relay source")
	}

	// Without a session ("agent ddns") the relay source is left out.
	var logs bytes.Buffer
	u, err = New(c, Options{Log: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	if got := u.Source.Name(); got != "first of (interface eth0, command myip)" || !strings.Contains(logs.String(), "the relay source is left out") {
		t.Errorf("source %q, log %s", got, logs.String())
	}
	c.Sources = c.Sources[:1]
	if _, err := New(c, Options{}); err == nil || !strings.Contains(err.Error(), "no source left") {
		t.Errorf("relay source only, no session: %v", err)
	}
}

// TestNewMappingSource: mapping sources come from the agent's Mappings,
// wake the updater beside the relay source, and make it withdraw as it
// stops; without Mappings ("agent ddns") they are left out.
func TestNewMappingSource(t *testing.T) {
	c := base("cloudflare")
	c.Cloudflare = &config.DDNSCloudflare{APIToken: "t", Zone: "example.com"}
	c.Sources = []config.DDNSSource{{Kind: config.DDNSSourceMapping, Tunnel: "web"}, {Kind: config.DDNSSourceRelay}, {Kind: config.DDNSSourceMapping, Tunnel: "ssh"}}
	ra, ms := ddns.NewRelayAddr(), ddns.NewMappings()
	u, err := New(c, Options{Relay: ra, Mappings: ms})
	if err != nil {
		t.Fatal(err)
	}
	if got := u.Source.Name(); got != "first of (mapping:web, relay, mapping:ssh)" {
		t.Errorf("source %q", got)
	}
	if u.Wake != ms.Wake() || len(u.Wakes) != 1 || u.Wakes[0] != ra.Wake() || u.StopTimeout <= 0 {
		t.Errorf("Wake %v, Wakes %v, StopTimeout %v: want the mappings', the relay's, and a last round", u.Wake, u.Wakes, u.StopTimeout)
	}
	c.Sources = c.Sources[:1]
	if u, err = New(c, Options{Mappings: ms}); err != nil || u.Wake != ms.Wake() || u.Wakes != nil {
		t.Errorf("mapping source alone: %v, Wake %v, Wakes %v", err, u.Wake, u.Wakes)
	}

	var logs bytes.Buffer
	c.Sources = append(c.Sources, config.DDNSSource{Kind: config.DDNSSourceHTTP})
	u, err = New(c, Options{Log: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	if got := u.Source.Name(); got != "first of (http (IPv4), http (IPv6))" || !strings.Contains(logs.String(), "the mapping source is left out") || u.StopTimeout != 0 {
		t.Errorf("without Mappings: source %q, StopTimeout %v, log %s", got, u.StopTimeout, logs.String())
	}
	c.Sources = c.Sources[:1]
	if _, err := New(c, Options{}); err == nil || !strings.Contains(err.Error(), "no source left") {
		t.Errorf("mapping source only, without Mappings: %v", err)
	}
}

func TestReport(t *testing.T) {
	var b bytes.Buffer
	ok := Report(&b, []ddns.Status{
		{Name: "home.example.com", Type: "A", Synced: true, Current: []netip.Addr{netip.MustParseAddr("203.0.113.5")}, LastCheck: time.Now()},
		{Name: "home.example.com", Type: "AAAA", LastError: errors.New("source http gave no public IPv6 address")},
		{Name: "v6.example.com", Type: "AAAA", LastError: errors.New("refused"), LastCheck: time.Now()},
	})
	want := "home.example.com A: ok, 203.0.113.5\n" +
		"home.example.com AAAA: FAILED: source http gave no public IPv6 address (not read from the provider)\n" +
		"v6.example.com AAAA: FAILED: refused (the provider shows no address)\n"
	if ok || b.String() != want {
		t.Errorf("Report = %v\n%s\nwant\n%s", ok, b.String(), want)
	}
	if Report(&b, nil) {
		t.Error("an empty report counts as success")
	}
}

// TestDocExamplesBuild builds the updater of every ddns example in the
// configuration reference and the README, so that none fails at start
// for a reason the configuration loader does not check.
func TestDocExamplesBuild(t *testing.T) {
	for _, v := range os.Environ() {
		if name, _, _ := strings.Cut(v, "="); strings.HasPrefix(name, config.EnvPrefix) {
			t.Setenv(name, "")
			os.Unsetenv(name)
		}
	}
	fill := examplefill.New()
	n := 0
	for _, doc := range []string{"../../docs/configuration.md", "../../README.md"} {
		b, err := os.ReadFile(doc)
		if err != nil {
			t.Fatal(err)
		}
		for i, m := range regexp.MustCompile("(?s)```yaml\n(.*?)```").FindAllStringSubmatch(string(b), -1) {
			if !strings.Contains(m[1], "ddns:") {
				continue
			}
			n++
			path := filepath.Join(t.TempDir(), "example.yaml")
			if err := os.WriteFile(path, []byte(fill.Fill(m[1])), 0o600); err != nil {
				t.Fatal(err)
			}
			fs := pflag.NewFlagSet("x", pflag.ContinueOnError)
			var c *config.DDNS
			if strings.HasPrefix(m[1], "relay:") {
				config.AgentFlags(fs)
				fs.Parse([]string{"--config", path})
				a, err := config.LoadAgent(fs)
				if err != nil {
					t.Fatalf("%s: YAML example %d: %v", doc, i+1, err)
				}
				c = a.DDNS
			} else {
				config.RelayFlags(fs)
				fs.Parse([]string{"--config", path})
				r, err := config.LoadRelay(fs)
				if err != nil {
					t.Fatalf("%s: YAML example %d: %v", doc, i+1, err)
				}
				c = r.DDNS
			}
			if _, err := New(c, Options{Relay: ddns.NewRelayAddr(), Mappings: ddns.NewMappings()}); err != nil {
				t.Errorf("%s: YAML example %d: %v", doc, i+1, err)
			}
		}
	}
	if n < 12 {
		t.Errorf("%d ddns examples; want one per provider at least", n)
	}
}

// TestNewConnectedRelaysSource: the connected_relays source comes from the
// agent's RelaySessions and wakes the updater beside the relay and mapping
// sources; without them ("agent ddns") it is left out, saying so.
func TestNewConnectedRelaysSource(t *testing.T) {
	c := base("cloudflare")
	c.Cloudflare = &config.DDNSCloudflare{APIToken: "t", Zone: "example.com"}
	c.Sources = []config.DDNSSource{{Kind: config.DDNSSourceConnectedRelays}, {Kind: config.DDNSSourceRelay}, {Kind: config.DDNSSourceMapping, Tunnel: "web"}}
	ra, ms, rs := ddns.NewRelayAddr(), ddns.NewMappings(), ddns.NewRelaySessions()
	u, err := New(c, Options{Relay: ra, Mappings: ms, Sessions: rs})
	if err != nil {
		t.Fatal(err)
	}
	if got := u.Source.Name(); got != "first of (connected_relays, relay, mapping:web)" {
		t.Errorf("source %q", got)
	}
	if u.Wake != rs.Wake() || len(u.Wakes) != 2 || u.Wakes[0] != ra.Wake() || u.Wakes[1] != ms.Wake() {
		t.Errorf("Wake %v, Wakes %v: want the sessions', then the relay's and the mappings'", u.Wake, u.Wakes)
	}
	var logs bytes.Buffer
	c.Sources = []config.DDNSSource{{Kind: config.DDNSSourceConnectedRelays}, {Kind: config.DDNSSourceHTTP}}
	u, err = New(c, Options{Log: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	if got := u.Source.Name(); got != "first of (http (IPv4), http (IPv6))" || !strings.Contains(logs.String(), "the connected_relays source is left out") {
		t.Errorf("without sessions: source %q, log %q", got, logs.String())
	}
}
