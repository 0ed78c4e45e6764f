//go:build !linux && !windows

package ddns

import "net"

// interfaceAddrs has no address flags on this system: every IPv6 address
// counts as stable.
func interfaceAddrs(ifi *net.Interface) ([]ifaceAddr, error) { return netAddrs(ifi) }
