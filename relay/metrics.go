package relay

import (
	"errors"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/homeport/homeport/internal/ddnsstatus"

	"github.com/homeport/homeport/internal/control"
)

// metrics are the relay's Prometheus metrics. Event counters are counted
// where the events happen; everything the status holds (sessions,
// streams, per-tunnel traffic) is read from it at scrape time by
// statusCollector, so that the data path pays nothing for a scrape it
// does not get. Labels are bounded: token, agent and tunnel names, which
// the configuration and the per-token quotas bound, and fixed sets of
// reasons; never a visitor's address.
type metrics struct {
	logins        *prometheus.CounterVec   // result
	sessionsUp    *prometheus.CounterVec   // transport
	sessionsEnded *prometheus.CounterVec   // transport, cause
	bans          *prometheus.CounterVec   // where
	streamOpen    *prometheus.HistogramVec // transport
	refused       *prometheus.CounterVec   // token, tunnel, reason
}

// refusalReason is a visitor guard's refusal as a metric label: a fixed
// set, whatever the guard's words.
func refusalReason(why string) string {
	switch why {
	case "address denied by the tunnel":
		return "denied"
	case "address not allowed by the tunnel":
		return "not_allowed"
	case "banned for too many connections":
		return "banned"
	case "too many open connections from this address":
		return "too_many_conns"
	case "too many new connections from this address":
		return "rate"
	}
	return "other"
}

func newMetrics() *metrics {
	return &metrics{
		logins: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "homeport_relay_logins_total",
			Help: "Agent logins on the agent port by result: ok, wrong_token, refused (right token, but a quota or a taken id), busy (refused before the handshake: limits), failed (handshake failed, timed out or malformed).",
		}, []string{"result"}),
		sessionsUp: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "homeport_relay_sessions_started_total",
			Help: "Agent sessions that came up, by transport.",
		}, []string{"transport"}),
		sessionsEnded: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "homeport_relay_sessions_ended_total",
			Help: "Agent sessions that ended, by transport and cause: agent_left, replaced, revoked, shutdown, protocol_error; or, when neither end said why, what the link saw: keepalive_timeout, peer_closed, read_error, write_error, stateless_reset, mux_error, closed.",
		}, []string{"transport", "cause"}),
		bans: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "homeport_relay_bans_total",
			Help: "Addresses banned, on the agent port (agent_port) or from a public port (tunnel).",
		}, []string{"where"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "homeport_relay_visitors_refused_total",
			Help: "Visitors turned away by a tunnel's guard, by reason: denied, not_allowed (the tunnel's deny and allow lists), banned, too_many_conns, rate.",
		}, []string{"token", "tunnel", "reason"}),
		streamOpen: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "homeport_relay_stream_open_seconds",
			Help:    "Time from a visitor's connection to the agent's answer (the target dialed), by transport.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"transport"}),
	}
}

// RegisterMetrics adds the relay's metrics to reg.
func (s *Server) RegisterMetrics(reg prometheus.Registerer) error {
	m := s.metrics
	for _, c := range []prometheus.Collector{m.logins, m.sessionsUp, m.sessionsEnded, m.bans, m.streamOpen, m.refused, &statusCollector{s}} {
		if err := reg.Register(c); err != nil {
			return err
		}
	}
	return nil
}

var (
	descAgents = prometheus.NewDesc("homeport_relay_agents",
		"Agent sessions up now, by transport (replaced sessions still carrying connections not counted).", []string{"transport"}, nil)
	descAgentStreams = prometheus.NewDesc("homeport_relay_agent_streams",
		"Open visitor streams of an agent's sessions.", []string{"token", "agent"}, nil)
	descAgentRTT = prometheus.NewDesc("homeport_relay_agent_rtt_seconds",
		"Round-trip time of an agent's current session, as last measured.", []string{"token", "agent"}, nil)
	tunnelLabels        = []string{"token", "agent", "tunnel", "protocol"}
	descTunnelUp        = prometheus.NewDesc("homeport_relay_tunnel_up", "1 for each tunnel open now: its public port, or private for a private tunnel.", append(tunnelLabels, "port"), nil)
	descVisitorSessions = prometheus.NewDesc("homeport_relay_visitor_sessions",
		"Visitors of private tunnels logged in now, by visitor key.", []string{"token", "key"}, nil)
	descVisitorsNow = prometheus.NewDesc("homeport_relay_tunnel_visitors",
		"Visitor connections (UDP: flows) open now.", tunnelLabels, nil)
	descVisitorsAccepted = prometheus.NewDesc("homeport_relay_tunnel_visitors_accepted_total",
		"Visitor connections (UDP: flows) let through since the tunnel opened.", tunnelLabels, nil)
	descVisitorsRefused = prometheus.NewDesc("homeport_relay_tunnel_visitors_refused_total",
		"Visitors turned away by the tunnel's guard (lists, limits, bans) since the tunnel opened.", tunnelLabels, nil)
	descVisitorBans = prometheus.NewDesc("homeport_relay_tunnel_bans_total",
		"Visitor addresses banned from the tunnel since it opened.", tunnelLabels, nil)
	descBytes = prometheus.NewDesc("homeport_relay_tunnel_bytes_total",
		"Bytes carried since the tunnel opened, by direction: in (from visitors) or out (to visitors).", append(tunnelLabels, "direction"), nil)
	descDropped = prometheus.NewDesc("homeport_relay_tunnel_udp_dropped_total",
		"UDP datagrams dropped (over a budget or the flow limit) since the tunnel opened.", tunnelLabels, nil)
)

