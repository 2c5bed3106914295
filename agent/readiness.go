package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/nodeagent/nodeagent/bootstrap"
	"github.com/nodeagent/nodeagent/cloud"
)

// readyCheck is one condition of readiness (units active, kubelet healthy, local
// etcd members healthy).
type readyCheck struct {
	name string
	fn   func(ctx context.Context) error
}

// readinessPhase is the last phase: it decides whether the node is ready, records
// it, and completes the Auto Scaling lifecycle action once.
type readinessPhase struct {
	store      bootstrap.StateStore
	checks     []readyCheck
	hook       string // lifecycle hook; "" when none
	instanceID string
	asg        func() (cloud.AutoScalingAPI, error)
	log        *slog.Logger
	// heartbeatEvery spaces the hook heartbeats of a node that is waiting
	// (default defaultHeartbeatEvery); lastHeartbeat is the daemon's last one.
	heartbeatEvery time.Duration
	lastHeartbeat  time.Time
	// timeout bounds how long Act waits for the node to become ready
	// (spec.readiness.timeout); the phases before it are not bounded by it.
	timeout time.Duration
}

// defaultHeartbeatEvery is well inside Auto Scaling's shortest useful heartbeat
// timeout (the default hook timeout is one hour, the minimum 30 s).
const defaultHeartbeatEvery = 20 * time.Second

func (p *readinessPhase) Name() string { return "readiness" }

// evaluate runs every check and returns the first failure as the reason.
func (p *readinessPhase) evaluate(ctx context.Context) bootstrap.ReadinessStatus {
	rs := bootstrap.ReadinessStatus{Ready: true, CheckedAt: time.Now().UTC()}
	var reasons []string
	for _, c := range p.checks {
		cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		err := c.fn(cctx)
		cancel()
		if err != nil {
			rs.Ready = false
			reasons = append(reasons, c.name+": "+err.Error())
		}
	}
	rs.Reason = strings.Join(reasons, "; ")
	return rs
}

// ReadsRecord: the first condition of readiness is every phase before it
// done, as the state file says (phasesDone).
func (p *readinessPhase) ReadsRecord() {}

func (p *readinessPhase) Check(ctx context.Context) ([]bootstrap.Change, error) {
	st, err := p.store.Load()
	if err != nil {
		return nil, err
	}
	now := p.evaluate(ctx)
	var changes []bootstrap.Change
	switch {
	case !now.Ready:
		// Not ready yet is what Act waits out (within the readiness timeout).
		changes = append(changes, bootstrap.Change{Kind: "readiness", Target: "node", Action: "wait", Detail: now.Reason})
	case !st.Readiness.Ready:
		changes = append(changes, bootstrap.Change{Kind: "readiness", Target: "node", Action: "update", Detail: "ready=true"})
	}
	if p.hook != "" && st.Readiness.Lifecycle == "" {
		changes = append(changes, bootstrap.Change{Kind: "lifecycle", Target: p.hook, Action: "complete", Detail: cloud.LifecycleContinue})
	}
	return changes, nil
}

func (p *readinessPhase) Act(ctx context.Context) error {
	if p.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, p.timeout)
		defer cancel()
	}
	rs, err := p.waitReady(ctx)
	if err != nil {
		return err
	}
	st, err := p.store.Load()
	if err != nil {
		return err
	}
	if p.hook != "" && st.Readiness.Lifecycle == "" {
		if err := p.completeLifecycle(ctx, cloud.LifecycleContinue); err != nil {
			return err
		}
		// gofail: var lifecycleBeforeRecord string
		// failpointCrash("lifecycleBeforeRecord", lifecycleBeforeRecord, p.hook)
		rs.Lifecycle = cloud.LifecycleContinue
	} else {
		rs.Lifecycle = st.Readiness.Lifecycle
	}
	_, err = p.store.Update(func(st *bootstrap.State) { st.Readiness = rs })
	return err
}

