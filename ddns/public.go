package ddns

import (
	"errors"
	"fmt"
	"net/netip"
)

// ErrNotPublic: an address cannot be reached from the internet, so a
// public DNS name must not point at it. CheckPublic wraps it.
var ErrNotPublic = errors.New("not a public address")

// noPublicHint ends the message for addresses behind a NAT: the common
// case where DNS alone cannot help and the tunnel is the answer.
const noPublicHint = "this host has no public address of its own, so a DNS name cannot point at it directly; reach it through the relay instead"

// special lists the ranges CheckPublic rejects, most specific first, with
// what each range is.
var special = []struct {
	prefix netip.Prefix
	what   string
	hint   bool // add noPublicHint
}{
	{netip.MustParsePrefix("0.0.0.0/8"), `a "this network" address (0.0.0.0/8)`, false},
	{netip.MustParsePrefix("10.0.0.0/8"), "a private address (RFC 1918, 10.0.0.0/8)", true},
	{netip.MustParsePrefix("100.64.0.0/10"), "a carrier-grade NAT address (100.64.0.0/10, RFC 6598)", true},
	{netip.MustParsePrefix("127.0.0.0/8"), "a loopback address", false},
	{netip.MustParsePrefix("169.254.0.0/16"), "a link-local address", false},
	{netip.MustParsePrefix("172.16.0.0/12"), "a private address (RFC 1918, 172.16.0.0/12)", true},
	// DS-Lite and 464XLAT hand out addresses from here to the home side
	// of a carrier NAT.
	{netip.MustParsePrefix("192.0.0.0/24"), "an IETF protocol address (192.0.0.0/24, used by DS-Lite behind a carrier NAT)", true},
	{netip.MustParsePrefix("192.168.0.0/16"), "a private address (RFC 1918, 192.168.0.0/16)", true},
	{netip.MustParsePrefix("198.18.0.0/15"), "a benchmarking address (198.18.0.0/15)", false},
	{netip.MustParsePrefix("224.0.0.0/4"), "a multicast address", false},
	{netip.MustParsePrefix("255.255.255.255/32"), "the broadcast address", false},
	{netip.MustParsePrefix("240.0.0.0/4"), "a reserved address (240.0.0.0/4)", false},

	{netip.MustParsePrefix("::/128"), "the unspecified address", false},
	{netip.MustParsePrefix("::1/128"), "the loopback address", false},
	{netip.MustParsePrefix("::ffff:0:0/96"), "an IPv4-mapped IPv6 address (use the IPv4 address itself)", false},
	{netip.MustParsePrefix("64:ff9b::/96"), "a NAT64 address (64:ff9b::/96), which belongs to the NAT64 gateway", true},
	{netip.MustParsePrefix("fc00::/7"), "a unique local address (ULA, fc00::/7)", true},
	{netip.MustParsePrefix("fe80::/10"), "a link-local address", false},
	{netip.MustParsePrefix("fec0::/10"), "a site-local address (fec0::/10, deprecated)", true},
	{netip.MustParsePrefix("ff00::/8"), "a multicast address", false},
}

// globalUnicast6 is the only IPv6 range IANA hands out for global unicast;
// everything outside it is special or unassigned.
var globalUnicast6 = netip.MustParsePrefix("2000::/3")

// CheckPublic returns nil if addr may be published as an A or AAAA record,
// and an error wrapping ErrNotPublic that says why not otherwise: private
// (RFC 1918, ULA), carrier-grade NAT, loopback, link-local, unspecified,
// multicast, reserved, or, for IPv6, outside 2000::/3.
//
// The documentation ranges (192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24,
// 2001:db8::/32, 3fff::/20) are accepted: they are not routed, but no
// source returns them in practice, and tests and examples need addresses
// that look public without belonging to anyone.
func CheckPublic(addr netip.Addr) error {
	if !addr.IsValid() {
		return fmt.Errorf("%w: invalid address", ErrNotPublic)
	}
	if addr.Zone() != "" {
		return fmt.Errorf("%w: %s has a zone, so it is only valid on one link", ErrNotPublic, addr)
	}
	for _, s := range special {
		if s.prefix.Contains(addr) {
			if s.hint {
				return fmt.Errorf("%w: %s is %s: %s", ErrNotPublic, addr, s.what, noPublicHint)
			}
			return fmt.Errorf("%w: %s is %s", ErrNotPublic, addr, s.what)
		}
	}
	if addr.Is6() && !globalUnicast6.Contains(addr) {
		return fmt.Errorf("%w: %s is outside the IPv6 global unicast range 2000::/3", ErrNotPublic, addr)
	}
	return nil
}

// publicOnly returns the addresses of addrs that pass CheckPublic, and the
// errors of those that do not.
func publicOnly(addrs []netip.Addr) (ok []netip.Addr, rejected []error) {
	for _, a := range addrs {
		if err := CheckPublic(a); err != nil {
			rejected = append(rejected, err)
			continue
		}
		ok = append(ok, a)
	}
	return ok, rejected
}
