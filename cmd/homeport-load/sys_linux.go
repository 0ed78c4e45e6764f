//go:build linux

package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// supported reports whether this system can be measured: it can.
func supported() error { return nil }

// readRSS returns the resident set size of process pid in KiB.
func readRSS(pid int) (int64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, err
	}
	return parseVmRSS(string(b))
}

// readCPU returns the CPU time (user + system) process pid has used.
func readCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	return parseStatCPU(string(b))
}

// describeSystem fills in what the kernel says about the machine.
func describeSystem(m *machine) {
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		m.CPU = parseCPUModel(string(b))
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = "Linux " + strings.TrimSpace(string(b))
	}
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		if f := strings.Fields(string(b)); len(f) >= 3 {
			m.LoadAvg = strings.Join(f[:3], " ")
		}
	}
	// quic-go asks for 7 MiB UDP buffers; the kernel caps them here.
	for _, name := range []string{"rmem_max", "wmem_max"} {
		if b, err := os.ReadFile("/proc/sys/net/core/" + name); err == nil {
			m.UDPBuffers = append(m.UDPBuffers, name+"="+strings.TrimSpace(string(b)))
		}
	}
}

// raiseFileLimit raises RLIMIT_NOFILE of this process, and so of the
// relay and agent it starts, to at least want descriptors if it can (the
// hard limit too, which needs privilege), else as far as the hard limit
// goes. It returns the soft limit in effect.
func raiseFileLimit(want uint64) (uint64, error) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0, err
	}
	if lim.Cur >= want {
		// Set it anyway: Go passes a limit set with Setrlimit on to
		// child processes, and the original soft limit otherwise.
		return lim.Cur, syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)
	}
	raised := syscall.Rlimit{Cur: want, Max: max(lim.Max, want)}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &raised); err == nil {
		return want, nil
	}
	lim.Cur = lim.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0, err
	}
	return lim.Cur, fmt.Errorf("RLIMIT_NOFILE: hard limit %d, below the %d wanted (raise it with ulimit -Hn as root)", lim.Max, want)
}

// childAttr makes a started relay or agent die with this process, even
// when it is killed, and keeps a Ctrl-C in the terminal for this process
// to handle: it stops them in order.
func childAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
}
