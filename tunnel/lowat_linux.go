package tunnel

import (
	"net"

	"golang.org/x/sys/unix"
)

// sessionUnsent is the most a session's TCP connection queues unsent in
// the kernel.
const sessionUnsent = 64 << 10

// limitUnsent sets TCP_NOTSENT_LOWAT on the session's TCP connection: the
// kernel takes a write only while less than sessionUnsent bytes are
// queued that it has not sent yet. Without it a bulk transfer fills the
// socket's send buffer, which the kernel grows to megabytes, and every
// other stream's frames wait behind seconds of it (a remote desktop
// freezes during a file copy); with it, the queue stays in the session,
// where each stream's frame takes its turn. What is in flight is not
// limited, so a long fast path still fills. A kernel without the option
// changes nothing.
func limitUnsent(c net.Conn) {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return
	}
	_ = rc.Control(func(fd uintptr) {
		_ = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_NOTSENT_LOWAT, sessionUnsent)
	})
}
