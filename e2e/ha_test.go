//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"fmt"
	"maps"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/nodeagent/nodeagent/awsemu"
	"github.com/nodeagent/nodeagent/bootstrap"
	"github.com/nodeagent/nodeagent/config"
)

// TestHAControlPlane is the seeds' cluster end to end: three masters in three
// zones form one etcd quorum (main and events) over gossip names and serve the
// API behind api.internal.<cluster>; a worker joins and runs a pod; a killed
// master is replaced by a new instance that takes over its volumes and members.
//
// Started one by one, the first master boots alone until its bootstrap gives up
// (a short spec.readiness.timeout): it must hand over to its daemon, not abandon
// the launch, and heartbeat the lifecycle hook while it waits for its peers,
// which then start 30 s apart.
func TestHAControlPlane(t *testing.T) {
	for _, start := range []struct {
		name    string
		stagger time.Duration
	}{
		{"masters started one by one", 30 * time.Second},
		{"masters started at once", 0},
	} {
		// The worker and the replacement run once, after the staggered start.
		t.Run(start.name, func(t *testing.T) { haScenario(t, start.stagger, start.stagger > 0) })
	}
}

// firstAloneTimeout is the staggered scenario's spec.readiness.timeout: how long
// the first master's bootstrap waits alone before it leaves the rest to its daemon.
const firstAloneTimeout = 90 * time.Second

