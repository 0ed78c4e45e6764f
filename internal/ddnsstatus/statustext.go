package ddnsstatus

import (
	"strings"
	"time"

	"github.com/homeport/homeport/internal/control"
)

// Table is the DDNS part of a status command's output.
func Table(now time.Time, names []NameStatus) control.Table {
	t := control.Table{Title: "DDNS", Head: []string{"NAME", "TYPE", "STATE", "ADDRESSES", "UPDATED", "ERROR"}}
	for _, n := range names {
		state := "in sync"
		if !n.Synced {
			state = "not in sync"
		}
		addrs := strings.Join(n.Current, ",")
		if !n.Synced && len(n.Want) > 0 {
			addrs = strings.Join(n.Current, ",") + " -> " + strings.Join(n.Want, ",")
		}
		t.Rows = append(t.Rows, []string{n.Name, n.Type, state, control.Or(addrs), control.Age(now, n.LastUpdate), control.Or(n.Error)})
	}
	return t
}
