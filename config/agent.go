package config

import (
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/spf13/pflag"
)

func agentSettings() []setting {
	s := []setting{
		{key: "relay", flag: "relay", short: "r", kind: kString, usage: "relay's agent address, HOST:PORT"},
		{key: "data_dir", flag: "data-dir", kind: kString, usage: "directory of the agent's control socket, for agent status (default " + DefaultDataDir() + ")"},
		{key: "transport", flag: "transport", kind: kString, def: "auto", usage: "how to reach the relay: quic, tcp (TLS over TCP), or auto (QUIC, falling back to TCP when UDP is blocked)"},
		{key: "token", flag: "token", short: "t", kind: kString, usage: "token the relay printed; HOMEPORT_TOKEN or --token-file keep it out of the process list"},
		{key: "token_file", flag: "token-file", kind: kString, usage: "file that holds the token, instead of --token"},
		{key: "fingerprint", flag: "fingerprint", short: "f", kind: kString, usage: "relay key fingerprint the relay printed (sha256:...)"},
		{key: "ca_file", flag: "ca-file", kind: kString, usage: "verify the relay by this PEM CA instead of a fingerprint"},
		{key: "server_name", flag: "server-name", kind: kString, usage: "name in the relay's certificate, with --ca-file (default: the relay host)"},
		{key: "id", flag: "id", kind: kString, usage: "this agent's name; a new session with the same id replaces the old one (default: host name)"},
		{key: "tunnels", flag: "tunnel", short: "T", kind: kList, usage: "tunnel [NAME=]REMOTE_PORT:HOST:PORT, or a private one NAME=private:[PORT:]HOST:PORT; repeatable"},
		{key: "dial_timeout", flag: "dial-timeout", kind: kDuration, def: "5s", usage: "time to connect to a tunnel's target"},
		{key: "handshake_timeout", flag: "handshake-timeout", kind: kDuration, def: "10s", usage: "time to connect and authenticate to the relay"},
		{key: "reconnect_max", flag: "reconnect-max", kind: kDuration, def: "30s", usage: "longest wait between reconnect attempts"},
		{key: "access_log", flag: "access-log", kind: kBool, def: "false", usage: "log every tunneled connection"},
		{key: "wake", flag: "wake", kind: kList, usage: "wake a sleeping target by Wake-on-LAN when a visitor comes and it does not answer: MAC (with one TCP tunnel) or NAME=MAC; repeatable"},
		{key: "wake_time", flag: "wake-time", kind: kDuration, def: "60s", usage: "how long to keep waking a target and dialing it before the visitor is refused"},
		ddnsSetting(),
	}
	return append(append(append(s, sessionSettings()...), logSettings()...), debugSettings()...)
}

// AgentFlags registers the agent's flags on fs.
func AgentFlags(fs *pflag.FlagSet) { addFlags(fs, agentSettings()) }

// LoadAgent reads the agent's configuration from defaults, the --config
// file, HOMEPORT_* environment variables and the flags in fs that were
// set, and validates it. A nil fs reads no flags.
func LoadAgent(fs *pflag.FlagSet) (Agent, error) {
	if fs == nil {
		fs = pflag.NewFlagSet("agent", pflag.ContinueOnError)
	}
	l, err := newLoader(fs, agentSettings(), append(relaySettings(), visitorSettings()...), "agent")
	if err != nil {
		return Agent{}, err
	}
	c := Agent{
		File:             l.file,
		DataDir:          cmp.Or(l.str("data_dir"), DefaultDataDir()),
		Token:            l.str("token"),
		CAFile:           l.str("ca_file"),
		ServerName:       l.str("server_name"),
		DialTimeout:      l.duration("dial_timeout", 100*time.Millisecond, 5*time.Minute),
		HandshakeTimeout: l.duration("handshake_timeout", time.Second, 5*time.Minute),
		ReconnectMax:     l.duration("reconnect_max", time.Second, time.Hour),
		AccessLog:        l.bool("access_log"),
		WakeTime:         l.duration("wake_time", time.Second, MaxWakeTime),
		Session:          l.session(),
		Log:              l.log(),
		DebugAddr:        l.debugAddr(),
		MetricsAddr:      l.metricsAddr(),
	}
	switch {
	case c.Token != "" && l.str("token_file") != "":
		l.fail("token_file", fmt.Errorf("give token or token_file, not both"))
	case l.str("token_file") != "":
		c.Token = l.tokenFile("token_file", checkAgentToken)
	case c.Token != "":
		if err := checkAgentToken(c.Token); err != nil {
			l.fail("token", err)
		}
	}
	rl := l.relayLink(agentSecret, c.Token, c.Token != "" || l.str("token_file") != "", "the relay prints the whole command on its first start", "agent")
	c.ID, c.Relays = rl.ID, rl.Relays
	if len(c.Relays) > 0 {
		r := c.Relays[0]
		c.Relay, c.Fingerprint, c.CAFile, c.ServerName, c.Transport, c.Token = r.Address, r.Fingerprint, r.CAFile, r.ServerName, r.Transport, r.Secret
	}
	c.Tunnels = l.tunnels()
	l.applyWakeFlags(c.Tunnels)
	c.DDNS = l.ddns(ddnsAgent, c.Tunnels)
	if err := l.err(); err != nil {
		return Agent{}, err
	}
	c.Warnings = l.warns
	return c, nil
}

