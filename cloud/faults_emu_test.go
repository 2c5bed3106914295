package cloud_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/nodeagent/nodeagent/awsemu"
	"github.com/nodeagent/nodeagent/cloud"
)

// awsCall is one call the agent makes, through the clients and helpers the
// boot uses (cloud.LoadConfig, cloud.New*, cloud's helpers).
type awsCall struct {
	service, action string
	do              func(ctx context.Context, c clients) error
	// done checks that the call's effect happened exactly once.
	done func(t *testing.T, e *awsemu.Emulator)
	// retryAnswer is the error code EC2 gives the SDK's retry of a call whose
	// first answer was lost after it acted ("" when the retry just succeeds).
	retryAnswer string
}

type clients struct {
	cfg   aws.Config
	store *cloud.StateStore
}

// faultKind is one fault, injected alone, at rate 1.
type faultKind struct {
	name   string
	faults awsemu.Faults
	// named are the words an error caused by the fault carries (any of them).
	named []string
}

const faultVolume = "vol-0fault0000000001"

func faultWorld() *awsemu.World {
	w := emuWorld()
	w.Volumes = []awsemu.Volume{{ID: faultVolume, AvailabilityZone: "eu-west-1b", SizeMiB: 64,
		Tags: map[string]string{"KubernetesCluster": "proyecto.k8s.local", "k8s.io/etcd/main": "a/a"}}}
	return w
}

func agentCalls() []awsCall {
	identity := func(ctx context.Context, c clients) error {
		id, err := cloud.FetchIdentity(ctx, cloud.NewIMDS(c.cfg))
		if err == nil && id.InstanceID != cpID {
			err = fmt.Errorf("identity %+v", id)
		}
		return err
	}
	return []awsCall{
		{awsemu.ServiceIMDS, "api/token", identity, nil, ""},
		{awsemu.ServiceIMDS, "dynamic/instance-identity", identity, nil, ""},
		{awsemu.ServiceIMDS, "meta-data", func(ctx context.Context, c clients) error {
			id, err := cloud.FetchIdentity(ctx, cloud.NewIMDS(c.cfg))
			if err == nil && id.Hostname == "" {
				err = fmt.Errorf("identity without a hostname: %+v", id)
			}
			return err
		}, nil, ""},
		{awsemu.ServiceIMDS, "user-data", func(ctx context.Context, c clients) error {
			b, err := cloud.FetchUserData(ctx, cloud.NewIMDS(c.cfg))
			if err == nil && string(b) != userData {
				err = fmt.Errorf("user-data %q", b)
			}
			return err
		}, nil, ""},
		{awsemu.ServiceS3, "GetObject", func(ctx context.Context, c clients) error {
			_, err := c.store.Get(ctx, cloud.ClusterConfigKey)
			return err
		}, nil, ""},
		{awsemu.ServiceS3, "HeadObject", func(ctx context.Context, c clients) error {
			_, err := cloud.NewS3(c.cfg).HeadObject(ctx, &s3.HeadObjectInput{Bucket: aws.String("kops-state"), Key: aws.String("proyecto.k8s.local/" + cloud.ClusterConfigKey)})
			return err
		}, nil, ""},
		{awsemu.ServiceS3, "ListObjectsV2", func(ctx context.Context, c clients) error {
			_, err := c.store.List(ctx, "pki")
			return err
		}, nil, ""},
		{awsemu.ServiceS3, "PutObject", func(ctx context.Context, c clients) error {
			return c.store.Put(ctx, "faults/put", []byte("kept"))
		}, func(t *testing.T, e *awsemu.Emulator) {
			if b, ok := e.Object("kops-state", "proyecto.k8s.local/faults/put"); string(b) != "kept" {
				t.Errorf("object after the put: %q (found %v), want \"kept\"", b, ok)
			}
		}, ""},
		{awsemu.ServiceEC2, "DescribeInstances", func(ctx context.Context, c clients) error {
			_, err := cloud.NewEC2(c.cfg).DescribeInstances(ctx, &ec2.DescribeInstancesInput{InstanceIds: []string{cpID}})
			return err
		}, nil, ""},
		{awsemu.ServiceEC2, "DescribeVolumes", func(ctx context.Context, c clients) error {
			_, err := cloud.NewEC2(c.cfg).DescribeVolumes(ctx, &ec2.DescribeVolumesInput{Filters: []ec2types.Filter{{Name: aws.String("tag-key"), Values: []string{"k8s.io/etcd/main"}}}})
			return err
		}, nil, ""},
		// A retried attach whose first answer was lost is answered VolumeInUse;
		// the claim (volumes.TestClaimLostAttachAnswer) reads that as its own.
		{awsemu.ServiceEC2, "AttachVolume", func(ctx context.Context, c clients) error {
			_, err := cloud.NewEC2(c.cfg).AttachVolume(ctx, &ec2.AttachVolumeInput{VolumeId: aws.String(faultVolume), InstanceId: aws.String(cpID), Device: aws.String("/dev/xvdu")})
			return err
		}, func(t *testing.T, e *awsemu.Emulator) {
			if vs, _ := e.VolumeStatus(faultVolume); vs.InstanceID != cpID || vs.Device != "/dev/xvdu" {
				t.Errorf("volume after the attach: %+v", vs)
			}
		}, "VolumeInUse"},
		{awsemu.ServiceEC2, "CreateTags", func(ctx context.Context, c clients) error {
			return cloud.SetInstanceTag(ctx, cloud.NewEC2(c.cfg), cpID, "nodeagent.io/needs-replacement", "role")
		}, nil, ""},
		{awsemu.ServiceEC2, "DeleteTags", func(ctx context.Context, c clients) error {
			return cloud.SetInstanceTag(ctx, cloud.NewEC2(c.cfg), cpID, "nodeagent.io/needs-replacement", "")
		}, nil, ""},
		{awsemu.ServiceAutoScaling, "DescribeAutoScalingInstances", completeLaunch, lifecycleOnce, ""},
		// A retried CONTINUE whose first answer was lost is refused ("No active
		// Lifecycle Action found"); CompleteLifecycleAction counts it as its own.
		{awsemu.ServiceAutoScaling, "CompleteLifecycleAction", completeLaunch, lifecycleOnce, ""},
	}
}

