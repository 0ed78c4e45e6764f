package ddnsstatus

import "github.com/prometheus/client_golang/prometheus"

// The DDNS metrics, the same for the relay's updater and the agent's.
var (
	descSynced = prometheus.NewDesc("homeport_ddns_synced",
		"1 when the name's records match the address wanted, read back from the provider.", []string{"name", "type"}, nil)
	descUpdates = prometheus.NewDesc("homeport_ddns_updates_total",
		"Confirmed writes of the name's records.", []string{"name", "type"}, nil)
	descFailures = prometheus.NewDesc("homeport_ddns_failures_total",
		"Failed attempts to read or write the name's records.", []string{"name", "type"}, nil)
)

// DescribeMetrics sends the DDNS metrics' descriptions, for a collector's
// Describe.
func DescribeMetrics(ch chan<- *prometheus.Desc) {
	ch <- descSynced
	ch <- descUpdates
	ch <- descFailures
}

// CollectMetrics sends the DDNS metrics of names, for a collector's
// Collect.
func CollectMetrics(ch chan<- prometheus.Metric, names []NameStatus) {
	for _, d := range names {
		v := 0.0
		if d.Synced && d.Error == "" {
			v = 1
		}
		ch <- prometheus.MustNewConstMetric(descSynced, prometheus.GaugeValue, v, d.Name, d.Type)
		ch <- prometheus.MustNewConstMetric(descUpdates, prometheus.CounterValue, float64(d.Updates), d.Name, d.Type)
		ch <- prometheus.MustNewConstMetric(descFailures, prometheus.CounterValue, float64(d.Failures), d.Name, d.Type)
	}
}
