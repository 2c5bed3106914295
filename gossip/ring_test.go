package gossip

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nodeagent/nodeagent/internal/fsutil"
)

const testCluster = "ring.k8s.local"

// testNode is one agent of an in-process ring, with its own loopback address
// (127.77.0.x, all routed to lo) so hosts entries tell nodes apart.
type testNode struct {
	owner *testing.T // the test that created the node and outlives its restarts
	cfg   Config
	agent *Agent
	hosts string
}

func (n *testNode) addr() string {
	return net.JoinHostPort(n.cfg.BindIP.String(), fmt.Sprint(n.cfg.Port))
}

// freePort finds a port free for both TCP and UDP on ip.
func freePort(t testing.TB, ip net.IP) int {
	t.Helper()
	for range 50 {
		l, err := net.ListenTCP("tcp", &net.TCPAddr{IP: ip})
		if err != nil {
			t.Fatal(err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		u, err := net.ListenUDP("udp", &net.UDPAddr{IP: ip, Port: port})
		l.Close()
		if err == nil {
			u.Close()
			return port
		}
	}
	t.Fatal("no free port")
	return 0
}

const hostsPrelude = "127.0.0.1 localhost\n# hand-written, must survive\n10.9.9.9 custom\n"

func newTestNode(t *testing.T, i int, key []byte, role string, names ...string) *testNode {
	t.Helper()
	ip := net.IPv4(127, 77, 0, byte(10+i))
	hosts := filepath.Join(t.TempDir(), "hosts")
	if err := os.WriteFile(hosts, []byte(hostsPrelude), 0o644); err != nil {
		t.Fatal(err)
	}
	return &testNode{owner: t, hosts: hosts, cfg: Config{
		ClusterName: testCluster, NodeName: fmt.Sprintf("node-%d", i), BindIP: ip, Port: freePort(t, ip),
		SecretKey: key, SeedRefresh: time.Second, Role: role, Names: names, HostsFile: hosts,
		Log: testLogger(t, fmt.Sprintf("node-%d", i)),
	}}
}

func (n *testNode) start(t *testing.T, seeds []string) {
	t.Helper()
	n.cfg.Seeds = StaticSeeds(seeds)
	a, err := Start(t.Context(), n.cfg)
	if err != nil {
		t.Fatalf("start %s: %v", n.cfg.NodeName, err)
	}
	n.agent = a
	n.owner.Cleanup(func() { a.halt() })
}

// readHostsBlock parses the managed block of a hosts file and checks that the
// lines outside it are untouched.
func readHostsBlock(t *testing.T, path string) map[string][]string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(b, []byte(hostsPrelude)) {
		t.Fatalf("%s: content outside the managed block changed:\n%s", path, b)
	}
	return parseHostsBlock(b)
}

func parseHostsBlock(b []byte) map[string][]string {
	out := map[string][]string{}
	in := false
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		switch line := sc.Text(); {
		case line == HostsBegin:
			in = true
		case line == HostsEnd:
			in = false
		case in:
			f := strings.Fields(line)
			for _, name := range f[1:] {
				out[name] = append(out[name], f[0])
			}
		}
	}
	for n := range out {
		sort.Strings(out[n])
	}
	return out
}

