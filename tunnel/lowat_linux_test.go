package tunnel

import (
	"net"
	"testing"

	"golang.org/x/sys/unix"
)

// TestSessionLimitsUnsent: both ends of a TCP session keep at most
// sessionUnsent bytes unsent in the kernel (TCP_NOTSENT_LOWAT), so that a
// bulk stream cannot queue seconds of data ahead of the others' frames.
func TestSessionLimitsUnsent(t *testing.T) {
	c, s := pinnedPair(t, TCPTransport{})
	for _, end := range []Conn{c, s} {
		sess, err := end.Mux(DefaultSessionConfig())
		if err != nil {
			t.Fatal(err)
		}
		defer sess.Close()
	}
	for _, end := range []Conn{c, s} {
		raw := end.(*tlsLink).raw.Conn.(*net.TCPConn)
		rc, err := raw.SyscallConn()
		if err != nil {
			t.Fatal(err)
		}
		var v int
		var gerr error
		if err := rc.Control(func(fd uintptr) {
			v, gerr = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_NOTSENT_LOWAT)
		}); err != nil || gerr != nil {
			t.Fatal(err, gerr)
		}
		if v != sessionUnsent {
			t.Errorf("TCP_NOTSENT_LOWAT = %d, want %d", v, sessionUnsent)
		}
	}
}
