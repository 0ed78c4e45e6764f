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

	"github.com/homeport/homeport/relay"
)

// TestBinaryStatusAndMetrics: `relay status` and the metrics endpoint of
// the real relay agree with what the test did: one agent, one visitor
// connected, and the bytes of a finished one, counted exactly.
func TestBinaryStatusAndMetrics(t *testing.T) {
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
	a := binStartAgent(t, banner, []string{"web=" + binTunnel(port, target)}, "--id", "home-pc")
	binAwaitTunnels(a, 1, 30*time.Second)

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
		return len(st.Tunnels) == 1 && st.Tunnels[0].BytesOut >= n+1
	})
	if len(st.Agents) != 1 || st.Agents[0].ID != "home-pc" || st.Agents[0].Token != "default" {
		t.Fatalf("agents: %+v", st.Agents)
	}
	if len(st.Refusals) != 1 || st.Refusals[0].Where != "agent port" || st.Refusals[0].Reason != "wrong token" {
		t.Fatalf("refusals: %+v", st.Refusals)
	}
	tn := st.Tunnels[0]
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
	// Both visitors waited for the agent's answer once.
	opens := uint64(0)
	if f := fams["homeport_relay_stream_open_seconds"]; f != nil {
		for _, m := range f.GetMetric() {
			opens += m.GetHistogram().GetSampleCount()
		}
	}
	if opens != 2 {
		t.Errorf("homeport_relay_stream_open_seconds: %d samples, want 2", opens)
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

// metricValue finds the sample of family name whose labels include want.
func metricValue(fams map[string]*dto.MetricFamily, name string, want map[string]string) (float64, bool) {
	f := fams[name]
	if f == nil {
		return 0, false
	}
next:
	for _, m := range f.GetMetric() {
		have := map[string]string{}
		for _, l := range m.GetLabel() {
			have[l.GetName()] = l.GetValue()
		}
		for k, v := range want {
			if have[k] != v {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			return m.GetCounter().GetValue(), true
		case m.Gauge != nil:
			return m.GetGauge().GetValue(), true
		case m.Untyped != nil:
			return m.GetUntyped().GetValue(), true
		}
	}
	return 0, false
}

func with(m map[string]string, k, v string) map[string]string {
	out := map[string]string{k: v}
	for mk, mv := range m {
		out[mk] = mv
	}
	return out
}
