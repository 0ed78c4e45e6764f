package relay

import (
	"fmt"
	"io"
	"strconv"
	"time"

	"github.com/homeport/homeport/internal/control"
	"github.com/homeport/homeport/internal/ddnsrun"
)

// maxRefusalsShown is how many recent refusals the text form lists.
const maxRefusalsShown = 10

// WriteText prints s as `relay status` shows it: a summary line, then
// aligned tables of agents, tunnels, bans, recent refusals and DDNS names.
func (s Status) WriteText(w io.Writer) {
	fmt.Fprintf(w, "relay %s, up %s, key %s\n", s.Version, control.Age(s.Now, s.Started), s.Fingerprint)
	for _, l := range s.Listen {
		fmt.Fprintf(w, "agents connect to %s (%s)\n", l.Addr, l.Transport)
	}
	writeConfigLine(w, s.Now, s.Config)
	fmt.Fprintln(w)

	agents := control.Table{Title: "AGENTS", Head: []string{"TOKEN", "AGENT", "ADDRESS", "TRANSPORT", "CONNECTED", "RTT", "STREAMS"}}
	for _, a := range s.Agents {
		id := a.ID
		if a.Retired {
			id += " (replaced)"
		}
		agents.Rows = append(agents.Rows, []string{a.Token, id, a.Addr, a.Transport, control.Age(s.Now, a.Since), control.RTT(a.RTT), strconv.Itoa(a.Streams)})
	}
	agents.Write(w)

	tunnels := control.Table{Title: "TUNNELS", Head: []string{"PORT", "NAME", "OWNER", "VISITORS", "IN", "OUT", "REFUSED", "BANNED"}}
	for _, t := range s.Tunnels {
		tunnels.Rows = append(tunnels.Rows, []string{
			fmt.Sprintf("%d/%s", t.Port, t.Protocol), t.Name, t.Token + "/" + t.Agent,
			strconv.FormatInt(t.Visitors, 10), control.Bytes(t.BytesIn), control.Bytes(t.BytesOut),
			strconv.FormatInt(t.Refused, 10), strconv.FormatInt(t.Banned, 10),
		})
	}
	tunnels.Write(w)

	bans := control.Table{Title: "BANS", Head: []string{"WHERE", "ADDRESS", "ENDS IN"}}
	for _, b := range s.Bans {
		bans.Rows = append(bans.Rows, []string{b.Where, b.Addr, b.Until.Sub(s.Now).Round(time.Second).String()})
	}
	bans.Write(w)

	refusals := control.Table{Title: "RECENT REFUSALS", Head: []string{"AGO", "WHERE", "ADDRESS", "REASON"}}
	from := max(len(s.Refusals)-maxRefusalsShown, 0)
	for i := len(s.Refusals) - 1; i >= from; i-- {
		r := s.Refusals[i]
		reason := r.Reason
		if r.Banned {
			reason += " (banned)"
		}
		refusals.Rows = append(refusals.Rows, []string{control.Age(s.Now, r.Time), r.Where, r.Addr, reason})
	}
	refusals.Write(w)

	if len(s.DDNS) > 0 {
		ddnsrun.Table(s.Now, s.DDNS).Write(w)
	}
}

func writeConfigLine(w io.Writer, now time.Time, c ConfigStatus) {
	file := c.File
	if file == "" {
		file = "no file"
	}
	fmt.Fprintf(w, "configuration: %s, loaded %s ago, reloads %d\n", file, control.Age(now, c.Loaded), c.Reloads)
	if c.LastErr != "" && c.LastFail.After(c.Loaded) {
		fmt.Fprintf(w, "last reload refused %s ago: %s\n", control.Age(now, c.LastFail), c.LastErr)
	}
}
