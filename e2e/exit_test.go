//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/nodeagent/nodeagent/awsemu"
	"github.com/nodeagent/nodeagent/bootstrap"
	"github.com/nodeagent/nodeagent/config"
)

// haTermHook is every HA lab group's terminate hook (autoscaling:EC2_INSTANCE_TERMINATING).
const haTermHook = "nodeagent-exit"

// TestGracefulExit is the way out of the seeds' cluster, on one HA cluster
// (three masters, two workers) and a Deployment of two replicas under a
// PodDisruptionBudget (minAvailable 1):
//
//  1. scale-in of the worker holding its pods: the group terminates it; the
//     daemon sees Terminated in IMDS, drains the Node (its pods are evicted and
//     run again on the other worker, never fewer than one available), leaves
//     the gossip ring (every peer drops its name at once), and completes the
//     terminate hook once;
//  2. a spot interruption notice on the last worker: the same drain starts at
//     once; with nowhere for the pods to go, the budget keeps one running, and
//     the bounded drain ends within the two-minute notice;
//  3. the master leading etcd main terminated by a rolling replacement: quorum kept throughout,
//     leadership handed on, etcd stopped and its volumes unmounted before the
//     group detaches them (clean ext4, no recovery on the next attach).
func TestGracefulExit(t *testing.T) {
	h := newHALab(t)
	h.extra = func(c *config.NodeConfig) {
		c.Spec.Readiness.TerminationHook = haTermHook
		// Long enough for CoreDNS (the default 30 s grace) to stop on two busy cores, short
		// enough that the spot case's bounded drain ends well inside its notice.
		c.Spec.Readiness.DrainTimeout = "60s"
	}
	ctx := context.Background()
	masters := h.bootMastersAtOnce(ctx, "i-0ex0master")
	workers := []*haNode{
		h.boot(ctx, "i-0ex0worker0000001", config.RoleNode, "us-east-1a"),
		h.boot(ctx, "i-0ex0worker0000002", config.RoleNode, "us-east-1b"),
	}
	var wg sync.WaitGroup
	for _, w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, stderr, code := h.agent(ctx, w, "bootstrap"); code != 0 {
				t.Errorf("%s bootstrap exit %d\n%s", w.InstanceID, code, lastLines(stderr, 15))
			}
		}()
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	api := h.apiClient(masters[0], masters[0].IP)
	nodeName := map[*haNode]string{}
	for _, w := range workers {
		nodeName[w] = workerNode(t, ctx, api, w).Metadata.Name
	}
	for path, obj := range map[string]string{
		"/apis/apps/v1/namespaces/default/deployments": fmt.Sprintf(`{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"web"},
"spec":{"replicas":2,"selector":{"matchLabels":{"app":"web"}},"template":{"metadata":{"labels":{"app":"web"}},"spec":{
"terminationGracePeriodSeconds":5,
"topologySpreadConstraints":[{"maxSkew":1,"topologyKey":"kubernetes.io/hostname","whenUnsatisfiable":"ScheduleAnyway","labelSelector":{"matchLabels":{"app":"web"}}}],
"containers":[{"name":"hello","image":%q,"imagePullPolicy":"Never"}]}}}}`, haHelloImage),
		"/apis/policy/v1/namespaces/default/poddisruptionbudgets": `{"apiVersion":"policy/v1","kind":"PodDisruptionBudget","metadata":{"name":"web"},
"spec":{"minAvailable":1,"selector":{"matchLabels":{"app":"web"}}}}`,
	} {
		if code, body, err := apiSend(ctx, api, http.MethodPost, path, []byte(obj)); err != nil || code != http.StatusCreated {
			t.Fatalf("create %s: %d %v %s", path, code, err, body)
		}
	}
	eventually(t, 3*time.Minute, "two web pods ready", func() (bool, string) {
		ready := webPods(t, ctx, api).ready("")
		return ready == 2, fmt.Sprintf("%d ready", ready)
	})
	avail := watchAvailability(t, ctx, api)

	// 1. Scale-in of the worker with the most web pods.
	pods := webPods(t, ctx, api)
	victim, other := workers[0], workers[1]
	if pods.ready(nodeName[other]) > pods.ready(nodeName[victim]) {
		victim, other = other, victim
	}
	peers := append(slices.Clone(masters), other)
	for _, p := range peers {
		if b, err := os.ReadFile(p.M.Path("/etc/hosts")); err != nil || len(hostsIPs(string(b), nodeName[victim])) == 0 {
			t.Fatalf("%s: /etc/hosts lacks %s before the exit: %v", p.InstanceID, nodeName[victim], err)
		}
	}
	gone := watchNameLeaves(t, h, victim, nodeName[victim], peers)
	asked := time.Now()
	if err := h.env.Emu.TerminateInGroup(victim.InstanceID); err != nil {
		t.Fatal(err)
	}
	exit := waitExit(t, ctx, h, victim, 3*time.Minute, true)
	t.Logf("FIGURE scale-in: terminated → exit done (drained, ring left): %s", exit.FinishedAt.Sub(asked).Round(100*time.Millisecond))
	logExit(t, victim, exit)
	for _, s := range exit.Steps {
		if s.Error != "" {
			t.Errorf("%s exit step %s failed: %s", victim.InstanceID, s.Name, s.Error)
		}
	}
	if lag := gone(); lag > time.Second {
		t.Errorf("peers dropped %s from /etc/hosts %s after it left the ring, want within a second", nodeName[victim], lag)
	} else {
		t.Logf("FIGURE worker left the ring → its name gone from every peer's /etc/hosts: %s", lag.Round(10*time.Millisecond))
	}
	var term []awsemu.Completion
	for _, c := range h.env.Emu.Completions(victim.InstanceID) {
		if c.Transition == "terminate" {
			term = append(term, c)
		}
	}
	if len(term) != 1 || term[0].Result != awsemu.LifecycleContinue {
		t.Errorf("terminate hook completions %v, want one CONTINUE", term)
	}
	var node struct {
		Spec struct {
			Unschedulable bool `json:"unschedulable"`
		} `json:"spec"`
	}
	if code, err := apiGet(ctx, api, "/api/v1/nodes/"+nodeName[victim], &node); err != nil || code != http.StatusOK || !node.Spec.Unschedulable {
		t.Errorf("%s not cordoned: %d %v", nodeName[victim], code, err)
	}
	eventually(t, 2*time.Minute, "both web pods ready on the other worker", func() (bool, string) {
		p := webPods(t, ctx, api)
		return p.ready(nodeName[other]) == 2, p.String()
	})
	h.kill(ctx, victim) // EC2 ends the instance after the hook

	// 2. A spot interruption notice on the last worker.
	noticed := time.Now()
	if err := h.env.Emu.InterruptSpot(other.InstanceID, noticed.Add(2*time.Minute)); err != nil {
		t.Fatal(err)
	}
	exit = waitExit(t, ctx, h, other, 2*time.Minute, false)
	t.Logf("FIGURE spot notice → exit done (bounded drain, budget held): %s", exit.FinishedAt.Sub(noticed).Round(100*time.Millisecond))
	logExit(t, other, exit)
	if !strings.Contains(exit.Reason, "spot interruption notice") {
		t.Errorf("exit reason %q", exit.Reason)
	}
	if started := exit.StartedAt.Sub(noticed); started > 15*time.Second {
		t.Errorf("the exit began %s after the notice", started)
	}
	if d := exit.Steps[0]; d.Name != "drain" || !strings.Contains(d.Error, "disruption budget") {
		t.Errorf("drain with nowhere to go: %+v; want the budget named as keeping a pod", d)
	}
	if p := webPods(t, ctx, api); p.ready(nodeName[other]) != 1 {
		t.Errorf("web pods after the spot drain: %s; want the one the budget keeps", p)
	}
	if low := avail(); low < 1 {
		t.Errorf("web had %d ready pods at some moment; the budget asks for 1", low)
	}

	// 3. A rolling replacement terminates the etcd leader's master: the two others keep quorum
	// throughout; its members hand leadership on and stop, and their volumes
	// are unmounted before the group detaches them: clean filesystems, which
	// the next holder mounts without recovery.
	// The master whose member leads etcd main leaves, so that the hand-off of
	// the leadership is what keeps the cluster writable.
	li, leaderID := etcdMainLeader(t, h, masters)
	leaving := masters[li]
	others := slices.Delete(slices.Clone(masters), li, li+1)
	stopWatch := watchQuorum(t, h, others)
	asked = time.Now()
	if err := h.env.Emu.TerminateInGroup(leaving.InstanceID); err != nil {
		t.Fatal(err)
	}
	exit = waitExit(t, ctx, h, leaving, 4*time.Minute, true)
	t.Logf("FIGURE master terminated → exit done (leadership handed on, etcd stopped, volumes unmounted, ring left): %s", exit.FinishedAt.Sub(asked).Round(100*time.Millisecond))
	logExit(t, leaving, exit)
	for _, s := range exit.Steps {
		if s.Name != "drain" && s.Error != "" {
			t.Errorf("master exit step %s failed: %s", s.Name, s.Error)
		}
	}
	for _, ec := range []string{"main", "events"} {
		id := "vol-0" + ec + haZones[li].member
		eventually(t, time.Minute, id+" detached", func() (bool, string) {
			v, _ := h.env.Emu.VolumeStatus(id)
			return v.State == "available", v.State
		})
		v, _ := h.env.Emu.VolumeStatus(id)
		out, err := exec.Command("dumpe2fs", "-h", v.BackingFile).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "Filesystem state:         clean") || strings.Contains(string(out), "needs_recovery") {
			t.Errorf("%s after the exit is not a cleanly unmounted ext4: %v\n%s", id, err, out)
		}
	}
	if lost := stopWatch(); len(lost) > 0 {
		t.Errorf("quorum lost on the other masters while %s left: %v", leaving.InstanceID, lost)
	}
	if _, now := etcdMainLeader(t, h, others); now == leaderID {
		t.Errorf("etcd main is still led by the member of %s, which left", leaving.InstanceID)
	}
	h.kill(ctx, leaving)
}