// agentSecret is what an agent proves to a relay.
var agentSecret = secretKind{key: "token", check: checkAgentToken,
	missing: "missing: give the token the relay printed (HOMEPORT_TOKEN or --token-file keep it out of the process list; --token puts it there)"}

// checkAgentToken checks the agent's token.
func checkAgentToken(s string) error {
	if len(s) < MinSecretLen && !IsPlaceholder(s) {
		return fmt.Errorf("shorter than %d characters, so no relay accepts it; copy the whole token the relay printed", MinSecretLen)
	}
	return checkExample(s, agentTokenAdvice)
}

// AgentDDNS is the configuration of "agent ddns", which runs only the
// dynamic DNS updater: the ddns section and the log settings of the
// agent's configuration.
type AgentDDNS struct {
	DDNS *DDNS // never nil
	Log  Log
}

// AgentDDNSFlags registers the flags of "agent ddns" on fs: --config and
// the log settings.
func AgentDDNSFlags(fs *pflag.FlagSet) { addFlags(fs, logSettings()) }

// LoadAgentDDNS reads the configuration of "agent ddns" from the same
// sources as LoadAgent. It reads only the ddns section, which it requires,
// and the log settings: the relay, the token and the tunnels are not
// needed, and other settings of the agent are accepted and ignored. The
// relay source cannot work without a session to the relay; sources
// default to http.
func LoadAgentDDNS(fs *pflag.FlagSet) (AgentDDNS, error) {
	if fs == nil {
		fs = pflag.NewFlagSet("agent ddns", pflag.ContinueOnError)
	}
	l, err := newLoader(fs, agentSettings(), append(relaySettings(), visitorSettings()...), "agent")
	if err != nil {
		return AgentDDNS{}, err
	}
	c := AgentDDNS{Log: l.log(), DDNS: l.ddns(ddnsStandalone, nil)}
	if c.DDNS == nil && len(l.errs) == 0 {
		where := "the config file"
		if l.file != "" {
			where = l.file
		}
		l.fail("ddns", fmt.Errorf("missing: agent ddns needs a ddns section in %s (--config FILE)", where))
	}
	if err := l.err(); err != nil {
		return AgentDDNS{}, err
	}
	return c, nil
}

