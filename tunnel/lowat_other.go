//go:build !linux

package tunnel

import "net"

// limitUnsent does nothing here: see lowat_linux.go.
func limitUnsent(net.Conn) {}
