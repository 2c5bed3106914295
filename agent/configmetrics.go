package agent

import "github.com/prometheus/client_golang/prometheus"

// configMetrics say which config the daemon runs and whether a newer one needs
// a new instance (DESIGN.md, "Rolling changes").
type configMetrics struct {
	configPolls      *prometheus.CounterVec
	configInfo       *prometheus.GaugeVec
	needsReplacement prometheus.Gauge
}

func newConfigMetrics() configMetrics {
	return configMetrics{
		configPolls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "nodeagent_config_polls_total",
			Help: "Reads of the config inputs by result: unchanged, changed (applied in place), needs-replacement, invalid, error.",
		}, []string{"result"}),
		configInfo: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "nodeagent_config_info", Help: "The effective config the node runs, by hash (value 1).",
		}, []string{"hash"}),
		needsReplacement: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "nodeagent_needs_replacement",
			Help: "1 when a newer config changes what only a new instance can change (role, cluster, etcd layout, runtime).",
		}),
	}
}

func (c configMetrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{c.configPolls, c.configInfo, c.needsReplacement}
}

func (c configMetrics) setConfig(hash string) {
	c.configInfo.Reset()
	c.configInfo.WithLabelValues(hash).Set(1)
}

func (c configMetrics) setNeedsReplacement(b bool) {
	v := 0.0
	if b {
		v = 1
	}
	c.needsReplacement.Set(v)
}
