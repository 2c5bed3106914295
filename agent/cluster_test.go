package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nodeagent/nodeagent/bootstrap"
	"github.com/nodeagent/nodeagent/gossip"
)

// TestClusterStatus: `nodeagent status --cluster` shows every node the daemon's
// gossip ring knows, with role, IP, state and readiness, over the status API.
func TestClusterStatus(t *testing.T) {
	key := []byte("0123456789abcdef")
	ports := freeUDPTCPPorts(t, 3)
	nodes := []struct{ name, role string }{{"cp-a", "ControlPlane"}, {"worker-b", "Node"}, {"worker-c", "Node"}}
	var agents []*gossip.Agent
	for i, n := range nodes {
		var seeds gossip.SeedSource
		if i > 0 {
			seeds = gossip.StaticSeeds{fmt.Sprintf("127.0.0.1:%d", ports[0])}
		}
		a, err := gossip.Start(context.Background(), gossip.Config{
			ClusterName: "ring.k8s.local", NodeName: n.name, BindIP: net.IPv4(127, 0, 0, 1), Port: ports[i],
			SecretKey: key, Seeds: seeds, Role: n.role, Ready: n.role == "ControlPlane", Log: quietLog(),
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = a.Shutdown() })
		agents = append(agents, a)
	}
	g := &gossipRunner{agent: agents[0], ready: true}
	waitFor(t, func() bool { return len(g.members()) == 3 })
	agents[1].SetReady(true)
	if err := agents[1].SetPodCIDR(netip.MustParsePrefix("100.96.1.0/24")); err != nil {
		t.Fatal(err)
	}

	dir := t.TempDir()
	api := &statusAPI{store: bootstrap.StateStore{Dir: dir}, metrics: newMetrics(), cluster: g.members, log: quietLog()}
	socket := filepath.Join(dir, "nodeagent.sock")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- api.serve(ctx, socket) }()
	t.Cleanup(func() { cancel(); <-done })

	var out bytes.Buffer
	var code int
	waitFor(t, func() bool {
		out.Reset()
		var err error
		code, err = ClusterStatus(context.Background(), socket, &out, "table")
		return err == nil && strings.Contains(out.String(), "worker-b  Node          127.0.0.1  alive  yes    100.96.1.0/24")
	})
	for _, want := range []string{"NODE", "POD CIDR", "cp-a", "ControlPlane", "worker-c"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("status --cluster lacks %q:\n%s", want, out.String())
		}
	}
	if code != StatusNotReady {
		t.Errorf("exit %d with worker-c not ready, want %d", code, StatusNotReady)
	}
	agents[2].SetReady(true)
	var js bytes.Buffer
	waitFor(t, func() bool {
		js.Reset()
		code, _ = ClusterStatus(context.Background(), socket, &js, "json")
		return code == StatusReady
	})
	// worker-b's record: published at start (1), made ready (2), given a pod CIDR (3).
	var members []ClusterMember
	if err := json.Unmarshal(js.Bytes(), &members); err != nil {
		t.Fatalf("status --cluster -o json: %v\n%s", err, js.String())
	}
	for _, m := range members {
		if m.Name == "worker-b" && m.Incarnation != 3 {
			t.Errorf("worker-b at incarnation %d, want 3 (start, ready, pod CIDR)", m.Incarnation)
		}
		if m.Name == "worker-c" && m.Incarnation != 2 {
			t.Errorf("worker-c at incarnation %d, want 2 (start, ready)", m.Incarnation)
		}
	}
}

// freeUDPTCPPorts finds ports free for both TCP and UDP (memberlist binds both).
func freeUDPTCPPorts(t *testing.T, n int) []int {
	t.Helper()
	var ports []int
	for len(ports) < n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		u, err := net.ListenPacket("udp", fmt.Sprintf("127.0.0.1:%d", port))
		l.Close()
		if err != nil {
			continue
		}
		u.Close()
		ports = append(ports, port)
	}
	return ports
}
