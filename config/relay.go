package config

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"
)

// MinSecretLen is the shortest token secret the relay accepts.
const MinSecretLen = 16

func relaySettings() []setting {
	s := []setting{
		{key: "data_dir", flag: "data-dir", kind: kString, usage: "directory for the generated token and TLS key (default " + DefaultDataDir() + ")"},
		{key: "listen", flag: "listen", short: "l", kind: kString, def: ":7000", usage: "address agents connect to"},
		{key: "bind_addr", flag: "bind-addr", kind: kString, usage: "IP address public ports listen on (default all)"},
		{key: "allow_ports", flag: "allow-ports", kind: kPorts, def: "1024-65535", usage: "public ports agents may use, e.g. 3390,8000-8100"},
		{key: "token", flag: "token", short: "t", kind: kString, usage: "token agents must know (default: generated and kept in the data directory)"},
		{key: "token_file", flag: "token-file", kind: kString, usage: "file that holds the token agents must know, instead of --token"},
		{key: "tokens", kind: kFile, usage: "several tokens, each with a name, a secret or secret_file, and optional ports and quotas (config file only)"},
		{key: "visitor_keys", kind: kFile, usage: "visitor keys for private tunnels, each with a name, a secret or secret_file, its token and the tunnels it may reach (config file only)"},
		{key: "max_agents", flag: "max-agents", kind: kInt, def: "10", usage: "agent ids one token may have logged in at once, unless the token sets its own"},
		{key: "max_tunnels", flag: "max-tunnels", kind: kInt, def: "64", usage: "tunnels (public ports) one token's agents may hold in all, unless the token sets its own"},
		{key: "port_reserve", flag: "port-reserve", kind: kDuration, def: "15m", usage: "a released public port stays reserved this long to the token that held it (0s: not at all)"},
		{key: "http_addr", flag: "http-addr", kind: kString, usage: "address of the HTTP port that serves web tunnels by host name, e.g. :80 (default: off)"},
		{key: "https_addr", flag: "https-addr", kind: kString, usage: "address of the HTTPS port that serves web tunnels by TLS server name, e.g. :443 (default: off)"},
		{key: "domain", flag: "domain", kind: kString, usage: "domain under which an agent's bare host label is served (nas: nas.DOMAIN), and under which tokens without hosts may claim names"},
		{key: "tls_cert", flag: "tls-cert", kind: kString, usage: "PEM certificate to present instead of the generated one"},
		{key: "tls_key", flag: "tls-key", kind: kString, usage: "PEM private key of --tls-cert"},
		{key: "advertise", flag: "advertise", kind: kString, usage: "host or host:port agents use to reach this relay, for the printed agent command"},
		{key: "handshake_timeout", flag: "handshake-timeout", kind: kDuration, def: "10s", usage: "time from an agent's connect to authenticated"},
		{key: "shutdown_timeout", flag: "shutdown-timeout", kind: kDuration, def: "10s", usage: "time open connections may drain on shutdown"},
		{key: "access_log", flag: "access-log", kind: kBool, def: "true", usage: "log every visitor connection"},
		{key: "quic", flag: "quic", kind: kBool, def: "true", usage: "also accept agents over QUIC, on the listen port number over UDP"},
		{key: "udp_flow_timeout", flag: "udp-flow-timeout", kind: kDuration, def: "60s", usage: "a UDP tunnel forgets a visitor address after this long without a datagram"},
		{key: "udp_max_flows", flag: "udp-max-flows", kind: kInt, def: "1024", usage: "most visitor addresses one UDP tunnel serves at once"},
		{key: "agent_port.max_handshakes", flag: "max-handshakes", kind: kInt, def: "1024", usage: "agent connections not yet authenticated, in all; more are closed at once"},
		{key: "agent_port.max_handshakes_per_ip", flag: "max-handshakes-per-ip", kind: kInt, def: "16", usage: "agent connections not yet authenticated from one IP address (IPv6: /64)"},
		{key: "agent_port.ban_after", flag: "auth-ban-after", kind: kInt, def: "5", usage: "failed agent logins from one address that ban it (0: never)"},
		{key: "agent_port.ban_for", flag: "auth-ban-for", kind: kDuration, def: "15m", usage: "how long an address is banned after failed logins, and the window they count in"},
		{key: "visitors.max_conns_per_ip", flag: "visitor-max-conns", kind: kInt, def: "32", usage: "open connections (UDP: flows) one visitor address may have on one tunnel"},
		{key: "visitors.rate", flag: "visitor-rate", kind: kInt, def: "60", usage: "new connections a minute one visitor address may open on one tunnel, on average"},
		{key: "visitors.burst", flag: "visitor-burst", kind: kInt, def: "20", usage: "new connections one visitor address may open at once on one tunnel"},
		{key: "visitors.ban_after", flag: "visitor-ban-after", kind: kInt, def: "50", usage: "refused connections that ban a visitor address from a tunnel (0: never)"},
		{key: "visitors.ban_for", flag: "visitor-ban-for", kind: kDuration, def: "10m", usage: "how long a visitor address stays banned"},
		ddnsSetting(),
	}
	s = append(append(s, dashboardSettings()...), acmeSettings()...)
	return append(append(append(s, sessionSettings()...), logSettings()...), debugSettings()...)
}

