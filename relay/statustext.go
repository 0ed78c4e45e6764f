package relay

import (
	"cmp"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/homeport/homeport/internal/control"
	"github.com/homeport/homeport/internal/ddnsstatus"
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
		port := fmt.Sprintf("%d/%s", t.Port, t.Protocol)
		if t.Private {
			port = "private/" + t.Protocol
		}
		if t.Host != "" {
			port = t.Protocol + "://" + t.Host
		}
		tunnels.Rows = append(tunnels.Rows, []string{
			port, t.Name, t.Token + "/" + t.Agent,
			strconv.FormatInt(t.Visitors, 10), control.Bytes(t.BytesIn), control.Bytes(t.BytesOut),
			strconv.FormatInt(t.Refused, 10), strconv.FormatInt(t.Banned, 10),
		})
	}
	tunnels.Write(w)

	if len(s.VisitorKeys) > 0 {
		keys := control.Table{Title: "VISITOR KEYS", Head: []string{"KEY", "TOKEN", "TUNNELS", "KEY FILE", "ONLINE"}}
		for _, k := range s.VisitorKeys {
			online := 0
			for _, v := range s.Visitors {
				if v.Key == k.Name {
					online++
				}
			}
			tunnels := "all of the token's"
			if len(k.Tunnels) > 0 {
				tunnels = strings.Join(k.Tunnels, ",")
			}
			keys.Rows = append(keys.Rows, []string{k.Name, k.Token, tunnels, cmp.Or(k.File, "(in the config)"), strconv.Itoa(online)})
		}
		keys.Write(w)
	}
	if len(s.Visitors) > 0 {
		visitors := control.Table{Title: "VISITORS", Head: []string{"KEY", "VISITOR", "ADDRESS", "TRANSPORT", "CONNECTED", "STREAMS"}}
		for _, v := range s.Visitors {
			visitors.Rows = append(visitors.Rows, []string{v.Key, v.ID, v.Addr, v.Transport, control.Age(s.Now, v.Since), strconv.Itoa(v.Streams)})
		}
		visitors.Write(w)
	}
	if len(s.Visits) > 0 {
		fmt.Fprintln(w, "TO VISIT A PRIVATE TUNNEL (on the visitor's machine)")
		for _, v := range s.Visits {
			fmt.Fprintf(w, "  %s\n", v.Command)
		}
		fmt.Fprintln(w)
	}

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
		ddnsstatus.Table(s.Now, s.DDNS).Write(w)
	}
	if len(s.Certificates) > 0 {
		certs := control.Table{Title: "CERTIFICATES", Head: []string{"NAME", "STATE", "VALID UNTIL", "RENEWAL", "ERROR"}}
		for _, c := range s.Certificates {
			until, renew := "-", "-"
			if !c.NotAfter.IsZero() {
				until = c.NotAfter.UTC().Format(time.RFC3339)
			}
			if !c.NextRenewal.IsZero() {
				renew = "in " + control.Age(c.NextRenewal, s.Now)
				if c.NextRenewal.Before(s.Now) {
					renew = "due"
				}
			}
			certs.Rows = append(certs.Rows, []string{c.Name, c.State, until, renew, control.Or(c.Error)})
		}
		certs.Write(w)
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