func haScenario(t *testing.T, stagger time.Duration, full bool) {
	h := newHALab(t)
	if stagger > 0 {
		h.readinessTimeout = firstAloneTimeout.String()
	}
	ctx := context.Background()

	// 1. Three masters, one per zone, each booting from the same launch template.
	var masters []*haNode
	for i, z := range haZones {
		masters = append(masters, h.boot(ctx, fmt.Sprintf("i-0ha0master%07d", i), config.RoleControlPlane, z.az))
	}
	began := time.Now()
	milestones := watchFormation(h, masters, began)
	var wg sync.WaitGroup
	results := make([]string, len(masters))
	if stagger > 0 {
		first := masters[0]
		_, stderr, code := h.agent(ctx, first, "bootstrap")
		st, scode := h.status(ctx, first)
		t.Logf("%s alone: bootstrap exit %d\n%s", first.InstanceID, code, lastLines(stderr, 5))
		// Bootstrap's own words say what it waited on; status may already show
		// the daemon's next run, which starts from the first phase again, so the
		// phase is anything but done there.
		handedOver := strings.Contains(string(stderr), "nodeagent.service keeps waiting") && strings.Contains(string(stderr), "phase etcd-health")
		if p := st.Phase("etcd-health"); code == 0 || !handedOver || scode != 1 || p == nil || p.State == bootstrap.PhaseDone {
			t.Fatalf("a master alone: bootstrap exit %d, status exit %d, etcd-health %+v: want a non-zero exit handing etcd-health's wait to the daemon, and the node not ready\n%s", code, scode, p, lastLines(stderr, 3))
		}
		if got := h.env.Emu.LifecycleResults()[first.InstanceID]; got != "" {
			t.Fatalf("a master waiting for its peers completed its launch with %s", got)
		}
		eventually(t, time.Minute, "the waiting master heartbeats its launch hook", func() (bool, string) {
			n := h.env.Emu.Heartbeats(first.InstanceID)
			return n > 0, fmt.Sprintf("%d heartbeats", n)
		})
		results[0] = fmt.Sprintf("%s: bootstrap exit %d (waiting; handed to the daemon)", first.InstanceID, code)
	}
	for i, m := range masters {
		if stagger > 0 && i == 0 {
			continue
		}
		if i > 1 && stagger > 0 {
			time.Sleep(stagger) // the scenario: masters launched 30 s apart, not a wait for a condition
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			bctx, cancel := context.WithTimeout(ctx, 20*time.Minute)
			defer cancel()
			_, stderr, code := h.agent(bctx, m, "bootstrap")
			results[i] = fmt.Sprintf("%s: bootstrap exit %d\n%s", m.InstanceID, code, lastLines(stderr, 15))
		}()
	}
	wg.Wait()
	for _, r := range results {
		t.Log(r)
	}
	// Bootstrap may hand a master that waited longer than it does to the daemon;
	// either way every master must end ready.
	eventually(t, 10*time.Minute, "every master ready", func() (bool, string) {
		for _, m := range masters {
			st, code := h.status(ctx, m)
			if code != 0 {
				return false, fmt.Sprintf("%s: %s (%s)", m.InstanceID, st.Readiness.Reason, st.Error)
			}
		}
		return true, ""
	})
	t.Logf("FIGURE masters started → all ready: %s", time.Since(began).Round(time.Second))
	// Every launch completed once, with CONTINUE: the first master's by its daemon.
	for _, m := range masters {
		if got := h.env.Emu.LifecycleResults()[m.InstanceID]; got != awsemu.LifecycleContinue {
			t.Errorf("%s lifecycle result %q, want CONTINUE", m.InstanceID, got)
		}
	}
	quorumAt, apiAt := milestones()
	t.Logf("FIGURE masters started → etcd main quorum (3 members, 1 leader): %s; → all 3 API servers /readyz: %s", quorumAt, apiAt)

	// etcd main and events: three voting members, one leader, peer URLs by the
	// gossip names, every member answering.
	memberIDs := map[string]map[string]uint64{}
	for _, ec := range []struct {
		name string
		port int
	}{{"main", 2379}, {"events", 4002}} {
		var eps []string
		for _, m := range masters {
			eps = append(eps, net.JoinHostPort(m.IP, fmt.Sprint(ec.port)))
		}
		cli := h.etcdClient(masters[0], ec.name, eps...)
		memberIDs[ec.name] = assertEtcdFormed(t, cli, ec.name, eps)
	}

	// Every node's /etc/hosts holds the gossip names of the whole control plane.
	for _, m := range masters {
		hosts, err := os.ReadFile(m.M.Path("/etc/hosts"))
		if err != nil {
			t.Fatal(err)
		}
		for _, z := range haZones {
			for _, name := range []string{config.EtcdMemberHost("main", z.member, haCluster), config.EtcdMemberHost("events", z.member, haCluster)} {
				if !strings.Contains(string(hosts), name) {
					t.Errorf("%s: /etc/hosts lacks %s:\n%s", m.InstanceID, name, hosts)
				}
			}
		}
		if got := hostsIPs(string(hosts), config.APIInternalName(haCluster)); len(got) != 3 {
			t.Errorf("%s: %s resolves to %v, want the three masters", m.InstanceID, config.APIInternalName(haCluster), got)
		}
	}

	// Each API server answers /readyz under the api.internal name; the
	// controller manager and the scheduler hold their leases.
	apiReady := eventually(t, 5*time.Minute, "API servers ready", func() (bool, string) {
		for _, m := range masters {
			code, err := apiGet(ctx, h.apiClient(masters[0], m.IP), "/readyz", nil)
			if err != nil || code != http.StatusOK {
				return false, fmt.Sprintf("%s /readyz: %d %v", m.IP, code, err)
			}
		}
		return true, ""
	})
	t.Logf("API servers all ready %s after the masters", apiReady.Round(time.Second))
	api := h.apiClient(masters[0], masters[0].IP)
	for _, lease := range []string{"kube-controller-manager", "kube-scheduler"} {
		eventually(t, 5*time.Minute, lease+" holds its lease", func() (bool, string) {
			var l struct {
				Spec struct {
					HolderIdentity string `json:"holderIdentity"`
				} `json:"spec"`
			}
			code, err := apiGet(ctx, api, "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/"+lease, &l)
			if err != nil || code != http.StatusOK || l.Spec.HolderIdentity == "" {
				return false, fmt.Sprintf("lease %s: %d %v holder %q", lease, code, err, l.Spec.HolderIdentity)
			}
			return true, ""
		})
	}
	if !full {
		return
	}

	// 2. A worker joins: its Node registers, gets a pod CIDR, goes Ready; a pod
	// from an imported image runs on it with an address from that CIDR.
	worker := h.boot(ctx, "i-0ha0worker0000001", config.RoleNode, "us-east-1a")
	wbegan := time.Now()
	_, stderr, code := h.agent(ctx, worker, "bootstrap")
	if code != 0 {
		st, _ := h.status(ctx, worker)
		t.Fatalf("worker bootstrap: exit %d: %s\n%s\n%s", code, st.Error, lastLines(stderr, 20), worker.Journal(ctx, "kubelet.service"))
	}
	t.Logf("FIGURE worker boot → Node Ready (bootstrap exit 0): %s", time.Since(wbegan).Round(time.Second))
	node := workerNode(t, ctx, api, worker)
	if node.Spec.PodCIDR == "" {
		t.Fatalf("worker's Node has no pod CIDR")
	}
	if st, code := h.status(ctx, worker); code != 0 || !st.Readiness.Ready {
		t.Errorf("worker status: exit %d, readiness %+v", code, st.Readiness)
	}
	assertWorkerSigned(t, ctx, h, worker, masters)
	podIP := runPod(t, ctx, api, node.Metadata.Name)
	_, cidr, err := net.ParseCIDR(node.Spec.PodCIDR)
	if err != nil || !cidr.Contains(net.ParseIP(podIP)) {
		t.Errorf("pod IP %s is not in the worker's pod CIDR %s", podIP, node.Spec.PodCIDR)
	}
	total, byNode := h.memory()
	t.Logf("FIGURE memory of the four-machine cluster (PSS): %d MiB %v", total>>20, mibs(byNode))
	if got := h.env.Emu.LifecycleResults()[worker.InstanceID]; got != awsemu.LifecycleContinue {
		t.Errorf("worker lifecycle result %q, want CONTINUE", got)
	}
	// Once per instance: three masters and the worker, and no second attempt.
	if got := h.env.Emu.Calls(awsemu.ServiceAutoScaling, "CompleteLifecycleAction"); got != 4 {
		t.Errorf("CompleteLifecycleAction calls = %d, want 4 (one per instance)", got)
	}

	// 3. A master is killed; a replacement in its zone takes its volumes
	// (never formatting them) and comes back as the same members.
	if code, body, err := apiSend(ctx, api, http.MethodPost, "/api/v1/namespaces/default/configmaps",
		[]byte(`{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"before-the-kill"},"data":{"k":"written before master c died"}}`)); err != nil || code != http.StatusCreated {
		t.Fatalf("create configmap: %d %v %s", code, err, body)
	}
	victim := masters[2]
	h.kill(ctx, victim)
	killed := time.Now()
	renewed := renewWhileMasterDown(t, ctx, worker)
	survivors := masters[:2]
	stopWatch := watchQuorum(t, h, survivors)
	repl := h.boot(ctx, "i-0ha0master0000003", config.RoleControlPlane, haZones[2].az)
	rctx, cancel := context.WithTimeout(ctx, 20*time.Minute)
	_, stderr, code = h.agent(rctx, repl, "bootstrap")
	cancel()
	t.Logf("replacement bootstrap: exit %d\n%s", code, lastLines(stderr, 15))
	eventually(t, 10*time.Minute, "replacement ready", func() (bool, string) {
		st, code := h.status(ctx, repl)
		return code == 0, st.Readiness.Reason
	})
	t.Logf("FIGURE master killed → replacement's members healthy: %s", time.Since(killed).Round(time.Second))
	if lost := stopWatch(); len(lost) > 0 {
		t.Errorf("quorum lost on the survivors during the replacement: %v", lost)
	}
	renewed()
	st, _ := h.status(ctx, repl)
	for _, v := range st.Volumes {
		if v.Formatted {
			t.Errorf("replacement formatted %s: it held the member's data", v.ID)
		}
	}
	for ec, port := range map[string]int{"main": 2379, "events": 4002} {
		eps := []string{net.JoinHostPort(survivors[0].IP, fmt.Sprint(port)), net.JoinHostPort(survivors[1].IP, fmt.Sprint(port)), net.JoinHostPort(repl.IP, fmt.Sprint(port))}
		got := assertEtcdFormed(t, h.etcdClient(survivors[0], ec, eps...), ec, eps)
		if !maps.Equal(got, memberIDs[ec]) {
			t.Errorf("etcd %s members after the replacement %v, want the same IDs %v", ec, got, memberIDs[ec])
		}
	}
	var cm struct {
		Data map[string]string `json:"data"`
	}
	if code, err := apiGet(ctx, h.apiClient(survivors[0], repl.IP), "/api/v1/namespaces/default/configmaps/before-the-kill", &cm); err != nil || code != http.StatusOK || cm.Data["k"] == "" {
		t.Errorf("configmap written before the kill, read through the replacement: %d %v %v", code, err, cm.Data)
	}
}

