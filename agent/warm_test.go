package agent

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"

	"github.com/nodeagent/nodeagent/awsemu"
	"github.com/nodeagent/nodeagent/bootstrap"
	"github.com/nodeagent/nodeagent/cloud"
	"github.com/nodeagent/nodeagent/config"
)

// ranPhase records that it acted; the warm-pool boot's choice of phases is
// what is under test here (the phases themselves have their own tests and the
// machine test).
type ranPhase struct {
	name string
	mu   *sync.Mutex
	ran  *[]string
}

func (p ranPhase) Name() string { return p.name }
func (p ranPhase) Check(context.Context) ([]bootstrap.Change, error) {
	return []bootstrap.Change{{Kind: "test", Target: p.name, Action: "run"}}, nil
}
func (p ranPhase) Act(context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	*p.ran = append(*p.ran, p.name)
	return nil
}
func (p ranPhase) Verify(context.Context) error { return nil }

func warmNode(t *testing.T, target string) (*awsemu.Running, *Node, *phaseSet, *bootstrap.Runner, func() []string) {
	t.Helper()
	const id, group, hook = "i-0warm", "nodes", "nodeagent-ready"
	emu := awsemu.Start(t, &awsemu.World{
		Instances:      []awsemu.Instance{{ID: id, AvailabilityZone: "us-east-1a", PrivateIP: "10.0.1.7", AutoScalingGroup: group, TargetLifecycleState: target}},
		LifecycleHooks: []awsemu.LifecycleHook{{AutoScalingGroup: group, Name: hook}},
	}, awsemu.Options{})
	emu.Setenv(t, id)
	awsCfg, err := cloud.LoadConfig(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu  sync.Mutex
		ran []string
	)
	store := bootstrap.StateStore{Dir: t.TempDir()}
	ps := &phaseSet{readiness: &readinessPhase{store: store, hook: hook, instanceID: id, log: quietLog(),
		asg: func() (cloud.AutoScalingAPI, error) { return cloud.NewAutoScaling(awsCfg), nil }}}
	for _, name := range []string{"host-prep", "assets", "container-runtime", "images", "pki", "manifests", "kubelet", "nodeagent-service"} {
		ps.phases = append(ps.phases, ranPhase{name: name, mu: &mu, ran: &ran})
	}
	n := &Node{Config: &config.NodeConfig{}, Identity: cloud.Identity{InstanceID: id}, AWS: aws.NewConfig()}
	*n.AWS = awsCfg
	runner := &bootstrap.Runner{Store: store, Log: quietLog(), RecordBoot: true}
	return emu, n, ps, runner, func() []string {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(ran)
	}
}

// Launched into a stopped warm pool, the node fetches, verifies and imports,
// starts no kubelet and joins nothing, completes the warm launch hook and ends
// (the group stops the instance).
func TestWarmStoppedPreparesAndStops(t *testing.T) {
	emu, n, ps, runner, ran := warmNode(t, awsemu.TargetWarmedStopped)
	inPool, err := bootWarm(context.Background(), n, ps, runner, quietLog())
	if err != nil || !inPool {
		t.Fatalf("bootWarm = %v, %v; want in the pool", inPool, err)
	}
	if got := ran(); !slices.Equal(got, []string{"host-prep", "assets", "container-runtime", "images"}) {
		t.Errorf("phases run in the warm pool: %v", got)
	}
	if got := emu.E.Completions("i-0warm"); len(got) != 1 || got[0].Transition != "warm" || got[0].Result != awsemu.LifecycleContinue {
		t.Errorf("completions %v, want the warm launch CONTINUE", got)
	}
	st, err := runner.Store.Load()
	if err != nil || st.Warm == nil || st.Warm.Target != awsemu.TargetWarmedStopped || st.Warm.Lifecycle != cloud.LifecycleContinue || st.Readiness.Lifecycle != "" {
		t.Errorf("state: %+v, %v; want the warm stay recorded and the launch into service still pending", st, err)
	}
}

// A running warm instance waits, prepared, until the group moves it into
// service, then lets the whole boot go on; an instance not in a warm pool is
// not held at all.
func TestWarmRunningWaitsForService(t *testing.T) {
	defer func(d time.Duration) { warmPollEvery = d }(warmPollEvery)
	warmPollEvery = 20 * time.Millisecond
	emu, n, ps, runner, ran := warmNode(t, awsemu.TargetWarmedRunning)
	type result struct {
		inPool bool
		err    error
	}
	done := make(chan result, 1)
	go func() {
		inPool, err := bootWarm(context.Background(), n, ps, runner, quietLog())
		done <- result{inPool, err}
	}()
	waitUntil(t, 10*time.Second, "the warm launch hook completed", func() bool { return len(emu.E.Completions("i-0warm")) == 1 })
	select {
	case r := <-done:
		t.Fatalf("bootWarm returned while in the warm pool: %+v", r)
	default:
	}
	if err := emu.E.SetTargetLifecycleState("i-0warm", awsemu.TargetInService); err != nil {
		t.Fatal(err)
	}
	r := <-done
	if r.err != nil || r.inPool {
		t.Fatalf("after the move into service: %+v; want the boot to go on", r)
	}
	if got := ran(); len(got) != 4 {
		t.Errorf("phases run before service: %v", got)
	}
	if st, _ := runner.Store.Load(); st.Warm == nil || st.Warm.InServiceAt.IsZero() {
		t.Errorf("the move into service is not recorded: %+v", st.Warm)
	}
	// In service now: nothing holds the boot.
	if inPool, err := bootWarm(context.Background(), n, ps, runner, quietLog()); inPool || err != nil {
		t.Errorf("an instance in service: %v, %v", inPool, err)
	}
}
