//go:build !linux

package tunnel

import (
	"errors"
	"net"
)

func udpBuffers(*net.UDPConn) (rcv, snd int, err error) {
	return 0, 0, errors.ErrUnsupported
}

func udpLimitsWritable() error { return errors.ErrUnsupported }
