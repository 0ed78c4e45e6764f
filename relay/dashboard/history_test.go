package dashboard

import (
	"math"
	"testing"
	"time"

	"github.com/homeport/homeport/relay"
)

func tunnelAt(port uint16, since time.Time, in, out int64) relay.TunnelStatus {
	return relay.TunnelStatus{Name: "web", Protocol: "tcp", Port: port, Agent: "home-pc", Since: since, BytesIn: in, BytesOut: out}
}

func statusAt(now time.Time, ts ...relay.TunnelStatus) relay.Status {
	return relay.Status{Now: now, Tunnels: ts}
}

func pointsOf(t *testing.T, tr Traffic, key string) []Point {
	t.Helper()
	for _, tt := range tr.Tunnels {
		if tt.Key == key {
			return tt.Points
		}
	}
	t.Fatalf("no tunnel %s in %+v", key, tr.Tunnels)
	return nil
}

func near(a, b float64) bool { return math.Abs(a-b) < 1e-9 }

// TestHistoryRates: rates are the growth of the cumulative counters over
// the time between snapshots; a tunnel open before the first snapshot
// gets its first point at the second; one that opens between snapshots
// counts from zero; one reopened (new Since) does not go negative.
func TestHistoryRates(t *testing.T) {
	h := newHistory(5*time.Second, 15*time.Minute)
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	since := t0.Add(-time.Hour)

	h.add(statusAt(t0, tunnelAt(8080, since, 1e6, 2e6))) // bytes from before: unknown when
	if got := pointsOf(t, h.snapshot(), "tcp/8080"); len(got) != 0 {
		t.Fatalf("points after the first snapshot: %+v", got)
	}
	h.add(statusAt(t0.Add(5*time.Second), tunnelAt(8080, since, 1e6+5000, 2e6+10000)))
	// 4 s, not the nominal 5: the rate is over the time that passed.
	opened := t0.Add(7 * time.Second)
	h.add(statusAt(t0.Add(9*time.Second), tunnelAt(8080, since, 1e6+5000, 2e6+10000), tunnelAt(9090, opened, 800, 0)))
	// 9090 reopened by its agent: new counters, smaller than before.
	reopened := t0.Add(11 * time.Second)
	h.add(statusAt(t0.Add(14*time.Second), tunnelAt(8080, since, 1e6+6000, 2e6+10000), tunnelAt(9090, reopened, 100, 50)))

	tr := h.snapshot()
	if tr.Interval != 5 || tr.Window != 900 {
		t.Errorf("interval %v window %v", tr.Interval, tr.Window)
	}
	want := map[string][]Point{
		"tcp/8080": {
			{T: t0.Add(5 * time.Second).UnixMilli(), In: 1000, Out: 2000},
			{T: t0.Add(9 * time.Second).UnixMilli(), In: 0, Out: 0},
			{T: t0.Add(14 * time.Second).UnixMilli(), In: 200, Out: 0},
		},
		"tcp/9090": {
			{T: t0.Add(9 * time.Second).UnixMilli(), In: 200, Out: 0}, // 800 B since the snapshot at 5 s
			{T: t0.Add(14 * time.Second).UnixMilli(), In: 20, Out: 10},
		},
	}
	for key, w := range want {
		got := pointsOf(t, tr, key)
		if len(got) != len(w) {
			t.Fatalf("%s: %+v, want %+v", key, got, w)
		}
		for i := range w {
			if got[i].T != w[i].T || !near(got[i].In, w[i].In) || !near(got[i].Out, w[i].Out) {
				t.Errorf("%s point %d: %+v, want %+v", key, i, got[i], w[i])
			}
		}
	}
	if tr.Tunnels[0].Key != "tcp/8080" || tr.Tunnels[1].Key != "tcp/9090" {
		t.Errorf("order: %s, %s", tr.Tunnels[0].Key, tr.Tunnels[1].Key)
	}

	// The same snapshot again, or one from a clock that went back, adds
	// nothing.
	h.add(statusAt(t0.Add(14*time.Second), tunnelAt(8080, since, 9e9, 9e9)))
	h.add(statusAt(t0.Add(10*time.Second), tunnelAt(8080, since, 9e9, 9e9)))
	if got := pointsOf(t, h.snapshot(), "tcp/8080"); len(got) != 3 {
		t.Errorf("points after repeated snapshots: %+v", got)
	}
}

