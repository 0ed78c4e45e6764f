package tunnel

import (
	"net"
	"os"
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

// udpLimitsWritable tells whether this process could raise the kernel's
// limits on socket buffers (as UDPBufferHint says): it can open both
// sysctl files for writing (they are opened, not written). That fails
// where the hint cannot help from here: not root, /proc/sys read-only (a
// container), a user namespace without the host's privileges.
func udpLimitsWritable() error {
	for _, name := range []string{"/proc/sys/net/core/rmem_max", "/proc/sys/net/core/wmem_max"} {
		f, err := os.OpenFile(name, os.O_WRONLY, 0)
		if err != nil {
			return err
		}
		f.Close()
	}
	return nil
}
