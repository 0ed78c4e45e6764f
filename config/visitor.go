package config

import (
	"cmp"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/spf13/pflag"
)

// Visitor is the validated configuration of a visitor ("agent visit"): the
// laptop side of private tunnels. It logs in to the relay with a visitor
// key and carries the connections to its local listeners to private
// tunnels.
type Visitor struct {
	// File is the configuration file read, "" for none.
	File string
	// DataDir is the directory of the visitor's files.
	DataDir string
	// Relays are the relays the visitor keeps a session to, in the order
	// connections try them: the relays list, or the one relay of the
	// settings below. visitor.New makes it from those when it is empty.
	Relays []RelayEndpoint
	// Relay is the (first) relay's agent address, host:port; it and
	// Transport, Key, Fingerprint, CAFile and ServerName repeat Relays[0].
	Relay string
	// Transport is how the visitor reaches the relay: TransportAuto (the
	// default), TransportTCP or TransportQUIC.
	Transport string
	// Key is the visitor key (key, or read from key_file).
	Key string
	// Fingerprint pins the relay's public key ("sha256:<hex>").
	Fingerprint string
	// CAFile and ServerName verify the relay by a CA instead of a pin.
	CAFile, ServerName string
	// ID names this visitor at the relay (logs, status). Default: the
	// host name.
	ID string
	// Visits are the private tunnels reached and where each listens.
	Visits []Visit
	// HandshakeTimeout bounds connecting and authenticating to the relay,
	// and how long a local connection waits for a session.
	HandshakeTimeout time.Duration
	// ReconnectMax caps the reconnect backoff.
	ReconnectMax time.Duration
	// Session holds the multiplexer settings.
	Session Session
	// Log selects level and format of the process log.
	Log Log
	// Warnings are problems that do not stop the visitor, for its log.
	Warnings []Warning
}

// Visit is one private tunnel reached through a local listener.
type Visit struct {
	// Tunnel is the private tunnel's name, as its home agent registered it.
	Tunnel string
	// Protocol is "tcp" or "udp".
	Protocol string
	// Listen is the local address, host:port, connections come to.
	Listen string
}

// String describes the visit for logs.
func (v Visit) String() string {
	if v.Protocol == "udp" {
		return fmt.Sprintf("%s (udp) on %s", v.Tunnel, v.Listen)
	}
	return fmt.Sprintf("%s on %s", v.Tunnel, v.Listen)
}

func visitorSettings() []setting {
	s := []setting{
		{key: "relay", flag: "relay", short: "r", kind: kString, usage: "relay's agent address, HOST:PORT"},
		{key: "data_dir", flag: "data-dir", kind: kString, usage: "directory of the visitor's files (default " + DefaultDataDir() + ")"},
		{key: "transport", flag: "transport", kind: kString, def: "tcp", usage: "how to reach the relay: tcp (TLS over TCP), quic (at most 16 connections and UDP flows at once), or auto (QUIC, falling back to TCP when UDP is blocked)"},
		{key: "key", flag: "key", kind: kString, usage: "visitor key the relay printed; HOMEPORT_KEY or --key-file keep it out of the process list"},
		{key: "key_file", flag: "key-file", kind: kString, usage: "file that holds the visitor key, instead of --key"},
		{key: "fingerprint", flag: "fingerprint", short: "f", kind: kString, usage: "relay key fingerprint the relay printed (sha256:...)"},
		{key: "ca_file", flag: "ca-file", kind: kString, usage: "verify the relay by this PEM CA instead of a fingerprint"},
		{key: "server_name", flag: "server-name", kind: kString, usage: "name in the relay's certificate, with --ca-file (default: the relay host)"},
		{key: "id", flag: "id", kind: kString, usage: "this visitor's name, shown at the relay (default: host name)"},
		relaysSetting("key"),
		{key: "visits", kind: kFile, usage: "private tunnels to reach: a list of {tunnel, protocol, listen} (config file only; on the command line: TUNNEL --listen)"},
		{key: "handshake_timeout", flag: "handshake-timeout", kind: kDuration, def: "10s", usage: "time to connect and authenticate to the relay; also how long a local connection waits for the session"},
		{key: "reconnect_max", flag: "reconnect-max", kind: kDuration, def: "30s", usage: "longest wait between reconnect attempts"},
	}
	return append(append(s, sessionSettings()...), logSettings()...)
}

// Flags of the command line's single visit, "agent visit TUNNEL --listen
// HOST:PORT [--udp]"; a config file's visits list takes their place.
const (
	visitListenFlag = "listen"
	visitUDPFlag    = "udp"
)

