package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"

	"github.com/nodeagent/nodeagent/bootstrap"
	"github.com/nodeagent/nodeagent/systemd"
)

// RunOptions configure the daemon.
type RunOptions struct {
	// Socket is the status API's unix socket (a host path).
	Socket string
	// ReconcileInterval is how often every phase is re-checked and drift repaired.
	ReconcileInterval time.Duration
	// ReadinessInterval is how often readiness is re-evaluated and reported upward.
	ReadinessInterval time.Duration
	// ConfigInterval is how often the config inputs (user-data, the kept
	// --config document, the state store's cluster.yaml by a conditional GET)
	// are re-read between reconciles; a change starts a reconcile at once.
	ConfigInterval time.Duration
}

// DefaultConfigInterval is RunOptions.ConfigInterval's default.
const DefaultConfigInterval = 15 * time.Second

// Run is the daemon behind nodeagent.service (Type=notify): it serves the status
// API, joins the gossip ring, re-runs the phases to repair drift, and keeps
// readiness current in the state file, the ring and (control plane) etcd.
func Run(ctx context.Context, o Options, ro RunOptions) error {
	log := o.log()
	leanDaemonHeap()
	// One D-Bus connection for the daemon's life, shared by every phase set it
	// builds (a new config builds another) and the readiness reports.
	if o.Systemd == nil {
		o.Systemd = systemd.NewSession()
		defer o.Systemd.Close()
	}
	if ro.ReconcileInterval <= 0 {
		ro.ReconcileInterval = time.Minute
	}
	if ro.ReadinessInterval <= 0 {
		ro.ReadinessInterval = 10 * time.Second
	}
	if ro.ConfigInterval <= 0 {
		ro.ConfigInterval = DefaultConfigInterval
	}
	// The daemon starts on the config the node last took (a newer one in the
	// inputs may need a new instance, or be invalid: the first poll decides),
	// or, on a node never bootstrapped, on its inputs.
	var applied []byte
	if o.ConfigFile == "" {
		var err error
		if _, applied, err = loadApplied(o); err != nil {
			log.Warn("the applied config is unreadable; starting from the inputs", "err", err)
			applied = nil
		}
	}
	n, err := loadNode(ctx, o, followInputs, applied)
	if err != nil {
		return err
	}
	ps, err := buildPhases(ctx, o, n)
	if err != nil {
		return err
	}
	m := newMetrics()
	m.setConfig(n.ConfigHash)
	f := &follower{o: o, log: log, m: m, n: n, ps: ps}
	m.reg.MustRegister(newBootCollector(o.store()))
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
	// The graceful exit (exit.go): started by IMDS telling of a termination or
	// a spot interruption, or by `nodeagent drain` through the status API.
	exit := newExitRunner(o, n, exitSteps(o, n, g))
	api.exit = exit.byHand
	apiErr := make(chan error, 1)
	go func() { apiErr <- api.serve(ctx, ro.Socket) }()
	// Start-up is over (config, phases, gossip, status API): its pages of the
	// binary need not stay mapped.
	trimStartupPages(log)

	if _, err := daemon.SdNotify(false, daemon.SdNotifyReady); err != nil {
		log.Warn("sd_notify failed", "err", err)
	}
	// Masters sign workers' kubelet and kube-proxy certificates.
	if stopSigner, err := startSigner(ctx, o, n, log); err != nil {
		log.Error("node signer not started; workers cannot get certificates from this master", "err", err)
	} else if stopSigner != nil {
		defer stopSigner()
	}
	var pub *etcdPublisher
	var keeper *etcdKeeper
	if n.IsControlPlane() {
		pub = newEtcdPublisher(o, n, log)
		defer pub.close()
		// The bootstrap add-ons, applied by one master at a time.
		defer startAddons(ctx, o, n, log)()
		backups, err := backupStoreFor(n)
		if err != nil {
			return err
		}
		keeper = newEtcdKeeper(o, n, backups, m.reg)
	}

	var (
		reconciling atomic.Bool
		lastRunMu   sync.Mutex
		lastRun     error = errors.New("no run finished yet")
	)
	reconcile := func() {
		if exit.exiting() {
			return // leaving: nothing is restarted (a master's etcd stays stopped)
		}
		rctx, rcancel := context.WithTimeout(ctx, ro.ReconcileInterval*5)
		defer rcancel()
		// Under the run lock, the inputs are re-read first: a bootstrap that
		// held the lock has kept new inputs, and this run applies them.
		unlock, err := o.store().LockRun(rctx)
		if err != nil {
			log.Error("reconcile: wait for the run lock", "err", err)
			return
		}
		reconciling.Store(true)
		f.poll(rctx)
		cur, ps := f.current()
		runner := &bootstrap.Runner{Store: o.store(), Log: log, Node: cur.Info(), ConfigHash: cur.ConfigHash, Observe: m.observePhase}
		err = runner.RunHeld(rctx, ps.phases)
		reconciling.Store(false)
		unlock()
		lastRunMu.Lock()
		lastRun = err
		lastRunMu.Unlock()
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
			if err := g.setNames(gossipNames(n, loadFacts(o, log))); err != nil {
				log.Error("publish gossip names; retried at the next report", "err", err)
			}
		}
		m.reconciles.WithLabelValues(result).Inc()
		m.lastReconcile.SetToCurrentTime()
		releaseMemory()
	}
	report := func() {
		// Readiness is judged between runs: while a run (the boot's own bootstrap,
		// say) is acting, its phases are incomplete by design. The launch hook is
		// heartbeated all the same, so a long wait does not time the launch out.
		_, ps := f.current()
		if g != nil {
			if err := g.setNames(gossipNames(n, loadFacts(o, log))); err != nil {
				log.Warn("publish gossip names", "err", err)
			}
		}
		unlock, ok, err := o.store().TryLockRun()
		if err != nil {
			log.Error("readiness: run lock", "err", err)
		}
		if (err != nil || !ok) && reconciling.Load() {
			// Our own reconcile runs (it may wait long): readiness is judged on
			// its last finished run and the live checks, not left stale.
			lastRunMu.Lock()
			last := lastRun
			lastRunMu.Unlock()
			rs := ps.readiness.refreshDuringRun(ctx, last)
			m.setReady(rs.Ready)
			if g != nil {
				g.setReady(rs.Ready)
			}
			if !rs.Ready {
				ps.readiness.heartbeat(ctx)
			}
			pods.update()
			return
		}
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
		exit.watch(ctx, exitWatchEvery)
	}()
	bg.Add(1)
	go func() {
		defer bg.Done()
		t := time.NewTicker(ro.ReconcileInterval)
		defer t.Stop()
		poll := time.NewTicker(ro.ConfigInterval)
		defer poll.Stop()
		for {
			reconcile()
			if keeper != nil {
				keeper.tick(ctx)
			}
			select {
			case reconciled <- struct{}{}:
			default:
			}
			// Between reconciles the inputs are polled; a config the node
			// takes is applied at once (reconcile re-reads it under the lock).
		wait:
			for {
				select {
				case <-ctx.Done():
					return
				case <-t.C:
					break wait
				case <-poll.C:
					if f.poll(ctx) {
						t.Reset(ro.ReconcileInterval)
						break wait
					}
				}
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