// TestHistoryWindow: a tunnel keeps at most the window's worth of points,
// however long it runs; a tunnel that goes gets zero points and is
// forgotten once it has been gone for the whole window.
func TestHistoryWindow(t *testing.T) {
	const interval, window = 5 * time.Second, 15 * time.Minute
	h := newHistory(interval, window)
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	since := t0.Add(-time.Minute)
	var in int64
	now := t0
	for i := range 1000 { // 83 minutes of samples
		now = t0.Add(time.Duration(i) * interval)
		in += 5000
		h.add(statusAt(now, tunnelAt(8080, since, in, 0), tunnelAt(9090, since, 0, 0)))
	}
	pts := pointsOf(t, h.snapshot(), "tcp/8080")
	if max := int(window/interval) + 1; len(pts) != max {
		t.Errorf("%d points, want %d (the window)", len(pts), max)
	}
	for _, p := range pts {
		if age := now.Sub(time.UnixMilli(p.T)); age > window || age < 0 {
			t.Fatalf("point %+v is %v old, outside the window", p, age)
		}
		if !near(p.In, 1000) {
			t.Fatalf("point %+v: want 1000 B/s in", p)
		}
	}

	// 9090 goes: zero points while it is remembered, marked gone.
	last := now
	for i := 1; ; i++ {
		now = last.Add(time.Duration(i) * interval)
		in += 5000
		h.add(statusAt(now, tunnelAt(8080, since, in, 0)))
		tr := h.snapshot()
		var gone *TunnelTraffic
		for j := range tr.Tunnels {
			if tr.Tunnels[j].Key == "tcp/9090" {
				gone = &tr.Tunnels[j]
			}
		}
		if gone == nil {
			if away := now.Sub(last); away <= window {
				t.Fatalf("9090 forgotten after %v, before the window of %v", away, window)
			}
			break
		}
		if !gone.Gone || gone.Points[len(gone.Points)-1].T != now.UnixMilli() || gone.Points[len(gone.Points)-1].In != 0 {
			t.Fatalf("gone tunnel: %+v", gone)
		}
		if i > 1000 {
			t.Fatal("9090 never forgotten")
		}
	}
	if tr := h.snapshot(); len(tr.Tunnels) != 1 || tr.Tunnels[0].Gone {
		t.Errorf("tunnels: %+v", tr.Tunnels)
	}
}

// TestHistoryPrivateTunnels: private tunnels have no port; two of them
// (and a public tunnel on the port one suggests) keep series of their own.
func TestHistoryPrivateTunnels(t *testing.T) {
	h := newHistory(time.Second, time.Minute)
	t0 := time.Unix(1_700_000_000, 0)
	since := t0.Add(-time.Hour)
	snap := func(at time.Time, in int64) relay.Status {
		return relay.Status{Now: at, Tunnels: []relay.TunnelStatus{
			{Name: "rdp", Protocol: "tcp", Port: 3389, Private: true, Token: "home", Since: since, BytesIn: in},
			{Name: "ssh", Protocol: "tcp", Private: true, Token: "home", Since: since, BytesIn: 2 * in},
			{Name: "web", Protocol: "tcp", Port: 3389, Token: "home", Since: since, BytesIn: 3 * in},
		}}
	}
	h.add(snap(t0, 0))
	h.add(snap(t0.Add(time.Second), 1000))
	tr := h.snapshot()
	if len(tr.Tunnels) != 3 {
		t.Fatalf("%d series for three tunnels: %+v", len(tr.Tunnels), tr.Tunnels)
	}
	for _, s := range tr.Tunnels {
		if len(s.Points) != 1 {
			t.Fatalf("%s: %d points", s.Key, len(s.Points))
		}
		want := map[string]float64{"rdp": 1000, "ssh": 2000, "web": 3000}[s.Name]
		if s.Points[0].In != want || s.Private != (s.Name != "web") {
			t.Errorf("%s: %+v, want in %v", s.Key, s, want)
		}
	}
}
