package agent

import (
	"bytes"
	"encoding/hex"
	"net/netip"
	"testing"
)

func TestProxyHeader(t *testing.T) {
	ap := netip.MustParseAddrPort
	tests := []struct {
		version         string
		visitor, public string
		want            string // v1: text; v2: hex
	}{
		{"v1", "198.51.100.7:51234", "203.0.113.1:3390", "PROXY TCP4 198.51.100.7 203.0.113.1 51234 3390\r\n"},
		{"v1", "[2001:db8::7]:40000", "[2001:db8::1]:3390", "PROXY TCP6 2001:db8::7 2001:db8::1 40000 3390\r\n"},
		{"v1", "198.51.100.7:51234", "[2001:db8::1]:3390", "PROXY TCP6 ::ffff:198.51.100.7 2001:db8::1 51234 3390\r\n"},
		{"v2", "198.51.100.7:51234", "203.0.113.1:3390",
			"0d0a0d0a000d0a515549540a" + "21" + "11" + "000c" + "c6336407" + "cb007101" + "c822" + "0d3e"},
		{"v2", "[2001:db8::7]:40000", "[2001:db8::1]:3390",
			"0d0a0d0a000d0a515549540a" + "21" + "21" + "0024" + "20010db8000000000000000000000007" + "20010db8000000000000000000000001" + "9c40" + "0d3e"},
	}
	for _, tt := range tests {
		got, err := proxyHeader(tt.version, ap(tt.visitor), ap(tt.public))
		if err != nil {
			t.Fatal(err)
		}
		want := []byte(tt.want)
		if tt.version == "v2" {
			want, _ = hex.DecodeString(tt.want)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s %s -> %s:\n got %q\nwant %q", tt.version, tt.visitor, tt.public, got, want)
		}
	}
	if _, err := proxyHeader("v3", ap("198.51.100.7:1"), ap("203.0.113.1:2")); err == nil {
		t.Error("v3 accepted")
	}
}
