package ddns

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
)

func TestCheckPublic(t *testing.T) {
	tests := []struct {
		addr    string
		public  bool
		mention string // part of the error text
	}{
		{"8.8.8.8", true, ""},
		{"2606:4700:4700::1111", true, ""},
		{"192.0.2.1", true, ""},    // documentation ranges are accepted
		{"198.51.100.7", true, ""}, //
		{"203.0.113.5", true, ""},  //
		{"2001:db8::5", true, ""},  //
		{"3fff::1", true, ""},      //
		{"10.1.2.3", false, "reach it through the relay"},
		{"172.16.0.1", false, "RFC 1918"},
		{"172.31.255.255", false, "RFC 1918"},
		{"192.168.1.10", false, "no public address of its own"},
		{"100.64.0.1", false, "carrier-grade NAT"},
		{"100.127.255.254", false, "reach it through the relay"},
		{"192.0.0.2", false, "DS-Lite"},
		{"fd12:3456::1", false, "unique local"},
		{"fc00::1", false, "reach it through the relay"},
		{"127.0.0.1", false, "loopback"},
		{"::1", false, "loopback"},
		{"169.254.1.1", false, "link-local"},
		{"fe80::1", false, "link-local"},
		{"fe80::1%eth0", false, "zone"},
		{"0.0.0.0", false, "this network"},
		{"::", false, "unspecified"},
		{"224.0.0.1", false, "multicast"},
		{"ff02::1", false, "multicast"},
		{"255.255.255.255", false, "broadcast"},
		{"240.0.0.1", false, "reserved"},
		{"198.18.0.1", false, "benchmarking"},
		{"::ffff:8.8.8.8", false, "IPv4-mapped"},
		{"64:ff9b::808:808", false, "NAT64"},
		{"4000::1", false, "2000::/3"},
		{"100::1", false, "2000::/3"},
	}
	for _, tt := range tests {
		t.Run(tt.addr, func(t *testing.T) {
			err := CheckPublic(netip.MustParseAddr(tt.addr))
			if tt.public {
				if err != nil {
					t.Fatalf("CheckPublic(%s) = %v, want nil", tt.addr, err)
				}
				return
			}
			if !errors.Is(err, ErrNotPublic) {
				t.Fatalf("CheckPublic(%s) = %v, want ErrNotPublic", tt.addr, err)
			}
			if !strings.Contains(err.Error(), tt.mention) {
				t.Errorf("CheckPublic(%s) = %q, want it to mention %q", tt.addr, err, tt.mention)
			}
		})
	}
	if err := CheckPublic(netip.Addr{}); !errors.Is(err, ErrNotPublic) {
		t.Errorf("CheckPublic(invalid) = %v, want ErrNotPublic", err)
	}
}
