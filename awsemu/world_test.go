package awsemu

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestLoadWorldExample(t *testing.T) {
	w, err := LoadWorld("testdata/world.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if w.AttachLatency != 200*time.Millisecond {
		t.Errorf("attachLatency = %v, want 200ms", w.AttachLatency)
	}
	if got := w.Faults["s3"].Latency; got != 5*time.Millisecond {
		t.Errorf("s3 latency = %v, want 5ms", got)
	}
	if len(w.Instances) != 3 || len(w.Volumes) != 3 || len(w.LifecycleHooks) != 2 {
		t.Errorf("counts: %d instances, %d volumes, %d hooks", len(w.Instances), len(w.Volumes), len(w.LifecycleHooks))
	}
	if got := w.Volumes[0].Tags["k8s.io/etcd/main"]; got != "a/a,b" {
		t.Errorf("etcd tag = %q", got)
	}
	e, err := New(w, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestLoadWorldRejects(t *testing.T) {
	cases := []struct {
		name, yaml, wantErr string
	}{
		{"unknown top-level field", "regoin: us-east-1\n", "regoin"},
		{"unknown instance field", "instances: [{id: i-1, tpye: m5.large}]\n", "tpye"},
		{"unknown fault field", "faults: {ec2: {throttle: 1}}\n", "throttle"},
		{"bad duration", "attachLatency: soon\n", "soon"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "w.yaml")
			if err := os.WriteFile(p, []byte(c.yaml), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := LoadWorld(p)
			if err == nil || !strings.Contains(err.Error(), c.wantErr) {
				t.Fatalf("LoadWorld = %v, want an error mentioning %q", err, c.wantErr)
			}
		})
	}
}

func TestNewRejectsInconsistentWorlds(t *testing.T) {
	cases := []struct {
		name    string
		w       World
		wantErr string
	}{
		{"duplicate instance", World{Instances: []Instance{{ID: "i-1"}, {ID: "i-1"}}}, "duplicate instance"},
		{"instance id", World{Instances: []Instance{{ID: "x-1"}}}, "must start with i-"},
		{"zone outside region", World{Instances: []Instance{{ID: "i-1", AvailabilityZone: "eu-west-1a"}}}, "not in region"},
		{"volume attached to unknown", World{Volumes: []Volume{{ID: "vol-1", AttachedTo: "i-9"}}}, "unknown instance"},
		{"fault rate", World{Faults: map[string]Faults{"ec2": {ThrottleRate: 2}}}, "within 0..1"},
		{"fault service", World{Faults: map[string]Faults{"sqs": {}}}, "unknown service"},
		{"hook without name", World{LifecycleHooks: []LifecycleHook{{AutoScalingGroup: "g"}}}, "needs autoScalingGroup and name"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e, err := New(&c.w, Options{})
			if err == nil {
				e.Close()
			}
			if err == nil || !strings.Contains(err.Error(), c.wantErr) {
				t.Fatalf("New = %v, want an error mentioning %q", err, c.wantErr)
			}
		})
	}
}
