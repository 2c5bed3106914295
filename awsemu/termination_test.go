package awsemu

import (
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/autoscaling"

	"github.com/nodeagent/nodeagent/cloud"
)

// An instance launched into a warm pool completes its launch hook there, and
// again when the group moves it into service; the group terminating it holds it
// in Terminating:Wait until its terminate hook is completed, then EC2
// terminates it. IMDS tells the instance each target state.
func TestWarmPoolAndTerminateHooks(t *testing.T) {
	w := testWorld(t)
	w.LifecycleHooks = append(w.LifecycleHooks,
		LifecycleHook{AutoScalingGroup: "nodes", Name: "nodeagent-ready"},
		LifecycleHook{AutoScalingGroup: "nodes", Name: "nodeagent-drain", Transition: TransitionTerminating})
	for i := range w.Instances {
		if w.Instances[i].ID == nitroID {
			w.Instances[i].AutoScalingGroup = "nodes"
			w.Instances[i].TargetLifecycleState = TargetWarmedStopped
		}
	}
	r := Start(t, w, Options{})
	c := cloud.NewAutoScaling(sdkConfig(t, r, ""))
	md := cloud.NewIMDS(sdkConfig(t, r, nitroID))
	state := func() string {
		t.Helper()
		out, err := c.DescribeAutoScalingInstances(ctx(t), &autoscaling.DescribeAutoScalingInstancesInput{InstanceIds: []string{nitroID}})
		if err != nil || len(out.AutoScalingInstances) != 1 {
			t.Fatalf("describe: %v", err)
		}
		return aws.ToString(out.AutoScalingInstances[0].LifecycleState)
	}
	target := func() string {
		t.Helper()
		s, err := cloud.TargetLifecycleState(ctx(t), md)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	complete := func(hook string) error {
		return cloud.CompleteLifecycleAction(ctx(t), c, hook, nitroID, cloud.LifecycleContinue)
	}

	if s, tg := state(), target(); s != "Warmed:Pending:Wait" || tg != TargetWarmedStopped {
		t.Fatalf("launched into the warm pool: %s, target %s", s, tg)
	}
	if err := complete("nodeagent-drain"); err == nil {
		t.Fatal("a terminate hook was completed before any termination")
	}
	if err := complete("nodeagent-ready"); err != nil {
		t.Fatal(err)
	}
	if s := state(); s != TargetWarmedStopped {
		t.Fatalf("warm hook completed: %s", s)
	}
	if err := r.E.SetTargetLifecycleState(nitroID, TargetInService); err != nil {
		t.Fatal(err)
	}
	if s, tg := state(), target(); s != "Pending:Wait" || tg != TargetInService {
		t.Fatalf("moved into service: %s, target %s", s, tg)
	}
	if err := complete("nodeagent-ready"); err != nil {
		t.Fatal(err)
	}
	if s := state(); s != "InService" {
		t.Fatalf("launch hook completed: %s", s)
	}

	if err := r.E.TerminateInGroup(nitroID); err != nil {
		t.Fatal(err)
	}
	if s, tg := state(), target(); s != "Terminating:Wait" || tg != TargetTerminated {
		t.Fatalf("scale-in: %s, target %s", s, tg)
	}
	if err := cloud.RecordLifecycleActionHeartbeat(ctx(t), c, "nodeagent-drain", nitroID); err != nil {
		t.Fatal(err)
	}
	if err := complete("nodeagent-drain"); err != nil {
		t.Fatal(err)
	}
	if err := complete("nodeagent-drain"); err == nil {
		t.Error("the terminate hook was completed twice")
	}
	if s := state(); s != "Terminated" {
		t.Errorf("terminate hook completed: %s", s)
	}
	want := []Completion{{"nodeagent-ready", "warm", "CONTINUE"}, {"nodeagent-ready", "launch", "CONTINUE"}, {"nodeagent-drain", "terminate", "CONTINUE"}}
	if got := r.E.Completions(nitroID); len(got) != len(want) || got[0] != want[0] || got[1] != want[1] || got[2] != want[2] {
		t.Errorf("completions %v, want %v", got, want)
	}
	if n := r.E.TerminateHeartbeats(nitroID); n != 1 {
		t.Errorf("terminate heartbeats %d, want 1", n)
	}
}

// A spot interruption notice appears in IMDS as spot/instance-action; an
// instance without one has none, and an instance in no group no target state.
func TestSpotInterruptionNotice(t *testing.T) {
	r := Start(t, testWorld(t), Options{})
	md := cloud.NewIMDS(sdkConfig(t, r, xenID))
	if a, err := cloud.SpotInstanceAction(ctx(t), md); err != nil || a != nil {
		t.Fatalf("before a notice: %+v, %v", a, err)
	}
	at := time.Now().Add(2 * time.Minute).Truncate(time.Second).UTC()
	if err := r.E.InterruptSpot(xenID, at); err != nil {
		t.Fatal(err)
	}
	a, err := cloud.SpotInstanceAction(ctx(t), md)
	if err != nil || a == nil || a.Action != "terminate" || !a.Time.Equal(at) {
		t.Fatalf("notice %+v, %v; want terminate at %s", a, err, at)
	}
	other := cloud.NewIMDS(sdkConfig(t, r, nitroB))
	if s, err := cloud.TargetLifecycleState(ctx(t), other); err != nil || s != "" {
		t.Errorf("instance in no group: target %q, %v", s, err)
	}
}

func TestWorldRefusesAnUnknownTransition(t *testing.T) {
	w := testWorld(t)
	w.LifecycleHooks = append(w.LifecycleHooks, LifecycleHook{AutoScalingGroup: "nodes", Name: "x", Transition: "autoscaling:EC2_INSTANCE_STOPPING"})
	if _, err := New(w, Options{}); err == nil {
		t.Fatal("an unknown transition was accepted")
	}
}
