package cli

import (
	"os"
	"syscall"
)

// StopSignals are the signals that stop a program: an interrupt, SIGTERM,
// and, for a program whose standard input is a terminal, SIGHUP (the
// terminal went away; elsewhere SIGHUP reloads, see NewReloader). Asking
// for SIGHUP here also stops a program that was started with SIGHUP
// ignored, which would otherwise outlive its terminal.
func StopSignals() []os.Signal {
	sigs := []os.Signal{os.Interrupt, syscall.SIGTERM}
	if IsTerminal(os.Stdin) {
		sigs = append(sigs, syscall.SIGHUP)
	}
	return sigs
}
