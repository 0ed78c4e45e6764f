package agent

import (
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/homeport/homeport/internal/ddnsstatus"
)

// metrics are the agent's Prometheus metrics: the stream-open latency,
// counted where it happens, and what the status holds, read at scrape
// time. Labels are the relay's address and tunnel names, never a
// visitor's address.
type metrics struct {
	streamOpen    prometheus.Histogram
	sessionsEnded *prometheus.CounterVec // relay, transport, cause
	wakes         *prometheus.CounterVec // tunnel, result
}

func newMetrics() *metrics {
	return &metrics{
		streamOpen: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "homeport_agent_stream_open_seconds",
			Help:    "Time from a visitor stream's arrival to its target's connection.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
		}),
		sessionsEnded: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "homeport_agent_sessions_ended_total",
			Help: "Sessions to the relay that ended, by transport and cause: shutdown (the agent stopped), upgrade (moved to QUIC), replaced, relay_shutdown, revoked, go_away (the relay's word), protocol_error; or, when neither end said why, what the link saw: keepalive_timeout, peer_closed, read_error, write_error, stateless_reset, mux_error, closed.",
		}, []string{"relay", "transport", "cause"}),
		wakes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "homeport_agent_wakes_total",
			Help: "Wakes of a tunnel's target by Wake-on-LAN, by result: woke (it answered within wake_time), no_answer (it did not), sent (by hand, agent wake), failed (no magic packet could be sent by hand).",
		}, []string{"tunnel", "result"}),
	}
}

// RegisterMetrics adds the agent's metrics to reg.
func (a *Agent) RegisterMetrics(reg prometheus.Registerer) error {
	for _, c := range []prometheus.Collector{a.metrics.streamOpen, a.metrics.sessionsEnded, a.metrics.wakes, &statusCollector{a}} {
		if err := reg.Register(c); err != nil {
			return err
		}
	}
	return nil
}

// Ready reports why the agent cannot carry traffic (nil: it can): no
// session to the relay yet.
func (a *Agent) Ready() error {
	s := a.link.board.snapshot(a.conf().cfg.Relay)
	if s.State != "up" {
		if s.Error != "" {
			return errors.New("no session to the relay: " + s.Error)
		}
		return errors.New("no session to the relay yet")
	}
	return nil
}

var (
	descSessionUp = prometheus.NewDesc("homeport_agent_session_up",
		"1 while the session to the relay is up, by transport.", []string{"relay", "transport"}, nil)
	descSessionRTT = prometheus.NewDesc("homeport_agent_session_rtt_seconds",
		"Round-trip time of the session to the relay, as last measured.", []string{"relay"}, nil)
	descStreams = prometheus.NewDesc("homeport_agent_session_streams",
		"Open visitor streams of the session.", []string{"relay"}, nil)
	descReconnects = prometheus.NewDesc("homeport_agent_reconnects_total",
		"Sessions to the relay made after the first.", []string{"relay"}, nil)
	tunnelLabels = []string{"tunnel", "protocol"}
	descTunnelUp = prometheus.NewDesc("homeport_agent_tunnel_up",
		"1 while the relay has the tunnel's public port open.", tunnelLabels, nil)
	descVisitors = prometheus.NewDesc("homeport_agent_tunnel_visitors",
		"Visitor connections (UDP: flows) open now.", tunnelLabels, nil)
	descAccepted = prometheus.NewDesc("homeport_agent_tunnel_visitors_total",
		"Visitor connections (UDP: flows) connected to the target since the agent started.", tunnelLabels, nil)
	descBytes = prometheus.NewDesc("homeport_agent_tunnel_bytes_total",
		"Bytes carried since the agent started, by direction: in (from visitors) or out (to visitors).", append(tunnelLabels, "direction"), nil)
	descDropped = prometheus.NewDesc("homeport_agent_tunnel_udp_dropped_total",
		"The target's UDP datagrams dropped while the relay took them slower than they came.", tunnelLabels, nil)
	descDialFailures = prometheus.NewDesc("homeport_agent_tunnel_dial_failures_total",
		"Failures to reach the tunnel's target.", tunnelLabels, nil)
)

type statusCollector struct{ a *Agent }

func (c *statusCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descSessionUp, descSessionRTT, descStreams, descReconnects, descTunnelUp,
		descVisitors, descAccepted, descBytes, descDropped, descDialFailures} {
		ch <- d
	}
	ddnsstatus.DescribeMetrics(ch)
}

func (c *statusCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.a.Status()
	for _, s := range st.Sessions {
		up := 0.0
		if s.State == "up" {
			up = 1
		}
		ch <- prometheus.MustNewConstMetric(descSessionUp, prometheus.GaugeValue, up, s.Relay, s.Transport)
		if s.RTT > 0 {
			ch <- prometheus.MustNewConstMetric(descSessionRTT, prometheus.GaugeValue, time.Duration(s.RTT).Seconds(), s.Relay)
		}
		ch <- prometheus.MustNewConstMetric(descStreams, prometheus.GaugeValue, float64(s.Streams), s.Relay)
		ch <- prometheus.MustNewConstMetric(descReconnects, prometheus.CounterValue, float64(s.Reconnects), s.Relay)
	}
	for _, t := range st.Tunnels {
		l := []string{t.Name, t.Protocol}
		up := 0.0
		if t.State == string(TunnelUp) {
			up = 1
		}
		ch <- prometheus.MustNewConstMetric(descTunnelUp, prometheus.GaugeValue, up, l...)
		ch <- prometheus.MustNewConstMetric(descVisitors, prometheus.GaugeValue, float64(t.Visitors), l...)
		ch <- prometheus.MustNewConstMetric(descAccepted, prometheus.CounterValue, float64(t.Accepted), l...)
		ch <- prometheus.MustNewConstMetric(descBytes, prometheus.CounterValue, float64(t.BytesIn), append(l, "in")...)
		ch <- prometheus.MustNewConstMetric(descBytes, prometheus.CounterValue, float64(t.BytesOut), append(l, "out")...)
		ch <- prometheus.MustNewConstMetric(descDialFailures, prometheus.CounterValue, float64(t.DialFailures), l...)
		if t.Protocol == "udp" {
			ch <- prometheus.MustNewConstMetric(descDropped, prometheus.CounterValue, float64(t.Dropped), l...)
		}
	}
	ddnsstatus.CollectMetrics(ch, st.DDNS)
}
