// Package drain empties a node through the API server as `kubectl drain` does:
// it cordons the Node, then evicts its pods with the Eviction API, so that
// PodDisruptionBudgets are honoured (an eviction a budget refuses, 429, is
// retried until the drain's deadline), skipping DaemonSet and mirror (static)
// pods, and waits for the evicted pods to be gone.
package drain

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/util/wait"
)

// API is what a drain asks of the API server (kube.Client answers it with
// client-go's REST client: no typed clientset, whose scheme registers every
// API group). Errors are the API server's (apierrors), so that a budget's
// refusal (429) and a pod already gone (404) read as such.
type API interface {
	Node(ctx context.Context, name string) (*corev1.Node, error)
	// Cordon sets the Node's spec.unschedulable.
	Cordon(ctx context.Context, name string) error
	// ListPods lists the pods of namespace ("" for all) matching fieldSelector.
	ListPods(ctx context.Context, namespace, fieldSelector string) ([]corev1.Pod, error)
	// Evict posts a policy/v1 Eviction for its pod.
	Evict(ctx context.Context, ev *policyv1.Eviction) error
}

// Options of one drain.
type Options struct {
	// Node is the Kubernetes node name.
	Node string
	// Timeout bounds the whole drain (cordon, evictions, waiting for the pods
	// to go); default DefaultTimeout.
	Timeout time.Duration
	// GracePeriod overrides each pod's terminationGracePeriodSeconds when set.
	GracePeriod *int64
	// RetryEvery spaces the attempts of an eviction a disruption budget
	// refuses, and the checks whether an evicted pod is gone; default 2 s.
	RetryEvery time.Duration
	Log        *slog.Logger
}

// DefaultTimeout is well inside an Auto Scaling terminate hook's default
// timeout (one hour) and a spot notice's two minutes less the rest of the exit.
const DefaultTimeout = 90 * time.Second

// Result says what a drain did.
type Result struct {
	// Cordoned is true when this drain marked the node unschedulable (false
	// when it already was).
	Cordoned bool `json:"cordoned"`
	// Evicted lists namespace/name of the pods evicted and gone.
	Evicted []string `json:"evicted"`
	// Skipped lists the pods left in place, with why (DaemonSet, mirror pod).
	Skipped []string `json:"skipped"`
	// Remaining lists the pods still on the node when the drain gave up, with
	// why (a disruption budget refusing, a pod that does not terminate).
	Remaining []string `json:"remaining,omitempty"`
}

// Drain cordons the node and evicts its pods. It returns an error (with the
// Result so far) when the node cannot be cordoned or some pods were not
// evicted by the deadline; a drain never deletes a pod a budget protects.
func Drain(ctx context.Context, cs API, o Options) (Result, error) {
	if o.Node == "" {
		return Result{}, errors.New("drain: no node name")
	}
	if o.Timeout <= 0 {
		o.Timeout = DefaultTimeout
	}
	if o.RetryEvery <= 0 {
		o.RetryEvery = 2 * time.Second
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()
	var res Result
	cordoned, err := Cordon(ctx, cs, o.Node)
	if err != nil {
		return res, err
	}
	res.Cordoned = cordoned
	if cordoned {
		o.Log.Info("node cordoned", "node", o.Node)
	}
	pods, err := cs.ListPods(ctx, metav1.NamespaceAll, fields.OneTermEqualSelector("spec.nodeName", o.Node).String())
	if err != nil {
		return res, fmt.Errorf("drain %s: list its pods: %w", o.Node, err)
	}
	var evict []corev1.Pod
	for _, p := range pods {
		if why := skipReason(&p); why != "" {
			res.Skipped = append(res.Skipped, key(&p)+" ("+why+")")
			continue
		}
		evict = append(evict, p)
	}
	var (
		mu sync.Mutex
		wg sync.WaitGroup
	)
	for _, p := range evict {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := evictAndWait(ctx, cs, &p, o)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				res.Remaining = append(res.Remaining, key(&p)+": "+err.Error())
				return
			}
			res.Evicted = append(res.Evicted, key(&p))
		}()
	}
	wg.Wait()
	sort.Strings(res.Evicted)
	sort.Strings(res.Skipped)
	sort.Strings(res.Remaining)
	if len(res.Remaining) > 0 {
		return res, fmt.Errorf("drain %s: %d pod(s) not evicted within %s: %s", o.Node, len(res.Remaining), o.Timeout, strings.Join(res.Remaining, "; "))
	}
	return res, nil
}