// assertEtcdFormed checks one etcd cluster: three voting members with peer URLs
// by gossip name, every endpoint answering with the same leader. It returns the
// member IDs by name.
func assertEtcdFormed(t *testing.T, cli *clientv3.Client, cluster string, endpoints []string) map[string]uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ml, err := cli.MemberList(ctx)
	if err != nil {
		t.Fatalf("etcd %s member list: %v", cluster, err)
	}
	ids := map[string]uint64{}
	for _, m := range ml.Members {
		ids[m.Name] = m.ID
		if m.IsLearner {
			t.Errorf("etcd %s: member %s is a learner", cluster, m.Name)
		}
		want := config.EtcdMemberHost(cluster, m.Name, haCluster)
		if len(m.PeerURLs) != 1 || !strings.Contains(m.PeerURLs[0], want) {
			t.Errorf("etcd %s: member %s peer URLs %v, want %s", cluster, m.Name, m.PeerURLs, want)
		}
	}
	if names := slices.Sorted(maps.Keys(ids)); !slices.Equal(names, []string{"a", "b", "c"}) {
		t.Errorf("etcd %s members %v, want a, b, c", cluster, names)
	}
	leaders := map[uint64]bool{}
	for _, ep := range endpoints {
		st, err := cli.Status(ctx, ep)
		if err != nil {
			t.Errorf("etcd %s at %s: %v", cluster, ep, err)
			continue
		}
		leaders[st.Leader] = true
	}
	if len(leaders) != 1 || leaders[0] {
		t.Errorf("etcd %s: leaders seen %v, want one", cluster, leaders)
	}
	return ids
}

