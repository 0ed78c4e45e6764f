package main

import (
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"

	"github.com/homeport/homeport/config"
	"github.com/homeport/homeport/relay"
)

// banner is what the relay tells the operator once it listens: where
// agents connect and the agent command to run.
type banner struct {
	listen      string // the agent port's address
	quic        bool
	fingerprint string
	relayAddr   string // host:port agents dial
	host        string // host for the example client
	guessed     bool   // host is a guess from the interfaces
	// token is the generated token, shown only on the start that
	// generated it and only to a terminal; "" shows a placeholder.
	token string
	// tokenFile is where the generated token is kept; "" when tokens
	// come from the configuration.
	tokenFile string
	// notShown says why the generated token is not shown.
	notShown string
	// configured counts the tokens of the configuration, and files
	// lists the files among them.
	configured int
	files      []string
	// visitKey is the generated visitor key, shown like token; keyFile
	// is where it is kept ("" when visitor keys come from the
	// configuration, of which there are visitorKeys).
	visitKey    string
	keyFile     string
	visitorKeys int
}

// newBanner gathers the banner of a relay with configuration cfg and
// identity id, listening on listen. terminal reports whether standard
// output, where the banner goes, is a terminal: the token is shown on the
// start that generated it, and then only there, so that it never lands in
// a log, a journal or a file that standard output was sent to.
func newBanner(cfg config.Relay, id relay.Identity, listen net.Addr, terminal bool) banner {
	port := 7000
	if ta, ok := listen.(*net.TCPAddr); ok {
		port = ta.Port
	}
	b := banner{listen: listen.String(), quic: cfg.QUIC, fingerprint: id.Fingerprint}
	b.host, b.guessed = advertiseHost(cfg, listen)
	b.relayAddr = net.JoinHostPort(b.host, strconv.Itoa(port))
	if cfg.Advertise != "" {
		if _, _, err := net.SplitHostPort(cfg.Advertise); err == nil {
			b.relayAddr = cfg.Advertise
		}
	}
	b.visitorKeys = len(id.Visitors)
	for _, k := range id.Visitors {
		if k.Name == "default" && k.File == filepath.Join(cfg.DataDir, relay.VisitorKeyFile) {
			b.keyFile = k.File
			if terminal && slices.Contains(id.Created, k.File) {
				b.visitKey = k.Secret
			}
		}
	}
	if len(cfg.Tokens) != 0 {
		b.configured = len(cfg.Tokens)
		for _, t := range cfg.Tokens {
			if t.File != "" {
				b.files = append(b.files, t.File)
			}
		}
		return b
	}
	b.tokenFile = filepath.Join(cfg.DataDir, relay.TokenFile)
	switch {
	case !slices.Contains(id.Created, b.tokenFile):
		b.notShown = "it is shown only on the start that generated it"
	case !terminal:
		b.notShown = "it is shown only on a terminal, and standard output is not one"
	default:
		b.token = id.Tokens[0].Secret
	}
	return b
}

// print writes the banner to w. The agent command takes the token from
// the environment (HOMEPORT_TOKEN), never from its arguments, which any
// user of the machine can read in the process list.
func (b banner) print(w io.Writer) {
	token := b.token
	if token == "" {
		token = "<token>"
	}
	over := "TCP"
	if b.quic {
		over = "TCP, and QUIC over UDP: open both in the firewall"
	}
	args := fmt.Sprintf("--relay %s --fingerprint %s --tunnel 3390:127.0.0.1:3389", b.relayAddr, b.fingerprint)
	fmt.Fprintf(w, "\nhomeport relay ready; agents connect to %s (%s)\n", b.listen, over)
	fmt.Fprintf(w, "relay key fingerprint: %s\n\n", b.fingerprint)
	fmt.Fprintf(w, "On the home machine, run (change the tunnel to the service you want to reach):\n\n")
	fmt.Fprintf(w, "  HOMEPORT_TOKEN='%s' agent %s\n\n", token, args)
	fmt.Fprintf(w, "or in Windows PowerShell:\n\n")
	fmt.Fprintf(w, "  $env:HOMEPORT_TOKEN='%s'; .\\agent.exe %s\n\n", token, args)
	fmt.Fprintf(w, "Then point the client (here: remote desktop) at %s.\n", net.JoinHostPort(b.host, "3390"))
	switch {
	case b.token != "":
		fmt.Fprintf(w, "The token is shown on this first start only; it is kept in %s, readable by this relay's user and root only.\n", b.tokenFile)
	case b.tokenFile != "":
		fmt.Fprintf(w, "Put the token kept in %s (readable by this relay's user and root only) in place of <token>; %s.\n", b.tokenFile, b.notShown)
	case len(b.files) != 0:
		fmt.Fprintf(w, "Use one of the configured tokens (%d) in place of <token>; those kept in files are in %s.\n", b.configured, joinList(b.files))
	default:
		fmt.Fprintf(w, "Use one of the configured tokens (%d) in place of <token>.\n", b.configured)
	}
	b.printPrivate(w, token)
	if b.guessed {
		fmt.Fprintf(w, "%s is a guess at this host's address: if agents reach it by another name or address, use that (or set advertise).\n", b.host)
	}
	fmt.Fprintln(w)
}

