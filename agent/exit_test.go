package agent

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nodeagent/nodeagent/awsemu"
	"github.com/nodeagent/nodeagent/bootstrap"
	"github.com/nodeagent/nodeagent/cloud"
	"github.com/nodeagent/nodeagent/drain"
)

// The daemon learns of its termination from IMDS: nothing happens while the
// group keeps the instance; once it terminates it, the exit runs once, every
// step even after a failed one (the instance goes away all the same), the
// terminate hook is heartbeated while the exit runs and completed with
// CONTINUE once, after it. (The drain itself: drain's tests; on machines:
// e2e.)
func TestExitFollowsTheGroupsTermination(t *testing.T) {
	const id, group, hook = "i-0leaving", "nodes", "nodeagent-drain"
	emu := awsemu.Start(t, &awsemu.World{
		Instances:      []awsemu.Instance{{ID: id, AvailabilityZone: "us-east-1a", PrivateIP: "10.0.1.5", AutoScalingGroup: group}},
		LifecycleHooks: []awsemu.LifecycleHook{{AutoScalingGroup: group, Name: hook, Transition: awsemu.TransitionTerminating}},
	}, awsemu.Options{})
	emu.Setenv(t, id)
	awsCfg, err := cloud.LoadConfig(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	store := bootstrap.StateStore{Dir: t.TempDir()}
	var left atomic.Int32
	release := make(chan struct{})
	x := &exitRunner{store: store, log: quietLog(), node: "ip-10-0-1-5", imds: cloud.NewIMDS(awsCfg), hook: hook, instanceID: id,
		asg:            func() (cloud.AutoScalingAPI, error) { return cloud.NewAutoScaling(awsCfg), nil },
		kube:           func() (drain.API, error) { return nil, errors.New("no API server here") },
		heartbeatEvery: 20 * time.Millisecond, done: make(chan struct{}),
		steps: []exitStep{{name: "gossip-leave", fn: func(context.Context) (string, error) {
			<-release // a slow step: the hook is heartbeated meanwhile
			left.Add(1)
			return "left the gossip ring", nil
		}}}}
	ctx := context.Background()

	x.poll(ctx)
	if x.exiting() {
		t.Fatal("the exit began while the group keeps the instance")
	}
	if err := emu.E.TerminateInGroup(id); err != nil {
		t.Fatal(err)
	}
	x.poll(ctx)
	x.poll(ctx) // the next tick: still one exit
	waitUntil(t, 5*time.Second, "the terminate hook heartbeated while the exit runs", func() bool { return emu.E.TerminateHeartbeats(id) >= 1 })
	if got := emu.E.Completions(id); len(got) != 0 {
		t.Fatalf("the hook was completed before the exit finished: %v", got)
	}
	close(release)
	waitUntil(t, 5*time.Second, "the terminate hook completed", func() bool { return len(emu.E.Completions(id)) == 1 })
	x.poll(ctx)
	if got := emu.E.Completions(id); len(got) != 1 || got[0] != (awsemu.Completion{Hook: hook, Transition: "terminate", Result: awsemu.LifecycleContinue}) {
		t.Errorf("completions %v, want one CONTINUE of the terminate hook", got)
	}
	if left.Load() != 1 {
		t.Errorf("gossip left %d times, want once", left.Load())
	}
	waitUntil(t, 5*time.Second, "the exit recorded", func() bool {
		st, err := store.Load()
		return err == nil && st.Exit != nil && st.Exit.Lifecycle == cloud.LifecycleContinue
	})
	st, _ := store.Load()
	e := st.Exit
	var names []string
	for _, s := range e.Steps {
		names = append(names, s.Name)
	}
	if !strings.Contains(e.Reason, "terminates this instance") || strings.Join(names, ",") != "drain,gossip-leave,lifecycle" ||
		!strings.Contains(e.Steps[0].Error, "no API server") || e.Steps[1].Error != "" || e.FinishedAt.IsZero() {
		t.Errorf("recorded exit %+v", e)
	}
}

// A spot interruption notice starts the same exit; `nodeagent drain` (byHand)
// waits for it and returns its record.
func TestSpotNoticeStartsTheExit(t *testing.T) {
	const id = "i-0spot"
	emu := awsemu.Start(t, &awsemu.World{Instances: []awsemu.Instance{{ID: id, AvailabilityZone: "us-east-1a", PrivateIP: "10.0.1.6"}}}, awsemu.Options{})
	emu.Setenv(t, id)
	awsCfg, err := cloud.LoadConfig(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	store := bootstrap.StateStore{Dir: t.TempDir()}
	x := &exitRunner{store: store, log: quietLog(), node: "ip-10-0-1-6", imds: cloud.NewIMDS(awsCfg), instanceID: id,
		kube: func() (drain.API, error) { return nil, errors.New("no API server here") }, done: make(chan struct{})}
	ctx := context.Background()
	x.poll(ctx)
	if x.exiting() {
		t.Fatal("the exit began without a notice")
	}
	if err := emu.E.InterruptSpot(id, time.Now().Add(2*time.Minute)); err != nil {
		t.Fatal(err)
	}
	x.poll(ctx)
	e, err := x.byHand(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(e.Reason, "spot interruption notice: terminate at ") || e.FinishedAt.IsZero() {
		t.Errorf("exit %+v", e)
	}
}