// VisitorFlags registers the visitor's flags on fs.
func VisitorFlags(fs *pflag.FlagSet) {
	addFlags(fs, visitorSettings())
	fs.StringP(visitListenFlag, "l", "", "local address to listen on for the tunnel given as argument, HOST:PORT (e.g. 127.0.0.1:3390)")
	fs.Bool(visitUDPFlag, false, "the tunnel given as argument is a UDP tunnel")
}

// VisitorSettings lists the visitor's settings.
func VisitorSettings() []Setting { return describe(visitorSettings()) }

// otherThanVisitor are the settings of the relay and the agent: an
// environment or a file may hold them without being wrong for the visitor.
func otherThanVisitor() []setting { return append(agentSettings(), relaySettings()...) }

// LoadVisitor reads the visitor's configuration from defaults, the
// --config file, HOMEPORT_* environment variables and the flags in fs that
// were set (and its argument, the tunnel of a single visit), and validates
// it. A nil fs reads no flags.
func LoadVisitor(fs *pflag.FlagSet) (Visitor, error) {
	if fs == nil {
		fs = pflag.NewFlagSet("visitor", pflag.ContinueOnError)
	}
	l, err := newLoader(fs, visitorSettings(), otherThanVisitor(), "visitor")
	if err != nil {
		return Visitor{}, err
	}
	c := Visitor{
		File:             l.file,
		DataDir:          cmp.Or(l.str("data_dir"), DefaultDataDir()),
		Key:              l.str("key"),
		CAFile:           l.str("ca_file"),
		ServerName:       l.str("server_name"),
		HandshakeTimeout: l.duration("handshake_timeout", time.Second, 5*time.Minute),
		ReconnectMax:     l.duration("reconnect_max", time.Second, time.Hour),
		Session:          l.session(),
		Log:              l.log(),
	}
	switch {
	case c.Key != "" && l.str("key_file") != "":
		l.fail("key_file", fmt.Errorf("give key or key_file, not both"))
	case l.str("key_file") != "":
		c.Key = l.tokenFile("key_file", checkVisitorKey)
	case c.Key != "":
		if err := checkVisitorKey(c.Key); err != nil {
			l.fail("key", err)
		} else if l.flag("key") != nil {
			l.warns = append(l.warns, Warning{
				Msg:     "the visitor key is in the process list, where other users of this machine can read it",
				Setting: l.where("key"),
				Fix:     "give it by HOMEPORT_KEY or --key-file instead",
			})
		}
	}
	rl := l.relayLink(visitorSecret, c.Key, c.Key != "" || l.str("key_file") != "", "on the relay, relay status prints the whole visit command", "visitor")
	c.ID, c.Relays = rl.ID, rl.Relays
	if len(c.Relays) > 0 {
		r := c.Relays[0]
		c.Relay, c.Fingerprint, c.CAFile, c.ServerName, c.Transport, c.Key = r.Address, r.Fingerprint, r.CAFile, r.ServerName, r.Transport, r.Secret
	}
	c.Visits = l.visits()
	if err := l.err(); err != nil {
		return Visitor{}, err
	}
	c.Warnings = l.warns
	return c, nil
}

// Advice for a visitor key that cannot be used.
const visitorKeyAdvice = "put the relay's visitor key there: the one it printed with the visit command, or the one in its configuration or its data directory's visitor.key file"

// visitorSecret is what a visitor proves to a relay.
var visitorSecret = secretKind{key: "key", check: checkVisitorKey,
	missing: "missing: give the visitor key the relay printed (HOMEPORT_KEY or --key-file keep it out of the process list; --key puts it there)"}

// checkVisitorKey checks the visitor's key as the agent's token is
// checked.
func checkVisitorKey(s string) error {
	if len(s) < MinSecretLen && !IsPlaceholder(s) {
		return fmt.Errorf("shorter than %d characters, so no relay accepts it; copy the whole visitor key the relay printed", MinSecretLen)
	}
	return checkExample(s, visitorKeyAdvice)
}