// Readiness is re-evaluated every readyPollFast while a warm node's kubelet and
// pods come up (on a baked image kubelet answers its healthz well within a
// second of its start, and every wait past that is boot time), then with a
// backoff up to readyPollMax.
const (
	readyPollFast    = 100 * time.Millisecond
	readyPollFastFor = 3 * time.Second
	readyPollMax     = 10 * time.Second
)

// waitReady re-evaluates until ready or the context (bootstrap's readiness
// timeout) ends: pods and units take a moment after their phases.
func (p *readinessPhase) waitReady(ctx context.Context) (bootstrap.ReadinessStatus, error) {
	began := time.Now()
	delay, lastReason := readyPollFast, ""
	for {
		rs := p.evaluate(ctx)
		if rs.Ready {
			return rs, nil
		}
		if rs.Reason != lastReason || time.Since(began) > readyPollFastFor {
			p.log.Info("node not ready yet", "reason", rs.Reason, "retry_in", delay)
			lastReason = rs.Reason
		}
		select {
		case <-ctx.Done():
			if _, err := p.store.Update(func(st *bootstrap.State) { st.Readiness = rs }); err != nil {
				p.log.Error("record readiness", "err", err)
			}
			return rs, fmt.Errorf("not ready: %s", rs.Reason)
		case <-time.After(delay):
		}
		if time.Since(began) > readyPollFastFor {
			delay = min(delay*2, readyPollMax)
		}
	}
}

func (p *readinessPhase) Verify(ctx context.Context) error {
	st, err := p.store.Load()
	if err != nil {
		return err
	}
	if !st.Readiness.Ready {
		return errors.New("not ready: " + st.Readiness.Reason)
	}
	return nil
}

// refresh re-evaluates readiness for the daemon and records it; it returns the result.
func (p *readinessPhase) refresh(ctx context.Context) bootstrap.ReadinessStatus {
	return p.record(p.evaluate(ctx))
}

// refreshDuringRun is refresh while the daemon's own reconcile runs: the
// phases are mid-run by design, so their condition is the outcome of the last
// finished run (lastRun) and every other condition is checked now. A long
// reconcile so never leaves /readyz stale.
func (p *readinessPhase) refreshDuringRun(ctx context.Context, lastRun error) bootstrap.ReadinessStatus {
	rs := bootstrap.ReadinessStatus{Ready: true, CheckedAt: time.Now().UTC()}
	var reasons []string
	for _, c := range p.checks {
		var err error
		if c.name == "phases" {
			err = lastRun
		} else {
			cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
			err = c.fn(cctx)
			cancel()
		}
		if err != nil {
			rs.Ready = false
			reasons = append(reasons, c.name+": "+err.Error())
		}
	}
	rs.Reason = strings.Join(reasons, "; ")
	return p.record(rs)
}

// record writes rs (keeping the lifecycle result) and returns it; a failed
// write is logged, and the next report writes again.
func (p *readinessPhase) record(rs bootstrap.ReadinessStatus) bootstrap.ReadinessStatus {
	if _, err := p.store.Update(func(st *bootstrap.State) {
		rs.Lifecycle = st.Readiness.Lifecycle
		st.Readiness = rs
	}); err != nil {
		p.log.Error("record readiness: /readyz and status keep the last recorded state", "err", err)
	}
	return rs
}

// abandon records that the run failed, so the node is not ready, and tells Auto
// Scaling the launch failed (when a hook is configured and not yet completed), so
// the group replaces the instance instead of waiting for the hook's timeout.
func (p *readinessPhase) abandon(ctx context.Context, cause error) {
	if p == nil {
		return
	}
	// A run ended by SIGTERM has a cancelled context; telling Auto Scaling
	// must still happen.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
	defer cancel()
	st, err := p.store.Load()
	if err != nil {
		p.log.Error("read state before abandoning the launch", "err", err)
	}
	if st == nil {
		st = &bootstrap.State{}
	}
	lifecycle := st.Readiness.Lifecycle
	if p.hook != "" && lifecycle == "" {
		if err := p.completeLifecycle(ctx, cloud.LifecycleAbandon); err != nil {
			p.log.Error("could not abandon lifecycle action", "hook", p.hook, "err", err)
		} else {
			p.log.Warn("lifecycle action abandoned", "hook", p.hook, "cause", cause)
			lifecycle = cloud.LifecycleAbandon
		}
	}
	if _, err := p.store.Update(func(st *bootstrap.State) {
		st.Readiness = bootstrap.ReadinessStatus{Ready: false, Reason: cause.Error(), CheckedAt: time.Now().UTC(), Lifecycle: lifecycle}
	}); err != nil {
		p.log.Error("record readiness", "err", err)
	}
}