// tunnels reads the tunnel list: spec strings, or sections with name,
// remote_port and target (and protocol).
func (l *loader) tunnels() []Tunnel {
	var out []Tunnel
	// A TCP and a UDP tunnel may share a port number (RDP uses 3389 on
	// both); two of one protocol may not. Private tunnels take no port.
	type protoPort struct {
		proto string
		port  uint16
	}
	seenName, seenPort, seenHost := map[string]bool{}, map[protoPort]string{}, map[string]string{}
	items := l.list("tunnels")
	for i, item := range items {
		var t Tunnel
		var err error
		if spec, ok := item.(string); ok {
			t, err = ParseTunnel(spec)
		} else {
			t, err = tunnelSection(item)
		}
		if err != nil {
			l.fail("tunnels", fmt.Errorf("item %d: %w", i+1, err))
			continue
		}
		if seenName[t.Name] {
			l.fail("tunnels", fmt.Errorf("two tunnels are named %q; give each its own NAME=", t.Name))
		}
		seenName[t.Name] = true
		out = append(out, t)
		if t.Web() {
			if other, ok := seenHost[t.Host]; ok {
				l.fail("tunnels", fmt.Errorf("tunnels %q and %q both serve host %q", other, t.Name, t.Host))
			}
			seenHost[t.Host] = t.Name
			continue // no port: served by host name
		}
		if t.Private {
			continue // no public port; its port is only a suggestion to visitors
		}
		pp := protoPort{t.Protocol, t.RemotePort}
		if other, ok := seenPort[pp]; ok {
			l.fail("tunnels", fmt.Errorf("tunnels %q and %q both use remote %s port %d", other, t.Name, t.Protocol, t.RemotePort))
		}
		seenPort[pp] = t.Name
	}
	if len(items) == 0 {
		l.fail("tunnels", fmt.Errorf("none: give at least one, e.g. --tunnel 3390:127.0.0.1:3389"))
	}
	if len(items) > MaxTunnels {
		l.fail("tunnels", fmt.Errorf("%d tunnels: one agent may have at most %d", len(items), MaxTunnels))
	}
	return out
}

func tunnelSection(item any) (Tunnel, error) {
	m, err := section(item, "name", "protocol", "remote_port", "target", "allow", "deny", "proxy_protocol", "private", "visitors", "port_mapping", "wake", "host", "auth", "auth_file")
	if err != nil {
		return Tunnel{}, err
	}
	t := Tunnel{Protocol: "tcp"}
	if p, ok := m["protocol"]; ok {
		t.Protocol = strings.ToLower(fmt.Sprint(p))
	}
	if v, ok := m["private"]; ok {
		switch strings.ToLower(strings.TrimSpace(numText(v))) {
		case "true", "yes", "on", "1":
			t.Private = true
		case "false", "no", "off", "0":
		default:
			return Tunnel{}, fmt.Errorf("private: %q: want true or false", numText(v))
		}
	}
	if _, ok := m["name"]; !ok && t.Private {
		return Tunnel{}, fmt.Errorf("name missing: a private tunnel needs one, by which visitors reach it")
	}
	if v, ok := m["visitors"]; ok {
		if t.Visitors, err = visitorKeyNames(v); err != nil {
			return Tunnel{}, fmt.Errorf("visitors: %w", err)
		}
	}
	if rp, ok := m["remote_port"]; ok {
		if t.RemotePort, err = parsePort(numText(rp)); err != nil {
			return Tunnel{}, fmt.Errorf("remote_port: %w", err)
		}
	}
	t.Target, _ = m["target"].(string)
	if h, ok := m["host"]; ok {
		t.Host = fmt.Sprint(h)
	}
	if a, ok := m["auth"]; ok {
		t.Auth = fmt.Sprint(a)
	}
	if f, ok := m["auth_file"]; ok {
		if t.Auth != "" {
			return Tunnel{}, fmt.Errorf("auth_file: give auth or auth_file, not both")
		}
		a, _, err := readSecretFile(strings.TrimSpace(fmt.Sprint(f)))
		if err != nil {
			return Tunnel{}, fmt.Errorf("auth_file: %w", err)
		}
		if err := checkWebAuth(a); err != nil {
			return Tunnel{}, fmt.Errorf("auth_file: the credentials in %s: %w", f, err)
		}
		t.Auth = a
	}
	if n, ok := m["name"]; ok {
		t.Name = fmt.Sprint(n)
	}
	if t.Web() {
		if t.Host == "" {
			return Tunnel{}, fmt.Errorf("host missing: a web tunnel needs the host name it serves, e.g. host: nas.example.com")
		}
		if err := t.normalizeWeb(); err != nil {
			return Tunnel{}, err
		}
	} else if t.Name == "" && t.RemotePort != 0 {
		t.Name = fmt.Sprintf("%s-%d", t.Protocol, t.RemotePort)
	}
	for _, k := range []struct {
		key string
		dst *[]netip.Prefix
	}{{"allow", &t.Allow}, {"deny", &t.Deny}} {
		if v, ok := m[k.key]; ok {
			if *k.dst, err = prefixList(v); err != nil {
				return Tunnel{}, fmt.Errorf("%s: %w", k.key, err)
			}
		}
	}
	if v, ok := m["proxy_protocol"]; ok {
		t.ProxyProtocol = strings.ToLower(fmt.Sprint(v))
	}
	if v, ok := m["port_mapping"]; ok {
		if t.PortMapping, err = portMappingValue(v); err != nil {
			return Tunnel{}, fmt.Errorf("port_mapping: %w", err)
		}
	}
	if v, ok := m["wake"]; ok {
		if t.Wake, err = parseWake(v); err != nil {
			return Tunnel{}, fmt.Errorf("tunnel %q: wake: %w", t.Name, err)
		}
		if t.Protocol != "tcp" {
			return Tunnel{}, fmt.Errorf("tunnel %q: wake: the tunnel is UDP; waking is for TCP tunnels", t.Name)
		}
	}
	if err := t.validate(); err != nil {
		return Tunnel{}, err
	}
	return t, nil
}