// etcdMainLeader returns which of the masters holds the member leading etcd
// main, and that member's ID.
func etcdMainLeader(t *testing.T, h *haLab, masters []*haNode) (int, uint64) {
	t.Helper()
	var eps []string
	for _, m := range masters {
		eps = append(eps, net.JoinHostPort(m.IP, "2379"))
	}
	cli := h.etcdClient(masters[0], "main", eps...)
	var (
		index  = -1
		leader uint64
	)
	eventually(t, time.Minute, "etcd main has a leader among the masters", func() (bool, string) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		for i, ep := range eps {
			st, err := cli.Status(ctx, ep)
			if err != nil {
				return false, fmt.Sprintf("%s: %v", ep, err)
			}
			if st.Header.MemberId == st.Leader {
				index, leader = i, st.Leader
				return true, ""
			}
		}
		return false, "no endpoint is the leader"
	})
	return index, leader
}

// waitExit waits until the node's exit is recorded as finished (and, hook,
// its terminate hook completed).
func waitExit(t *testing.T, ctx context.Context, h *haLab, n *haNode, timeout time.Duration, hook bool) *bootstrap.ExitStatus {
	t.Helper()
	var exit *bootstrap.ExitStatus
	eventually(t, timeout, n.InstanceID+" exit finished", func() (bool, string) {
		st, _ := h.status(ctx, n)
		if st == nil || st.Exit == nil {
			return false, "no exit yet"
		}
		exit = st.Exit
		return !exit.FinishedAt.IsZero() && (!hook || exit.Lifecycle != ""),
			fmt.Sprintf("%d steps, lifecycle %q", len(exit.Steps), exit.Lifecycle)
	})
	return exit
}

