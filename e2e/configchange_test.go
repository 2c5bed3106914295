//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/nodeagent/nodeagent/awsemu"
	"github.com/nodeagent/nodeagent/cloud"
	"github.com/nodeagent/nodeagent/config"
	"github.com/nodeagent/nodeagent/internal/testenv"
	"github.com/nodeagent/nodeagent/pki"
)

// TestConfigChanges boots one worker and changes its config three ways while
// its daemon runs: a new cluster.yaml in the state store is applied in place
// (kubelet restarted, nothing else); a role change in user-data is refused and
// reported as needs-replacement; and `bootstrap --config` with a new file is
// kept by the daemon, not reverted.
func TestConfigChanges(t *testing.T) {
	caCert, caKey, err := pki.GenerateCA("kubernetes-ca", 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	const bucket, clusterKey = "state", cluster + "/nodeagent/cluster.yaml"
	env := startEnv(t, &awsemu.World{
		Buckets: map[string]map[string]string{bucket: {
			clusterKey: "apiVersion: nodeagent.io/v1alpha1\nkind: NodeConfig\nspec:\n  kubelet:\n    nodeLabels: {from-state-store: \"yes\"}\n",
		}},
	})
	nodeDoc := func(role config.Role, kubelet map[string]any) []byte {
		ud, err := testenv.UserData(testenv.NodeSpec{
			Cluster: cluster, Role: role, Runtime: config.RuntimeContainerd, Assets: env.Assets,
			Kubelet: kubelet, Extra: func(c *config.NodeConfig) {
				c.Spec.Cluster.StateStore = "s3://" + bucket + "/" + cluster
				// No API server runs here: readiness waits only briefly for the Node.
				c.Spec.Readiness.Timeout = "5s"
				useFileCA(c)
			},
		})
		if err != nil {
			t.Fatal(err)
		}
		return ud
	}
	inst := workerInstance(t, "i-0e2e0cfgchange01", nodeDoc(config.RoleNode, testenv.ContainerKubeletConfig()))
	n := bootNode(t, env, inst)
	installCA(t, n, caCert, caKey)
	agent(t, n, "bootstrap") // not ready (no API server), every other phase done
	settled := func(what string) string {
		var hash string
		eventually(t, 2*time.Minute, what, func() (bool, string) {
			st, _ := status(t, n)
			for _, p := range st.Phases {
				if p.Name != "readiness" && p.State != "done" {
					return false, fmt.Sprintf("phase %s is %s: %s", p.Name, p.State, p.Error)
				}
			}
			if st.Config == nil {
				return false, "no config in status"
			}
			hash = st.Config.Hash
			return true, ""
		})
		return hash
	}
	h0 := settled("the boot's phases done")
	metrics := daemonMetrics(t, n)
	eventually(t, time.Minute, "the daemon runs the boot's config", func() (bool, string) {
		m := metrics()
		return strings.Contains(m, `nodeagent_config_info{hash="`+h0+`"} 1`), m
	})
	before := invocations(t, n)

	t.Run("a new cluster.yaml is applied in place", func(t *testing.T) {
		// A sysctl the host already has (the machine's /proc/sys is the host's
		// and read-only), so its application is seen in the persisted file.
		maxMap, err := os.ReadFile("/proc/sys/vm/max_map_count")
		if err != nil {
			t.Fatal(err)
		}
		env.Emu.PutObject(bucket, clusterKey, []byte(fmt.Sprintf(`apiVersion: nodeagent.io/v1alpha1
kind: NodeConfig
spec:
  kubelet:
    nodeLabels: {from-state-store: "yes"}
    config: {maxPods: 42}
  host:
    sysctls: {vm.max_map_count: "%s"}
`, strings.TrimSpace(string(maxMap)))))
		took := eventually(t, 90*time.Second, "the kubelet config and sysctl applied", func() (bool, string) {
			kc, _ := os.ReadFile(n.M.Path("/var/lib/kubelet/config.yaml"))
			sc, _ := os.ReadFile(n.M.Path("/etc/sysctl.d/99-nodeagent.conf"))
			return strings.Contains(string(kc), "maxPods: 42") && strings.Contains(string(sc), "vm.max_map_count"), string(sc)
		})
		t.Logf("cluster.yaml change applied %s after the upload", took.Round(time.Second))
		h1 := settled("the change's run done")
		if h1 == h0 {
			t.Errorf("status config hash still %s", h0)
		}
		st, _ := status(t, n)
		if len(st.Config.Sources) < 2 || st.Config.Sources[1].Name != "cluster.yaml" || st.Config.Sources[1].Version == "" {
			t.Errorf("status config sources %+v lack cluster.yaml with its ETag", st.Config.Sources)
		}
		eventually(t, 30*time.Second, "the daemon's metrics show the new config", func() (bool, string) {
			m := metrics()
			return strings.Contains(m, `nodeagent_config_info{hash="`+h1+`"} 1`), m
		})
		after := invocations(t, n)
		if after["kubelet.service"] == before["kubelet.service"] {
			t.Error("kubelet was not restarted for its new config")
		}
		for _, u := range []string{"containerd.service", "nodeagent.service"} {
			if after[u] != before[u] {
				t.Errorf("%s restarted by a kubelet and sysctl change", u)
			}
		}
		// Restarted once: the next polls and reconciles leave it be.
		polls := env.Emu.Calls(awsemu.ServiceS3, "GetObject")
		eventually(t, 45*time.Second, "two more polls of cluster.yaml", func() (bool, string) {
			return env.Emu.Calls(awsemu.ServiceS3, "GetObject") >= polls+2, ""
		})
		if again := invocations(t, n); again["kubelet.service"] != after["kubelet.service"] {
			t.Error("kubelet restarted again without a change")
		}
		before = after
	})

	t.Run("a role change in user-data needs a new instance", func(t *testing.T) {
		env.Emu.SetUserData(inst.ID, string(nodeDoc(config.RoleControlPlane, testenv.ContainerKubeletConfig())))
		eventually(t, 90*time.Second, "needs-replacement in status, metrics and the EC2 tag", func() (bool, string) {
			st, _ := status(t, n)
			if st.Config == nil || st.Config.Rejected == nil || len(st.Config.Rejected.NeedsReplacement) == 0 {
				return false, fmt.Sprintf("status config %+v", st.Config)
			}
			if !strings.Contains(metrics(), "nodeagent_needs_replacement 1") {
				return false, "metric not 1"
			}
			tag := env.Emu.InstanceTags(inst.ID)[cloud.NeedsReplacementTag]
			return strings.Contains(tag, "spec.role"), "tag " + tag
		})
		st, _ := status(t, n)
		if st.Node.Role != string(config.RoleNode) {
			t.Errorf("node role in status %s, want Node: the node must keep running as it was", st.Node.Role)
		}
		if now := invocations(t, n); now["kubelet.service"] != before["kubelet.service"] || now["containerd.service"] != before["containerd.service"] {
			t.Errorf("units restarted by a refused config: %v → %v", before, now)
		}
		if out, code := agent(t, n, "plan"); code != 0 || !strings.Contains(string(out), "needs-replacement") {
			t.Errorf("plan (exit %d) does not show the classification:\n%s", code, out)
		}
	})

	t.Run("bootstrap --config is kept by the daemon", func(t *testing.T) {
		kubelet := testenv.ContainerKubeletConfig()
		kubelet["registryPullQPS"] = 7
		if err := os.WriteFile(n.M.Path("/root/new.yaml"), nodeDoc(config.RoleNode, kubelet), 0o600); err != nil {
			t.Fatal(err)
		}
		agent(t, n, "bootstrap", "--config", "/root/new.yaml")
		h3 := settled("the new config's run done")
		st, _ := status(t, n)
		if st.Config.Rejected != nil {
			t.Errorf("a rejection is still reported: %+v", st.Config.Rejected)
		}
		if tag, ok := env.Emu.InstanceTags(inst.ID)[cloud.NeedsReplacementTag]; ok {
			t.Errorf("needs-replacement tag %q still on the instance", tag)
		}
		// The daemon takes the new config (its metrics say so), and after its
		// next reconcile the file still says what the new config does.
		eventually(t, 60*time.Second, "the daemon on the new config", func() (bool, string) {
			m := metrics()
			return strings.Contains(m, `nodeagent_config_info{hash="`+h3+`"} 1`) && strings.Contains(m, "nodeagent_needs_replacement 0"), m
		})
		runs := reconcileRuns(metrics())
		eventually(t, 90*time.Second, "one more reconcile of the daemon", func() (bool, string) {
			return reconcileRuns(metrics()) > runs, ""
		})
		kc, _ := os.ReadFile(n.M.Path("/var/lib/kubelet/config.yaml"))
		if !strings.Contains(string(kc), "registryPullQPS: 7") {
			t.Errorf("the daemon reverted bootstrap's config:\n%s", kc)
		}
		if st, _ := status(t, n); st.Config.Hash != h3 {
			t.Errorf("status config hash %s, want %s", st.Config.Hash, h3)
		}
	})
}

// invocations are the systemd invocation IDs of the node's units: a restart
// changes one.
func invocations(t *testing.T, n *testenv.Node) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, u := range []string{"kubelet.service", "containerd.service", "nodeagent.service"} {
		b, _, err := n.M.Exec(context.Background(), nil, "systemctl", "show", "-p", "InvocationID", "--value", u)
		if err != nil {
			t.Fatal(err)
		}
		out[u] = strings.TrimSpace(string(b))
	}
	return out
}

// daemonMetrics returns a reader of the daemon's /metrics.
func daemonMetrics(t *testing.T, n *testenv.Node) func() string {
	client := daemonClient(n)
	return func() string {
		resp, err := client.Get("http://nodeagent/metrics")
		if err != nil {
			return err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
}

// reconcileRuns sums nodeagent_reconcile_runs_total over its results.
func reconcileRuns(metrics string) int {
	total := 0
	for _, line := range strings.Split(metrics, "\n") {
		if strings.HasPrefix(line, "nodeagent_reconcile_runs_total{") {
			var v float64
			if _, err := fmt.Sscanf(line[strings.LastIndex(line, " ")+1:], "%g", &v); err == nil {
				total += int(v)
			}
		}
	}
	return total
}