// watchQuorum samples the survivors' etcd main status every two seconds until
// stopped, and returns every moment one of them said it had no leader. A sample
// that times out (two cores busy booting the replacement) proves nothing either
// way; it is logged, not counted.
func watchQuorum(t *testing.T, h *haLab, survivors []*haNode) (stop func() []string) {
	var eps []string
	for _, m := range survivors {
		eps = append(eps, net.JoinHostPort(m.IP, "2379"))
	}
	cli := h.etcdClient(survivors[0], "main", eps...)
	done := make(chan struct{})
	var lost []string
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(2 * time.Second)
		defer tick.Stop()
		for {
			for _, ep := range eps {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				st, err := cli.Status(ctx, ep)
				cancel()
				switch {
				case err != nil:
					t.Logf("quorum sample %s: %v", ep, err)
				case st.Leader == 0:
					lost = append(lost, fmt.Sprintf("%s %s: no leader", time.Now().Format(time.TimeOnly), ep))
				}
			}
			select {
			case <-done:
				return
			case <-tick.C:
			}
		}
	}()
	return func() []string {
		close(done)
		wg.Wait()
		return lost
	}
}

type k8sNode struct {
	Metadata struct {
		Name string `json:"name"`
	} `json:"metadata"`
	Spec struct {
		PodCIDR string `json:"podCIDR"`
	} `json:"spec"`
	Status struct {
		Conditions []struct {
			Type    string `json:"type"`
			Status  string `json:"status"`
			Message string `json:"message"`
		} `json:"conditions"`
	} `json:"status"`
}

