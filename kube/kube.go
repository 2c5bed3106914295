// Package kube asks the cluster's API server about this node, with the
// credentials of a kubeconfig file on the node (kubelet's own): whether its Node
// object is Ready, and which pod CIDR the controller-manager gave it.
package kube

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
	"unicode/utf8"

	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/nodeagent/nodeagent/internal/fsutil"
)

// RequestTimeout bounds one request to the API server.
const RequestTimeout = 10 * time.Second

// Client reads Node objects, and cordons and drains a node. It is client-go's
// REST client for core/v1 with a scheme of core/v1 and policy/v1 (Eviction)
// alone: the typed clientset registers every API group of k8s.io/api and adds
// some 10 MB to the binary and its start.
type Client struct {
	rest rest.Interface
}

// Load builds a client from the kubeconfig at path, a host path resolved under
// root. The files the kubeconfig names (CA, client certificate and key, token
// file) are host paths too, so they are resolved under root as well; relative
// ones are taken relative to the kubeconfig's directory, as kubectl does. client-go
// re-reads client certificate files for new connections, so a renewed certificate
// needs no new client.
func Load(root fsutil.Root, path string) (*Client, error) {
	file := root.Path(path)
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("kubeconfig: %w", err)
	}
	return FromBytes(root, path, data)
}

// FromBytes is Load for a kubeconfig already read from path.
func FromBytes(root fsutil.Root, path string, data []byte) (*Client, error) {
	rc, err := restConfig(root, path, data)
	if err != nil {
		return nil, err
	}
	return FromRESTConfig(rc)
}

// FromRESTConfig is a Client for a client-go configuration.
func FromRESTConfig(cfg *rest.Config) (*Client, error) {
	rc := rest.CopyConfig(cfg)
	// The scheme knows core/v1 and, through it, metav1.Status, so that the API
	// server's error answers become apierrors (NotFound, Forbidden, ...), and
	// policy/v1 for the Eviction a drain posts.
	scheme := runtime.NewScheme()
	if err := corev1.AddToScheme(scheme); err != nil {
		return nil, fmt.Errorf("kube: register core/v1: %w", err)
	}
	if err := policyv1.AddToScheme(scheme); err != nil {
		return nil, fmt.Errorf("kube: register policy/v1: %w", err)
	}
	rc.APIPath = "/api"
	rc.GroupVersion = &corev1.SchemeGroupVersion
	rc.ContentType = runtime.ContentTypeJSON
	rc.NegotiatedSerializer = serializer.NewCodecFactory(scheme).WithoutConversion()
	c, err := rest.RESTClientFor(rc)
	if err != nil {
		return nil, fmt.Errorf("API client for %s: %w", rc.Host, err)
	}
	return &Client{rest: c}, nil
}

// RESTConfig reads the kubeconfig at path (a host path resolved under root, as
// are the files it names) into a client-go configuration for other clients.
func RESTConfig(root fsutil.Root, path string) (*rest.Config, error) {
	data, err := os.ReadFile(root.Path(path))
	if err != nil {
		return nil, fmt.Errorf("kubeconfig: %w", err)
	}
	return restConfig(root, path, data)
}

func restConfig(root fsutil.Root, path string, data []byte) (*rest.Config, error) {
	cfg, err := clientcmd.Load(data)
	if err != nil {
		return nil, fmt.Errorf("kubeconfig %s: %w", path, err)
	}
	base := filepath.Dir(filepath.Clean("/" + path))
	resolve := func(refs []*string) {
		for _, p := range refs {
			if *p == "" {
				continue
			}
			host := *p
			if !filepath.IsAbs(host) {
				host = filepath.Join(base, host)
			}
			*p = root.Path(host)
		}
	}
	for _, c := range cfg.Clusters {
		resolve(clientcmd.GetClusterFileReferences(c))
	}
	for _, a := range cfg.AuthInfos {
		resolve(clientcmd.GetAuthInfoFileReferences(a))
	}
	rc, err := clientcmd.NewDefaultClientConfig(*cfg, &clientcmd.ConfigOverrides{}).ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("kubeconfig %s: %w", path, err)
	}
	rc.Timeout = RequestTimeout
	rc.UserAgent = "nodeagent"
	return rc, nil
}

// NodeStatus reads Node name and reports whether its Ready condition is True,
// why not in words a person can act on, and its spec.podCIDR ("" until the
// controller-manager allocates one). A definite answer from the API server,
// such as "not registered yet", comes as ready=false with a reason and a nil
// error; err is set only when the question could not be asked or answered
// (unreachable, refused credentials, forbidden).
func (c *Client) NodeStatus(ctx context.Context, name string) (ready bool, reason string, podCIDR string, err error) {
	node := &corev1.Node{}
	err = c.rest.Get().Resource("nodes").Name(name).Do(ctx).Into(node)
	if apierrors.IsNotFound(err) {
		return false, fmt.Sprintf("Node %s not registered yet", name), "", nil
	}
	if err != nil {
		return false, "", "", fmt.Errorf("get Node %s: %w", name, err)
	}
	ready, reason = readiness(node)
	return ready, reason, node.Spec.PodCIDR, nil
}

