package main

import (
	"fmt"
	"syscall"
)

// raiseNoFile makes sure this process may open need descriptors, raising
// its soft limit up to the hard one if needed.
func raiseNoFile(need uint64) error {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return fmt.Errorf("getrlimit: %w", err)
	}
	if lim.Cur >= need {
		return nil
	}
	if lim.Max < need {
		return fmt.Errorf("descriptor limit %d (hard %d) is below the %d connections need", lim.Cur, lim.Max, need)
	}
	lim.Cur = need
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return fmt.Errorf("setrlimit to %d: %w", need, err)
	}
	return nil
}
