package agent

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

// WriteText prints s as `agent status` shows it: a summary line, then
// aligned tables of sessions, tunnels and DDNS names.
func (s Status) WriteText(w io.Writer) {
	fmt.Fprintf(w, "agent %s (id %s), up %s\n", s.Version, s.ID, control.Age(s.Now, s.Started))
	file := s.Config.File
	if file == "" {
		file = "no file"
	}
	fmt.Fprintf(w, "configuration: %s, loaded %s ago, reloads %d\n", file, control.Age(s.Now, s.Config.Loaded), s.Config.Reloads)
	if s.Config.LastErr != "" && !s.Config.LastFail.Before(s.Config.Loaded) {
		fmt.Fprintf(w, "last reload refused %s ago: %s\n", control.Age(s.Now, s.Config.LastFail), s.Config.LastErr)
	}
	fmt.Fprintln(w)

	sessions := control.Table{Title: "SESSIONS", Head: []string{"RELAY", "STATE", "TRANSPORT", "SINCE", "RTT", "STREAMS", "RECONNECTS", "ERROR"}}
	for _, ss := range s.Sessions {
		sessions.Rows = append(sessions.Rows, []string{ss.Relay, cmp.Or(ss.Link, ss.State), control.Or(ss.Transport), control.Age(s.Now, ss.Since),
			control.RTT(ss.RTT), strconv.Itoa(ss.Streams), strconv.Itoa(ss.Reconnects), control.Or(ss.Error)})
	}
	sessions.Write(w)

	tunnels := control.Table{Title: "TUNNELS", Head: []string{"NAME", "PUBLIC", "TARGET", "STATE", "VISITORS", "IN", "OUT", "LAST DIAL ERROR"}}
	for _, t := range s.Tunnels {
		state := t.State
		if t.Error != "" {
			state += ": " + t.Error
		}
		if !t.NextRetry.IsZero() {
			state += fmt.Sprintf(" (retry in %s)", max(t.NextRetry.Sub(s.Now), 0).Round(time.Second))
		}
		dial := "-"
		if t.DialError != "" {
			dial = control.Age(s.Now, t.DialErrorTime) + " ago: " + t.DialError
		}
		public := fmt.Sprintf("%d/%s", t.Port, t.Protocol)
		if t.Host != "" {
			public = t.Protocol + "://" + t.Host
		}
		if t.Private {
			// No public port: who may reach it instead.
			public = "private/" + t.Protocol
			if len(t.VisitorKeys) > 0 {
				public += " (visitors " + strings.Join(t.VisitorKeys, ", ") + ")"
			}
		}
		tunnels.Rows = append(tunnels.Rows, []string{t.Name, public, t.Target, state,
			strconv.FormatInt(t.Visitors, 10), control.Bytes(t.BytesIn), control.Bytes(t.BytesOut), dial})
	}
	tunnels.Write(w)

	maps := control.Table{Title: "PORT MAPPINGS", Head: []string{"TUNNEL", "STATE", "METHOD", "OUTSIDE", "REACHABLE", "SINCE", "DETAIL"}}
	for _, t := range s.Tunnels {
		if m := t.PortMapping; m != nil {
			maps.Rows = append(maps.Rows, []string{t.Name, m.State, control.Or(m.Method), control.Or(m.External), m.Reachable,
				control.Age(s.Now, m.Since), control.Or(m.Detail)})
		}
	}
	if len(maps.Rows) > 0 {
		maps.Write(w)
	}

	wakes := control.Table{Title: "WAKE-ON-LAN", Head: []string{"TUNNEL", "MAC", "LAST WAKE", "RESULT", "TOOK", "SENT"}}
	for _, t := range s.Tunnels {
		if t.WakeMAC == "" {
			continue
		}
		row := []string{t.Name, t.WakeMAC, "never", "-", "-", "-"}
		if lw := t.LastWake; lw != nil {
			row[2] = control.Age(s.Now, lw.Time) + " ago"
			row[3] = lw.Result
			if lw.Error != "" {
				row[3] += ": " + lw.Error
			}
			if lw.Result == WakeWoke {
				row[4] = time.Duration(lw.Took).Round(100 * time.Millisecond).String()
			}
			row[5] = control.Or(lw.Sent)
		}
		wakes.Rows = append(wakes.Rows, row)
	}
	if len(wakes.Rows) > 0 {
		wakes.Write(w)
	}

	if len(s.DDNS) > 0 {
		ddnsstatus.Table(s.Now, s.DDNS).Write(w)
	}
}
