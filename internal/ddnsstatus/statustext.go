package ddnsstatus

import (
	"strings"
	"time"

	"github.com/homeport/homeport/internal/control"
)

// Table is the DDNS part of a status command's output.
func Table(now time.Time, names []NameStatus) control.Table {
	t := control.Table{Title: "DDNS", Head: []string{"NAME", "TYPE", "SOURCE", "STATE", "ADDRESSES", "PUBLISHED", "UPDATED", "ERROR"}}
	for _, n := range names {
		state := "in sync"
		if !n.Synced {
			state = "not in sync"
		}
		addrs := strings.Join(n.Current, ",")
		if !n.Synced && len(n.Want) > 0 {
			addrs = strings.Join(n.Current, ",") + " -> " + strings.Join(n.Want, ",")
		}
		t.Rows = append(t.Rows, []string{n.Name, n.Type, control.Or(n.Source), state, control.Or(addrs), Published(now, n), control.Age(now, n.LastUpdate), control.Or(n.Error)})
	}
	return t
}

// Published tells what the records were last confirmed to hold, and how
// long ago: "11.7.0.2 (3m ago)", "withdrawn (20s ago)", or "-" before the
// first confirmation.
func Published(now time.Time, n NameStatus) string {
	if n.PublishedAt.IsZero() {
		return "-"
	}
	what := strings.Join(n.Published, ",")
	if what == "" {
		what = "withdrawn"
	}
	return what + " (" + control.Age(now, n.PublishedAt) + " ago)"
}