// workerNode finds the worker's Node (named by its private DNS name) and
// checks it is Ready.
func workerNode(t *testing.T, ctx context.Context, api *http.Client, w *haNode) k8sNode {
	t.Helper()
	var list struct {
		Items []k8sNode `json:"items"`
	}
	if code, err := apiGet(ctx, api, "/api/v1/nodes", &list); err != nil || code != http.StatusOK {
		t.Fatalf("list nodes: %d %v", code, err)
	}
	for _, n := range list.Items {
		if !strings.Contains(n.Metadata.Name, strings.ReplaceAll(w.IP, ".", "-")) {
			continue
		}
		for _, c := range n.Status.Conditions {
			if c.Type == "Ready" && c.Status != "True" {
				t.Errorf("worker Node %s: Ready=%s: %s", n.Metadata.Name, c.Status, c.Message)
			}
		}
		return n
	}
	t.Fatalf("no Node for the worker %s among %d nodes", w.IP, len(list.Items))
	return k8sNode{}
}

// runPod creates a pod of the imported hello image on node and waits until it
// runs; it returns the pod's IP.
func runPod(t *testing.T, ctx context.Context, api *http.Client, node string) string {
	t.Helper()
	pod := fmt.Sprintf(`{"apiVersion":"v1","kind":"Pod","metadata":{"name":"hello"},"spec":{
"nodeSelector":{"kubernetes.io/hostname":%q},
"containers":[{"name":"hello","image":%q,"imagePullPolicy":"Never","ports":[{"containerPort":8080}]}]}}`, node, haHelloImage)
	if code, body, err := apiSend(ctx, api, http.MethodPost, "/api/v1/namespaces/default/pods", []byte(pod)); err != nil || code != http.StatusCreated {
		t.Fatalf("create pod: %d %v %s", code, err, body)
	}
	var ip string
	eventually(t, 5*time.Minute, "pod hello running", func() (bool, string) {
		var p struct {
			Spec struct {
				NodeName string `json:"nodeName"`
			} `json:"spec"`
			Status struct {
				Phase string `json:"phase"`
				PodIP string `json:"podIP"`
			} `json:"status"`
		}
		code, err := apiGet(ctx, api, "/api/v1/namespaces/default/pods/hello", &p)
		if err != nil || code != http.StatusOK {
			return false, fmt.Sprintf("get pod: %d %v", code, err)
		}
		ip = p.Status.PodIP
		return p.Status.Phase == "Running" && ip != "", fmt.Sprintf("phase %s on %q, IP %q", p.Status.Phase, p.Spec.NodeName, ip)
	})
	return ip
}

// hostsIPs lists the addresses /etc/hosts gives name.
func hostsIPs(hosts, name string) []string {
	var out []string
	for _, line := range strings.Split(hosts, "\n") {
		f := strings.Fields(line)
		if len(f) > 1 && slices.Contains(f[1:], name) {
			out = append(out, f[0])
		}
	}
	return out
}

