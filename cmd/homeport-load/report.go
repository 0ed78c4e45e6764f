package main

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"strings"
	"unicode/utf8"
)

// machine describes where the figures were taken.
type machine struct {
	CPU        string   `json:"cpu"`
	Cores      int      `json:"cores"`
	Kernel     string   `json:"kernel"`
	Go         string   `json:"go"`
	Date       string   `json:"date"`
	LoadAvg    string   `json:"load_avg,omitempty"`
	UDPBuffers []string `json:"udp_buffers,omitempty"`
	FileLimit  uint64   `json:"file_limit,omitempty"`
}

func (m machine) String() string {
	s := fmt.Sprintf("%s, %d cores, %s, %s, %s", orUnknown(m.CPU), m.Cores, orUnknown(m.Kernel), m.Go, m.Date)
	if m.LoadAvg != "" {
		s += " (load average " + m.LoadAvg + " at start)"
	}
	return s
}

func orUnknown(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}

// settings are the run's parameters, as given or defaulted.
type settings struct {
	Transports   []string `json:"transports"`
	Duration     string   `json:"duration"`
	Repeat       int      `json:"repeat"`
	RoundTrips   int      `json:"round_trips"`
	Conns        []int    `json:"conns"`
	Streams      int      `json:"streams"`
	ChurnWorkers int      `json:"churn_workers"`
	StreamWindow string   `json:"stream_window,omitempty"`
	WAN          *wanRuns `json:"wan,omitempty"`
	Agents       int      `json:"agents,omitempty"`
	FleetWindow  string   `json:"fleet_window,omitempty"`
}

// wanRuns are the settings of the bulk runs over a delaying path.
type wanRuns struct {
	RTT       string `json:"rtt"`
	RatesMbit []int  `json:"rates_mbit"`
	Queue     string `json:"queue"`
	Warmup    string `json:"warmup"`
}

func (s settings) String() string {
	str := fmt.Sprintf("bulk and churn runs of %s, latency %d round trips of 64 B per run; every figure the median of %d run(s); churn %d workers; MB = 10^6 bytes, GB = 10^9",
		s.Duration, s.RoundTrips, s.Repeat, s.ChurnWorkers)
	if s.StreamWindow != "" {
		str += "; relay and agent with --stream-window " + s.StreamWindow
	}
	if s.Agents > 0 {
		str += fmt.Sprintf("\nfleet: one relay, %d agents in one process, each with its own session and one tunnel, then one idle visitor connection through each tunnel; CPU over %s idle; each figure the median of %d run(s)",
			s.Agents, s.FleetWindow, s.Repeat)
	}
	if s.WAN != nil {
		str += fmt.Sprintf("\nrows with an RTT: the agent reaches the relay over a delaying path on loopback (each way: a link of the rate given, a drop-tail queue of %s at that rate, half the RTT), visitors and target do not; direct = plain TCP through the same path to the target; after %s of warm-up",
			s.WAN.Queue, s.WAN.Warmup)
	}
	return str
}

// goal is a figure's target: the ratio to direct, or the figure itself,
// at least or at most limit.
type goal struct {
	ratio  bool
	atMost bool
	limit  float64
}

func (g goal) String() string {
	op := "≥"
	if g.atMost {
		op = "≤"
	}
	if g.ratio {
		return fmt.Sprintf("%s%g×", op, g.limit)
	}
	return fmt.Sprintf("%s%g", op, g.limit)
}

// row is one figure of the table.
type row struct {
	Transport  string    `json:"transport"`
	Measure    string    `json:"measure"`
	Unit       string    `json:"unit"`
	Tunnel     float64   `json:"tunnel"`
	Direct     *float64  `json:"direct,omitempty"`
	Ratio      *float64  `json:"ratio,omitempty"`
	Target     string    `json:"target,omitempty"`
	Pass       *bool     `json:"pass,omitempty"`
	TunnelRuns []float64 `json:"tunnel_runs,omitempty"`
	DirectRuns []float64 `json:"direct_runs,omitempty"`
}

