//go:build !unix

package tunnel

import (
	"strconv"
	"syscall"
)

// ErrnoName is the system's error number (Windows names its socket errors
// WSAE...: the number is what its documentation lists).
func ErrnoName(e syscall.Errno) string {
	return "errno " + strconv.FormatUint(uint64(e), 10)
}