func logExit(t *testing.T, n *haNode, e *bootstrap.ExitStatus) {
	t.Helper()
	var b strings.Builder
	for _, s := range e.Steps {
		fmt.Fprintf(&b, "\n  %-13s %8s  %s", s.Name, s.Duration.Round(time.Millisecond), s.Detail)
		if s.Error != "" {
			fmt.Fprintf(&b, " (error: %s)", s.Error)
		}
	}
	t.Logf("%s exit: %s%s", n.InstanceID, e.Reason, b.String())
}

// watchNameLeaves polls, every 50 ms, the leaving node's state for its
// gossip-leave step and every peer's /etc/hosts for its name; the returned
// func says how long after the leave the last peer dropped the name (zero or
// less: at once).
func watchNameLeaves(t *testing.T, h *haLab, n *haNode, name string, peers []*haNode) func() time.Duration {
	t.Helper()
	var (
		mu            sync.Mutex
		leftAt, gonAt time.Time
	)
	done := make(chan struct{})
	go func() {
		defer close(done)
		deadline := time.Now().Add(4 * time.Minute)
		for time.Now().Before(deadline) && (leftAt.IsZero() || gonAt.IsZero()) {
			now := time.Now()
			if leftAt.IsZero() {
				if b, err := os.ReadFile(n.M.Path("/var/lib/nodeagent/state.json")); err == nil && strings.Contains(string(b), `"gossip-leave"`) {
					mu.Lock()
					leftAt = now
					mu.Unlock()
				}
			}
			if gonAt.IsZero() {
				all := true
				for _, p := range peers {
					b, err := os.ReadFile(p.M.Path("/etc/hosts"))
					if err != nil || len(hostsIPs(string(b), name)) > 0 {
						all = false
						break
					}
				}
				if all {
					mu.Lock()
					gonAt = now
					mu.Unlock()
				}
			}
			time.Sleep(50 * time.Millisecond)
		}
	}()
	return func() time.Duration {
		<-done
		mu.Lock()
		defer mu.Unlock()
		if leftAt.IsZero() || gonAt.IsZero() {
			t.Fatalf("%s: left the ring at %v, name gone from the peers at %v", n.InstanceID, leftAt, gonAt)
		}
		return gonAt.Sub(leftAt)
	}
}