// newRow makes a row from the runs of the tunnel and (if any) of the
// direct path: their medians, the ratio tunnel/direct, and whether g (if
// not nil) is met.
func newRow(transport, measure, unit string, tunnelRuns, directRuns []float64, g *goal) row {
	r := row{Transport: transport, Measure: measure, Unit: unit, Tunnel: median(tunnelRuns)}
	if len(tunnelRuns) > 1 {
		r.TunnelRuns = tunnelRuns
	}
	if len(directRuns) > 0 {
		d := median(directRuns)
		r.Direct = &d
		if len(directRuns) > 1 {
			r.DirectRuns = directRuns
		}
		if d != 0 {
			ratio := r.Tunnel / d
			r.Ratio = &ratio
		}
	}
	if g != nil {
		r.Target = g.String()
		v := &r.Tunnel
		if g.ratio {
			v = r.Ratio
		}
		if v != nil && !math.IsNaN(*v) {
			pass := *v >= g.limit
			if g.atMost {
				pass = *v <= g.limit
			}
			r.Pass = &pass
		}
	}
	return r
}

// report is everything a run found; it is also the JSON written.
type report struct {
	Machine  machine  `json:"machine"`
	Settings settings `json:"settings"`
	Results  []row    `json:"results"`
	Notes    []string `json:"notes,omitempty"`
}

// formatNumber prints v with about four significant digits.
func formatNumber(v float64) string {
	switch a := math.Abs(v); {
	case math.IsNaN(v):
		return "—"
	case a >= 100:
		return fmt.Sprintf("%.0f", v)
	case a >= 10:
		return fmt.Sprintf("%.1f", v)
	default:
		return fmt.Sprintf("%.2f", v)
	}
}

// writeTable prints the report as one table, transport by transport,
// with the machine, the settings and the notes.
func writeTable(w io.Writer, rep report) error {
	header := []string{"transport", "measure", "unit", "tunnel", "direct", "ratio", "target", ""}
	rightAligned := []bool{false, false, false, true, true, true, false, false}
	cells := [][]string{header}
	for _, r := range rep.Results {
		direct, ratio, verdict := "—", "—", ""
		if r.Direct != nil {
			direct = formatNumber(*r.Direct)
		}
		if r.Ratio != nil {
			ratio = fmt.Sprintf("%.2f×", *r.Ratio)
		}
		if r.Pass != nil {
			verdict = "ok"
			if !*r.Pass {
				verdict = "MISS"
			}
		}
		cells = append(cells, []string{r.Transport, r.Measure, r.Unit, formatNumber(r.Tunnel), direct, ratio, r.Target, verdict})
	}
	width := make([]int, len(header))
	for _, line := range cells {
		for i, c := range line {
			width[i] = max(width[i], utf8.RuneCountInString(c))
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "homeport load: tunnel (relay + agent on loopback) against direct loopback TCP to the same target\n")
	fmt.Fprintf(&b, "machine: %s\n", rep.Machine)
	fmt.Fprintf(&b, "runs: %s\n\n", rep.Settings)
	for i, line := range cells {
		if i > 1 && line[0] != cells[i-1][0] {
			b.WriteString("\n") // a new transport
		}
		var parts []string
		for j, c := range line {
			pad := strings.Repeat(" ", width[j]-utf8.RuneCountInString(c))
			if rightAligned[j] {
				parts = append(parts, pad+c)
			} else {
				parts = append(parts, c+pad)
			}
		}
		b.WriteString(strings.TrimRight(strings.Join(parts, "  "), " ") + "\n")
	}
	if len(rep.Notes) > 0 {
		b.WriteString("\nnotes:\n")
		for _, n := range rep.Notes {
			b.WriteString("  - " + n + "\n")
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func writeJSON(path string, rep report) error {
	b, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}
