package cloud_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"

	"github.com/nodeagent/nodeagent/awsemu"
	"github.com/nodeagent/nodeagent/cloud"
)

// These tests run the cloud package's real SDK clients, configured only through
// the standard AWS_* environment, against the wire-level emulator.

const (
	cpID     = "i-0123456789abcdef0"
	workerID = "i-0123456789abcdef1"
	userData = "apiVersion: nodeagent.io/v1alpha1\nkind: NodeConfig\n"
)

func emuWorld() *awsemu.World {
	return &awsemu.World{
		Region: "eu-west-1",
		Instances: []awsemu.Instance{
			{ID: cpID, Type: "m5.large", AvailabilityZone: "eu-west-1b", PrivateIP: "10.1.2.3", UserData: userData, AutoScalingGroup: "cp-b"},
			{ID: workerID, Type: "t3.medium", AvailabilityZone: "eu-west-1a", PrivateIP: "10.1.1.9", Hostname: "ip-10-1-1-9.eu-west-1.compute.internal other.name"},
		},
		Buckets: map[string]map[string]string{
			"kops-state": {
				"proyecto.k8s.local/" + cloud.ClusterConfigKey: "name: proyecto.k8s.local\n",
				"proyecto.k8s.local/" + cloud.CACertKey:        "-----BEGIN CERTIFICATE-----\n",
				"proyecto.k8s.local/" + cloud.CAKeyKey:         "-----BEGIN PRIVATE KEY-----\n",
			},
		},
		LifecycleHooks: []awsemu.LifecycleHook{{AutoScalingGroup: "cp-b", Name: "nodeagent-ready"}},
	}
}