// readiness reads the Ready condition the way `kubectl get nodes` shows it.
func readiness(node *corev1.Node) (bool, string) {
	var cond *corev1.NodeCondition
	for i := range node.Status.Conditions {
		if node.Status.Conditions[i].Type == corev1.NodeReady {
			cond = &node.Status.Conditions[i]
			break
		}
	}
	switch {
	case node.DeletionTimestamp != nil:
		return false, fmt.Sprintf("Node %s is being deleted", node.Name)
	case cond == nil:
		return false, fmt.Sprintf("Node %s has no Ready condition yet (kubelet has not reported its status)", node.Name)
	case cond.Status == corev1.ConditionTrue:
		return true, fmt.Sprintf("Node %s Ready", node.Name)
	}
	// Unknown (kubelet stopped posting status) reads NotReady too, as in
	// `kubectl get nodes`; the condition's reason tells the two apart.
	s := "Node " + node.Name + " NotReady"
	if r := oneLine(cond.Reason); r != "" {
		s += " (" + r + ")"
	}
	if m := oneLine(cond.Message); m != "" {
		s += ": " + m
	}
	return false, s
}

// maxMessage bounds what a condition message adds to a reason: kubelet's are a
// line or two, and the reason ends up in status output and logs.
const maxMessage = 400

// oneLine keeps a message from the API server on one line of printable text.
func oneLine(s string) string {
	s = strings.Map(func(r rune) rune {
		if r < ' ' || r == 0x7f {
			return ' '
		}
		return r
	}, strings.TrimSpace(s))
	if len(s) > maxMessage {
		cut := maxMessage
		for cut > 0 && !utf8.RuneStart(s[cut]) {
			cut--
		}
		s = s[:cut] + "…"
	}
	return s
}

// Nodes lists every Node of the cluster.
func (c *Client) Nodes(ctx context.Context) ([]corev1.Node, error) {
	var l corev1.NodeList
	if err := c.rest.Get().Resource("nodes").Do(ctx).Into(&l); err != nil {
		return nil, fmt.Errorf("list Nodes: %w", err)
	}
	return l.Items, nil
}

// Pods lists the pods of one namespace.
func (c *Client) Pods(ctx context.Context, namespace string) ([]corev1.Pod, error) {
	var l corev1.PodList
	if err := c.rest.Get().Namespace(namespace).Resource("pods").Do(ctx).Into(&l); err != nil {
		return nil, fmt.Errorf("list pods in %s: %w", namespace, err)
	}
	return l.Items, nil
}

// Node reads the Node name; a missing one is an apierrors NotFound.
func (c *Client) Node(ctx context.Context, name string) (*corev1.Node, error) {
	node := &corev1.Node{}
	if err := c.rest.Get().Resource("nodes").Name(name).Do(ctx).Into(node); err != nil {
		return nil, err
	}
	return node, nil
}

// Cordon marks the Node name unschedulable (a strategic merge patch of
// spec.unschedulable, as kubectl cordon sends).
func (c *Client) Cordon(ctx context.Context, name string) error {
	return c.rest.Patch(types.StrategicMergePatchType).Resource("nodes").Name(name).
		Body([]byte(`{"spec":{"unschedulable":true}}`)).Do(ctx).Error()
}

// ListPods lists the pods of namespace ("" for every namespace) that match
// fieldSelector ("" for all).
func (c *Client) ListPods(ctx context.Context, namespace, fieldSelector string) ([]corev1.Pod, error) {
	var l corev1.PodList
	req := c.rest.Get().Namespace(namespace).Resource("pods")
	if fieldSelector != "" {
		req = req.Param("fieldSelector", fieldSelector)
	}
	if err := req.Do(ctx).Into(&l); err != nil {
		return nil, err
	}
	return l.Items, nil
}

// Evict posts ev to its pod's eviction subresource; a disruption budget's
// refusal is the API server's 429 (apierrors.IsTooManyRequests).
func (c *Client) Evict(ctx context.Context, ev *policyv1.Eviction) error {
	return c.rest.Post().Namespace(ev.Namespace).Resource("pods").Name(ev.Name).SubResource("eviction").
		Body(ev).Do(ctx).Error()
}

// NodeReadiness reads a Node's Ready condition as `kubectl get nodes` shows it,
// with the reason in words when it is not Ready.
func NodeReadiness(node *corev1.Node) (bool, string) { return readiness(node) }

// Readyz asks the API server's readiness check name (/readyz/<name>, e.g.
// etcd): ok, or why not in the server's words.
func (c *Client) Readyz(ctx context.Context, name string) (bool, string) {
	b, err := c.rest.Get().AbsPath("/readyz", name).DoRaw(ctx)
	if err != nil {
		// A failing check answers in plain text ("[-]etcd failed: ..."); a
		// refusal is a Status, which err already words.
		msg := oneLine(string(b))
		if msg == "" || strings.HasPrefix(msg, "{") {
			msg = oneLine(err.Error())
		}
		return false, msg
	}
	return true, ""
}
