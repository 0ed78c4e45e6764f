package dashboard

import (
	"cmp"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/homeport/homeport/relay"
)

// Point is one sample of a tunnel's traffic: the average rate each way, in
// bytes a second, between the previous sample and T (Unix milliseconds).
type Point struct {
	T   int64   `json:"t"`
	In  float64 `json:"in"`
	Out float64 `json:"out"`
}

// TunnelTraffic is the recent traffic of one public port.
type TunnelTraffic struct {
	// Key identifies a tunnel over time: protocol/port, for a web tunnel
	// protocol/host, or for a private tunnel (no port)
	// protocol/private/token/name.
	Key      string `json:"key"`
	Name     string `json:"name"`
	Protocol string `json:"protocol"`
	Port     uint16 `json:"port"`
	Host     string `json:"host,omitempty"`
	Private  bool   `json:"private,omitempty"`
	Agent    string `json:"agent"`
	// Gone: the tunnel is not open now (its points stay for the window).
	Gone   bool    `json:"gone,omitempty"`
	Points []Point `json:"points"` // oldest first
}

// Traffic is the recent traffic of every tunnel seen within the window.
type Traffic struct {
	Interval float64         `json:"interval"` // seconds between samples
	Window   float64         `json:"window"`   // seconds the points cover at most
	Tunnels  []TunnelTraffic `json:"tunnels"`
}

// history keeps, per tunnel, the rates computed from the cumulative byte
// counters of successive status snapshots. Counters only grow while a
// tunnel stays open; a tunnel opened again (its Since changed) starts
// them from zero.
type history struct {
	interval, window time.Duration
	size             int // points kept per tunnel

	mu      sync.Mutex
	tunnels map[string]*tunnelHistory
	last    time.Time // when the previous snapshot was taken
}

type tunnelHistory struct {
	info     TunnelTraffic // name, port...; Points unused
	since    time.Time     // the tunnel's Since at the previous sample
	in, out  int64         // its counters then
	lastSeen time.Time
	ring     []Point // len == size; the newest at next-1
	next, n  int
}

func newHistory(interval, window time.Duration) *history {
	return &history{interval: interval, window: window, size: int(window/interval) + 1,
		tunnels: map[string]*tunnelHistory{}}
}

func tunnelKey(ts relay.TunnelStatus) string {
	if ts.Private {
		return fmt.Sprintf("%s/private/%s/%s", ts.Protocol, ts.Token, ts.Name)
	}
	if ts.Host != "" {
		return ts.Protocol + "/" + ts.Host
	}
	return fmt.Sprintf("%s/%d", ts.Protocol, ts.Port)
}

// add records a snapshot: a point for each tunnel whose bytes since the
// previous snapshot are known, a zero point for each tunnel gone since, and
// forgets tunnels gone for longer than the window.
func (h *history) add(st relay.Status) {
	h.mu.Lock()
	defer h.mu.Unlock()
	now := st.Now
	if !h.last.IsZero() && !now.After(h.last) {
		return // the clock went back, or the same snapshot twice
	}
	prev := h.last
	h.last = now
	seen := map[string]bool{}
	for _, ts := range st.Tunnels {
		k := tunnelKey(ts)
		seen[k] = true
		th := h.tunnels[k]
		if th == nil {
			th = &tunnelHistory{ring: make([]Point, h.size)}
			h.tunnels[k] = th
		}
		// The bytes since the previous snapshot: a tunnel that was open
		// then, with the same counters, moved by the difference; one that
		// opened since started from zero. A tunnel that was open before
		// the first snapshot moved by an unknown amount: no point yet.
		var din, dout int64
		switch {
		case prev.IsZero():
			din, dout = -1, -1
		case th.lastSeen.Equal(prev) && th.since.Equal(ts.Since) && ts.BytesIn >= th.in && ts.BytesOut >= th.out:
			din, dout = ts.BytesIn-th.in, ts.BytesOut-th.out
		case ts.Since.After(prev):
			din, dout = ts.BytesIn, ts.BytesOut
		default: // reopened between snapshots that both missed it
			din, dout = -1, -1
		}
		if din >= 0 {
			secs := now.Sub(prev).Seconds()
			th.push(Point{T: now.UnixMilli(), In: float64(din) / secs, Out: float64(dout) / secs})
		}
		th.info = TunnelTraffic{Key: k, Name: ts.Name, Protocol: ts.Protocol, Port: ts.Port, Host: ts.Host, Private: ts.Private, Agent: ts.Agent}
		th.since, th.in, th.out, th.lastSeen = ts.Since, ts.BytesIn, ts.BytesOut, now
	}
	for k, th := range h.tunnels {
		if seen[k] {
			continue
		}
		if now.Sub(th.lastSeen) > h.window {
			delete(h.tunnels, k)
			continue
		}
		th.push(Point{T: now.UnixMilli()})
	}
}

func (th *tunnelHistory) push(p Point) {
	th.ring[th.next] = p
	th.next = (th.next + 1) % len(th.ring)
	th.n = min(th.n+1, len(th.ring))
}

// snapshot returns every tunnel's points within the window before the
// newest snapshot, sorted by port and protocol.
func (h *history) snapshot() Traffic {
	h.mu.Lock()
	defer h.mu.Unlock()
	tr := Traffic{Interval: h.interval.Seconds(), Window: h.window.Seconds(), Tunnels: []TunnelTraffic{}}
	cutoff := h.last.Add(-h.window).UnixMilli()
	for _, th := range h.tunnels {
		t := th.info
		t.Gone = !th.lastSeen.Equal(h.last)
		t.Points = make([]Point, 0, th.n)
		for i := range th.n {
			p := th.ring[(th.next-th.n+i+len(th.ring))%len(th.ring)]
			if p.T >= cutoff {
				t.Points = append(t.Points, p)
			}
		}
		tr.Tunnels = append(tr.Tunnels, t)
	}
	slices.SortFunc(tr.Tunnels, func(a, b TunnelTraffic) int {
		return cmp.Or(cmp.Compare(a.Port, b.Port), cmp.Compare(a.Protocol, b.Protocol))
	})
	return tr
}
