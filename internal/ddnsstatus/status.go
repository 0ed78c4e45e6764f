package ddnsstatus

import (
	"net/netip"
	"time"

	"github.com/homeport/homeport/ddns"
)

// NameStatus is the state of one DNS name and record type, as the status
// command and the dashboard show it.
type NameStatus struct {
	Name        string    `json:"name"`
	Type        string    `json:"type"`
	Want        []string  `json:"want"`
	Current     []string  `json:"current"`
	Synced      bool      `json:"synced"`
	LastUpdate  time.Time `json:"last_update,omitzero"`
	LastCheck   time.Time `json:"last_check,omitzero"`
	NextAttempt time.Time `json:"next_attempt,omitzero"`
	Error       string    `json:"error,omitempty"`
	Updates     int64     `json:"updates"`
	Failures    int64     `json:"failures"`
}

// Snapshot returns the state of every name u keeps; nil for a nil u.
func Snapshot(u *ddns.Updater) []NameStatus {
	if u == nil {
		return nil
	}
	var out []NameStatus
	for _, s := range u.Status() {
		n := NameStatus{
			Name: s.Name, Type: s.Type, Synced: s.Synced,
			Want: addrs(s.Want), Current: addrs(s.Current),
			LastUpdate: s.LastUpdate, LastCheck: s.LastCheck, NextAttempt: s.NextAttempt,
			Updates: s.Updates, Failures: s.Failures,
		}
		if s.LastError != nil {
			n.Error = s.LastError.Error()
		}
		out = append(out, n)
	}
	return out
}

func addrs(as []netip.Addr) []string {
	out := make([]string, len(as))
	for i, a := range as {
		out[i] = a.String()
	}
	return out
}