// printPrivate writes the setup of a private tunnel for remote desktop:
// the home agent's command and the visitor's, whose key comes from the
// environment like the token.
func (b banner) printPrivate(w io.Writer, token string) {
	if b.visitorKeys == 0 {
		return
	}
	if b.keyFile == "" {
		fmt.Fprintf(w, "\nPrivate tunnels (no public port): relay status prints the visit command for each, with one of the configured visitor keys (%d).\n", b.visitorKeys)
		return
	}
	key := b.visitKey
	if key == "" {
		key = "<visitor key>"
	}
	home := fmt.Sprintf("--relay %s --fingerprint %s --tunnel rdp=private:3389:127.0.0.1:3389", b.relayAddr, b.fingerprint)
	visit := fmt.Sprintf("visit rdp --relay %s --fingerprint %s --listen 127.0.0.1:3390", b.relayAddr, b.fingerprint)
	fmt.Fprintf(w, "\nSafer for remote desktop: a private tunnel, with no port open to the internet. On the home machine:\n\n")
	fmt.Fprintf(w, "  HOMEPORT_TOKEN='%s' agent %s\n", token, home)
	fmt.Fprintf(w, "  $env:HOMEPORT_TOKEN='%s'; .\\agent.exe %s\n\n", token, home)
	fmt.Fprintf(w, "and on the computer you connect from:\n\n")
	fmt.Fprintf(w, "  HOMEPORT_KEY='%s' agent %s\n", key, visit)
	fmt.Fprintf(w, "  $env:HOMEPORT_KEY='%s'; .\\agent.exe %s\n\n", key, visit)
	fmt.Fprintf(w, "then point the remote-desktop client at 127.0.0.1:3390.\n")
	if b.visitKey != "" {
		fmt.Fprintf(w, "The visitor key is shown on this first start only; it is kept in %s, readable by this relay's user and root only.\n", b.keyFile)
	} else {
		fmt.Fprintf(w, "Put the visitor key kept in %s in place of <visitor key>.\n", b.keyFile)
	}
}

// joinList joins names with commas and a final "and".
func joinList(names []string) string {
	switch len(names) {
	case 0:
		return ""
	case 1:
		return names[0]
	}
	out := names[0]
	for _, n := range names[1 : len(names)-1] {
		out += ", " + n
	}
	return out + " and " + names[len(names)-1]
}

// advertiseHost returns the host agents should dial: the advertise setting,
// the listen address when it names one, else a guess from the interfaces
// (a public address first, then any other non-loopback one).
func advertiseHost(cfg config.Relay, listen net.Addr) (host string, guessed bool) {
	if cfg.Advertise != "" {
		if h, _, err := net.SplitHostPort(cfg.Advertise); err == nil {
			return h, false
		}
		return cfg.Advertise, false
	}
	if ta, ok := listen.(*net.TCPAddr); ok && !ta.IP.IsUnspecified() {
		return ta.IP.String(), false
	}
	var public, private []netip.Addr
	addrs, _ := net.InterfaceAddrs()
	for _, a := range addrs {
		pfx, err := netip.ParsePrefix(a.String())
		if err != nil {
			continue
		}
		ip := pfx.Addr().Unmap()
		switch {
		case ip.IsLoopback() || ip.IsLinkLocalUnicast() || !ip.IsGlobalUnicast():
		case ip.IsPrivate() || netip.MustParsePrefix("100.64.0.0/10").Contains(ip):
			private = append(private, ip)
		default:
			public = append(public, ip)
		}
	}
	for _, list := range [][]netip.Addr{public, private} {
		for _, ip := range list { // IPv4 first: it works from more places
			if ip.Is4() {
				return ip.String(), true
			}
		}
		if len(list) > 0 {
			return list[0].String(), true
		}
	}
	if h, err := os.Hostname(); err == nil {
		return h, true
	}
	return "RELAY-HOST", true
}