// RelayFlags registers the relay's flags on fs.
func RelayFlags(fs *pflag.FlagSet) { addFlags(fs, relaySettings()) }

// LoadRelay reads the relay's configuration from defaults, the --config
// file, HOMEPORT_* environment variables and the flags in fs that were
// set, and validates it. A nil fs reads no flags.
func LoadRelay(fs *pflag.FlagSet) (Relay, error) {
	if fs == nil {
		fs = pflag.NewFlagSet("relay", pflag.ContinueOnError)
	}
	l, err := newLoader(fs, relaySettings(), append(agentSettings(), visitorSettings()...), "relay")
	if err != nil {
		return Relay{}, err
	}
	c := Relay{
		File:             l.file,
		DataDir:          l.str("data_dir"),
		Listen:           l.str("listen"),
		BindAddr:         l.str("bind_addr"),
		AllowPorts:       l.ports("allow_ports"),
		TLSCert:          l.str("tls_cert"),
		TLSKey:           l.str("tls_key"),
		Advertise:        l.str("advertise"),
		HTTPAddr:         l.str("http_addr"),
		HTTPSAddr:        l.str("https_addr"),
		HandshakeTimeout: l.duration("handshake_timeout", time.Second, 5*time.Minute),
		ShutdownTimeout:  l.duration("shutdown_timeout", 0, time.Hour),
		AccessLog:        l.bool("access_log"),
		QUIC:             l.bool("quic"),
		UDPFlowTimeout:   l.duration("udp_flow_timeout", time.Second, 24*time.Hour),
		UDPMaxFlows:      l.int("udp_max_flows", 1, 1<<20),
		MaxAgents:        l.int("max_agents", 1, maxAgents),
		MaxTunnels:       l.int("max_tunnels", 1, maxTunnels),
		PortReserve:      l.duration("port_reserve", 0, 7*24*time.Hour),
		Guard: Guard{
			MaxHandshakes:      l.int("agent_port.max_handshakes", 1, 1<<20),
			MaxHandshakesPerIP: l.int("agent_port.max_handshakes_per_ip", 1, 1<<20),
			AuthBanAfter:       l.int("agent_port.ban_after", 0, 1<<20),
			AuthBanFor:         l.duration("agent_port.ban_for", time.Second, 30*24*time.Hour),
			VisitorMaxConns:    l.int("visitors.max_conns_per_ip", 1, 1<<20),
			VisitorRate:        l.int("visitors.rate", 1, 1<<20),
			VisitorBurst:       l.int("visitors.burst", 1, 1<<20),
			VisitorBanAfter:    l.int("visitors.ban_after", 0, 1<<20),
			VisitorBanFor:      l.duration("visitors.ban_for", time.Second, 30*24*time.Hour),
		},
		Session:     l.session(),
		Log:         l.log(),
		DebugAddr:   l.debugAddr(),
		MetricsAddr: l.metricsAddr(),
		Dashboard:   l.dashboard(),
		ACME:        l.acme(),
	}
	if c.DataDir == "" {
		c.DataDir = DefaultDataDir()
	}
	if err := validHostPort(c.Listen); err != nil {
		l.fail("listen", err)
	}
	if err := validBindAddr(c.BindAddr); err != nil {
		l.fail("bind_addr", err)
	}
	for _, k := range []struct{ key, addr string }{{"http_addr", c.HTTPAddr}, {"https_addr", c.HTTPSAddr}} {
		if k.addr == "" {
			continue
		}
		if err := validHostPort(k.addr); err != nil {
			l.fail(k.key, err)
		}
	}
	if d := l.str("domain"); d != "" {
		var err error
		if c.Domain, err = NormalizeHost(d, false, false); err != nil {
			l.fail("domain", err)
		}
	}
	if (c.TLSCert == "") != (c.TLSKey == "") {
		l.fail("tls_cert", fmt.Errorf("tls_cert and tls_key go together: give both or neither"))
	}
	c.Tokens = l.tokens()
	c.Visitors = l.visitorKeys(c.Tokens)
	c.DDNS = l.ddns(ddnsRelay, nil)
	if err := l.err(); err != nil {
		return Relay{}, err
	}
	c.Warnings = l.warns
	return c, nil
}

// RelayDataDir returns the data directory that the flags in fs, the
// environment and the --config file name (or the default), without
// validating the rest of the configuration: enough for a command that
// talks to a running relay.
func RelayDataDir(fs *pflag.FlagSet) (string, error) {
	l, err := newLoader(fs, relaySettings(), append(agentSettings(), visitorSettings()...), "relay")
	if err != nil {
		return "", err
	}
	if d := l.str("data_dir"); d != "" {
		return d, nil
	}
	return DefaultDataDir(), nil
}

// Upper bounds of the quotas: one token may hold every port of both
// protocols, from as many agent ids.
const (
	maxAgents  = 1 << 16
	maxTunnels = 2 << 16
)

