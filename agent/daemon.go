package agent

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
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
	// What bootstrap has learned so far (the etcd members of the volumes it
	// claimed) is published at once: a master's daemon starts mid-boot, and the
	// other masters need these names before etcd can reach quorum.
	g, err := startGossip(ctx, o, n, gossipNames(n, loadFacts(o, log)))
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
	var keeper *etcdKeeper
	if n.IsControlPlane() {
		pub = newEtcdPublisher(o, n, log)
		defer pub.close()
		backups, err := backupStoreFor(n)
		if err != nil {
			return err
		}
		keeper = newEtcdKeeper(o, n, backups, m.reg)
	}

	reconcile := func() {
		rctx, rcancel := context.WithTimeout(ctx, ro.ReconcileInterval*5)
		defer rcancel()
		err := runner.Run(rctx, ps.phases)
		result := "ok"
		switch {
		case err == nil:
		case bootstrap.IsWaiting(err):
			result = "waiting"
			log.Warn("reconcile waiting", "reason", err)
		default:
			result = "failed"
			log.Error("reconcile failed", "err", err)
		}
		if g != nil {
			g.setNames(gossipNames(n, loadFacts(o, log)))
		}
		m.reconciles.WithLabelValues(result).Inc()
		m.lastReconcile.SetToCurrentTime()
	}
	report := func() {
		// Readiness is judged between runs: while a run (the boot's own bootstrap,
		// say) is acting, its phases are incomplete by design. The launch hook is
		// heartbeated all the same, so a long wait does not time the launch out.
		unlock, ok, err := o.store().TryLockRun()
		if err != nil || !ok {
			ps.readiness.heartbeat(ctx)
			// The pod CIDR and routes do not wait for the run either: a run
			// may wait long for this very Node to go Ready.
			ps.learnPodCIDR(ctx)
			pods.update()
			return
		}
		rs := ps.readiness.refresh(ctx)
		ps.readiness.followLifecycle(ctx, rs)
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

	// Reconciles run on their own goroutine: the first one waits for the boot's
	// bootstrap to finish (the run lock), and readiness reporting, the launch
	// hook's heartbeat and the status API must go on meanwhile.
	reconciled := make(chan struct{}, 1)
	var bg sync.WaitGroup
	// Runs before the deferred gossip stop: no reconcile outlives the daemon.
	defer func() {
		cancel()
		bg.Wait()
	}()
	bg.Add(1)
	go func() {
		defer bg.Done()
		t := time.NewTicker(ro.ReconcileInterval)
		defer t.Stop()
		for {
			reconcile()
			if keeper != nil {
				keeper.tick(ctx)
			}
			select {
			case reconciled <- struct{}{}:
			default:
			}
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
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
		case <-reconciled:
			report()
		case <-readyTick.C:
			report()
		}
	}
}

// loadFacts reads what the phases have recorded so far; without a readable
// state file the daemon starts from nothing and learns it on its first run.
func loadFacts(o Options, log *slog.Logger) bootstrap.Facts {
	st, err := o.store().Load()
	if err != nil {
		log.Warn("state file unreadable; starting without recorded facts", "err", err)
		return bootstrap.Facts{}
	}
	return st.Facts
}
