//go:build !windows

package wol

import (
	"syscall"
)

// allowBroadcast sets SO_BROADCAST, without which the kernel refuses to
// send to a broadcast address.
func allowBroadcast(network, address string, c syscall.RawConn) error {
	var serr error
	if err := c.Control(func(fd uintptr) {
		serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_BROADCAST, 1)
	}); err != nil {
		return err
	}
	return serr
}
