package main

import (
	"strings"
	"testing"
)

func TestNewRow(t *testing.T) {
	r := newRow("tcp", "bulk upload, 1 stream", "MB/s", []float64{300, 500, 400}, []float64{1000, 1100, 900}, &goal{ratio: true, limit: 0.35})
	if r.Tunnel != 400 || r.Direct == nil || *r.Direct != 1000 || r.Ratio == nil || *r.Ratio != 0.4 {
		t.Fatalf("row %+v", r)
	}
	if r.Pass == nil || !*r.Pass || r.Target != "≥0.35×" {
		t.Errorf("pass %v, target %q", r.Pass, r.Target)
	}
	lat := newRow("tcp", "p50", "µs", []float64{60}, []float64{10}, &goal{ratio: true, atMost: true, limit: 5})
	if lat.Pass == nil || *lat.Pass || lat.Target != "≤5×" {
		t.Errorf("latency 6× direct: pass %v, target %q; want a miss of ≤5×", lat.Pass, lat.Target)
	}
	mem := newRow("tcp", "relay memory per conn", "KiB/conn", []float64{11.5}, nil, &goal{atMost: true, limit: 12})
	if mem.Direct != nil || mem.Ratio != nil || mem.Pass == nil || !*mem.Pass || mem.Target != "≤12" {
		t.Errorf("memory row %+v", mem)
	}
	none := newRow("quic", "p999", "µs", []float64{1}, []float64{0}, nil)
	if none.Ratio != nil || none.Pass != nil || none.Target != "" {
		t.Errorf("row without goal or usable direct figure: %+v", none)
	}
}

func TestFormatNumber(t *testing.T) {
	for v, want := range map[float64]string{1234.5: "1234", 123.4: "123", 12.345: "12.3", 1.2345: "1.23", 0: "0.00"} {
		if got := formatNumber(v); got != want {
			t.Errorf("formatNumber(%g) = %q, want %q", v, got, want)
		}
	}
}

func TestWriteTable(t *testing.T) {
	rep := report{
		Machine:  machine{CPU: "Test CPU", Cores: 2, Kernel: "Linux 6.1", Go: "go1.26", Date: "2025-01-02 03:04 UTC"},
		Settings: settings{Duration: "5s", Repeat: 3, RoundTrips: 20000, ChurnWorkers: 16},
		Results: []row{
			newRow("tcp", "bulk upload, 1 stream", "MB/s", []float64{512}, []float64{2048}, &goal{ratio: true, limit: 0.35}),
			newRow("tcp", "relay memory per conn, 1000 idle conns", "KiB/conn", []float64{9.5}, nil, &goal{atMost: true, limit: 12}),
			newRow("quic", "ping-pong 64 B, 1 conn, p999", "µs", []float64{250}, []float64{50}, nil),
		},
		Notes: []string{"quic: relay logged \"UDP buffers are small for QUIC\" 1×"},
	}
	var b strings.Builder
	if err := writeTable(&b, rep); err != nil {
		t.Fatal(err)
	}
	want := `homeport load: tunnel (relay + agent on loopback) against direct loopback TCP to the same target
machine: Test CPU, 2 cores, Linux 6.1, go1.26, 2025-01-02 03:04 UTC
runs: bulk and churn runs of 5s, latency 20000 round trips of 64 B per run; every figure the median of 3 run(s); churn 16 workers; MB = 10^6 bytes, GB = 10^9

transport  measure                                 unit      tunnel  direct  ratio  target
tcp        bulk upload, 1 stream                   MB/s         512    2048  0.25×  ≥0.35×  MISS
tcp        relay memory per conn, 1000 idle conns  KiB/conn    9.50       —      —  ≤12     ok

quic       ping-pong 64 B, 1 conn, p999            µs           250    50.0  5.00×

notes:
  - quic: relay logged "UDP buffers are small for QUIC" 1×
`
	if got := b.String(); got != want {
		t.Errorf("table:\n%s\nwant:\n%s", got, want)
	}
}

func TestSettingsString(t *testing.T) {
	s := settings{Duration: "5s", Repeat: 3, RoundTrips: 20000, ChurnWorkers: 16}
	if got := s.String(); strings.Contains(got, "RTT") || strings.Contains(got, "window") {
		t.Errorf("settings without delaying path or window: %q", got)
	}
	s.StreamWindow = "8MiB"
	s.WAN = &wanRuns{RTT: "50ms", RatesMbit: []int{100, 1000}, Queue: "20ms", Warmup: "1s"}
	for _, want := range []string{"--stream-window 8MiB", "queue of 20ms", "1s of warm-up", "plain TCP through the same path"} {
		if got := s.String(); !strings.Contains(got, want) {
			t.Errorf("settings %q: no %q", got, want)
		}
	}
}
