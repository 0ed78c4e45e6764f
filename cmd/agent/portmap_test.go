package main

import (
	"errors"
	"strings"
	"testing"
)

// TestPortmapCommandErrors: bad flags say what is wrong, and with no
// router answering, --once says why and exits with errNotMapped. Only
// PCP and NAT-PMP are tried, towards 127.0.0.1 (UPnP's search would be
// a multicast on the machine's network).
func TestPortmapCommandErrors(t *testing.T) {
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"portmap"}, "--port is required"},
		{[]string{"portmap", "--port", "80", "--protocol", "sctp"}, `protocol "sctp": want tcp or udp`},
		{[]string{"portmap", "--port", "80", "--method", "igd"}, `--method: port mapping method "igd": want pcp, nat-pmp or upnp`},
		{[]string{"portmap", "--port", "80", "--gateway", "router.lan"}, `--gateway "router.lan": not an IP address`},
		{[]string{"portmap", "--port", "80", "--lifetime", "10ms"}, "lifetime 10ms: want at least 1s"},
	} {
		if _, _, err := execute(t, tt.args...); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%v: err = %v, want %q", tt.args, err, tt.want)
		}
	}
	stdout, _, err := execute(t, "portmap", "--once", "--port", "9", "--gateway", "127.0.0.1", "--method", "pcp,nat-pmp", "--timeout", "60s")
	if !errors.Is(err, errNotMapped) {
		t.Fatalf("err = %v, want errNotMapped", err)
	}
	if !strings.Contains(stdout, "not mapped: ") || !strings.Contains(stdout, "no router answered") {
		t.Errorf("stdout = %q, want the reason", stdout)
	}
}
