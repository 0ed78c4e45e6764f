package e2e

import (
	"bytes"
	"crypto/rand"
	"io"
	"net/netip"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/homeport/homeport/relay"
)

// TestRelayStatus: the relay's status names the agent and its tunnels, and
// counts visitors, bytes and refusals as the test makes them, over both
// transports.
func TestRelayStatus(t *testing.T) {
	t.Parallel() // see parallel in harness_test.go
	forEachTransport(t, testRelayStatus)
}

func testRelayStatus(t *testing.T, tr string) {
	r := startRelayOver(t, tr, nil)
	target := serve(t, echo)
	open, shut := freePort(t), freePort(t)
	closed := tcpTunnel("shut", shut, target)
	closed.Allow = []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")} // not loopback
	a := startAgent(t, agentConfig(r, tcpTunnel("web", open, target), closed))
	a.waitSession(20 * time.Second)

	st := r.srv.Status()
	if len(st.Agents) != 1 {
		t.Fatalf("agents: %+v", st.Agents)
	}
	ag := st.Agents[0]
	if ag.Token != "default" || ag.ID != "home-pc" || ag.Transport != tr || ag.Since.IsZero() || ag.Addr == "" {
		t.Fatalf("agent: %+v", ag)
	}
	waitFor(t, 20*time.Second, "a round trip measured", func() bool {
		rtt := time.Duration(r.srv.Status().Agents[0].RTT)
		return rtt > 0 && rtt < 5*time.Second
	})
	if len(st.Tunnels) != 2 {
		t.Fatalf("tunnels: %+v", st.Tunnels)
	}

	// One visitor sends 1 MiB and reads it back, and stays connected.
	const n = 1 << 20
	msg := make([]byte, n)
	rand.Read(msg)
	c := dial(t, publicAddr(open))
	go c.Write(msg)
	got := make([]byte, n)
	if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("echo: %v", err)
	}
	web := func() relay.TunnelStatus {
		for _, ts := range r.srv.Status().Tunnels {
			if ts.Name == "web" {
				return ts
			}
		}
		t.Fatal("tunnel web is gone")
		return relay.TunnelStatus{}
	}
	if ts := web(); ts.Visitors != 1 || ts.Accepted != 1 || ts.Port != open || ts.Protocol != "tcp" || ts.Agent != "home-pc" {
		t.Fatalf("while the visitor is connected: %+v", ts)
	}
	if got := r.srv.Status().Agents[0].Streams; got != 1 {
		t.Fatalf("agent streams with one visitor: %d", got)
	}
	// Bytes count as they pass, not when the connection ends.
	waitFor(t, 10*time.Second, "the echoed bytes counted while connected", func() bool {
		ts := web()
		return ts.BytesIn == n && ts.BytesOut == n
	})
	c.CloseWrite()
	if _, err := io.Copy(io.Discard, c); err != nil {
		t.Fatal(err)
	}
	c.Close()
	waitFor(t, 10*time.Second, "the visitor's end counted", func() bool { return web().Visitors == 0 })
	if ts := web(); ts.BytesIn != n || ts.BytesOut != n {
		t.Fatalf("bytes: in %d out %d, want %d each", ts.BytesIn, ts.BytesOut, n)
	}

	// A visitor the allow list keeps out is counted and listed.
	if open, _ := probe(publicAddr(shut), 5*time.Second); open {
		t.Fatal("a visitor outside the allow list got through")
	}
	waitFor(t, 10*time.Second, "the refusal counted", func() bool {
		for _, ts := range r.srv.Status().Tunnels {
			if ts.Name == "shut" {
				return ts.Refused == 1
			}
		}
		return false
	})
	refs := r.srv.Status().Refusals
	if len(refs) != 1 || refs[0].Where != "shut" || refs[0].Reason != "address not allowed by the tunnel" {
		t.Fatalf("refusals: %+v", refs)
	}
	// The metrics count it by reason.
	reg := prometheus.NewRegistry()
	if err := r.srv.RegisterMetrics(reg); err != nil {
		t.Fatal(err)
	}
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]*dto.MetricFamily{}
	for _, f := range fams {
		byName[f.GetName()] = f
	}
	if v, ok := metricValue(byName, "homeport_relay_visitors_refused_total", map[string]string{"tunnel": "shut", "reason": "not_allowed", "token": "default"}); !ok || v != 1 {
		t.Fatalf("homeport_relay_visitors_refused_total{shut,not_allowed}: %v %v", v, ok)
	}
}
