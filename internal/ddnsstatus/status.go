package ddnsstatus

import (
	"net/netip"
	"time"

	"github.com/homeport/homeport/ddns"
)

// NameStatus is the state of one DNS name and record type, as the status
// command and the dashboard show it.
type NameStatus struct {
	Name string `json:"name"`
	Type string `json:"type"`
	// Source is where the addresses come from, as the updater names it:
	// "relay", "mapping:web" (a tunnel's verified port mapping), "first
	// of (mapping:web, relay)".
	Source     string    `json:"source,omitempty"`
	Want       []string  `json:"want"`
	Current    []string  `json:"current"`
	Synced     bool      `json:"synced"`
	LastUpdate time.Time `json:"last_update,omitzero"`
	// Published is what the records were last confirmed to hold as
	// wanted, since PublishedAt (zero: nothing confirmed yet); empty with
	// a PublishedAt: the address was withdrawn (a mapping source's
	// mapping is not verified).
	Published   []string  `json:"published"`
	PublishedAt time.Time `json:"published_at,omitzero"`
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
	source := ""
	if u.Source != nil {
		source = u.Source.Name()
	}
	for _, s := range u.Status() {
		n := NameStatus{
			Name: s.Name, Type: s.Type, Source: source, Synced: s.Synced,
			Want: addrs(s.Want), Current: addrs(s.Current),
			Published: addrs(s.Published), PublishedAt: s.PublishedAt,
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
