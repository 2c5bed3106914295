package cli

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nodeagent/nodeagent/bootstrap"
)

// The field names scripts read from `-o json` are a contract: each data
// command's output, with every field filled in, must have exactly the key paths
// of its golden schema (testdata/<command>.schema; -update rewrites them).
func TestJSONOutputMatchesItsSchema(t *testing.T) {
	root := t.TempDir()
	fullState(t, filepath.Join(root, "/var/lib/nodeagent"))
	bad := writeFile(t, "bad.yaml", badConfig)
	// A worker with no state store: the plan needs nothing from AWS.
	worker := writeFile(t, "worker.yaml", workerConfig)
	// doctor on a node bootstrap ran on (its saved config), off EC2: IMDS refuses at once, the clock's NTP server does not
	// answer; every finding's fields are there (a failed one carries a fix).
	t.Setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", "http://127.0.0.1:1")
	t.Setenv("AWS_REGION", "us-east-1")
	doctorRoot := t.TempDir()
	if err := os.MkdirAll(filepath.Join(doctorRoot, "/var/lib/nodeagent"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(doctorRoot, "/var/lib/nodeagent/config.yaml"), []byte(workerConfig), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		args []string
	}{
		{"doctor", []string{"doctor", "--root", doctorRoot, "-o", "json", "--ntp-server", "127.0.0.1:1", "--check-timeout", "3s"}},
		{"status", []string{"status", "--root", root, "-o", "json"}},
		{"version", []string{"version", "-o", "json"}},
		{"config-check", []string{"config", "check", "-o", "json", bad}},
		{"plan", []string{"plan", "--config", worker, "--root", t.TempDir(), "-o", "json"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, out, stderr := nodeagent(t, "", tc.args...)
			var v any
			if err := json.Unmarshal([]byte(out), &v); err != nil {
				t.Fatalf("%v: output is not JSON (%v); stderr:\n%s\n%s", tc.args, err, stderr, out)
			}
			got := strings.Join(schemaOf(v), "\n") + "\n"
			golden := filepath.Join("testdata", tc.name+".schema")
			if *update {
				if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test ./cmd/nodeagent/cli -update)", err)
			}
			if got != string(want) {
				t.Errorf("%s -o json key paths changed (a contract for scripts; -update if intended):\n got:\n%s\nwant:\n%s", tc.name, got, want)
			}
		})
	}
}

const workerConfig = `apiVersion: nodeagent.io/v1alpha1
kind: NodeConfig
spec:
  cluster: {name: plan.example.com}
  role: Node
  kubernetesVersion: v1.34.4
  host: {hostname: ip-10-0-1-5.ec2.internal}
`

// schemaOf lists every key path of a JSON value with its type, arrays as [].
func schemaOf(v any) []string {
	seen := map[string]bool{}
	var walk func(path string, v any)
	walk = func(path string, v any) {
		switch x := v.(type) {
		case map[string]any:
			for k, e := range x {
				walk(path+"."+k, e)
			}
		case []any:
			for _, e := range x {
				walk(path+"[]", e)
			}
		case string:
			seen[path+" string"] = true
		case float64:
			seen[path+" number"] = true
		case bool:
			seen[path+" bool"] = true
		case nil:
			seen[path+" null"] = true
		}
	}
	walk("", v)
	out := make([]string, 0, len(seen))
	for k := range seen {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// fullState writes a state file with every field set, as a control plane
// mid-boot has it.
func fullState(t *testing.T, dir string) {
	t.Helper()
	at := time.Date(2026, 11, 30, 10, 0, 0, 0, time.UTC)
	_, err := bootstrap.StateStore{Dir: dir}.Update(func(st *bootstrap.State) {
		st.Node = bootstrap.NodeInfo{Name: "ip-10-0-0-10.ec2.internal", Cluster: "c.k8s.local", Role: "ControlPlane", InstanceID: "i-0a",
			InstanceType: "m5.large", Region: "us-east-1", AvailabilityZone: "us-east-1a", PrivateIP: "10.0.0.10"}
		st.ConfigHash, st.StartedAt, st.FinishedAt, st.Error = "abc", at, at, "phase etcd-health: waiting"
		st.Phases = []bootstrap.PhaseStatus{{Name: "etcd-health", State: bootstrap.PhaseRunning, Started: at, Duration: bootstrap.Duration(time.Second),
			Changed: true, Changes: []bootstrap.Change{{Kind: "etcd", Target: "main", Action: "wait", Detail: "no leader"}},
			Error: "x", Warnings: []string{"w"}, Progress: "waiting for etcd"}}
		st.Volumes = []bootstrap.VolumeStatus{{ID: "vol-1", EtcdCluster: "main", Member: "a", Members: []string{"a"}, Device: "/dev/nvme1n1",
			MountPoint: "/mnt/master-vol-1", Formatted: true, State: "mounted"}}
		st.Units = []bootstrap.UnitStatus{{Name: "kubelet.service", ActiveState: "active", SubState: "running", Enabled: true}}
		st.Manifests = []bootstrap.ManifestStatus{{Name: "etcd-main", Path: "/etc/kubernetes/manifests/etcd-main.yaml", SHA256: "ff"}}
		st.Assets = []bootstrap.AssetStatus{{Name: "kubelet", Path: "/usr/local/bin/kubelet", SHA256: "ee", Source: "cache"},
			{Name: "containerd", Path: "/usr/local/bin/containerd", SHA256: "dd", Source: "cache", Member: "bin/containerd"}}
		st.Readiness = bootstrap.ReadinessStatus{Ready: false, Reason: "waiting", CheckedAt: at, Lifecycle: "CONTINUE"}
		st.Boot = &bootstrap.BootRecord{StartedAt: at, FinishedAt: at, Result: "waiting",
			Phases: []bootstrap.PhaseTiming{{Name: "etcd-health", State: bootstrap.PhaseWaiting, Started: at, Duration: bootstrap.Duration(time.Second)}}}
		st.Gossip = &bootstrap.GossipStatus{KeyGeneration: 2, KeyGenerations: []uint64{1, 2}, KeyringError: "x"}
		st.Facts = bootstrap.Facts{EtcdMembers: []bootstrap.EtcdMemberFact{{Cluster: "main", Member: "a", Members: []string{"a"}, VolumeID: "vol-1", MountPoint: "/mnt/master-vol-1"}}}
	})
	if err != nil {
		t.Fatal(err)
	}
}