// Cordon marks the node unschedulable; it says whether it changed anything.
func Cordon(ctx context.Context, cs API, node string) (bool, error) {
	n, err := cs.Node(ctx, node)
	if err != nil {
		return false, fmt.Errorf("cordon %s: %w", node, err)
	}
	if n.Spec.Unschedulable {
		return false, nil
	}
	if err := cs.Cordon(ctx, node); err != nil {
		return false, fmt.Errorf("cordon %s: %w", node, err)
	}
	return true, nil
}

// skipReason says why a pod stays: kubelet runs mirror pods from its static
// manifests and the DaemonSet controller would recreate its pods at once.
func skipReason(p *corev1.Pod) string {
	if _, ok := p.Annotations[corev1.MirrorPodAnnotationKey]; ok {
		return "mirror pod"
	}
	if c := metav1.GetControllerOf(p); c != nil && c.Kind == "DaemonSet" {
		return "DaemonSet"
	}
	return ""
}

// evictAndWait evicts one pod, retrying while a disruption budget refuses
// (429), and waits until that pod (by UID) is gone.
func evictAndWait(ctx context.Context, cs API, p *corev1.Pod, o Options) error {
	ev := &policyv1.Eviction{
		ObjectMeta:    metav1.ObjectMeta{Name: p.Name, Namespace: p.Namespace},
		DeleteOptions: &metav1.DeleteOptions{GracePeriodSeconds: o.GracePeriod, Preconditions: &metav1.Preconditions{UID: &p.UID}},
	}
	var last error
	refusals := 0
	err := wait.PollUntilContextCancel(ctx, o.RetryEvery, true, func(ctx context.Context) (bool, error) {
		err := cs.Evict(ctx, ev)
		switch {
		case err == nil, apierrors.IsNotFound(err), apierrors.IsConflict(err):
			// Evicted, or already gone (a conflict: the UID precondition
			// fails because the pod was deleted and replaced).
			return true, nil
		case apierrors.IsForbidden(err) && apierrors.HasStatusCause(err, corev1.NamespaceTerminatingCause):
			// Its namespace is being deleted, and the pod with it.
			return true, nil
		case apierrors.IsTooManyRequests(err):
			if refusals == 0 {
				o.Log.Info("eviction refused by a disruption budget; retrying", "pod", key(p), "reason", err)
			}
			refusals++
			last = fmt.Errorf("a disruption budget refuses: %w", err)
			return false, nil
		case apierrors.IsForbidden(err):
			return false, fmt.Errorf("evict: %w", err)
		default:
			last = fmt.Errorf("evict: %w", err)
			o.Log.Warn("eviction failed; retrying", "pod", key(p), "err", err)
			return false, nil
		}
	})
	if err != nil {
		return orLast(err, last)
	}
	o.Log.Info("pod evicted", "pod", key(p))
	// Gone is seen by listing the node's pods: a node's own credentials may
	// list the pods bound to it, but not get a pod that no longer is.
	sel := fields.AndSelectors(fields.OneTermEqualSelector("spec.nodeName", o.Node), fields.OneTermEqualSelector("metadata.name", p.Name)).String()
	err = wait.PollUntilContextCancel(ctx, o.RetryEvery/2, true, func(ctx context.Context) (bool, error) {
		l, err := cs.ListPods(ctx, p.Namespace, sel)
		if err != nil {
			last = err
			return false, nil
		}
		for _, cur := range l {
			if cur.UID == p.UID {
				last = errors.New("evicted but still terminating")
				return false, nil
			}
		}
		return true, nil
	})
	return orLast(err, last)
}

func orLast(err, last error) error {
	if err == nil {
		return nil
	}
	if last != nil && (errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) || wait.Interrupted(err)) {
		return last
	}
	return err
}

func key(p *corev1.Pod) string { return p.Namespace + "/" + p.Name }
