package control

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"
)

// Table writes aligned columns: a heading line, then one line per row.
// An empty table writes the heading and "(none)".
type Table struct {
	Title string
	Head  []string
	Rows  [][]string
}

// Write prints t to w, followed by a blank line.
func (t Table) Write(w io.Writer) {
	fmt.Fprintln(w, t.Title)
	if len(t.Rows) == 0 {
		fmt.Fprintf(w, "  (none)\n\n")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  "+strings.Join(t.Head, "\t"))
	for _, r := range t.Rows {
		fmt.Fprintln(tw, "  "+strings.Join(r, "\t"))
	}
	tw.Flush()
	fmt.Fprintln(w)
}

// Bytes formats a byte count for people: 999 B, 1.5 KiB, 12 MiB, 3.4 GiB.
func Bytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	f := float64(n)
	for _, u := range []string{"KiB", "MiB", "GiB", "TiB"} {
		f /= unit
		if f < unit || u == "TiB" {
			if f < 10 {
				return fmt.Sprintf("%.1f %s", f, u)
			}
			return fmt.Sprintf("%.0f %s", f, u)
		}
	}
	return fmt.Sprintf("%d B", n)
}

// Age formats how long ago t was, from now, to the second: 45s, 3m12s,
// 2h05m, 3d04h. A zero t is "-".
func Age(now, t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	d := now.Sub(t)
	if d < 0 {
		d = 0
	}
	d = d.Round(time.Second)
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm%02ds", int(d.Minutes()), int(d.Seconds())%60)
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh%02dm", int(d.Hours()), int(d.Minutes())%60)
	}
	return fmt.Sprintf("%dd%02dh", int(d.Hours())/24, int(d.Hours())%24)
}

// RTT formats a round-trip time; 0 (not measured) is "-".
func RTT(d Duration) string {
	if d <= 0 {
		return "-"
	}
	t := time.Duration(d)
	if t < 10*time.Millisecond {
		return fmt.Sprintf("%.2fms", float64(t)/float64(time.Millisecond))
	}
	return t.Round(100 * time.Microsecond).String()
}

// Or returns s, or "-" when it is empty.
func Or(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
