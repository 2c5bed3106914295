package gossip

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/nodeagent/nodeagent/internal/netns"
)

// The multi-host test runs one agent per network namespace. Each agent is the
// gossip-only program ./internal/ringnode run under `ip netns exec`, so its
// sockets and its NodeIP lookup live entirely in that namespace, and killing it
// is a real SIGKILL of a real process.

type netnsChild struct {
	name, hosts, out string
	names            []string
	cmd              *exec.Cmd
}

func TestNetns(t *testing.T) {
	// Root and iproute2 are part of the test environment (hack/deps.sh): a
	// machine without them cannot test what crosses a network.
	if why := netns.Available(); why != "" {
		t.Fatal(why)
	}
	exe := buildRingNode(t)
	const n = 4
	lab := netns.New(t, fmt.Sprintf("g%d", os.Getpid()%100000), "10.99.0", n)
	var seeds []string
	for _, node := range lab.Nodes {
		seeds = append(seeds, node.IP.String()) // bare IPs: the default port, as from EC2
	}
	dir := t.TempDir()
	keyFile := writeRingKey(t, dir, []byte("netns-test-key-0"))
	children := make([]*netnsChild, n)
	for i := range children {
		c := &netnsChild{
			name:  fmt.Sprintf("ip-10-99-0-%d", 10+i),
			hosts: filepath.Join(dir, fmt.Sprintf("hosts-%d", i)),
			out:   filepath.Join(dir, fmt.Sprintf("nodeip-%d", i)),
		}
		if i == 0 {
			c.names = []string{"api.internal." + testCluster, "etcd-a.internal." + testCluster}
		}
		if err := os.WriteFile(c.hosts, []byte(hostsPrelude), 0o644); err != nil {
			t.Fatal(err)
		}
		children[i] = c
	}
	start := func(i int) {
		c := children[i]
		os.Remove(c.out)
		cmd := lab.Command(context.Background(), i, exe, ringNodeArgs{
			name: c.name, names: c.names, seeds: seeds, hosts: c.hosts, ipOut: c.out,
			router: lab.Router.String(), keyFile: keyFile, refresh: "2s",
		}.args()...)
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if !*verbose {
			cmd.Stdout, cmd.Stderr = nil, nil
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		c.cmd = cmd
	}
	kill := func(i int) {
		c := children[i]
		if c.cmd == nil {
			return
		}
		c.cmd.Process.Kill()
		c.cmd.Wait()
		c.cmd = nil
	}
	t.Cleanup(func() {
		for i := range children {
			kill(i)
		}
	})
	expect := func(idx ...int) map[string][]string {
		out := map[string][]string{}
		for _, i := range idx {
			ip := lab.Nodes[i].IP.String()
			for _, name := range append([]string{children[i].name}, children[i].names...) {
				out[name] = append(out[name], ip)
			}
		}
		for k := range out {
			sort.Strings(out[k])
		}
		return out
	}
	hostsOf := func(readers []int, want map[string][]string) func() error {
		return func() error {
			for _, i := range readers {
				b, err := os.ReadFile(children[i].hosts)
				if err != nil {
					return err
				}
				if !strings.HasPrefix(string(b), hostsPrelude) {
					return fmt.Errorf("node %d: content outside the block changed", i)
				}
				if got := parseHostsBlock(b); !reflect.DeepEqual(got, want) {
					return fmt.Errorf("node %d hosts: %v, want %v", i, got, want)
				}
			}
			return nil
		}
	}
	all := []int{0, 1, 2, 3}

	for i := range children {
		start(i)
	}
	waitFor(t, 10*time.Second, "NodeIP in every namespace", func() error {
		for i, c := range children {
			b, err := os.ReadFile(c.out)
			if err != nil {
				return err
			}
			if got, want := strings.TrimSpace(string(b)), lab.Nodes[i].IP.String(); got != want {
				t.Fatalf("NodeIP(%s) in %s = %s, want %s", lab.Router, lab.Nodes[i].NS, got, want)
			}
		}
		return nil
	})
	took := waitFor(t, 20*time.Second, "converge", hostsOf(all, expect(all...)))
	t.Logf("4 namespaces converged in %v", took)

	kill(3)
	took = waitFor(t, 15*time.Second, "killed node's names gone", hostsOf([]int{0, 1, 2}, expect(0, 1, 2)))
	t.Logf("SIGKILLed node removed from every hosts file after %v", took)

	start(3)
	took = waitFor(t, 15*time.Second, "restarted node back", hostsOf(all, expect(all...)))
	t.Logf("restarted node back everywhere after %v", took)

	lab.SetLink(2, false)
	took = waitFor(t, 15*time.Second, "partition seen on both sides", func() error {
		if err := hostsOf([]int{0, 1, 3}, expect(0, 1, 3))(); err != nil {
			return err
		}
		return hostsOf([]int{2}, expect(2))()
	})
	t.Logf("partition: both sides dropped each other after %v", took)

	lab.SetLink(2, true)
	took = waitFor(t, 20*time.Second, "partition healed", hostsOf(all, expect(all...)))
	t.Logf("partition healed after %v", took)
}
