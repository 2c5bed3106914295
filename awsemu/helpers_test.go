package awsemu

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	"github.com/aws/smithy-go"

	"github.com/nodeagent/nodeagent/cloud"
)

const (
	nitroID = "i-0000000000000aaa1"
	nitroB  = "i-0000000000000aaa2"
	xenID   = "i-0000000000000bbb1"
	otherAZ = "i-0000000000000ccc1"
	volA    = "vol-00000000000000a01"
	volB    = "vol-00000000000000a02"
	volC    = "vol-00000000000000c01"
	volXen  = "vol-00000000000000b01"
)

// testWorld is a small cluster whose device links go to per-test directories.
func testWorld(t *testing.T) *World {
	t.Helper()
	cluster := map[string]string{"KubernetesCluster": "proyecto.k8s.local", "kubernetes.io/cluster/proyecto.k8s.local": "owned"}
	with := func(extra map[string]string) map[string]string {
		m := cloneMap(cluster)
		for k, v := range extra {
			m[k] = v
		}
		return m
	}
	return &World{
		Instances: []Instance{
			{ID: nitroID, Type: "m5.large", AvailabilityZone: "us-east-1a", PrivateIP: "10.0.1.10", DevRoot: filepath.Join(t.TempDir(), "a1"),
				Tags: with(map[string]string{"k8s.io/role/master": "1", "Name": "cp-a"}), UserData: "#cloud-config\n", AutoScalingGroup: "cp-a"},
			{ID: nitroB, Type: "c5.xlarge", AvailabilityZone: "us-east-1a", PrivateIP: "10.0.1.11", DevRoot: filepath.Join(t.TempDir(), "a2"),
				Tags: with(map[string]string{"k8s.io/role/master": "1", "Name": "cp-a2"})},
			{ID: xenID, Type: "t2.medium", AvailabilityZone: "us-east-1b", PrivateIP: "10.0.2.10", DevRoot: filepath.Join(t.TempDir(), "b1"),
				Tags: with(map[string]string{"k8s.io/role/node": "1"}), AutoScalingGroup: "nodes"},
			{ID: otherAZ, Type: "m5.large", AvailabilityZone: "us-east-1c", PrivateIP: "10.0.3.10", State: "stopped",
				Tags: map[string]string{"Name": "stray"}},
		},
		Volumes: []Volume{
			{ID: volA, AvailabilityZone: "us-east-1a", SizeGiB: 20, SizeMiB: 8, Tags: with(map[string]string{"k8s.io/etcd/main": "a/a,b,c", "k8s.io/role/master": "1"})},
			{ID: volB, AvailabilityZone: "us-east-1a", SizeMiB: 8, Tags: with(map[string]string{"k8s.io/etcd/events": "a/a,b,c", "k8s.io/role/master": "1"})},
			{ID: volXen, AvailabilityZone: "us-east-1b", SizeMiB: 8, Tags: with(map[string]string{"k8s.io/etcd/main": "b/a,b,c"})},
			{ID: volC, AvailabilityZone: "us-east-1c", SizeMiB: 8},
		},
		Buckets: map[string]map[string]string{
			"state": {
				"proyecto.k8s.local/nodeagent/cluster.yaml": "name: proyecto.k8s.local\n",
				"proyecto.k8s.local/nodeagent/gossip.key":   "0123456789abcdef",
				"proyecto.k8s.local/pki/ca.crt":             "CERT",
				"proyecto.k8s.local/pki/ca.key":             "KEY",
				"assets/kubelet":                            "kubelet-binary",
			},
		},
		LifecycleHooks: []LifecycleHook{{AutoScalingGroup: "cp-a", Name: "nodeagent-ready"}},
	}
}

// sdkConfig loads the SDK configuration the way the agent does (cloud.LoadConfig
// reading the standard AWS_* environment), as instance instanceID.
func sdkConfig(t *testing.T, r *Running, instanceID string) aws.Config {
	t.Helper()
	r.Setenv(t, instanceID)
	cfg, err := cloud.LoadConfig(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// fastRetries keeps the SDK's standard retryer (same attempts, same retryable
// codes) but shortens its backoff so fault tests run in milliseconds.
func fastRetries(cfg aws.Config) aws.Config {
	cfg.Retryer = func() aws.Retryer {
		return retry.NewStandard(func(o *retry.StandardOptions) {
			o.Backoff = retry.NewExponentialJitterBackoff(20 * time.Millisecond)
		})
	}
	return cfg
}

func apiCode(err error) string {
	var ae smithy.APIError
	if errors.As(err, &ae) {
		return ae.ErrorCode()
	}
	return ""
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return c
}
