package config

import (
	"fmt"
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
		{key: "tokens", kind: kFile, usage: "several tokens, each with a name and optional ports (config file only)"},
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
	s = append(s, dashboardSettings()...)
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
	l, err := newLoader(fs, relaySettings(), agentSettings(), "relay")
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
		HandshakeTimeout: l.duration("handshake_timeout", time.Second, 5*time.Minute),
		ShutdownTimeout:  l.duration("shutdown_timeout", 0, time.Hour),
		AccessLog:        l.bool("access_log"),
		QUIC:             l.bool("quic"),
		UDPFlowTimeout:   l.duration("udp_flow_timeout", time.Second, 24*time.Hour),
		UDPMaxFlows:      l.int("udp_max_flows", 1, 1<<20),
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
		Session:   l.session(),
		Log:       l.log(),
		DebugAddr: l.debugAddr(),
		Dashboard: l.dashboard(),
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
	if (c.TLSCert == "") != (c.TLSKey == "") {
		l.fail("tls_cert", fmt.Errorf("tls_cert and tls_key go together: give both or neither"))
	}
	c.Tokens = l.tokens()
	c.DDNS = l.ddns(ddnsRelay)
	if err := l.err(); err != nil {
		return Relay{}, err
	}
	return c, nil
}

// RelayDataDir returns the data directory that the flags in fs, the
// environment and the --config file name (or the default), without
// validating the rest of the configuration: enough for a command that
// talks to a running relay.
func RelayDataDir(fs *pflag.FlagSet) (string, error) {
	l, err := newLoader(fs, relaySettings(), agentSettings(), "relay")
	if err != nil {
		return "", err
	}
	if d := l.str("data_dir"); d != "" {
		return d, nil
	}
	return DefaultDataDir(), nil
}

// tokens reads token and tokens. No token at all is fine (the relay then
// generates one), but a token that was given and is empty is an error.
func (l *loader) tokens() []Token {
	var out []Token
	if l.set("token") {
		secret := l.str("token")
		if err := checkSecret(secret); err != nil {
			l.fail("token", err)
		}
		out = append(out, Token{Name: "default", Secret: secret})
	}
	for i, item := range l.list("tokens") {
		m, err := section(item, "name", "secret", "ports")
		if err != nil {
			l.fail("tokens", fmt.Errorf("item %d: %w", i+1, err))
			continue
		}
		t := Token{Name: fmt.Sprintf("token-%d", i+1)}
		if n, ok := m["name"]; ok {
			t.Name = fmt.Sprint(n)
		}
		s, _ := m["secret"].(string)
		if err := checkSecret(s); err != nil {
			l.fail("tokens", fmt.Errorf("item %d (%s): secret: %w", i+1, t.Name, err))
		}
		t.Secret = s
		if p, ok := m["ports"]; ok {
			if t.Ports, err = portsValue(p); err != nil {
				l.fail("tokens", fmt.Errorf("item %d (%s): ports: %w", i+1, t.Name, err))
			}
		}
		out = append(out, t)
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

func checkSecret(s string) error {
	switch {
	case s == "":
		return fmt.Errorf("empty; the relay refuses to run with an empty token (leave it unset to have one generated)")
	case len(s) < MinSecretLen:
		return fmt.Errorf("shorter than %d characters; use a long random string, or leave it unset to have one generated", MinSecretLen)
	}
	return nil
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
