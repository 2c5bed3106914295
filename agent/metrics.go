package agent

import (
	"runtime"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/nodeagent/nodeagent/bootstrap"
)

// metrics are what /metrics exports; a private registry keeps them to the agent's own.
type metrics struct {
	reg           *prometheus.Registry
	phaseDuration *prometheus.GaugeVec
	phaseFailures *prometheus.CounterVec
	phaseChanges  *prometheus.CounterVec
	reconciles    *prometheus.CounterVec
	ready         prometheus.Gauge
	lastReconcile prometheus.Gauge
	configMetrics
}

func newMetrics() *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		phaseDuration: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "nodeagent_phase_duration_seconds", Help: "Duration of the last run of each phase.",
		}, []string{"phase"}),
		phaseFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "nodeagent_phase_failures_total", Help: "Phase runs that failed.",
		}, []string{"phase"}),
		phaseChanges: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "nodeagent_phase_changes_total", Help: "Phase runs that changed the host (first boot or drift repaired).",
		}, []string{"phase"}),
		reconciles: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "nodeagent_reconcile_runs_total", Help: "Reconcile runs by result.",
		}, []string{"result"}),
		ready: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "nodeagent_ready", Help: "1 when the node is ready.",
		}),
		lastReconcile: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "nodeagent_last_reconcile_timestamp_seconds", Help: "When the last reconcile run ended.",
		}),
		configMetrics: newConfigMetrics(),
	}
	m.reg.MustRegister(m.configMetrics.collectors()...)
	build := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "nodeagent_build_info", Help: "Build of the running agent.",
	}, []string{"version", "commit", "goversion"})
	build.WithLabelValues(Version, Commit, runtime.Version()).Set(1)
	m.reg.MustRegister(m.phaseDuration, m.phaseFailures, m.phaseChanges, m.reconciles, m.ready,
		m.lastReconcile, build,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

func (m *metrics) observePhase(ps bootstrap.PhaseStatus) {
	m.phaseDuration.WithLabelValues(ps.Name).Set(time.Duration(ps.Duration).Seconds())
	if ps.State == bootstrap.PhaseFailed {
		m.phaseFailures.WithLabelValues(ps.Name).Inc()
	}
	if ps.Changed {
		m.phaseChanges.WithLabelValues(ps.Name).Inc()
	}
}

func (m *metrics) setReady(ready bool) {
	v := 0.0
	if ready {
		v = 1
	}
	m.ready.Set(v)
}