type podList []corev1.Pod

// webPods lists the Deployment's pods.
func webPods(t *testing.T, ctx context.Context, api *http.Client) podList {
	t.Helper()
	var l struct {
		Items []corev1.Pod `json:"items"`
	}
	if code, err := apiGet(ctx, api, "/api/v1/namespaces/default/pods?labelSelector=app%3Dweb", &l); err != nil || code != http.StatusOK {
		t.Logf("list web pods: %d %v", code, err)
		return nil
	}
	return l.Items
}

// ready counts the pods Ready and not terminating (on node, or anywhere).
func (l podList) ready(node string) int {
	n := 0
	for _, p := range l {
		if p.DeletionTimestamp != nil || (node != "" && p.Spec.NodeName != node) {
			continue
		}
		for _, c := range p.Status.Conditions {
			if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue {
				n++
			}
		}
	}
	return n
}

func (l podList) String() string {
	var s []string
	for _, p := range l {
		s = append(s, fmt.Sprintf("%s on %q %s", p.Name, p.Spec.NodeName, p.Status.Phase))
	}
	return strings.Join(s, ", ")
}

// watchAvailability samples the ready web pods every half second; the
// returned func stops it and gives the lowest count seen.
func watchAvailability(t *testing.T, ctx context.Context, api *http.Client) func() int {
	t.Helper()
	stop := make(chan struct{})
	low := make(chan int, 1)
	go func() {
		lowest := 1 << 30
		for {
			select {
			case <-stop:
				low <- lowest
				return
			case <-time.After(500 * time.Millisecond):
			}
			if l := webPods(t, ctx, api); l != nil {
				lowest = min(lowest, l.ready(""))
			}
		}
	}()
	return func() int {
		close(stop)
		return <-low
	}
}