// changes are the calls that change something (their first request does it).
var changes = map[string]bool{"AttachVolume": true, "CompleteLifecycleAction": true, "PutObject": true, "CreateTags": true, "DeleteTags": true}

func completeLaunch(ctx context.Context, c clients) error {
	return cloud.CompleteLifecycleAction(ctx, cloud.NewAutoScaling(c.cfg), "nodeagent-ready", cpID, cloud.LifecycleContinue)
}

func lifecycleOnce(t *testing.T, e *awsemu.Emulator) {
	if got := e.LifecycleResults()[cpID]; got != cloud.LifecycleContinue {
		t.Errorf("launch action %q, want CONTINUE", got)
	}
}

func faultKinds(service string) []faultKind {
	throttle := map[string]string{awsemu.ServiceEC2: "RequestLimitExceeded", awsemu.ServiceS3: "SlowDown",
		awsemu.ServiceAutoScaling: "Throttling", awsemu.ServiceIMDS: "429"}[service]
	kinds := []faultKind{
		{"500", awsemu.Faults{ErrorRate: 1}, []string{"500", "InternalError", "InternalFailure"}},
		{"503 " + throttle, awsemu.Faults{ThrottleRate: 1}, []string{throttle, "503"}},
		{"connection reset", awsemu.Faults{ResetRate: 1}, []string{"connection reset", "EOF"}},
		{"5s latency", awsemu.Faults{Latency: 5 * time.Second}, nil},
	}
	if service != awsemu.ServiceIMDS { // IMDS calls change nothing
		kinds = append(kinds, faultKind{"answer lost after acting", awsemu.Faults{LoseAnswerRate: 1}, []string{"connection reset", "EOF"}})
	}
	return kinds
}

