package main

import (
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"

	"github.com/homeport/homeport/config"
	"github.com/homeport/homeport/relay"
)

// printBanner tells the operator how to connect an agent: the exact agent
// command when the relay uses its own stored token, and a template with a
// placeholder when tokens come from the configuration, which is not echoed.
func printBanner(w io.Writer, cfg config.Relay, id relay.Identity, listen net.Addr) {
	port := 7000
	if ta, ok := listen.(*net.TCPAddr); ok {
		port = ta.Port
	}
	host, guessed := advertiseHost(cfg, listen)
	relayAddr := net.JoinHostPort(host, strconv.Itoa(port))
	if cfg.Advertise != "" {
		if _, _, err := net.SplitHostPort(cfg.Advertise); err == nil {
			relayAddr = cfg.Advertise
		}
	}
	token := "<token>"
	if len(cfg.Tokens) == 0 {
		token = id.Tokens[0].Secret
	}
	over := "TCP"
	if cfg.QUIC {
		over = "TCP, and QUIC over UDP: open both in the firewall"
	}
	fmt.Fprintf(w, "\nhomeport relay ready; agents connect to %s (%s)\n", listen, over)
	fmt.Fprintf(w, "relay key fingerprint: %s\n\n", id.Fingerprint)
	fmt.Fprintf(w, "On the home machine, run (change the tunnel to the service you want to reach):\n\n")
	fmt.Fprintf(w, "  agent --relay %s --token %s --fingerprint %s --tunnel 3390:127.0.0.1:3389\n\n", relayAddr, token, id.Fingerprint)
	fmt.Fprintf(w, "Then point the client (here: remote desktop) at %s.\n", net.JoinHostPort(host, "3390"))
	if len(cfg.Tokens) != 0 {
		fmt.Fprintf(w, "Use one of the configured tokens (%d) in place of <token>.\n", len(cfg.Tokens))
	}
	if guessed {
		fmt.Fprintf(w, "%s is a guess at this host's address: if agents reach it by another name or address, use that (or set advertise).\n", host)
	}
	fmt.Fprintln(w)
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
