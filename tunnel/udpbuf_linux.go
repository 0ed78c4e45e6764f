package tunnel

import (
	"net"
	"syscall"
)

// udpBuffers returns the kernel's receive and send buffer sizes of c.
// Linux reports twice the usable size (it counts its bookkeeping too).
func udpBuffers(c *net.UDPConn) (rcv, snd int, err error) {
	if c == nil {
		return 0, 0, net.ErrClosed
	}
	raw, err := c.SyscallConn()
	if err != nil {
		return 0, 0, err
	}
	var serr error
	err = raw.Control(func(fd uintptr) {
		if rcv, serr = syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF); serr != nil {
			return
		}
		snd, serr = syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_SNDBUF)
	})
	if err == nil {
		err = serr
	}
	return rcv / 2, snd / 2, err
}
