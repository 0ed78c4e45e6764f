package main

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

func fixture(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestParseVmRSS(t *testing.T) {
	got, err := parseVmRSS(fixture(t, "proc-status.txt"))
	if err != nil || got != 19312 {
		t.Errorf("parseVmRSS(fixture) = %d, %v; want 19312", got, err)
	}
	for _, bad := range []string{"Name:\trelay\n", "VmRSS:\t12 MB\n", "VmRSS:\tlots kB\n"} {
		if _, err := parseVmRSS(bad); err == nil {
			t.Errorf("parseVmRSS(%q) accepted", bad)
		}
	}
}

func TestParseStatCPU(t *testing.T) {
	// The fixture's command name holds spaces and parentheses; utime is
	// 1234 ticks and stime 567.
	got, err := parseStatCPU(fixture(t, "proc-stat.txt"))
	if want := 18010 * time.Millisecond; err != nil || got != want {
		t.Errorf("parseStatCPU(fixture) = %v, %v; want %v", got, err, want)
	}
	for _, bad := range []string{"", "42 (x) S 1 2 3", "42 (x) S 1 2 3 4 5 6 7 8 9 10 x 12 13"} {
		if _, err := parseStatCPU(bad); err == nil {
			t.Errorf("parseStatCPU(%q) accepted", bad)
		}
	}
}

func TestParseCPUModel(t *testing.T) {
	if got := parseCPUModel(fixture(t, "cpuinfo.txt")); got != "Intel(R) Xeon(R) Processor" {
		t.Errorf("parseCPUModel(fixture) = %q", got)
	}
	arm := "processor\t: 0\nBogoMIPS\t: 108.00\nCPU part\t: 0xd0c\n\nHardware\t: BCM2835\n"
	if got := parseCPUModel(arm); got != "BCM2835" {
		t.Errorf("parseCPUModel(arm) = %q, want BCM2835", got)
	}
	if got := parseCPUModel("processor\t: 0\n"); got != "" {
		t.Errorf("parseCPUModel(no model) = %q", got)
	}
}