// statusCollector reads the relay's status at scrape time.
type statusCollector struct{ s *Server }

func (c *statusCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descAgents, descAgentStreams, descAgentRTT, descTunnelUp, descVisitorSessions, descVisitorsNow,
		descVisitorsAccepted, descVisitorsRefused, descVisitorBans, descBytes, descDropped} {
		ch <- d
	}
	ddnsstatus.DescribeMetrics(ch)
}

func (c *statusCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.s.Status()
	byTransport := map[string]int{"tcp": 0, "quic": 0}
	type agentKey struct{ token, agent string }
	streams := map[agentKey]int{}
	for _, a := range st.Agents {
		k := agentKey{a.Token, a.ID}
		streams[k] += a.Streams
		if a.Retired {
			continue
		}
		byTransport[a.Transport]++
		if a.RTT > 0 {
			ch <- prometheus.MustNewConstMetric(descAgentRTT, prometheus.GaugeValue, secondsOf(a.RTT), a.Token, a.ID)
		}
	}
	for tr, n := range byTransport {
		ch <- prometheus.MustNewConstMetric(descAgents, prometheus.GaugeValue, float64(n), tr)
	}
	for k, n := range streams {
		ch <- prometheus.MustNewConstMetric(descAgentStreams, prometheus.GaugeValue, float64(n), k.token, k.agent)
	}
	for _, t := range st.Tunnels {
		l := []string{t.Token, t.Agent, t.Name, t.Protocol}
		port := itoa(int(t.Port))
		if t.Private {
			port = "private"
		}
		if t.Host != "" {
			port = t.Host
		}
		ch <- prometheus.MustNewConstMetric(descTunnelUp, prometheus.GaugeValue, 1, append(l, port)...)
		ch <- prometheus.MustNewConstMetric(descVisitorsNow, prometheus.GaugeValue, float64(t.Visitors), l...)
		ch <- prometheus.MustNewConstMetric(descVisitorsAccepted, prometheus.CounterValue, float64(t.Accepted), l...)
		ch <- prometheus.MustNewConstMetric(descVisitorsRefused, prometheus.CounterValue, float64(t.Refused), l...)
		ch <- prometheus.MustNewConstMetric(descVisitorBans, prometheus.CounterValue, float64(t.Banned), l...)
		ch <- prometheus.MustNewConstMetric(descBytes, prometheus.CounterValue, float64(t.BytesIn), append(l, "in")...)
		ch <- prometheus.MustNewConstMetric(descBytes, prometheus.CounterValue, float64(t.BytesOut), append(l, "out")...)
		if t.Protocol == "udp" {
			ch <- prometheus.MustNewConstMetric(descDropped, prometheus.CounterValue, float64(t.Dropped), l...)
		}
	}
	keys := map[[2]string]int{}
	for _, k := range st.VisitorKeys {
		keys[[2]string{k.Token, k.Name}] = 0
	}
	for _, v := range st.Visitors {
		keys[[2]string{v.Token, v.Key}]++
	}
	for k, n := range keys {
		ch <- prometheus.MustNewConstMetric(descVisitorSessions, prometheus.GaugeValue, float64(n), k[0], k[1])
	}
	ddnsstatus.CollectMetrics(ch, st.DDNS)
}

func secondsOf(d control.Duration) float64 { return time.Duration(d).Seconds() }

func itoa(n int) string { return strconv.Itoa(n) }

// Ready reports why the relay cannot take agents (nil: it can): before
// Listen, and once it is shutting down.
func (s *Server) Ready() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.closing:
		return errors.New("shutting down")
	case !s.serving:
		return errors.New("not listening yet")
	}
	return nil
}
