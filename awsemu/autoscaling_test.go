package awsemu

import (
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/autoscaling"

	"github.com/nodeagent/nodeagent/cloud"
)

func TestLifecycleHook(t *testing.T) {
	w := testWorld(t)
	w.LifecycleHooks = append(w.LifecycleHooks, LifecycleHook{AutoScalingGroup: "nodes", Name: "nodeagent-ready"})
	r := Start(t, w, Options{})
	c := cloud.NewAutoScaling(sdkConfig(t, r, ""))

	lifecycleState := func(id string) string {
		out, err := c.DescribeAutoScalingInstances(ctx(t), &autoscaling.DescribeAutoScalingInstancesInput{InstanceIds: []string{id}})
		if err != nil {
			t.Fatal(err)
		}
		if len(out.AutoScalingInstances) != 1 {
			t.Fatalf("%s: %d instances", id, len(out.AutoScalingInstances))
		}
		return aws.ToString(out.AutoScalingInstances[0].LifecycleState)
	}
	if s := lifecycleState(nitroID); s != "Pending:Wait" {
		t.Fatalf("before completion: %s, want Pending:Wait", s)
	}

	steps := []struct {
		name, hook, instance, result string
		wantErr                      string // "" for success
	}{
		{"control plane ready", "nodeagent-ready", nitroID, cloud.LifecycleContinue, ""},
		// (A second CONTINUE is taken by cloud as its own earlier one, whose
		// record a crash lost: cloud's own test.)
		{"completed twice", "nodeagent-ready", nitroID, cloud.LifecycleAbandon, "ValidationError"},
		{"unknown hook", "other-hook", xenID, cloud.LifecycleContinue, "ValidationError"},
		{"worker failed", "nodeagent-ready", xenID, cloud.LifecycleAbandon, ""},
		{"not in any group", "nodeagent-ready", nitroB, cloud.LifecycleContinue, "in no Auto Scaling group"},
	}
	for _, s := range steps {
		t.Run(s.name, func(t *testing.T) {
			err := cloud.CompleteLifecycleAction(ctx(t), c, s.hook, s.instance, s.result)
			if s.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), s.wantErr) {
				t.Fatalf("err = %v, want %q", err, s.wantErr)
			}
		})
	}
	want := map[string]string{nitroID: "CONTINUE", xenID: "ABANDON"}
	got := r.E.LifecycleResults()
	if len(got) != len(want) || got[nitroID] != want[nitroID] || got[xenID] != want[xenID] {
		t.Errorf("LifecycleResults = %v, want %v", got, want)
	}
	if s := lifecycleState(nitroID); s != "InService" {
		t.Errorf("after CONTINUE: %s, want InService", s)
	}
	if s := lifecycleState(xenID); s != "Terminating" {
		t.Errorf("after ABANDON: %s, want Terminating", s)
	}
	all, err := c.DescribeAutoScalingInstances(ctx(t), &autoscaling.DescribeAutoScalingInstancesInput{})
	if err != nil || len(all.AutoScalingInstances) != 2 {
		t.Fatalf("all group members: %v, %d", err, len(all.AutoScalingInstances))
	}
}
