//go:build unix

package tunnel

import (
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"
)

// ErrnoName is the system's name of an error number: ECONNRESET,
// ETIMEDOUT, ...
func ErrnoName(e syscall.Errno) string {
	if name := unix.ErrnoName(e); name != "" {
		return name
	}
	return "errno " + strconv.Itoa(int(e))
}
