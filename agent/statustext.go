package agent

import (
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/homeport/homeport/internal/control"
	"github.com/homeport/homeport/internal/ddnsrun"
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
		sessions.Rows = append(sessions.Rows, []string{ss.Relay, ss.State, control.Or(ss.Transport), control.Age(s.Now, ss.Since),
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

	if len(s.DDNS) > 0 {
		ddnsrun.Table(s.Now, s.DDNS).Write(w)
	}
}
