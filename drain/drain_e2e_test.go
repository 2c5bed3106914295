//go:build e2e

package drain_test

import (
	"context"
	"io"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"

	"github.com/nodeagent/nodeagent/drain"
	"github.com/nodeagent/nodeagent/internal/kubetest"
	"github.com/nodeagent/nodeagent/kube"
)

const ns = "shop"

// Drain against a real kube-apiserver v1.34.4 with kube-controller-manager's
// disruption controller: the node is cordoned, DaemonSet and mirror pods stay,
// a PodDisruptionBudget (minAvailable 1 over two pods on the node) lets one pod
// go at once and holds the other until a replacement is Ready elsewhere; the
// drain then finishes. The test plays kubelet: a pod it is told to stop ends.
func TestDrainHonoursDisruptionBudgets(t *testing.T) {
	s := kubetest.StartAPIServer(t)
	s.StartControllerManager(t, "disruption")
	cs := kubernetes.NewForConfigOrDie(s.Config) // the test's own hands: set-up and the stand-in kubelet
	api, err := kube.FromRESTConfig(s.Config)    // the drain's: what the agent drains with
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	must := func(_ any, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range []string{"node-a", "node-b"} {
		must(cs.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n}}, metav1.CreateOptions{}))
	}
	must(cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}))
	must(cs.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}, metav1.CreateOptions{}))
	one := intstr.FromInt32(1)
	must(cs.PolicyV1().PodDisruptionBudgets(ns).Create(ctx, &policyv1.PodDisruptionBudget{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec:       policyv1.PodDisruptionBudgetSpec{MinAvailable: &one, Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}}},
	}, metav1.CreateOptions{}))
	runPod(t, cs, "web-1", "node-a", nil)
	runPod(t, cs, "web-2", "node-a", nil)
	runPod(t, cs, "agent-x", "node-a", func(p *corev1.Pod) {
		p.Labels = map[string]string{"app": "agent"}
		p.OwnerReferences = []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "DaemonSet", Name: "agent", UID: "0b5d4c2e-1111-4c1e-9d3a-000000000001", Controller: ptr(true)}}
	})
	runPod(t, cs, "static-node-a", "node-a", func(p *corev1.Pod) {
		p.Labels = map[string]string{"app": "static"}
		p.Annotations = map[string]string{corev1.MirrorPodAnnotationKey: "0123"}
	})
	waitFor(t, 30*time.Second, "the budget to allow one disruption", func() bool {
		pdb, err := cs.PolicyV1().PodDisruptionBudgets(ns).Get(ctx, "web", metav1.GetOptions{})
		return err == nil && pdb.Status.CurrentHealthy == 2 && pdb.Status.DisruptionsAllowed == 1
	})
	go kubelet(ctx, cs, "node-a")

	type outcome struct {
		res drain.Result
		err error
	}
	done := make(chan outcome, 1)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	go func() {
		r, err := drain.Drain(ctx, api, drain.Options{Node: "node-a", Timeout: 2 * time.Minute, RetryEvery: 500 * time.Millisecond, Log: log})
		done <- outcome{r, err}
	}()

	// One web pod goes; the budget holds the other on the node.
	var left string
	waitFor(t, 30*time.Second, "one web pod evicted and gone", func() bool {
		pods := podsOn(t, cs, "node-a")
		w1, w2 := slices.Contains(pods, "web-1"), slices.Contains(pods, "web-2")
		if w1 != w2 {
			left = map[bool]string{true: "web-1", false: "web-2"}[w1]
			return true
		}
		return false
	})
	if n, err := cs.CoreV1().Nodes().Get(ctx, "node-a", metav1.GetOptions{}); err != nil || !n.Spec.Unschedulable {
		t.Fatalf("node-a not cordoned while draining: %v", err)
	}
	// Several refused attempts (every 0.5 s): the budget holds throughout.
	for end := time.Now().Add(3 * time.Second); time.Now().Before(end); time.Sleep(200 * time.Millisecond) {
		if !slices.Contains(podsOn(t, cs, "node-a"), left) {
			t.Fatalf("%s was evicted although the budget allowed no disruption", left)
		}
	}
	select {
	case o := <-done:
		t.Fatalf("drain ended while the budget held a pod: %+v, %v", o.res, o.err)
	default:
	}

	// The replacement is Ready on another node (as its ReplicaSet and the
	// scheduler would make it): the budget allows the last one to go.
	runPod(t, cs, "web-3", "node-b", nil)
	var o outcome
	select {
	case o = <-done:
	case <-time.After(time.Minute):
		t.Fatal("drain did not finish within a minute of the replacement being Ready")
	}
	if o.err != nil {
		t.Fatalf("drain: %v (%+v)", o.err, o.res)
	}
	wantEvicted := []string{ns + "/web-1", ns + "/web-2"}
	if !slices.Equal(o.res.Evicted, wantEvicted) || !o.res.Cordoned {
		t.Errorf("result %+v, want evicted %v and cordoned", o.res, wantEvicted)
	}
	if len(o.res.Skipped) != 2 || !strings.Contains(strings.Join(o.res.Skipped, " "), "DaemonSet") || !strings.Contains(strings.Join(o.res.Skipped, " "), "mirror") {
		t.Errorf("skipped %v, want the DaemonSet and the mirror pod", o.res.Skipped)
	}
	if got := podsOn(t, cs, "node-a"); !slices.Equal(got, []string{"agent-x", "static-node-a"}) {
		t.Errorf("pods left on node-a: %v", got)
	}

	// A drained node drains again at once and changes nothing.
	r, err := drain.Drain(ctx, api, drain.Options{Node: "node-a", Timeout: 10 * time.Second, Log: log})
	if err != nil || r.Cordoned || len(r.Evicted) != 0 {
		t.Errorf("second drain: %+v, %v", r, err)
	}
	// A budget that never allows the pod to go bounds the drain: it ends with
	// the pod named, and the pod is still there.
	runPod(t, cs, "web-4", "node-b", nil)
	waitFor(t, 30*time.Second, "the budget to allow one disruption of three", func() bool {
		pdb, err := cs.PolicyV1().PodDisruptionBudgets(ns).Get(ctx, "web", metav1.GetOptions{})
		return err == nil && pdb.Status.CurrentHealthy == 2 && pdb.Status.ExpectedPods == 2
	})
	pdb, err := cs.PolicyV1().PodDisruptionBudgets(ns).Get(ctx, "web", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	two := intstr.FromInt32(2)
	pdb.Spec.MinAvailable = &two
	must(cs.PolicyV1().PodDisruptionBudgets(ns).Update(ctx, pdb, metav1.UpdateOptions{}))
	waitFor(t, 30*time.Second, "the budget to allow nothing", func() bool {
		pdb, err := cs.PolicyV1().PodDisruptionBudgets(ns).Get(ctx, "web", metav1.GetOptions{})
		return err == nil && pdb.Status.ObservedGeneration == pdb.Generation && pdb.Status.DisruptionsAllowed == 0
	})
	r, err = drain.Drain(ctx, api, drain.Options{Node: "node-b", Timeout: 3 * time.Second, RetryEvery: 500 * time.Millisecond, Log: log})
	if err == nil || len(r.Remaining) != 2 || !strings.Contains(err.Error(), "disruption budget") {
		t.Errorf("drain against a budget allowing nothing: %+v, %v; want both web pods remaining, named", r, err)
	}
	if got := podsOn(t, cs, "node-b"); !slices.Equal(got, []string{"web-3", "web-4"}) {
		t.Errorf("pods on node-b after a refused drain: %v", got)
	}
}

