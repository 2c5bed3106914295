package agent

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/nodeagent/nodeagent/bootstrap"
	"github.com/nodeagent/nodeagent/cloud"
)

// warmPhases are what a node launched into a warm pool runs: everything that
// fetches and verifies (assets), the container runtime, and the image import,
// so that the later start into service has nothing to download. Nothing that
// joins the cluster (volumes, the daemon's gossip seat, certificates, kubelet).
var warmPhases = map[string]bool{"host-prep": true, "assets": true, "container-runtime": true, "images": true}

// warmPollEvery is how often a Warmed:Running node reads whether it was moved
// into service.
var warmPollEvery = 2 * time.Second

// bootWarm handles a launch into a warm pool (IMDS
// autoscaling/target-lifecycle-state Warmed:*): it runs the warm phases,
// completes the warm launch hook with CONTINUE, and then either ends
// (Warmed:Stopped or Hibernated: the group stops the instance; its next boot
// is into service) — inPool true — or, Warmed:Running, waits until the group
// moves it into service and lets the full boot go on (inPool false). An
// instance not in a warm pool returns at once (false).
func bootWarm(ctx context.Context, n *Node, ps *phaseSet, runner *bootstrap.Runner, log *slog.Logger) (inPool bool, err error) {
	if n.AWS == nil {
		return false, nil
	}
	md := n.metadata()
	target, err := cloud.TargetLifecycleState(ctx, md)
	if err != nil {
		return false, fmt.Errorf("is this instance in a warm pool: %w", err)
	}
	if !cloud.IsWarmed(target) {
		return false, nil
	}
	log.Info("launched into the warm pool: preparing, not joining", "target", target)
	var phases []bootstrap.Phase
	for _, p := range ps.phases {
		if warmPhases[p.Name()] {
			phases = append(phases, p)
		}
	}
	if err := runner.RunHeld(ctx, phases); err != nil {
		ps.readiness.abandon(ctx, err)
		return true, fmt.Errorf("warm pool: %w", err)
	}
	ws := bootstrap.WarmStatus{Target: target, PreparedAt: time.Now().UTC()}
	if hook := ps.readiness.hook; hook != "" {
		if err := ps.readiness.completeLifecycle(ctx, cloud.LifecycleContinue); err != nil {
			return true, fmt.Errorf("warm pool: %w", err)
		}
		ws.Lifecycle = cloud.LifecycleContinue
		log.Info("warm-pool launch hook completed", "hook", hook, "result", cloud.LifecycleContinue)
	}
	if _, err := runner.Store.Update(func(st *bootstrap.State) { st.Warm = &ws }); err != nil {
		return true, err
	}
	if target != "Warmed:Running" {
		log.Info("prepared for the warm pool; kubelet not started; the group stops the instance, and its next boot is into service", "target", target)
		return true, nil
	}
	// A running warm instance is moved into service without a reboot.
	t := time.NewTicker(warmPollEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return true, ctx.Err()
		case <-t.C:
		}
		target, err := cloud.TargetLifecycleState(ctx, md)
		if err != nil {
			log.Warn("read the target lifecycle state", "err", err)
			continue
		}
		switch {
		case target == cloud.TargetTerminated:
			log.Info("the group terminates this warm instance before it served")
			return true, nil
		case !cloud.IsWarmed(target):
			log.Info("moved into service: booting the rest", "target", target)
			if _, err := runner.Store.Update(func(st *bootstrap.State) {
				if st.Warm != nil {
					st.Warm.InServiceAt = time.Now().UTC()
				}
			}); err != nil {
				log.Error("record the move into service", "err", err)
			}
			return false, nil
		}
	}
}
