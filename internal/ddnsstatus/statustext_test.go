package ddnsstatus

import (
	"slices"
	"testing"
	"time"
)

// TestTableSourceAndPublished: the DDNS table says where each name's
// address comes from and what was last published: an address, a
// withdrawal, or nothing yet.
func TestTableSourceAndPublished(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	tbl := Table(now, []NameStatus{
		{Name: "home.example.com", Type: "A", Source: "mapping:web", Synced: true, Current: []string{"11.7.0.2"},
			Published: []string{"11.7.0.2"}, PublishedAt: now.Add(-3 * time.Minute)},
		{Name: "home.example.com", Type: "AAAA", Source: "mapping:web", Synced: true, Published: []string{}, PublishedAt: now.Add(-20 * time.Second)},
		{Name: "other.example.com", Type: "A", Source: "relay", Want: []string{"203.0.113.5"}, Error: "reading: timeout"},
	})
	want := [][]string{
		{"home.example.com", "A", "mapping:web", "in sync", "11.7.0.2", "11.7.0.2 (3m00s ago)", "-", "-"},
		{"home.example.com", "AAAA", "mapping:web", "in sync", "-", "withdrawn (20s ago)", "-", "-"},
		{"other.example.com", "A", "relay", "not in sync", " -> 203.0.113.5", "-", "-", "reading: timeout"},
	}
	if !slices.Equal(tbl.Head, []string{"NAME", "TYPE", "SOURCE", "STATE", "ADDRESSES", "PUBLISHED", "UPDATED", "ERROR"}) {
		t.Errorf("head %q", tbl.Head)
	}
	for i, r := range tbl.Rows {
		if !slices.Equal(r, want[i]) {
			t.Errorf("row %d: %q, want %q", i, r, want[i])
		}
	}
}