// visits reads the visits: the file's list, or the command line's single
// visit (the argument TUNNEL with --listen and --udp).
func (l *loader) visits() []Visit {
	var args []string
	var listen string
	var udp bool
	if l.fs != nil {
		args = l.fs.Args()
		if f := l.fs.Lookup(visitListenFlag); f != nil {
			listen = strings.TrimSpace(f.Value.String())
		}
		if f := l.fs.Lookup(visitUDPFlag); f != nil {
			udp = f.Value.String() == "true"
		}
	}
	items := l.list("visits")
	switch {
	case len(args) > 1:
		l.fail("visits", fmt.Errorf("arguments %q: give one tunnel on the command line (a config file's visits list for several)", args))
		return nil
	case len(args) == 1 && len(items) > 0:
		l.fail("visits", fmt.Errorf("give the tunnel %q on the command line or a visits list in the config file, not both", args[0]))
		return nil
	case len(args) == 0 && (listen != "" || udp):
		if len(items) > 0 {
			l.fail("visits", fmt.Errorf("--listen and --udp are for the tunnel given on the command line; each item of visits has its own listen and protocol"))
		} else {
			l.fail("visits", fmt.Errorf("--listen %q: name the tunnel too, e.g. agent visit rdp --listen 127.0.0.1:3390", listen))
		}
		return nil
	case len(args) == 1:
		v := Visit{Tunnel: args[0], Protocol: "tcp", Listen: listen}
		if udp {
			v.Protocol = "udp"
		}
		if listen == "" {
			l.errs = append(l.errs, fmt.Errorf("flag --listen: missing: give the local address for tunnel %q, e.g. --listen 127.0.0.1:3390", v.Tunnel))
			return nil
		}
		if err := v.validate(); err != nil {
			l.errs = append(l.errs, fmt.Errorf("tunnel %q (argument) with flag --listen: %w", v.Tunnel, err))
			return nil
		}
		l.warnListen(v, "flag --listen")
		return []Visit{v}
	case len(items) == 0:
		l.fail("visits", fmt.Errorf("none: give a tunnel and a local address, e.g. agent visit rdp --listen 127.0.0.1:3390, or a visits list in the config file"))
		return nil
	case len(items) > MaxTunnels:
		l.fail("visits", fmt.Errorf("%d visits: at most %d", len(items), MaxTunnels))
		return nil
	}
	var out []Visit
	// One listener per protocol and address.
	seen := map[string]int{}
	for i, item := range items {
		v, err := visitSection(item)
		if err != nil {
			l.fail("visits", fmt.Errorf("item %d: %w", i+1, err))
			continue
		}
		k := v.Protocol + " " + v.Listen
		if j, dup := seen[k]; dup {
			l.fail("visits", fmt.Errorf("item %d (tunnel %q): listen %q: item %d listens there already (%s)", i+1, v.Tunnel, v.Listen, j, v.Protocol))
			continue
		}
		seen[k] = i + 1
		l.warnListen(v, fmt.Sprintf("%s: item %d", l.where("visits"), i+1))
		out = append(out, v)
	}
	return out
}

// warnListen warns of a visit whose listener other machines can reach:
// they then reach the private tunnel, without any key.
func (l *loader) warnListen(v Visit, where string) {
	host, _, _ := net.SplitHostPort(v.Listen)
	if a, err := netip.ParseAddr(host); host == "localhost" || err == nil && a.IsLoopback() {
		return
	}
	l.warns = append(l.warns, Warning{
		Msg:     fmt.Sprintf("tunnel %q listens on %s, which other machines may reach: they would reach the tunnel without a key", v.Tunnel, v.Listen),
		Setting: where,
		Fix:     "listen on 127.0.0.1 unless other machines are meant to use the tunnel",
	})
}

func visitSection(item any) (Visit, error) {
	m, err := section(item, "tunnel", "protocol", "listen")
	if err != nil {
		return Visit{}, err
	}
	v := Visit{Protocol: "tcp"}
	for k, x := range m {
		switch strings.ToLower(k) {
		case "tunnel":
			v.Tunnel = strings.TrimSpace(fmt.Sprint(x))
		case "protocol":
			v.Protocol = strings.ToLower(strings.TrimSpace(fmt.Sprint(x)))
		case "listen":
			v.Listen = strings.TrimSpace(numText(x))
		}
	}
	if v.Tunnel == "" {
		return Visit{}, fmt.Errorf("tunnel: missing: name the private tunnel, as its home agent calls it")
	}
	if err := v.validate(); err != nil {
		return Visit{}, fmt.Errorf("tunnel %q: %w", v.Tunnel, err)
	}
	return v, nil
}

func (v Visit) validate() error {
	if len(v.Tunnel) > maxNameLen {
		return fmt.Errorf("name is longer than %d bytes", maxNameLen)
	}
	for _, r := range v.Tunnel {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.') {
			return fmt.Errorf("name: use A-Z, a-z, 0-9, '-', '_' and '.'")
		}
	}
	if v.Protocol != "tcp" && v.Protocol != "udp" {
		return fmt.Errorf("protocol %q: want tcp or udp", v.Protocol)
	}
	if v.Listen == "" {
		return fmt.Errorf("listen: missing: give the local address to listen on, e.g. 127.0.0.1:3390")
	}
	_, port, err := net.SplitHostPort(v.Listen)
	if err != nil {
		return fmt.Errorf("listen %q: want HOST:PORT, e.g. 127.0.0.1:3390 (IPv6 in brackets, [::1]:3390)", v.Listen)
	}
	if _, err := parsePort(port); err != nil {
		return fmt.Errorf("listen %q: %w", v.Listen, err)
	}
	return nil
}