// runPod creates a pod bound to node and marks it Running and Ready, as its
// kubelet would.
func runPod(t *testing.T, cs kubernetes.Interface, name, node string, edit func(*corev1.Pod)) {
	t.Helper()
	ctx := context.Background()
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: map[string]string{"app": "web"}},
		Spec: corev1.PodSpec{NodeName: node, AutomountServiceAccountToken: ptr(false),
			Containers: []corev1.Container{{Name: "c", Image: "registry.k8s.io/pause:3.10"}}},
	}
	if edit != nil {
		edit(p)
	}
	p, err := cs.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create pod %s: %v", name, err)
	}
	p.Status.Phase = corev1.PodRunning
	p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: metav1.Now()}}
	if _, err := cs.CoreV1().Pods(ns).UpdateStatus(ctx, p, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("pod %s status: %v", name, err)
	}
}

// kubelet ends the pods of node that are asked to stop, as kubelet confirms a
// graceful deletion once the containers exited.
func kubelet(ctx context.Context, cs kubernetes.Interface, node string) {
	wait.UntilWithContext(ctx, func(ctx context.Context) {
		pods, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{FieldSelector: "spec.nodeName=" + node})
		if err != nil {
			return // the next tick lists again
		}
		for _, p := range pods.Items {
			if p.DeletionTimestamp != nil {
				// A pod already gone (or replaced) needs no confirmation.
				_ = cs.CoreV1().Pods(ns).Delete(ctx, p.Name, metav1.DeleteOptions{GracePeriodSeconds: ptr(int64(0)), Preconditions: &metav1.Preconditions{UID: &p.UID}})
			}
		}
	}, 200*time.Millisecond)
}

func podsOn(t *testing.T, cs kubernetes.Interface, node string) []string {
	t.Helper()
	pods, err := cs.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{FieldSelector: "spec.nodeName=" + node})
	if err != nil && !apierrors.IsNotFound(err) {
		t.Fatal(err)
	}
	var names []string
	for _, p := range pods.Items {
		names = append(names, p.Name)
	}
	slices.Sort(names)
	return names
}

func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	if err := wait.PollUntilContextTimeout(context.Background(), 200*time.Millisecond, timeout, true,
		func(context.Context) (bool, error) { return cond(), nil }); err != nil {
		t.Fatalf("timed out after %s waiting for %s", timeout, what)
	}
}

func ptr[T any](v T) *T { return &v }
