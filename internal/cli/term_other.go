//go:build !linux && !darwin && !dragonfly && !freebsd && !netbsd && !openbsd && !windows

package cli

import "os"

// IsTerminal reports false: this system's terminals are not known here,
// so nothing is shown that only a terminal may show.
func IsTerminal(*os.File) bool { return false }
