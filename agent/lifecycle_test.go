package agent

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"

	"github.com/nodeagent/nodeagent/awsemu"
	"github.com/nodeagent/nodeagent/bootstrap"
	"github.com/nodeagent/nodeagent/cloud"
)

// A master whose bootstrap gave up waiting for its peers leaves the launch to
// its daemon: while the node is not ready the daemon heartbeats the pending
// action (spaced out), once it is ready it completes it with CONTINUE, once.
func TestDaemonCarriesTheLaunchOfAWaitingNode(t *testing.T) {
	const id, hook = "i-0waiting", "nodeagent-ready"
	emu, awsCfg := launchingInstance(t, id, "masters", hook)
	ctx := context.Background()
	store := bootstrap.StateStore{Dir: t.TempDir()}
	var quorum atomic.Bool
	p := &readinessPhase{store: store, hook: hook, instanceID: id, log: quietLog(), heartbeatEvery: time.Hour,
		asg: func() (cloud.AutoScalingAPI, error) { return cloud.NewAutoScaling(awsCfg), nil },
		checks: []readyCheck{{name: "etcd", fn: func(context.Context) error {
			if !quorum.Load() {
				return errors.New("no quorum yet")
			}
			return nil
		}}}}

	// Bootstrap gave up: the node waits, nothing is abandoned.
	p.wait(bootstrap.Waiting("etcd has no quorum yet"))
	p.followLifecycle(ctx, p.refresh(ctx))
	p.followLifecycle(ctx, p.refresh(ctx)) // the next report, well within heartbeatEvery
	if got := emu.E.Heartbeats(id); got != 1 {
		t.Errorf("heartbeats while waiting = %d, want 1 (spaced by heartbeatEvery)", got)
	}
	if got := emu.E.LifecycleResults()[id]; got != "" {
		t.Fatalf("a waiting node completed its launch with %s", got)
	}

	quorum.Store(true)
	for range 3 { // reports after the node became ready
		p.followLifecycle(ctx, p.refresh(ctx))
	}
	if n, got := emu.E.Calls(awsemu.ServiceAutoScaling, "CompleteLifecycleAction"), emu.E.LifecycleResults()[id]; n != 1 || got != awsemu.LifecycleContinue {
		t.Errorf("after ready: %d completions, result %q; want one CONTINUE", n, got)
	}
	if st, _ := store.Load(); !st.Readiness.Ready || st.Readiness.Lifecycle != cloud.LifecycleContinue {
		t.Errorf("recorded readiness %+v", st.Readiness)
	}
	// A completed launch is never heartbeated again.
	p.lastHeartbeat = time.Time{}
	p.heartbeat(ctx)
	if got := emu.E.Heartbeats(id); got != 1 {
		t.Errorf("heartbeats after completion = %d, want still 1", got)
	}
}

// launchingInstance is an emulated account with one instance of an Auto Scaling
// group whose launch hook is pending, and the SDK configured as that instance.
func launchingInstance(t *testing.T, id, group, hook string) (*awsemu.Running, aws.Config) {
	t.Helper()
	emu := awsemu.Start(t, &awsemu.World{
		Instances: []awsemu.Instance{{ID: id, Type: "m5.large", AvailabilityZone: "us-east-1a", PrivateIP: "10.0.1.5",
			State: "running", AutoScalingGroup: group}},
		LifecycleHooks: []awsemu.LifecycleHook{{AutoScalingGroup: group, Name: hook}},
	}, awsemu.Options{})
	emu.Setenv(t, id)
	awsCfg, err := cloud.LoadConfig(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return emu, awsCfg
}
