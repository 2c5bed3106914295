package agent

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/nodeagent/nodeagent/awsemu"
	"github.com/nodeagent/nodeagent/bootstrap"
	"github.com/nodeagent/nodeagent/cloud"
	"github.com/nodeagent/nodeagent/gossip"
	"github.com/nodeagent/nodeagent/iam"
	"github.com/nodeagent/nodeagent/internal/fsutil"
)

// TestDaemonJoinsGossipFromConfig starts the daemon's gossip seat the way `run`
// does for a .k8s.local cluster: key from spec.gossip.secretKeyFile, seeds from
// EC2 (the emulator's DescribeInstances), names into the managed /etc/hosts block.
func TestDaemonJoinsGossipFromConfig(t *testing.T) {
	const cluster = "ring.k8s.local"
	tags := map[string]string{"KubernetesCluster": cluster, "kubernetes.io/cluster/" + cluster: "owned"}
	emu := awsemu.Start(t, &awsemu.World{Instances: []awsemu.Instance{
		{ID: "i-0gossip", Type: "m5.large", AvailabilityZone: "us-east-1a", PrivateIP: "127.0.0.1", State: "running", Tags: tags},
		// A peer that is down: the seed list names it, the ring does not.
		{ID: "i-0stopped", Type: "m5.large", AvailabilityZone: "us-east-1b", PrivateIP: "127.0.0.2", State: "stopped", Tags: tags},
	}}, awsemu.Options{})
	emu.Setenv(t, "i-0gossip")

	root := t.TempDir()
	port := freeUDPTCPPorts(t, 1)[0]
	for path, content := range map[string]string{
		"/etc/nodeagent/gossip.key": "0123456789abcdef0123456789abcdef\n",
		"/etc/hosts":                "127.0.0.1 localhost\n::1 localhost ip6-localhost\n",
	} {
		if err := os.MkdirAll(filepath.Dir(fsutil.Root(root).Path(path)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(fsutil.Root(root).Path(path), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	cfg := filepath.Join(t.TempDir(), "node.yaml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf(`apiVersion: nodeagent.io/v1alpha1
kind: NodeConfig
spec:
  cluster: {name: %s}
  role: Node
  kubernetesVersion: v1.34.4
  gossip: {port: %d, secretKeyFile: /etc/nodeagent/gossip.key}
`, cluster, port)), 0o600); err != nil {
		t.Fatal(err)
	}
	o := Options{Root: fsutil.Root(root), ConfigFile: cfg, Log: quietLog()}
	ctx := context.Background()
	n, err := LoadNode(ctx, o, needIdentity)
	if err != nil {
		t.Fatal(err)
	}
	g, err := startGossip(ctx, o, n, gossipNames(n, bootstrap.Facts{}))
	if err != nil {
		t.Fatal(err)
	}
	if g == nil {
		t.Fatal("no gossip for a .k8s.local cluster")
	}
	t.Cleanup(g.stop)
	g.setReady(true)

	hostsPath := fsutil.Root(root).Path("/etc/hosts")
	waitFor(t, func() bool {
		b, _ := os.ReadFile(hostsPath)
		return strings.Contains(string(b), gossip.HostsBegin) && strings.Contains(string(b), "127.0.0.1 "+n.Name)
	})
	hosts, _ := os.ReadFile(hostsPath)
	if !strings.HasPrefix(string(hosts), "127.0.0.1 localhost\n::1 localhost ip6-localhost\n") {
		t.Errorf("lines outside the managed block changed:\n%s", hosts)
	}
	members := g.members()
	if len(members) != 1 || members[0].Name != n.Name || members[0].Role != "Node" {
		t.Errorf("ring members = %+v", members)
	}
	waitFor(t, func() bool { m := g.members(); return len(m) == 1 && m[0].Ready })
	if got := emu.E.Calls(awsemu.ServiceEC2, "DescribeInstances"); got == 0 {
		t.Error("seeds were not listed from EC2")
	}
}

// TestWorkerJoinsRingWithoutEC2: only masters may call ec2:DescribeInstances
// (iam/nodes.json grants a worker no EC2 read at all). A worker whose every EC2
// call is refused finds the ring through the seed list a master publishes in
// the state store, and gets the master's names; the master's daemon side
// publishes that list with its own instance profile (iam/masters.json).
func TestWorkerJoinsRingWithoutEC2(t *testing.T) {
	const cluster = "ring.k8s.local"
	tags := map[string]string{"KubernetesCluster": cluster}
	pol := map[string]string{}
	for _, role := range []string{iam.Masters, iam.Nodes} {
		var err error
		if pol[role], err = iam.Policy(role, "s3://kops-state/"+cluster, "s3://assets/assets"); err != nil {
			t.Fatal(err)
		}
	}
	port := freeUDPTCPPorts(t, 1)[0]
	key := "0123456789abcdef0123456789abcdef"
	emu := awsemu.Start(t, &awsemu.World{
		Instances: []awsemu.Instance{
			{ID: "i-0master", Type: "m5.large", AvailabilityZone: "us-east-1a", PrivateIP: "127.0.0.2", State: "running", Tags: tags, InstanceProfile: iam.Masters},
			{ID: "i-0worker", Type: "m5.large", AvailabilityZone: "us-east-1b", PrivateIP: "127.0.0.3", State: "running", Tags: tags, InstanceProfile: iam.Nodes},
		},
		Buckets:  map[string]map[string]string{"kops-state": {cluster + "/nodeagent/gossip.key": key + "\n"}},
		Policies: pol,
	}, awsemu.Options{})
	// Whatever the policy says, every EC2 action is refused.
	emu.E.SetFaults("ec2", awsemu.Faults{Deny: []string{"DescribeInstances", "DescribeVolumes", "AttachVolume", "DetachVolume", "CreateTags", "DeleteTags", "DescribeTags"}})

	start := func(id, role string) (*gossipRunner, *Node, string) {
		t.Helper()
		emu.Setenv(t, id)
		root := t.TempDir()
		hosts := fsutil.Root(root).Path("/etc/hosts")
		if err := os.MkdirAll(filepath.Dir(hosts), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(hosts, []byte("127.0.0.1 localhost\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		cfg := filepath.Join(t.TempDir(), "node.yaml")
		if err := os.WriteFile(cfg, []byte(fmt.Sprintf(`apiVersion: nodeagent.io/v1alpha1
kind: NodeConfig
spec:
  cluster: {name: %s, stateStore: s3://kops-state/%s}
  role: %s
  kubernetesVersion: v1.34.4
  gossip: {port: %d}
`, cluster, cluster, role, port)), 0o600); err != nil {
			t.Fatal(err)
		}
		o := Options{Root: fsutil.Root(root), ConfigFile: cfg, Log: quietLog()}
		n, err := LoadNode(context.Background(), o, needIdentity)
		if err != nil {
			t.Fatal(err)
		}
		names := []string(nil)
		if role == "ControlPlane" {
			names = []string{"api.internal." + cluster}
		}
		g, err := startGossip(context.Background(), o, n, names)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(g.stop)
		return g, n, hosts
	}
	_, _, _ = start("i-0master", "ControlPlane")
	waitFor(t, func() bool {
		b, ok := emu.E.Object("kops-state", cluster+"/"+cloud.GossipSeedsKey)
		return ok && strings.Contains(string(b), `"127.0.0.2"`)
	})
	denied := emu.E.Calls(awsemu.ServiceEC2, "DescribeInstances")

	worker, _, hosts := start("i-0worker", "Node")
	waitFor(t, func() bool {
		b, _ := os.ReadFile(hosts)
		return strings.Contains(string(b), "127.0.0.2 ") && strings.Contains(string(b), "api.internal."+cluster)
	})
	if got := emu.E.Calls(awsemu.ServiceEC2, "DescribeInstances"); got != denied {
		t.Errorf("the worker called DescribeInstances %d times; a worker asks no EC2", got-denied)
	}

	// Status shows, per peer, when it last changed and when this node's
	// own probe last reached it; /metrics counts the ring's events.
	waitFor(t, func() bool {
		for _, m := range worker.members() {
			if m.IP == "127.0.0.2" {
				return m.State == "alive" && !m.Since.IsZero() && !m.LastSeen.IsZero() && m.RTTMillis > 0 && m.Incarnation >= 1
			}
		}
		return false
	})
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(worker.collector())
	got, err := testutil.GatherAndCount(reg, "nodeagent_gossip_member_events_total")
	if err != nil || got != 4 {
		t.Fatalf("member event series = %d, %v; want join, update, dead, left", got, err)
	}
	if got, err := testutil.GatherAndCount(reg, "nodeagent_gossip_death_notices_total"); err != nil || got != 6 {
		t.Fatalf("death notice series = %d, %v; want sent, relayed, confirmed, refuted, dropped, self-refuted", got, err)
	}
	if v := eventCount(t, reg, "join"); v < 1 {
		t.Errorf("joins seen by the worker = %v, want at least the master", v)
	}
	// The ring's size now, by state: a scrape series of it is the size history.
	if err := testutil.GatherAndCompare(reg, strings.NewReader(`# HELP nodeagent_gossip_peers Gossip ring members by state.
# TYPE nodeagent_gossip_peers gauge
nodeagent_gossip_peers{state="alive"} 2
`), "nodeagent_gossip_peers"); err != nil {
		t.Errorf("/metrics ring size: %v", err)
	}
}

// eventCount reads one series of nodeagent_gossip_member_events_total.
func eventCount(t *testing.T, reg *prometheus.Registry, event string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "nodeagent_gossip_member_events_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "event" && l.GetValue() == event {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	t.Fatalf("no %s series", event)
	return 0
}
