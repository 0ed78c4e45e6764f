package ddns

import (
	"context"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
)

func TestInterfaceSourceLoopback(t *testing.T) {
	if _, err := net.InterfaceByName("lo"); err != nil {
		t.Skip("no interface lo:", err)
	}
	got, err := InterfaceSource{Interface: "lo"}.Addrs(context.Background())
	if err != nil || len(got) != 0 {
		t.Errorf("Addrs() = %v, %v; want nothing public", got, err)
	}
	if _, err := (InterfaceSource{Interface: "no-such-if0"}).Addrs(context.Background()); err == nil {
		t.Error("no error for a missing interface")
	}
}

// ifInet6 is /proc/net/if_inet6 of a host with a stable address (0x80
// permanent, 0x800 stable-privacy), a temporary one (0x01), a deprecated
// one from an old prefix (0x20), a tentative one (0x40), a link-local
// and a ULA address, and an address on another interface.
const ifInet6 = `20010db8000100000000000000000005 02 40 00 880    eth0
20010db80001000012345678deadbeef 02 40 00 01     eth0
20010db8000900000000000000000005 02 40 00 a0     eth0
20010db8000100000000000000000099 02 40 00 40     eth0
fe800000000000000000000000000005 02 40 20 80     eth0
fd000000000000000000000000000005 02 40 00 80     eth0
20010db8000200000000000000000005 03 40 00 80     wlan0
00000000000000000000000000000001 01 80 10 80       lo
`

func TestParseIfInet6(t *testing.T) {
	got, err := parseIfInet6(strings.NewReader(ifInet6), "eth0")
	if err != nil {
		t.Fatal(err)
	}
	want := []ifaceAddr{
		{prefix: netip.MustParsePrefix("2001:db8:1::5/64")},
		{prefix: netip.MustParsePrefix("2001:db8:1:0:1234:5678:dead:beef/64"), temporary: true},
		{prefix: netip.MustParsePrefix("2001:db8:9::5/64"), unusable: true},
		{prefix: netip.MustParsePrefix("2001:db8:1::99/64"), unusable: true},
		{prefix: netip.MustParsePrefix("fe80::5/64")},
		{prefix: netip.MustParsePrefix("fd00::5/64")},
	}
	if !slices.Equal(got, want) {
		t.Errorf("parseIfInet6 =\n%v\nwant\n%v", got, want)
	}
	for _, bad := range []string{"2001 02 40 00 80 eth0\n", "20010db8000100000000000000000005 02 40 00 eth0\n", "20010db8000100000000000000000005 02 zz 00 80 eth0\n"} {
		if _, err := parseIfInet6(strings.NewReader(bad), "eth0"); err == nil {
			t.Errorf("parseIfInet6(%q) gave no error", bad)
		}
	}
}

func TestSelectAddrs(t *testing.T) {
	stable := ifaceAddr{prefix: netip.MustParsePrefix("2001:db8:1::5/64")}
	temp := ifaceAddr{prefix: netip.MustParsePrefix("2001:db8:1:0:1234:5678:dead:beef/64"), temporary: true}
	deprecated := ifaceAddr{prefix: netip.MustParsePrefix("2001:db8:9::5/64"), unusable: true}
	ula := ifaceAddr{prefix: netip.MustParsePrefix("fd00::5/64")}
	v4 := ifaceAddr{prefix: netip.MustParsePrefix("203.0.113.5/24")}
	private4 := ifaceAddr{prefix: netip.MustParsePrefix("192.168.1.5/24")}
	otherPrefix := ifaceAddr{prefix: netip.MustParsePrefix("2001:db8:2::7/64")}
	suffix := netip.MustParseAddr("::1234:5678:9abc:def0")

	tests := []struct {
		name   string
		in     []ifaceAddr
		suffix netip.Addr
		want   []netip.Addr
	}{
		{"stable over temporary", []ifaceAddr{temp, stable, deprecated, ula}, netip.Addr{}, addrs("2001:db8:1::5")},
		{"temporary if nothing else", []ifaceAddr{temp, deprecated, ula}, netip.Addr{}, addrs("2001:db8:1:0:1234:5678:dead:beef")},
		{"never deprecated", []ifaceAddr{deprecated}, netip.Addr{}, nil},
		{"public IPv4 too", []ifaceAddr{private4, v4, stable}, netip.Addr{}, addrs("203.0.113.5", "2001:db8:1::5")},
		{"private only", []ifaceAddr{private4, ula}, netip.Addr{}, nil},
		{"suffix", []ifaceAddr{temp, stable, deprecated, ula, v4}, suffix, addrs("2001:db8:1:0:1234:5678:9abc:def0")},
		{"suffix on two prefixes", []ifaceAddr{stable, otherPrefix}, suffix, addrs("2001:db8:1:0:1234:5678:9abc:def0", "2001:db8:2:0:1234:5678:9abc:def0")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := selectAddrs(tt.in, tt.suffix); !slices.Equal(got, tt.want) {
				t.Errorf("selectAddrs = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestInterfaceSourceSuffixCheck(t *testing.T) {
	for _, s := range []string{"2001:db8::1", "192.0.2.1", "::ffff:1.2.3.4"} {
		_, err := InterfaceSource{Interface: "lo", Suffix: netip.MustParseAddr(s)}.Addrs(context.Background())
		if err == nil || !strings.Contains(err.Error(), "suffix") {
			t.Errorf("suffix %s: error %v", s, err)
		}
	}
}
