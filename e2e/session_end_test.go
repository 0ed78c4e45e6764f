package e2e

import (
	"net"
	"regexp"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/homeport/homeport/config"
	"github.com/homeport/homeport/internal/leak"
)

// gather reads the metrics that register adds.
func gather(t *testing.T, register func(prometheus.Registerer) error) map[string]*dto.MetricFamily {
	t.Helper()
	reg := prometheus.NewRegistry()
	if err := register(reg); err != nil {
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
	return byName
}

// TestSessionEndDeadLink: when the link between agent and relay goes dark
// with a visitor connected, each end logs the session's end in one line
// that says why (the keepalive timed out, with the last round trip), its
// age and the visitor stream it cut, and counts it by that cause.
func TestSessionEndDeadLink(t *testing.T) {
	leak.Check(t)
	ka := config.Session{KeepAlive: 300 * time.Millisecond, KeepAliveTimeout: 600 * time.Millisecond, StreamWindow: 4 << 20}
	target := serve(t, func(c *net.TCPConn) { echo(c) })
	r := startRelay(t, func(c *config.Relay) { c.Session = ka })
	px := startFreezeProxy(t, r.addr)
	port := freePort(t)
	cfg := agentConfig(r, tcpTunnel("echo", port, target))
	cfg.Relay = px.addr()
	cfg.Transport = config.TransportTCP // the proxy carries TCP only
	cfg.Session = ka
	a := startAgent(t, cfg)
	a.waitSession(10 * time.Second)
	c := dial(t, publicAddr(port))
	if _, err := c.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Read(make([]byte, 5)); err != nil {
		t.Fatal(err)
	}

	px.freeze()
	relayDown := regexp.MustCompile(`msg="agent session down" .*cause=keepalive_timeout reason="keepalive timeout: nothing heard from the peer for [^"]+ \(last round trip [^"]+\)" age=\S+ streams_cut=1 `)
	agentDown := regexp.MustCompile(`msg="relay session down" .*transport=tcp cause=keepalive_timeout reason="keepalive timeout: nothing heard from the peer for [^"]+" age=\S+ streams_cut=1 `)
	waitFor(t, 15*time.Second, "the relay's line on the session's end", func() bool { return relayDown.MatchString(r.logs.String()) })
	waitFor(t, 15*time.Second, "the agent's line on the session's end", func() bool { return agentDown.MatchString(a.logs.String()) })
	if n := len(relayDown.FindAllString(r.logs.String(), -1)); n != 1 {
		t.Errorf("the relay logged the end %d times", n)
	}
	if v, ok := metricValue(gather(t, r.srv.RegisterMetrics), "homeport_relay_sessions_ended_total",
		map[string]string{"transport": "tcp", "cause": "keepalive_timeout"}); !ok || v != 1 {
		t.Errorf("relay sessions_ended_total{tcp,keepalive_timeout} = %v (%v)", v, ok)
	}
	if v, ok := metricValue(gather(t, a.agent.RegisterMetrics), "homeport_agent_sessions_ended_total",
		map[string]string{"transport": "tcp", "cause": "keepalive_timeout", "relay": px.addr()}); !ok || v != 1 {
		t.Errorf("agent sessions_ended_total{tcp,keepalive_timeout} = %v (%v)", v, ok)
	}
	px.thaw()
}

// TestSessionEndAgentStops: an agent that stops ends its session with a
// goodbye, over either transport: the relay says the agent left, the
// agent that it shut down, and neither cut a stream.
func TestSessionEndAgentStops(t *testing.T) {
	for _, tr := range []string{config.TransportTCP, config.TransportQUIC} {
		t.Run(tr, func(t *testing.T) {
			leak.Check(t)
			r := startRelayOver(t, tr, nil)
			a := startAgent(t, agentConfig(r, tcpTunnel("echo", freePort(t), serve(t, func(c *net.TCPConn) { echo(c) }))))
			a.waitSession(10 * time.Second)
			a.stop()
			relayDown := regexp.MustCompile(`msg="agent session down" .*cause=agent_left reason="the agent said goodbye: agent shutting down" age=\S+ streams_cut=0 `)
			waitFor(t, 15*time.Second, "the relay's line on the session's end", func() bool { return relayDown.MatchString(r.logs.String()) })
			agentDown := regexp.MustCompile(`msg="relay session down" .*transport=` + tr + ` cause=shutdown reason="the agent is shutting down" age=\S+ streams_cut=0`)
			if !agentDown.MatchString(a.logs.String()) {
				t.Errorf("the agent's line on the session's end:\n%s", a.logs)
			}
			if v, ok := metricValue(gather(t, a.agent.RegisterMetrics), "homeport_agent_sessions_ended_total",
				map[string]string{"transport": tr, "cause": "shutdown"}); !ok || v != 1 {
				t.Errorf("agent sessions_ended_total{%s,shutdown} = %v (%v)", tr, v, ok)
			}
			if v, ok := metricValue(gather(t, r.srv.RegisterMetrics), "homeport_relay_sessions_ended_total",
				map[string]string{"transport": tr, "cause": "agent_left"}); !ok || v != 1 {
				t.Errorf("relay sessions_ended_total{%s,agent_left} = %v (%v)", tr, v, ok)
			}
		})
	}
}
