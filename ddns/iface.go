package ddns

import (
	"bufio"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// InterfaceSource reads the public addresses of a network interface: for
// a host that has them itself (a public IPv4 address on a PPPoE link,
// IPv6 from the provider's prefix).
//
// IPv6 hosts usually have several addresses: a stable one and temporary
// (privacy) ones that change daily. The source returns the stable ones
// and falls back to temporary ones only if there is no stable one; it
// never returns deprecated or tentative addresses. How it tells them
// apart depends on the system: Linux reads the kernel's address flags
// from /proc/net/if_inet6, Windows asks GetAdaptersAddresses (an address
// with a random suffix that Windows does not register in DNS counts as
// temporary); elsewhere, or if that fails, every address counts as
// stable.
type InterfaceSource struct {
	Interface string // interface name: "eth0", "ppp0", "Ethernet"
	// Suffix, if set, makes the source report another host on the same
	// network: each public /64 prefix of the interface joined with the
	// last 64 bits of Suffix (for example ::1234:5678:9abc:def0). The
	// first 64 bits of Suffix must be zero. With a Suffix the source
	// returns no IPv4 address: the interface's own would not be the
	// other host's.
	Suffix netip.Addr
}

func (s InterfaceSource) Name() string { return "interface " + s.Interface }

func (s InterfaceSource) Addrs(ctx context.Context) ([]netip.Addr, error) {
	if s.Suffix.IsValid() {
		if err := checkSuffix(s.Suffix); err != nil {
			return nil, fmt.Errorf("source %s: %w", s.Name(), err)
		}
	}
	ifi, err := net.InterfaceByName(s.Interface)
	if err != nil {
		return nil, fmt.Errorf("source %s: %w", s.Name(), err)
	}
	addrs, err := interfaceAddrs(ifi)
	if err != nil {
		return nil, fmt.Errorf("source %s: %w", s.Name(), err)
	}
	return selectAddrs(addrs, s.Suffix), nil
}

// ifaceAddr is one address of an interface with what the system says
// about it.
type ifaceAddr struct {
	prefix    netip.Prefix // the address and its prefix length
	temporary bool         // an IPv6 privacy address (RFC 8981)
	unusable  bool         // deprecated, tentative or failed duplicate detection
}

// checkSuffix accepts an IPv6 address whose first 64 bits are zero.
func checkSuffix(suffix netip.Addr) error {
	if !suffix.Is6() || suffix.Is4In6() {
		return fmt.Errorf("suffix %s: not an IPv6 address", suffix)
	}
	b := suffix.As16()
	for _, x := range b[:8] {
		if x != 0 {
			return fmt.Errorf("suffix %s: the first 64 bits must be zero (like ::1234:5678:9abc:def0)", suffix)
		}
	}
	return nil
}

// selectAddrs picks the addresses to publish from an interface's: the
// public IPv4 ones and the stable public IPv6 ones (temporary ones only
// if there is no stable one), or, with a suffix, the suffix on each
// public /64 prefix.
func selectAddrs(addrs []ifaceAddr, suffix netip.Addr) []netip.Addr {
	var v4, stable, temporary []netip.Addr
	for _, ia := range addrs {
		a := ia.prefix.Addr().Unmap()
		if ia.unusable || CheckPublic(a) != nil {
			continue
		}
		switch {
		case suffix.IsValid():
			if !a.Is6() {
				continue
			}
			b, s := a.As16(), suffix.As16()
			copy(b[8:], s[8:])
			if c := netip.AddrFrom16(b); CheckPublic(c) == nil {
				stable = append(stable, c)
			}
		case a.Is4():
			v4 = append(v4, a)
		case ia.temporary:
			temporary = append(temporary, a)
		default:
			stable = append(stable, a)
		}
	}
	if len(stable) == 0 {
		stable = temporary
	}
	out := append(v4, stable...)
	slices.SortFunc(out, netip.Addr.Compare)
	return slices.Compact(out)
}

// netAddrs is what the net package knows of an interface's addresses: no
// flags.
func netAddrs(ifi *net.Interface) ([]ifaceAddr, error) {
	nas, err := ifi.Addrs()
	if err != nil {
		return nil, err
	}
	var out []ifaceAddr
	for _, na := range nas {
		ipn, ok := na.(*net.IPNet)
		if !ok {
			continue
		}
		a, ok := netip.AddrFromSlice(ipn.IP)
		if !ok {
			continue
		}
		a = a.Unmap()
		ones, _ := ipn.Mask.Size()
		out = append(out, ifaceAddr{prefix: netip.PrefixFrom(a, ones)})
	}
	return out, nil
}

// Linux address flags as /proc/net/if_inet6 shows them (linux/if_addr.h).
const (
	ifaFTemporary  = 0x01
	ifaFDADFailed  = 0x08
	ifaFDeprecated = 0x20
	ifaFTentative  = 0x40
)

// parseIfInet6 reads the lines of /proc/net/if_inet6 that belong to the
// interface name:
//
//	20010db8000000000000000000000001 02 40 00 80     eth0
//
// address, interface index, prefix length, scope and flags in hex, name.
func parseIfInet6(r io.Reader, name string) ([]ifaceAddr, error) {
	var out []ifaceAddr
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) != 6 {
			return nil, fmt.Errorf("if_inet6: malformed line %q", truncate(sc.Text(), 80))
		}
		if f[5] != name {
			continue
		}
		raw, err := hex.DecodeString(f[0])
		if err != nil || len(raw) != 16 {
			return nil, fmt.Errorf("if_inet6: malformed address %q", truncate(f[0], 40))
		}
		plen, err1 := strconv.ParseUint(f[2], 16, 8)
		flags, err2 := strconv.ParseUint(f[4], 16, 32)
		if err := errors.Join(err1, err2); err != nil || plen > 128 {
			return nil, fmt.Errorf("if_inet6: malformed line %q", truncate(sc.Text(), 80))
		}
		out = append(out, ifaceAddr{
			prefix:    netip.PrefixFrom(netip.AddrFrom16([16]byte(raw)), int(plen)),
			temporary: flags&ifaFTemporary != 0,
			unusable:  flags&(ifaFDADFailed|ifaFDeprecated|ifaFTentative) != 0,
		})
	}
	return out, sc.Err()
}
