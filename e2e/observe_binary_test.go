//go:build unix

package e2e

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/homeport/homeport/agent"
	"github.com/homeport/homeport/relay"
)

// TestBinaryStatusAndMetrics: `relay status` and the metrics endpoint of
// the real relay agree with what the test did: one agent, one visitor
// connected, and the bytes of a finished one, counted exactly.
func TestBinaryStatusAndMetrics(t *testing.T) {
	t.Parallel() // see parallel in harness_test.go
	dir := t.TempDir()
	metricsAddr := publicAddr(freePort(t))
	r, banner := binStartRelay(t, dir, freePort(t), "--metrics-addr", metricsAddr)
	target := serve(t, echo)
	port := freePort(t)
	// A wrong token first: refused, counted and listed.
	wrong := banner
	wrong.token = "wrong-token-0123456789abcdef"
	if code := binStartAgent(t, wrong, []string{binTunnel(port, target)}).exitCode(30 * time.Second); code != 1 {
		t.Fatalf("agent with a wrong token: exit %d, want 1", code)
	}
	agentDir, agentMetrics := t.TempDir(), publicAddr(freePort(t))
	deadPort, deadTarget := freePort(t), publicAddr(freePort(t)) // nothing listens there
	a := binStartAgent(t, banner, []string{"web=" + binTunnel(port, target), "dead=" + binTunnel(deadPort, deadTarget)},
		"--id", "home-pc", "--data-dir", agentDir, "--metrics-addr", agentMetrics)
	binAwaitTunnels(a, 2, 30*time.Second)
	if open, _ := probe(publicAddr(deadPort), 10*time.Second); open {
		t.Fatal("a visitor of a tunnel whose target is down got data")
	}

	const n = 3 << 20
	msg := make([]byte, n)
	rand.Read(msg)
	got, err := roundTrip(publicAddr(port), msg)
	if err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("echo through the tunnel: %d bytes, %v", len(got), err)
	}
	open := dial(t, publicAddr(port))
	if _, err := open.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(open, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}

	// Status, as a script reads it.
	var st relay.Status
	r.await(30*time.Second, "status with the finished visitor's bytes", func() bool {
		code, out, errOut := binRun(t, 30*time.Second, "relay", "status", "--data-dir", dir, "--json")
		if code != 0 {
			t.Fatalf("relay status --json: exit %d: %s", code, errOut)
		}
		if err := json.Unmarshal([]byte(out), &st); err != nil {
			t.Fatalf("relay status --json: %v\n%s", err, out)
		}
		return len(st.Tunnels) == 2 && st.Tunnels[0].Name == "web" && st.Tunnels[0].BytesOut >= n+1 ||
			len(st.Tunnels) == 2 && st.Tunnels[1].Name == "web" && st.Tunnels[1].BytesOut >= n+1
	})
	if len(st.Agents) != 1 || st.Agents[0].ID != "home-pc" || st.Agents[0].Token != "default" {
		t.Fatalf("agents: %+v", st.Agents)
	}
	if len(st.Refusals) < 1 || st.Refusals[0].Where != "agent port" || st.Refusals[0].Reason != "wrong token" {
		t.Fatalf("refusals: %+v", st.Refusals)
	}
	tn := st.Tunnels[0]
	if tn.Name != "web" {
		tn = st.Tunnels[1]
	}
	// The open visitor's byte counts too: bytes count as they pass.
	if tn.Name != "web" || tn.Port != port || tn.Visitors != 1 || tn.Accepted != 2 || tn.BytesIn != n+1 || tn.BytesOut != n+1 {
		t.Fatalf("tunnel: %+v", tn)
	}

	// The same, for people.
	code, out, errOut := binRun(t, 30*time.Second, "relay", "status", "--data-dir", dir)
	if code != 0 {
		t.Fatalf("relay status: exit %d: %s", code, errOut)
	}
	for _, want := range []string{"AGENTS", "TOKEN", "home-pc", "TUNNELS", fmt.Sprintf("%d/tcp", port), "web", "3.0 MiB"} {
		if !strings.Contains(out, want) {
			t.Errorf("relay status does not show %q:\n%s", want, out)
		}
	}

	// Metrics, parsed.
	fams := scrape(t, "http://"+metricsAddr+"/metrics")
	tunnel := map[string]string{"token": "default", "agent": "home-pc", "tunnel": "web", "protocol": "tcp"}
	for _, c := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"homeport_relay_tunnel_bytes_total", with(tunnel, "direction", "in"), n + 1},
		{"homeport_relay_tunnel_bytes_total", with(tunnel, "direction", "out"), n + 1},
		{"homeport_relay_tunnel_visitors", tunnel, 1},
		{"homeport_relay_tunnel_visitors_accepted_total", tunnel, 2},
		{"homeport_relay_agent_streams", map[string]string{"token": "default", "agent": "home-pc"}, 1},
		{"homeport_build_info", map[string]string{"program": "relay"}, 1},
		{"homeport_relay_logins_total", map[string]string{"result": "ok"}, 1},
		{"homeport_relay_logins_total", map[string]string{"result": "wrong_token"}, 1},
		{"homeport_relay_sessions_started_total", nil, 1},
	} {
		if v, ok := metricValue(fams, c.name, c.labels); !ok || v != c.want {
			t.Errorf("%s%v = %v (found %v), want %v", c.name, c.labels, v, ok, c.want)
		}
	}
	agents := 0.0
	for _, tr := range []string{"tcp", "quic"} {
		v, _ := metricValue(fams, "homeport_relay_agents", map[string]string{"transport": tr})
		agents += v
	}
	if agents != 1 {
		t.Errorf("homeport_relay_agents: %v in all, want 1", agents)
	}
	// The three visitors each waited for the agent's answer once (the
	// dead tunnel's answer was a refusal).
	opens := uint64(0)
	if f := fams["homeport_relay_stream_open_seconds"]; f != nil {
		for _, m := range f.GetMetric() {
			opens += m.GetHistogram().GetSampleCount()
		}
	}
	if opens != 3 {
		t.Errorf("homeport_relay_stream_open_seconds: %d samples, want 3", opens)
	}
	for _, path := range []string{"/healthz", "/readyz"} {
		resp, err := http.Get("http://" + metricsAddr + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("%s: %s", path, resp.Status)
		}
	}

	// The agent's own view.
	var ast agent.Status
	code, out, errOut = binRun(t, 30*time.Second, "agent", "status", "--data-dir", agentDir, "--json")
	if code != 0 {
		t.Fatalf("agent status --json: exit %d: %s", code, errOut)
	}
	if err := json.Unmarshal([]byte(out), &ast); err != nil {
		t.Fatalf("agent status --json: %v\n%s", err, out)
	}
	if len(ast.Sessions) != 1 || ast.Sessions[0].State != "up" || ast.Sessions[0].Relay != banner.relay || ast.ID != "home-pc" {
		t.Fatalf("agent sessions: %+v", ast.Sessions)
	}
	byName := map[string]agent.TunnelStatus{}
	for _, ts := range ast.Tunnels {
		byName[ts.Name] = ts
	}
	if w := byName["web"]; w.State != "up" || w.Visitors != 1 || w.BytesIn != n+1 || w.BytesOut != n+1 || w.Target != target {
		t.Fatalf("agent tunnel web: %+v", w)
	}
	if d := byName["dead"]; d.DialFailures != 1 || !strings.Contains(d.DialError, deadTarget) {
		t.Fatalf("agent tunnel dead: %+v", d)
	}
	code, out, errOut = binRun(t, 30*time.Second, "agent", "status", "--data-dir", agentDir)
	if code != 0 || !contains(out, "SESSIONS", "up", "TUNNELS", "web", "dead", "connection refused") {
		t.Fatalf("agent status: exit %d:\n%s%s", code, out, errOut)
	}
	afams := scrape(t, "http://"+agentMetrics+"/metrics")
	for _, c := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"homeport_agent_tunnel_bytes_total", map[string]string{"tunnel": "web", "direction": "in"}, n + 1},
		{"homeport_agent_tunnel_bytes_total", map[string]string{"tunnel": "web", "direction": "out"}, n + 1},
		{"homeport_agent_tunnel_visitors", map[string]string{"tunnel": "web"}, 1},
		{"homeport_agent_tunnel_dial_failures_total", map[string]string{"tunnel": "dead"}, 1},
		{"homeport_agent_tunnel_up", map[string]string{"tunnel": "dead"}, 1},
		{"homeport_agent_session_up", map[string]string{"relay": banner.relay}, 1},
		{"homeport_build_info", map[string]string{"program": "agent"}, 1},
	} {
		if v, ok := metricValue(afams, c.name, c.labels); !ok || v != c.want {
			t.Errorf("agent %s%v = %v (found %v), want %v", c.name, c.labels, v, ok, c.want)
		}
	}
	if resp, err := http.Get("http://" + agentMetrics + "/readyz"); err != nil || resp.StatusCode != http.StatusOK {
		t.Errorf("agent /readyz: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}

	// Once the relay has stopped, status says so in one line.
	open.Close()
	a.signal(syscall.SIGTERM)
	a.exitCode(30 * time.Second)
	r.signal(syscall.SIGTERM)
	r.exitCode(30 * time.Second)
	code, out, errOut = binRun(t, 30*time.Second, "relay", "status", "--data-dir", dir)
	if code != 1 || out != "" || strings.Count(strings.TrimSpace(errOut), "\n") != 0 || !strings.Contains(errOut, "the relay is not running") {
		t.Fatalf("status of a stopped relay: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
}

// scrape fetches and parses a Prometheus text endpoint.
func scrape(t *testing.T, url string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("%s: %s", url, resp.Status)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("%s: %v", url, err)
	}
	return fams
}

func with(m map[string]string, k, v string) map[string]string {
	out := map[string]string{k: v}
	for mk, mv := range m {
		out[mk] = mv
	}
	return out
}