// waitFor polls cond until it returns nil or the timeout passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() error) time.Duration {
	t.Helper()
	start := time.Now()
	var err error
	for time.Since(start) < timeout {
		if err = cond(); err == nil {
			return time.Since(start)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s: not within %v: %v", what, timeout, err)
	return 0
}

// expectedHosts is what every hosts file should hold for the running nodes.
func expectedHosts(nodes []*testNode) map[string][]string {
	out := map[string][]string{}
	for _, n := range nodes {
		ip := n.cfg.BindIP.String()
		for _, name := range append([]string{n.cfg.NodeName}, n.cfg.Names...) {
			out[name] = append(out[name], ip)
		}
	}
	for n := range out {
		sort.Strings(out[n])
	}
	return out
}

func allHostsEqual(t *testing.T, readers []*testNode, want map[string][]string) func() error {
	return func() error {
		for _, r := range readers {
			if got := readHostsBlock(t, r.hosts); !reflect.DeepEqual(got, want) {
				return fmt.Errorf("%s hosts block:\n%v\nwant:\n%v", r.cfg.NodeName, got, want)
			}
		}
		return nil
	}
}

func memberState(a *Agent, name string) (Member, bool) {
	for _, m := range a.Members() {
		if m.Name == name {
			return m, true
		}
	}
	return Member{}, false
}

func TestRing(t *testing.T) {
	key := []byte("0123456789abcdef0123456789abcdef")
	api := "api.internal." + testCluster
	nodes := []*testNode{
		newTestNode(t, 0, key, "ControlPlane", api, "etcd-a.internal."+testCluster, "etcd-events-a.internal."+testCluster),
		newTestNode(t, 1, key, "ControlPlane", api, "etcd-b.internal."+testCluster, "etcd-events-b.internal."+testCluster),
		newTestNode(t, 2, key, "Node"),
		newTestNode(t, 3, key, "Node"),
	}
	var seeds []string
	for _, n := range nodes {
		seeds = append(seeds, n.addr())
	}
	for _, n := range nodes {
		n.start(t, seeds)
	}

	took := waitFor(t, 10*time.Second, "ring converges", allHostsEqual(t, nodes, expectedHosts(nodes)))
	t.Logf("4 nodes: every hosts file complete after %v", took)
	if got := nodes[3].agent.Hosts()[api]; !reflect.DeepEqual(got, []string{"127.77.0.10", "127.77.0.11"}) {
		t.Fatalf("Hosts()[%s] = %v, want both control planes", api, got)
	}
	if m, _ := memberState(nodes[2].agent, "node-0"); m.Role != "ControlPlane" || m.State != StateAlive || m.Ready {
		t.Fatalf("node-2 sees node-0 as %+v", m)
	}

	t.Run("SetReady propagates", func(t *testing.T) {
		nodes[0].agent.SetReady(true)
		took := waitFor(t, 5*time.Second, "ready flag everywhere", func() error {
			for _, n := range nodes {
				if m, _ := memberState(n.agent, "node-0"); !m.Ready {
					return fmt.Errorf("%s sees node-0 not ready", n.cfg.NodeName)
				}
			}
			return nil
		})
		t.Logf("ready flag seen by all after %v", took)
	})

	t.Run("SetNames propagates", func(t *testing.T) {
		extra := "bastion." + testCluster
		if err := nodes[2].agent.SetNames([]string{extra}); err != nil {
			t.Fatal(err)
		}
		nodes[2].cfg.Names = []string{extra}
		waitFor(t, 5*time.Second, "new name everywhere", allHostsEqual(t, nodes, expectedHosts(nodes)))
		if err := nodes[2].agent.SetNames([]string{"bad name"}); err == nil {
			t.Fatal("SetNames accepted an invalid name")
		}
	})

	t.Run("every peer holds a member's record version as its incarnation", func(t *testing.T) {
		self := func() uint64 { m, _ := memberState(nodes[1].agent, "node-1"); return m.Incarnation }
		before := self()
		if before == 0 {
			t.Fatal("node-1 reports incarnation 0 for itself; a record's versions count from 1")
		}
		if err := nodes[1].agent.SetNames([]string{"bad name"}); err == nil {
			t.Fatal("SetNames accepted an invalid name")
		}
		if got := self(); got != before {
			t.Fatalf("a refused SetNames moved the incarnation from %d to %d", before, got)
		}
		nodes[1].agent.SetReady(true)
		if got := self(); got != before+1 {
			t.Fatalf("after SetReady node-1's incarnation is %d, want %d", got, before+1)
		}
		waitFor(t, 5*time.Second, "the new incarnation everywhere", func() error {
			for _, n := range nodes {
				if m, _ := memberState(n.agent, "node-1"); m.Incarnation != before+1 || !m.Ready {
					return fmt.Errorf("%s holds node-1 at incarnation %d (ready %v), want %d", n.cfg.NodeName, m.Incarnation, m.Ready, before+1)
				}
			}
			return nil
		})
	})

	t.Run("SetPodCIDR propagates", func(t *testing.T) {
		cidr := netip.MustParsePrefix("100.96.2.0/24")
		if err := nodes[2].agent.SetPodCIDR(cidr); err != nil {
			t.Fatal(err)
		}
		took := waitFor(t, 5*time.Second, "pod CIDR everywhere", func() error {
			for _, n := range nodes {
				if m, _ := memberState(n.agent, "node-2"); m.PodCIDR != cidr {
					return fmt.Errorf("%s sees node-2's pod CIDR as %v", n.cfg.NodeName, m.PodCIDR)
				}
			}
			return nil
		})
		t.Logf("pod CIDR seen by all after %v", took)
		if err := nodes[2].agent.SetPodCIDR(netip.MustParsePrefix("100.96.2.1/24")); err == nil {
			t.Fatal("SetPodCIDR accepted a prefix with host bits")
		}
		if m, _ := memberState(nodes[0].agent, "node-2"); m.PodCIDR != cidr {
			t.Fatalf("a refused SetPodCIDR changed what is published: %v", m.PodCIDR)
		}
	})

	t.Run("graceful shutdown removes names at once", func(t *testing.T) {
		if err := nodes[3].agent.Shutdown(); err != nil {
			t.Fatal(err)
		}
		took := waitFor(t, 3*time.Second, "node-3 gone", allHostsEqual(t, nodes[:3], expectedHosts(nodes[:3])))
		t.Logf("left node removed from all hosts files after %v", took)
		if m, _ := memberState(nodes[0].agent, "node-3"); m.State != StateLeft {
			t.Fatalf("node-0 sees node-3 as %q, want left", m.State)
		}
	})

	t.Run("hard kill removes names after the failure timeout", func(t *testing.T) {
		// halt closes the sockets without a leave message: a crash, to peers.
		if err := nodes[1].agent.halt(); err != nil {
			t.Fatal(err)
		}
		survivors := []*testNode{nodes[0], nodes[2]}
		took := waitFor(t, 10*time.Second, "node-1 gone", allHostsEqual(t, survivors, expectedHosts(survivors)))
		t.Logf("killed node removed from all hosts files after %v", took)
		if m, _ := memberState(nodes[0].agent, "node-1"); m.State != StateDead {
			t.Fatalf("node-0 sees node-1 as %q, want dead", m.State)
		}
		if got := nodes[2].agent.Hosts()[api]; !reflect.DeepEqual(got, []string{"127.77.0.10"}) {
			t.Fatalf("api name still points at the dead control plane: %v", got)
		}
	})

	t.Run("restart brings names back", func(t *testing.T) {
		nodes[1].start(t, seeds)
		nodes[3].start(t, seeds)
		took := waitFor(t, 10*time.Second, "restarted nodes back", allHostsEqual(t, nodes, expectedHosts(nodes)))
		t.Logf("restarted nodes back in all hosts files after %v", took)
	})

	t.Run("wrong key never joins", func(t *testing.T) {
		bad := newTestNode(t, 4, []byte("fedcba9876543210"), "Node")
		bad.start(t, seeds)
		waitFor(t, 10*time.Second, "key error reported", func() error {
			st := bad.agent.Status()
			if st.KeyRejects == 0 || !strings.Contains(st.LastKeyError, "encryption key mismatch") {
				return fmt.Errorf("status %+v", st)
			}
			return nil
		})
		st := bad.agent.Status()
		t.Logf("wrong-key node: last key error %q; join error %q", st.LastKeyError, st.LastJoinError)
		if st.Joined {
			t.Error("wrong-key node reports joined")
		}
		waitFor(t, 5*time.Second, "ring members report the rejection", func() error {
			for _, n := range nodes {
				if st := n.agent.Status(); st.KeyRejects > 0 && strings.HasSuffix(st.LastKeyError, ": encryption key mismatch") {
					return nil
				}
			}
			return fmt.Errorf("no ring member counted a rejection")
		})
		time.Sleep(2 * time.Second) // a few more refresh rounds
		if got := len(bad.agent.Members()); got != 1 {
			t.Errorf("wrong-key node knows %d members, want only itself", got)
		}
		for _, n := range nodes {
			if _, ok := memberState(n.agent, "node-4"); ok {
				t.Errorf("%s knows the wrong-key node", n.cfg.NodeName)
			}
		}
		if err := allHostsEqual(t, nodes, expectedHosts(nodes))(); err != nil {
			t.Error(err)
		}
	})
}

func TestSingleNodeWritesOwnNames(t *testing.T) {
	n := newTestNode(t, 20, make([]byte, 16), "ControlPlane", "api.internal."+testCluster)
	n.start(t, nil)
	waitFor(t, 3*time.Second, "own names in hosts", allHostsEqual(t, []*testNode{n}, expectedHosts([]*testNode{n})))
	if !n.agent.Status().Joined {
		t.Error("a node with no seeds should count as joined (first node of the cluster)")
	}
}

// TestHostsDebounce: a burst of changes ends in one or two writes, not one per
// change, and the file ends with the last state.
func TestHostsDebounce(t *testing.T) {
	n := newTestNode(t, 21, make([]byte, 24), "Node")
	n.start(t, nil)
	waitFor(t, 3*time.Second, "first write", allHostsEqual(t, []*testNode{n}, expectedHosts([]*testNode{n})))
	before := n.agent.hostsWrites.Load()
	for i := range 20 {
		if err := n.agent.SetNames([]string{fmt.Sprintf("burst-%d.%s", i, testCluster)}); err != nil {
			t.Fatal(err)
		}
	}
	n.cfg.Names = []string{"burst-19." + testCluster}
	waitFor(t, 3*time.Second, "last state written", allHostsEqual(t, []*testNode{n}, expectedHosts([]*testNode{n})))
	time.Sleep(2 * hostsDebounce)
	if w := n.agent.hostsWrites.Load() - before; w > 2 {
		t.Errorf("%d writes for a burst of 20 changes, want at most 2", w)
	}
}

// TestHostsBindMounted: in a container /etc/hosts is a bind mount, and renaming
// over a mount point fails with EBUSY; writeHosts falls back to writing in place.
// A real bind mount, so it needs root.
func TestHostsBindMounted(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("needs root for a bind mount")
	}
	dir := t.TempDir()
	src, target := filepath.Join(dir, "hosts.src"), filepath.Join(dir, "hosts")
	stale := hostsPrelude + HostsBegin + "\n10.0.0.1 a-much-longer-stale-entry\n" + HostsEnd + "\n"
	for _, p := range []string{src, target} {
		if err := os.WriteFile(p, []byte(stale), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := syscall.Mount(src, target, "", syscall.MS_BIND, ""); err != nil {
		t.Fatalf("bind mount: %v", err)
	}
	t.Cleanup(func() { syscall.Unmount(target, syscall.MNT_DETACH) })
	if err := fsutil.WriteFileAtomic(target, []byte("x"), 0o644); !errors.Is(err, syscall.EBUSY) {
		t.Fatalf("rename over the mount point: %v, want EBUSY (test premise)", err)
	}
	entries := map[string][]string{"x": {"10.0.0.2"}}
	wrote, err := writeHosts(target, entries)
	if err != nil || !wrote {
		t.Fatalf("wrote=%v err=%v", wrote, err)
	}
	want := RenderHostsBlock([]byte(stale), entries)
	for _, p := range []string{target, src} { // the mount's source sees the change too
		if got, _ := os.ReadFile(p); string(got) != string(want) {
			t.Fatalf("%s:\n%s\nwant:\n%s", p, got, want)
		}
	}
}

// TestJoinSeedsPastBootingInstances: EC2 lists instances whose agent is not
// listening yet. One refresh keeps trying further seeds while they are refused,
// so a node early in a large launch finds the one seed that is up at once
// instead of waiting out its backoff.
func TestJoinSeedsPastBootingInstances(t *testing.T) {
	key := make([]byte, 16)
	up := newTestNode(t, 30, key, "Node")
	up.start(t, nil)
	early := newTestNode(t, 31, key, "Node")
	early.start(t, nil) // no seed loop: the refresh below is the only join

	var seeds []string
	for i := range 11 { // refused: nothing listens on these ports
		ip := net.IPv4(127, 77, 1, byte(10+i))
		seeds = append(seeds, net.JoinHostPort(ip.String(), fmt.Sprint(freePort(t, ip))))
	}
	seeds = append(seeds, up.addr())

	if !early.agent.joinSeeds(seeds) {
		t.Fatalf("joinSeeds with one live seed among 12 reported no ring; status %+v", early.agent.Status())
	}
	if got := early.agent.ml.NumMembers(); got != 2 {
		t.Fatalf("after one refresh the early node knows %d members, want 2", got)
	}
	if st := early.agent.Status(); st.LastJoinError != "" {
		t.Errorf("a refresh that joined still reports %q", st.LastJoinError)
	}
}
