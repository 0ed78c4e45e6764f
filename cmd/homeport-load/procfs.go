package main

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// The parsers of /proc files, kept apart from the reading (proc_linux.go)
// so that they can be tested on fixtures anywhere.

// userHZ is the unit of the CPU times in /proc/PID/stat (USER_HZ), 100 on
// every Linux architecture Go supports.
const userHZ = 100

// parseVmRSS returns the resident set size, in KiB, from the contents of
// /proc/PID/status.
func parseVmRSS(status string) (int64, error) {
	for line := range strings.Lines(status) {
		rest, ok := strings.CutPrefix(line, "VmRSS:")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) != 2 || f[1] != "kB" {
			return 0, fmt.Errorf("VmRSS line %q: want a number of kB", strings.TrimSpace(line))
		}
		n, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("VmRSS line %q: %w", strings.TrimSpace(line), err)
		}
		return n, nil
	}
	return 0, fmt.Errorf("no VmRSS line (a zombie process has none)")
}

// parseStatCPU returns the CPU time (user + system) from the contents of
// /proc/PID/stat. The command name (field 2) is in parentheses and may
// contain spaces and parentheses itself, so fields are counted after the
// last ')'.
func parseStatCPU(stat string) (time.Duration, error) {
	i := strings.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, fmt.Errorf("stat %.40q: no command name", stat)
	}
	// After ')': field 3 (state) is rest[0]; utime and stime are fields
	// 14 and 15.
	rest := strings.Fields(stat[i+1:])
	const utime, stime = 14 - 3, 15 - 3
	if len(rest) <= stime {
		return 0, fmt.Errorf("stat has %d fields, want at least 15", len(rest)+2)
	}
	var ticks int64
	for _, k := range []int{utime, stime} {
		n, err := strconv.ParseInt(rest[k], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("stat field %d: %w", k+3, err)
		}
		ticks += n
	}
	return time.Duration(ticks) * time.Second / userHZ, nil
}

// parseCPUModel returns the processor's name from the contents of
// /proc/cpuinfo, or "" when it names none.
func parseCPUModel(cpuinfo string) string {
	// x86 says "model name"; some ARM kernels "Hardware" or "Processor",
	// others only "CPU part".
	for _, key := range []string{"model name", "Hardware", "Processor", "cpu model", "CPU part"} {
		for line := range strings.Lines(cpuinfo) {
			k, v, ok := strings.Cut(line, ":")
			if ok && strings.TrimSpace(k) == key {
				if v = strings.TrimSpace(v); v != "" {
					return v
				}
			}
		}
	}
	return ""
}