func lastLines(b []byte, n int) string {
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// TestHAVolumeRefusals: a master never takes a volume it should not. In a zone
// with no free etcd volume it waits and says why in status; given volumes that
// hold data it does not recognise it refuses them and says why. Nothing is
// formatted in either case.
func TestHAVolumeRefusals(t *testing.T) {
	const junkZone, emptyZone = "us-east-1e", "us-east-1d"
	h := newHALab(t, haVolume("main", "e", "e", junkZone), haVolume("events", "e", "e", junkZone))
	ctx := context.Background()
	junk := []byte("not a filesystem nodeagent knows, but somebody's data\n")
	for _, id := range []string{"vol-0maine", "vol-0eventse"} {
		if err := os.WriteFile(filepath.Join(h.volumeDir, id+".img"), bytes.Repeat(junk, 4096), 0o600); err != nil {
			t.Fatal(err)
		}
	}

	waiter := h.boot(ctx, "i-0ha0nofreevol0001", config.RoleControlPlane, emptyZone)
	wctx, stop := context.WithCancel(ctx)
	defer stop()
	go func() { _, _, _, _ = waiter.Agent(wctx, "bootstrap") }() // it waits until cancelled: its outcome is the point of nothing here
	eventually(t, 10*time.Minute, "the master with no volume says it waits", func() (bool, string) {
		st, code := h.status(ctx, waiter)
		p := st.Phase("volumes")
		if p == nil {
			return false, "no volumes phase yet"
		}
		if code != 1 || p.State != bootstrap.PhaseRunning || !strings.Contains(p.Progress, "no volume is tagged") || !strings.Contains(p.Progress, emptyZone) {
			return false, fmt.Sprintf("exit %d, volumes %s: %q", code, p.State, p.Progress)
		}
		return true, ""
	})

	refused := h.boot(ctx, "i-0ha0junkvolume001", config.RoleControlPlane, junkZone)
	_, stderr, code := h.agent(ctx, refused, "bootstrap")
	if code == 0 {
		t.Fatal("bootstrap succeeded on volumes holding unknown data")
	}
	st, _ := h.status(ctx, refused)
	if p := st.Phase("volumes"); p == nil || p.State != bootstrap.PhaseFailed || !strings.Contains(p.Error, "refusing to format") {
		t.Errorf("volumes phase %+v, want failed: refusing to format\n%s", p, lastLines(stderr, 10))
	}
	for _, id := range []string{"vol-0maine", "vol-0eventse"} {
		b, err := os.ReadFile(filepath.Join(h.volumeDir, id+".img"))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(b[:len(junk)*4096], bytes.Repeat(junk, 4096)) {
			t.Errorf("%s was written to", id)
		}
	}
	for _, n := range []*haNode{waiter, refused} {
		if out, _, _ := n.M.Exec(ctx, nil, "sh", "-c", "grep -c /mnt/master- /proc/mounts || true"); strings.TrimSpace(string(out)) != "0" {
			t.Errorf("%s mounted an etcd volume: %s", n.InstanceID, out)
		}
	}
}

func mibs(m map[string]int64) map[string]string {
	out := map[string]string{}
	for k, v := range m {
		out[k] = fmt.Sprintf("%d MiB", v>>20)
	}
	return out
}

// watchFormation polls, every second from began, for the moments the cluster
// forms: etcd main answering with one leader on all three members, and all three
// API servers answering /readyz. Stopping it returns both durations (zero: not
// seen).
func watchFormation(h *haLab, masters []*haNode, began time.Time) (stop func() (quorum, api time.Duration)) {
	done := make(chan struct{})
	var quorum, api time.Duration
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		var cli *clientv3.Client
		defer func() {
			if cli != nil {
				_ = cli.Close()
			}
		}()
		for quorum == 0 || api == 0 {
			select {
			case <-done:
				return
			case <-time.After(time.Second):
			}
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			if quorum == 0 {
				if cli == nil {
					cli = h.tryEtcdClient(masters[0], "main", masters)
				}
				if cli != nil && etcdHasLeaderEverywhere(ctx, cli, masters) {
					quorum = time.Since(began).Round(time.Second)
				}
			}
			if api == 0 && apisReady(ctx, h, masters) {
				api = time.Since(began).Round(time.Second)
			}
			cancel()
		}
	}()
	return func() (time.Duration, time.Duration) {
		close(done)
		wg.Wait()
		return quorum, api
	}
}

func etcdHasLeaderEverywhere(ctx context.Context, cli *clientv3.Client, masters []*haNode) bool {
	for _, m := range masters {
		st, err := cli.Status(ctx, net.JoinHostPort(m.IP, "2379"))
		if err != nil || st.Leader == 0 {
			return false
		}
	}
	return true
}

func apisReady(ctx context.Context, h *haLab, masters []*haNode) bool {
	for _, m := range masters {
		c := h.tryAPIClient(masters[0], m.IP)
		if c == nil {
			return false
		}
		code, err := apiGet(ctx, c, "/readyz", nil)
		c.CloseIdleConnections()
		if err != nil || code != http.StatusOK {
			return false
		}
	}
	return true
}