// portMappingValue reads a tunnel's port_mapping: true or false, or a
// section with external and methods.
func portMappingValue(v any) (*PortMapping, error) {
	if _, isMap := v.(map[string]any); !isMap {
		switch strings.ToLower(strings.TrimSpace(numText(v))) {
		case "true", "yes", "on", "1":
			return &PortMapping{}, nil
		case "false", "no", "off", "0":
			return nil, nil
		}
		return nil, fmt.Errorf("%q: want true, false, or a section with external and methods", numText(v))
	}
	m, err := section(v, "external", "methods")
	if err != nil {
		return nil, err
	}
	pm := &PortMapping{}
	if e, ok := m["external"]; ok {
		if pm.External, err = parsePort(numText(e)); err != nil {
			return nil, fmt.Errorf("external: %w", err)
		}
	}
	if ms, ok := m["methods"]; ok {
		if pm.Methods, err = textList(ms, "want a list, e.g. [pcp, upnp]"); err != nil {
			return nil, fmt.Errorf("methods: %w", err)
		}
		for _, name := range pm.Methods {
			switch strings.ToLower(name) {
			case "pcp", "nat-pmp", "upnp":
			default:
				return nil, fmt.Errorf("methods: %q: want pcp, nat-pmp or upnp", name)
			}
		}
	}
	return pm, nil
}

// visitorKeyNames reads names of visitor keys, as a list or one
// comma-separated string; validate checks them.
func visitorKeyNames(v any) ([]string, error) {
	return textList(v, "want a list of names, e.g. [laptop, phone]")
}

// textList reads a list of words from a file: a list, or one
// comma-separated string; each item trimmed, empty ones left out (nil:
// none). want says what is wanted, for any other value.
func textList(v any, want string) ([]string, error) {
	var items []string
	switch v := v.(type) {
	case string:
		items = strings.Split(v, ",")
	case []any:
		for _, x := range v {
			items = append(items, numText(x))
		}
	case []string:
		items = v
	default:
		return nil, errors.New(want)
	}
	var out []string
	for _, it := range items {
		if it = strings.TrimSpace(it); it != "" {
			out = append(out, it)
		}
	}
	return out, nil
}

// prefixList reads networks: CIDRs ("192.0.2.0/24", "2001:db8::/32") or
// single addresses, as a list or one comma-separated string.
func prefixList(v any) ([]netip.Prefix, error) {
	items, err := textList(v, `want a list of networks, e.g. [192.0.2.0/24, "2001:db8::/32"]`)
	if err != nil {
		return nil, err
	}
	var out []netip.Prefix
	for _, it := range items {
		p, err := netip.ParsePrefix(it)
		if err != nil {
			a, aerr := netip.ParseAddr(it)
			if aerr != nil {
				return nil, fmt.Errorf("%q: want a network like 192.0.2.0/24 or an address", it)
			}
			p = netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen())
		}
		out = append(out, p.Masked())
	}
	if len(out) > MaxPrefixes {
		return nil, fmt.Errorf("%d networks: at most %d", len(out), MaxPrefixes)
	}
	return out, nil
}

