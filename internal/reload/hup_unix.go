//go:build unix

package reload

import (
	"os"
	"os/signal"
	"syscall"
)

func notifyHUP() (<-chan os.Signal, func()) {
	c := make(chan os.Signal, 1)
	signal.Notify(c, syscall.SIGHUP)
	return c, func() { signal.Stop(c) }
}