// tokens reads token (or token_file) and tokens. No token at all is fine
// (the relay then generates one), but a token that was given and is
// empty, short, an example's placeholder or a published example is an
// error, and so are two tokens that list the same port.
func (l *loader) tokens() []Token {
	var out []Token
	switch {
	case l.set("token") && l.set("token_file"):
		l.fail("token_file", fmt.Errorf("give token or token_file, not both"))
	case l.set("token"):
		secret := l.str("token")
		if err := checkSecret(secret); err != nil {
			l.fail("token", err)
		}
		out = append(out, Token{Name: "default", Secret: secret})
	case l.set("token_file"):
		secret := l.tokenFile("token_file", checkSecret)
		out = append(out, Token{Name: "default", Secret: secret, File: l.str("token_file")})
	}
	for i, item := range l.list("tokens") {
		m, err := section(item, "name", "secret", "secret_file", "ports", "hosts", "max_agents", "max_tunnels", "visit")
		if err != nil {
			l.fail("tokens", fmt.Errorf("item %d: %w", i+1, err))
			continue
		}
		t := Token{Name: fmt.Sprintf("token-%d", i+1)}
		if n, ok := m["name"]; ok {
			t.Name = fmt.Sprint(n)
		}
		where := fmt.Sprintf("item %d (%s)", i+1, t.Name)
		t.Secret, t.File = l.itemSecret("tokens", where, m)
		if v, ok := m["visit"]; ok {
			if t.Visit, err = boolValue(v); err != nil {
				l.fail("tokens", fmt.Errorf("%s: visit: %w", where, err))
			}
		}
		if p, ok := m["ports"]; ok {
			if t.Ports, err = portsValue(p); err != nil {
				l.fail("tokens", fmt.Errorf("%s: ports: %w", where, err))
			}
		}
		if h, ok := m["hosts"]; ok {
			items, err := textList(h, "want a list of host names, e.g. [nas.example.com, \"*.home.example.com\"]")
			if err != nil {
				l.fail("tokens", fmt.Errorf("%s: hosts: %w", where, err))
			}
			for _, it := range items {
				n, err := NormalizeHost(it, true, false)
				if err != nil {
					l.fail("tokens", fmt.Errorf("%s: hosts: %w", where, err))
					continue
				}
				t.Hosts = append(t.Hosts, n)
			}
		}
		for _, q := range []struct {
			key string
			hi  int
			v   *int
		}{{"max_agents", maxAgents, &t.MaxAgents}, {"max_tunnels", maxTunnels, &t.MaxTunnels}} {
			v, ok := m[q.key]
			if !ok {
				continue
			}
			n, err := strconv.Atoi(strings.TrimSpace(numText(v)))
			switch {
			case err != nil:
				l.fail("tokens", fmt.Errorf("item %d (%s): %s: %q: want a whole number", i+1, t.Name, q.key, numText(v)))
			case n < 1 || n > q.hi:
				l.fail("tokens", fmt.Errorf("item %d (%s): %s: %d is out of range: want 1 to %d", i+1, t.Name, q.key, n, q.hi))
			default:
				*q.v = n
			}
		}
		out = append(out, t)
	}
	for i, a := range out {
		for _, b := range out[i+1:] {
			if both := a.Ports.Intersect(b.Ports); len(both) > 0 {
				l.fail("tokens", fmt.Errorf("tokens %q and %q both list ports %s: a port listed for a token belongs to that token alone; list each port for one token only", a.Name, b.Name, both))
			}
		}
	}
	for i, a := range out {
		for _, b := range out[i+1:] {
			for _, x := range a.Hosts {
				for _, y := range b.Hosts {
					if hostsOverlap(x, y) {
						l.fail("tokens", fmt.Errorf("tokens %q and %q both claim host names (%q, %q): a host name listed for a token belongs to that token alone; list each name for one token only", a.Name, b.Name, x, y))
					}
				}
			}
		}
	}
	names, secrets := map[string]bool{}, map[string]bool{}
	for _, t := range out {
		if names[t.Name] {
			l.fail("tokens", fmt.Errorf("two tokens are named %q", t.Name))
		}
		if secrets[t.Secret] && t.Secret != "" {
			l.fail("tokens", fmt.Errorf("token %q has the same secret as another token", t.Name))
		}
		names[t.Name], secrets[t.Secret] = true, true
	}
	return out
}

// checkSecret checks a secret the relay is to accept.
func checkSecret(s string) error {
	switch {
	case s == "":
		return fmt.Errorf("empty; the relay refuses to run with an empty token (leave it unset to have one generated)")
	case len(s) < MinSecretLen && !IsPlaceholder(s):
		return fmt.Errorf("shorter than %d characters; use a long random string, or leave it unset to have one generated", MinSecretLen)
	}
	return checkExample(s, relayTokenAdvice)
}

// LocateFlags registers the flags that find a running relay's data
// directory (--config, --data-dir) on fs, for commands such as status.
func LocateFlags(fs *pflag.FlagSet) {
	var ss []setting
	for _, s := range relaySettings() {
		if s.key == "data_dir" {
			ss = append(ss, s)
		}
	}
	addFlags(fs, ss)
}