// TestFaultsOnEveryAWSCall injects each fault, alone and at rate 1, into each
// call the agent makes, through the clients and helpers the boot uses. A fault
// on the first two requests of the call (the SDK tries three times): the call
// completes and its effect happens once. A fault on every request: the call
// fails with an error naming the call and the fault (latency: it only takes
// longer). These faults are injected before the emulator acts, so a refused
// request never did anything. The last kind, "answer lost after acting", is
// the other way round: the emulator acts and then resets the connection; the
// call still completes once (a retried CONTINUE is recognised as ours, a
// retried attach is answered VolumeInUse with the volume attached once), or
// fails named with its effect made once.
func TestFaultsOnEveryAWSCall(t *testing.T) {
	var table strings.Builder
	fmt.Fprintf(&table, "%-12s %-30s %-26s %-9s %s\n", "service", "call", "fault", "took", "outcome")
	for _, call := range agentCalls() {
		for _, f := range faultKinds(call.service) {
			for _, transient := range []bool{true, false} {
				if !transient && f.named == nil {
					continue // latency on every request: the transient case shows it
				}
				mode := "first 2 requests"
				if !transient {
					mode = "every request"
				}
				t.Run(call.service+"/"+call.action+"/"+f.name+"/"+mode, func(t *testing.T) {
					r := awsemu.Start(t, faultWorld(), awsemu.Options{})
					ctx, cfg, store := stateStoreAt(t, r)
					if !transient {
						// The caller's deadline: a throttled SDK backs off for
						// up to 20 s an attempt.
						var cancel context.CancelFunc
						ctx, cancel = context.WithTimeout(ctx, 8*time.Second)
						defer cancel()
					}
					faults := f.faults
					faults.Actions = []string{call.action}
					if transient {
						faults.Limit = 2
					}
					r.E.SetFaults(call.service, faults)
					start := time.Now()
					err := call.do(ctx, clients{cfg: cfg, store: store})
					took := time.Since(start)
					outcome := "completed"
					switch {
					case transient && err != nil && f.faults.LoseAnswerRate > 0 && call.retryAnswer != "" && strings.Contains(err.Error(), call.retryAnswer):
						outcome = "retry answered " + call.retryAnswer + ", acted once"
						call.done(t, r.E)
					case transient && err != nil:
						outcome = "FAIL: " + err.Error()
						t.Errorf("%s with %s on its first 2 requests: %v", call.action, f.name, err)
					case transient && call.done != nil:
						call.done(t, r.E)
					case !transient && err == nil:
						outcome = "FAIL: no error"
						t.Errorf("%s with %s on every request: no error", call.action, f.name)
					case !transient:
						outcome = "failed, named"
						if f.faults.LoseAnswerRate > 0 && call.done != nil && changes[call.action] {
							call.done(t, r.E) // acted on the first request, once
							outcome = "failed, named; acted once"
						}
						if strings.Contains(err.Error(), "context deadline exceeded") {
							outcome = "caller's 8 s deadline, SDK backing off"
						}
						if !namesCallAndFault(err.Error(), call, f) {
							outcome = "FAIL: " + err.Error()
							t.Errorf("%s with %s on every request: the error names neither the call nor the fault: %v", call.action, f.name, err)
						}
					}
					// The IMDS client gives up on an attempt after 1 s and tries
					// again: it sees the latency as a timeout, not as a wait.
					if transient && f.faults.Latency > 0 && took < time.Second {
						t.Errorf("%s took %s with %s latency: was the fault injected?", call.action, took, f.faults.Latency)
					}
					// (IMDS calls are counted by their whole path.)
					if call.service != awsemu.ServiceIMDS && r.E.Calls(call.service, call.action) == 0 {
						t.Errorf("no %s %s request reached the emulator", call.service, call.action)
					}
					fmt.Fprintf(&table, "%-12s %-30s %-26s %-9s %s\n", call.service, call.action, f.name+" ("+mode+")", took.Round(10*time.Millisecond), outcome)
				})
			}
		}
	}
	t.Logf("AWS fault matrix:\n%s", table.String())
}

// namesCallAndFault: the error says which call failed and why.
func namesCallAndFault(msg string, call awsCall, f faultKind) bool {
	call2 := call.action
	if call.service == awsemu.ServiceIMDS {
		// The IMDS client names its operations (GetToken, GetMetadata,
		// GetUserData, GetRegion), not the paths.
		call2 = map[string]string{"api/token": "getToken", "dynamic/instance-identity": "GetInstanceIdentityDocument",
			"meta-data": "GetMetadata", "user-data": "GetUserData"}[call.action]
	}
	if !strings.Contains(msg, call2) {
		return false
	}
	if strings.Contains(msg, "context deadline exceeded") {
		return true // the caller gave up while the SDK still backed off
	}
	for _, w := range f.named {
		if strings.Contains(msg, w) {
			return true
		}
	}
	return false
}
