package ddns

import (
	"net"
	"os"
)

// interfaceAddrs takes the IPv4 addresses from the net package and the
// IPv6 ones, with their flags, from /proc/net/if_inet6; without /proc it
// falls back to the net package's IPv6 addresses, all counted as stable.
func interfaceAddrs(ifi *net.Interface) ([]ifaceAddr, error) {
	all, err := netAddrs(ifi)
	if err != nil {
		return nil, err
	}
	f, err := os.Open("/proc/net/if_inet6")
	if err != nil {
		return all, nil
	}
	defer f.Close()
	v6, err := parseIfInet6(f, ifi.Name)
	if err != nil {
		return all, nil
	}
	out := v6
	for _, a := range all {
		if a.prefix.Addr().Is4() {
			out = append(out, a)
		}
	}
	return out, nil
}
