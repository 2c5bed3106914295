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

// bootCollector exports the last boot's timeline from the state file at each
// scrape, so a fleet's boot times can be graphed: one series per phase.
type bootCollector struct {
	store       bootstrap.StateStore
	phaseDur    *prometheus.Desc
	phaseOffset *prometheus.Desc
	duration    *prometheus.Desc
	started     *prometheus.Desc
}

func newBootCollector(store bootstrap.StateStore) *bootCollector {
	return &bootCollector{
		store: store,
		phaseDur: prometheus.NewDesc("nodeagent_boot_phase_duration_seconds",
			"How long each phase took in the last boot (nodeagent bootstrap).", []string{"phase", "state"}, nil),
		phaseOffset: prometheus.NewDesc("nodeagent_boot_phase_start_seconds",
			"When each phase of the last boot started, in seconds after the boot started.", []string{"phase"}, nil),
		duration: prometheus.NewDesc("nodeagent_boot_duration_seconds",
			"How long the last boot took, first phase to last.", []string{"result"}, nil),
		started: prometheus.NewDesc("nodeagent_boot_start_timestamp_seconds",
			"When the last boot started (Unix time).", nil, nil),
	}
}

func (c *bootCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.phaseDur
	ch <- c.phaseOffset
	ch <- c.duration
	ch <- c.started
}

func (c *bootCollector) Collect(ch chan<- prometheus.Metric) {
	st, err := c.store.Load()
	if err != nil || st.Boot == nil {
		return
	}
	b := st.Boot
	ch <- prometheus.MustNewConstMetric(c.started, prometheus.GaugeValue, float64(b.StartedAt.UnixNano())/1e9)
	ch <- prometheus.MustNewConstMetric(c.duration, prometheus.GaugeValue, b.FinishedAt.Sub(b.StartedAt).Seconds(), b.Result)
	for _, p := range b.Phases {
		if p.Started.IsZero() {
			continue // never ran: the boot ended before it
		}
		ch <- prometheus.MustNewConstMetric(c.phaseDur, prometheus.GaugeValue, time.Duration(p.Duration).Seconds(), p.Name, string(p.State))
		ch <- prometheus.MustNewConstMetric(c.phaseOffset, prometheus.GaugeValue, p.Started.Sub(b.StartedAt).Seconds(), p.Name)
	}
}