// AgentDataDir returns the data directory that the flags in fs, the
// environment and the --config file name (or the default), without
// validating the rest of the configuration: enough for a command that
// talks to a running agent.
func AgentDataDir(fs *pflag.FlagSet) (string, error) {
	l, err := newLoader(fs, agentSettings(), append(relaySettings(), visitorSettings()...), "agent")
	if err != nil {
		return "", err
	}
	return cmp.Or(l.str("data_dir"), DefaultDataDir()), nil
}

// relayLink is what the agent and the visitor share to reach their
// relays: the relays list, or the single relay of the relay, fingerprint
// (or ca_file) and transport settings; and this end's id.
type relayLink struct {
	Relays []RelayEndpoint
	ID     string
}

// relayLink reads and checks the relays (see relayLink), with the
// top-level secret (token or key, already read and checked: "" if none,
// or if it was wrong, which secretGiven tells apart) as the default of
// the list's items and the single relay's. whereFrom says
// where the whole command is printed, for the error of a missing relay;
// fallbackID is the id when the host name is unknown.
func (l *loader) relayLink(sk secretKind, secret string, secretGiven bool, whereFrom, fallbackID string) relayLink {
	rl := relayLink{ID: l.str("id")}
	transport := strings.ToLower(l.str("transport"))
	switch transport {
	case TransportAuto, TransportTCP, TransportQUIC:
	default:
		l.fail("transport", fmt.Errorf("%q: want auto, tcp or quic", transport))
	}
	// A program without the relays setting reads the single relay only.
	_, several := l.byKey["relays"]
	if several {
		rl.Relays = l.relayList(sk, secret, secretGiven, transport)
	}
	if !several || rl.Relays == nil && len(l.list("relays")) == 0 {
		rl.Relays = l.singleRelay(sk, secret, secretGiven, transport, whereFrom)
	}
	if rl.ID == "" {
		var err error
		if rl.ID, err = os.Hostname(); err != nil || rl.ID == "" {
			rl.ID = fallbackID
		}
	}
	if len(rl.ID) > 128 {
		l.fail("id", fmt.Errorf("%q is longer than 128 bytes", rl.ID))
	}
	return rl
}

// singleRelay reads the relay given by the relay, fingerprint (or ca_file
// and server_name) settings; nil when they are wrong.
func (l *loader) singleRelay(sk secretKind, secret string, secretGiven bool, transport, whereFrom string) []RelayEndpoint {
	r := RelayEndpoint{Address: l.str("relay"), CAFile: l.str("ca_file"), ServerName: l.str("server_name"), Transport: transport, Secret: secret}
	bad := len(l.errs)
	if r.Address == "" {
		l.fail("relay", fmt.Errorf("missing: give the relay's address, e.g. --relay vps.example.com:7000 (%s)", whereFrom))
	} else if err := checkRelayAddress(r.Address); err != nil {
		l.fail("relay", err)
	}
	if fp := l.str("fingerprint"); IsPlaceholder(fp) {
		l.fail("fingerprint", fmt.Errorf("%q %w: put the fingerprint the relay printed there (sha256: and 64 hex digits)", fp, ErrPlaceholder))
	} else if fp != "" {
		var err error
		if r.Fingerprint, err = NormalizeFingerprint(fp); err != nil {
			l.fail("fingerprint", err)
		}
	}
	switch {
	case r.Fingerprint == "" && r.CAFile == "" && l.str("fingerprint") == "":
		l.fail("fingerprint", fmt.Errorf("missing: give the fingerprint the relay printed (or ca_file to verify the relay by a CA)"))
	case l.str("fingerprint") != "" && r.CAFile != "":
		l.fail("ca_file", fmt.Errorf("give either fingerprint or ca_file, not both"))
	case r.ServerName != "" && r.CAFile == "":
		l.fail("server_name", fmt.Errorf("only used with ca_file; a fingerprint pins the key whatever the name"))
	}
	if !secretGiven {
		l.fail(sk.key, errors.New(sk.missing))
	}
	if len(l.errs) > bad {
		return nil
	}
	return []RelayEndpoint{r}
}