func loadConfig(t *testing.T, r *awsemu.Running, instanceID string) context.Context {
	t.Helper()
	r.Setenv(t, instanceID)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// stateStoreAt is the control plane instance's AWS config in the emulator r,
// and the test cluster's state store through it.
func stateStoreAt(t *testing.T, r *awsemu.Running) (context.Context, aws.Config, *cloud.StateStore) {
	t.Helper()
	ctx := loadConfig(t, r, cpID)
	cfg, err := cloud.LoadConfig(ctx)
	if err != nil {
		t.Fatal(err)
	}
	store, err := cloud.NewStateStore(cloud.NewS3(cfg), "s3://kops-state/proyecto.k8s.local")
	if err != nil {
		t.Fatal(err)
	}
	return ctx, cfg, store
}

func TestFetchIdentityAgainstEmulator(t *testing.T) {
	r := awsemu.Start(t, emuWorld(), awsemu.Options{})
	cases := []struct {
		instance string
		want     cloud.Identity
	}{
		{cpID, cloud.Identity{InstanceID: cpID, InstanceType: "m5.large", Region: "eu-west-1", AvailabilityZone: "eu-west-1b", PrivateIP: "10.1.2.3", Hostname: "ip-10-1-2-3.eu-west-1.compute.internal"}},
		// A local-hostname listing several names yields the first.
		{workerID, cloud.Identity{InstanceID: workerID, InstanceType: "t3.medium", Region: "eu-west-1", AvailabilityZone: "eu-west-1a", PrivateIP: "10.1.1.9", Hostname: "ip-10-1-1-9.eu-west-1.compute.internal"}},
	}
	for _, tc := range cases {
		t.Run(tc.instance, func(t *testing.T) {
			ctx := loadConfig(t, r, tc.instance)
			// No AWS_REGION: LoadConfig must learn it from IMDS, as on EC2.
			t.Setenv("AWS_REGION", "")
			cfg, err := cloud.LoadConfig(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if cfg.Region != "eu-west-1" {
				t.Errorf("region from IMDS = %q", cfg.Region)
			}
			id, err := cloud.FetchIdentity(ctx, cloud.NewIMDS(cfg))
			if err != nil {
				t.Fatal(err)
			}
			if id != tc.want {
				t.Errorf("identity = %+v, want %+v", id, tc.want)
			}
		})
	}
}

func TestFetchUserDataAgainstEmulator(t *testing.T) {
	r := awsemu.Start(t, emuWorld(), awsemu.Options{})
	cases := []struct {
		instance string
		want     string
		wantErr  error
	}{
		{cpID, userData, nil},
		{workerID, "", cloud.ErrNoUserData},
	}
	for _, tc := range cases {
		t.Run(tc.instance, func(t *testing.T) {
			ctx := loadConfig(t, r, tc.instance)
			cfg, err := cloud.LoadConfig(ctx)
			if err != nil {
				t.Fatal(err)
			}
			b, err := cloud.FetchUserData(ctx, cloud.NewIMDS(cfg))
			if !errors.Is(err, tc.wantErr) || string(b) != tc.want {
				t.Fatalf("FetchUserData = %q, %v; want %q, %v", b, err, tc.want, tc.wantErr)
			}
		})
	}
}

func TestStateStoreAgainstEmulator(t *testing.T) {
	r := awsemu.Start(t, emuWorld(), awsemu.Options{})
	ctx, cfg, store := stateStoreAt(t, r)
	b, err := store.Get(ctx, cloud.ClusterConfigKey)
	if err != nil || string(b) != "name: proyecto.k8s.local\n" {
		t.Fatalf("Get cluster config = %q, %v", b, err)
	}
	if _, err := store.Get(ctx, cloud.GossipKeyKey); !errors.Is(err, cloud.ErrNotFound) {
		t.Fatalf("Get of a missing key = %v, want ErrNotFound", err)
	}
	cert, key, err := store.CA(ctx)
	if err != nil || !strings.Contains(string(cert), "CERTIFICATE") || !strings.Contains(string(key), "PRIVATE KEY") {
		t.Fatalf("CA = %q, %q, %v", cert, key, err)
	}
	missing, err := cloud.NewStateStore(cloud.NewS3(cfg), "s3://no-such-bucket/x")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := missing.Get(ctx, cloud.ClusterConfigKey); err == nil || errors.Is(err, cloud.ErrNotFound) {
		t.Fatalf("a missing bucket must be an error, not ErrNotFound: %v", err)
	}
}

func TestCompleteLifecycleActionAgainstEmulator(t *testing.T) {
	r := awsemu.Start(t, emuWorld(), awsemu.Options{})
	ctx := loadConfig(t, r, cpID)
	cfg, err := cloud.LoadConfig(ctx)
	if err != nil {
		t.Fatal(err)
	}
	c := cloud.NewAutoScaling(cfg)
	if err := cloud.CompleteLifecycleAction(ctx, c, "nodeagent-ready", cpID, cloud.LifecycleContinue); err != nil {
		t.Fatal(err)
	}
	if got := r.E.LifecycleResults()[cpID]; got != cloud.LifecycleContinue {
		t.Errorf("recorded result %q, want CONTINUE", got)
	}
	// A crash between the CONTINUE and its record: the re-run's CONTINUE finds
	// the instance in service and counts it done (Auto Scaling saw one).
	if err := cloud.CompleteLifecycleAction(ctx, c, "nodeagent-ready", cpID, cloud.LifecycleContinue); err != nil {
		t.Errorf("CONTINUE again after a lost record: %v", err)
	}
	if err := cloud.CompleteLifecycleAction(ctx, c, "nodeagent-ready", cpID, cloud.LifecycleAbandon); err == nil {
		t.Error("ABANDON after CONTINUE: no error")
	}
	if err := cloud.CompleteLifecycleAction(ctx, c, "nodeagent-ready", workerID, cloud.LifecycleContinue); err == nil || !strings.Contains(err.Error(), "no Auto Scaling group") {
		t.Errorf("instance outside any group: %v", err)
	}
	if err := cloud.CompleteLifecycleAction(ctx, c, "wrong-hook", cpID, cloud.LifecycleContinue); err == nil || !strings.Contains(err.Error(), "ValidationError") {
		t.Errorf("unknown hook: %v", err)
	}
	if n := r.E.Calls("autoscaling", "CompleteLifecycleAction"); n != 4 {
		t.Errorf("CompleteLifecycleAction calls = %d, want 4", n)
	}
}

// The users' add-ons are listed from the state store's addons/ directory, with
// keys relative to the cluster's prefix; another cluster's objects are not seen.
func TestStateStoreListAgainstEmulator(t *testing.T) {
	w := emuWorld()
	w.Buckets["kops-state"]["proyecto.k8s.local/addons/team.yaml"] = "kind: ConfigMap\n"
	w.Buckets["kops-state"]["proyecto.k8s.local/addons/dns.yaml"] = "kind: ConfigMap\n"
	w.Buckets["kops-state"]["other.k8s.local/addons/theirs.yaml"] = "kind: ConfigMap\n"
	r := awsemu.Start(t, w, awsemu.Options{})
	ctx, _, store := stateStoreAt(t, r)
	keys, err := store.List(ctx, cloud.AddonsDir)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"addons/dns.yaml", "addons/team.yaml"}; !slices.Equal(keys, want) {
		t.Errorf("List(addons) = %v, want %v", keys, want)
	}
	if keys, err := store.List(ctx, "backups"); err != nil || len(keys) != 0 {
		t.Errorf("List of an empty directory = %v, %v", keys, err)
	}
}

// PutIfMatch writes only over the version read (or only a new object, with
// no version); a lost race is ErrChanged and leaves the object alone.
func TestStateStoreConditionalWritesAgainstEmulator(t *testing.T) {
	r := awsemu.Start(t, emuWorld(), awsemu.Options{})
	ctx, _, store := stateStoreAt(t, r)
	const key = cloud.GossipKeyringKey
	if err := store.PutIfMatch(ctx, key, []byte("first"), ""); err != nil {
		t.Fatalf("create: %v", err)
	}
	if err := store.PutIfMatch(ctx, key, []byte("second creator"), ""); !errors.Is(err, cloud.ErrChanged) {
		t.Fatalf("a second create = %v, want ErrChanged", err)
	}
	b, etag, err := store.GetVersioned(ctx, key)
	if err != nil || string(b) != "first" || etag == "" {
		t.Fatalf("GetVersioned = %q, %q, %v", b, etag, err)
	}
	if err := store.PutIfMatch(ctx, key, []byte("next"), etag); err != nil {
		t.Fatalf("write over the version read: %v", err)
	}
	if err := store.PutIfMatch(ctx, key, []byte("stale"), etag); !errors.Is(err, cloud.ErrChanged) {
		t.Fatalf("write over a stale version = %v, want ErrChanged", err)
	}
	if b, err := store.Get(ctx, key); err != nil || string(b) != "next" {
		t.Fatalf("object now %q, %v; want next", b, err)
	}
	if _, _, err := store.GetVersioned(ctx, "nodeagent/none"); !errors.Is(err, cloud.ErrNotFound) {
		t.Fatalf("GetVersioned of a missing object = %v, want ErrNotFound", err)
	}
}
