package agent

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"

	"github.com/nodeagent/nodeagent/bootstrap"
)

// RunOptions configure the daemon.
type RunOptions struct {
	// Socket is the status API's unix socket (a host path).
	Socket string
	// ReconcileInterval is how often every phase is re-checked and drift repaired.
	ReconcileInterval time.Duration
	// ReadinessInterval is how often readiness is re-evaluated and reported upward.
	ReadinessInterval time.Duration
}

// Run is the daemon behind nodeagent.service (Type=notify): it serves the status
// API, joins the gossip ring, re-runs the phases to repair drift, and keeps
// readiness current in the state file, the ring and (control plane) etcd.
func Run(ctx context.Context, o Options, ro RunOptions) error {
	log := o.log()
	if ro.ReconcileInterval <= 0 {
		ro.ReconcileInterval = time.Minute
	}
	if ro.ReadinessInterval <= 0 {
		ro.ReadinessInterval = 10 * time.Second
	}
	if o.ConfigFile == "" {
		// Reconcile against what bootstrap ran with; fall back to user-data on a node
		// that was never bootstrapped.
		saved := filepath.Join(o.stateDir(), effectiveConfigName)
		if _, err := os.Stat(saved); err == nil {
			o.ConfigFile = saved
		} else if !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	n, err := LoadNode(ctx, o, needIdentity)
	if err != nil {
		return err
	}
	ps, err := buildPhases(ctx, o, n)
	if err != nil {
		return err
	}
	m := newMetrics()
	api := &statusAPI{store: o.store(), metrics: m, log: log}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	g, err := startGossip(ctx, o, n, ps)
	if err != nil {
		return err
	}
	if g != nil {
		defer g.stop()
		api.cluster = g.members
		m.reg.MustRegister(g.collector())
	}
	pods := startPodNetwork(o, n, ps, g)
	defer pods.close()
	apiErr := make(chan error, 1)
	go func() { apiErr <- api.serve(ctx, ro.Socket) }()

	if _, err := daemon.SdNotify(false, daemon.SdNotifyReady); err != nil {
		log.Warn("sd_notify failed", "err", err)
	}
	runner := &bootstrap.Runner{Store: o.store(), Log: log, Node: n.Info(), ConfigHash: n.ConfigHash, Observe: m.observePhase}
	var pub *etcdPublisher
	if n.IsControlPlane() {
		pub = newEtcdPublisher(o, n, ps, log)
		defer pub.close()
	}

	reconcile := func() {
		rctx, rcancel := context.WithTimeout(ctx, ro.ReconcileInterval*5)
		defer rcancel()
		err := runner.Run(rctx, ps.phases)
		result := "ok"
		if err != nil {
			result = "failed"
			log.Error("reconcile failed", "err", err)
		}
		if g != nil {
			g.setNames(ps.gossipNames(n))
		}
		m.reconciles.WithLabelValues(result).Inc()
		m.lastReconcile.SetToCurrentTime()
	}
	report := func() {
		// Readiness is judged between runs: while a run (the boot's own bootstrap,
		// say) is acting, its phases are incomplete by design.
		unlock, ok, err := o.store().TryLockRun()
		if err != nil || !ok {
			return
		}
		rs := ps.readiness.refresh(ctx)
		unlock()
		m.setReady(rs.Ready)
		if g != nil {
			g.setReady(rs.Ready)
		}
		pods.update()
		if pub != nil {
			pub.publish(ctx, o.store())
		}
		status := "ready"
		if !rs.Ready {
			status = "not ready: " + rs.Reason
		}
		_, _ = daemon.SdNotify(false, "STATUS="+status)
	}

	reconcile()
	report()
	reconcileTick := time.NewTicker(ro.ReconcileInterval)
	defer reconcileTick.Stop()
	readyTick := time.NewTicker(ro.ReadinessInterval)
	defer readyTick.Stop()
	for {
		select {
		case <-ctx.Done():
			_, _ = daemon.SdNotify(false, daemon.SdNotifyStopping)
			log.Info("daemon stopping")
			return nil
		case err := <-apiErr:
			if err != nil {
				return fmt.Errorf("status API: %w", err)
			}
		case <-reconcileTick.C:
			reconcile()
			report()
		case <-readyTick.C:
			report()
		}
	}
}