// wait records that the node is not ready because it waits on something outside
// itself; the lifecycle action stays pending.
func (p *readinessPhase) wait(cause error) {
	if _, err := p.store.Update(func(st *bootstrap.State) {
		st.Readiness = bootstrap.ReadinessStatus{Ready: false, Reason: cause.Error(), CheckedAt: time.Now().UTC(), Lifecycle: st.Readiness.Lifecycle}
	}); err != nil {
		p.log.Error("record readiness", "err", err)
	}
}

// phasesDone is the first condition of readiness: every phase before readiness
// finished its last run.
func phasesDone(store bootstrap.StateStore) func(context.Context) error {
	return func(context.Context) error {
		st, err := store.Load()
		if err != nil {
			return err
		}
		for _, ph := range st.Phases {
			if ph.Name == "readiness" {
				continue
			}
			if ph.State != bootstrap.PhaseDone && ph.State != bootstrap.PhaseSkipped {
				return fmt.Errorf("phase %s is %s", ph.Name, ph.State)
			}
		}
		return nil
	}
}

// followLifecycle is the daemon's part of the launch hook, for a node whose
// bootstrap ended before it was ready (a master that waited for its peers longer
// than bootstrap does): once ready it completes the action with CONTINUE; until
// then it heartbeats the action so the group does not time the launch out. The
// caller holds the run lock, so bootstrap's readiness phase and this never both
// complete the action.
func (p *readinessPhase) followLifecycle(ctx context.Context, rs bootstrap.ReadinessStatus) {
	if p.hook == "" || rs.Lifecycle != "" {
		return
	}
	if !rs.Ready {
		p.heartbeat(ctx)
		return
	}
	if err := p.completeLifecycle(ctx, cloud.LifecycleContinue); err != nil {
		p.log.Error("could not complete lifecycle action", "hook", p.hook, "err", err)
		return
	}
	p.log.Info("lifecycle action completed", "hook", p.hook, "result", cloud.LifecycleContinue)
	if _, err := p.store.Update(func(st *bootstrap.State) { st.Readiness.Lifecycle = cloud.LifecycleContinue }); err != nil {
		p.log.Error("record lifecycle result", "err", err)
	}
}

// heartbeat extends a pending launch action, at most every heartbeatEvery. The
// daemon calls it while the node is not ready, whether or not a run is going on.
func (p *readinessPhase) heartbeat(ctx context.Context) {
	if p.hook == "" {
		return
	}
	every := p.heartbeatEvery
	if every <= 0 {
		every = defaultHeartbeatEvery
	}
	if time.Since(p.lastHeartbeat) < every {
		return
	}
	st, err := p.store.Load()
	if err != nil || st.Readiness.Lifecycle != "" {
		return // completed (or unreadable state: the next tick tries again)
	}
	client, err := p.asg()
	if err == nil {
		err = cloud.RecordLifecycleActionHeartbeat(ctx, client, p.hook, p.instanceID)
	}
	if err != nil {
		p.log.Warn("lifecycle heartbeat failed", "hook", p.hook, "err", err)
		return
	}
	p.lastHeartbeat = time.Now()
	p.log.Info("lifecycle action heartbeat: node not ready yet", "hook", p.hook)
}

func (p *readinessPhase) completeLifecycle(ctx context.Context, result string) error {
	client, err := p.asg()
	if err != nil {
		return err
	}
	return cloud.CompleteLifecycleAction(ctx, client, p.hook, p.instanceID, result)
}
