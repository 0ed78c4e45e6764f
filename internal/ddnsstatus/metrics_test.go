package ddnsstatus

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

func TestCollectMetrics(t *testing.T) {
	names := []NameStatus{
		{Name: "home.example.com", Type: "A", Synced: true, Updates: 3, Failures: 1},
		{Name: "home.example.com", Type: "AAAA", Synced: true, Error: "reading back: timeout", Failures: 2},
	}
	ch := make(chan prometheus.Metric, 16)
	CollectMetrics(ch, names)
	close(ch)
	got := map[string]float64{} // "metric type" -> value
	for m := range ch {
		var pb dto.Metric
		if err := m.Write(&pb); err != nil {
			t.Fatal(err)
		}
		_, name, _ := strings.Cut(m.Desc().String(), `fqName: "`)
		name, _, _ = strings.Cut(name, `"`)
		typ := ""
		for _, l := range pb.GetLabel() {
			if l.GetName() == "type" {
				typ = l.GetValue()
			}
		}
		got[name+" "+typ] = pb.GetGauge().GetValue() + pb.GetCounter().GetValue()
	}
	want := map[string]float64{
		"homeport_ddns_synced A": 1, "homeport_ddns_synced AAAA": 0, // an error is not in sync
		"homeport_ddns_updates_total A": 3, "homeport_ddns_updates_total AAAA": 0,
		"homeport_ddns_failures_total A": 1, "homeport_ddns_failures_total AAAA": 2,
	}
	if len(got) != len(want) {
		t.Fatalf("samples: %v", got)
	}
	for k, v := range want {
		if g, ok := got[k]; !ok || g != v {
			t.Errorf("%s = %v (found %v), want %v", k, g, ok, v)
		}
	}
}
