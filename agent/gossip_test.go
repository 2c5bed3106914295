package agent

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nodeagent/nodeagent/awsemu"
	"github.com/nodeagent/nodeagent/bootstrap"
	"github.com/nodeagent/nodeagent/gossip"
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
