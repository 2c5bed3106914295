package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"sigs.k8s.io/yaml"

	"github.com/nodeagent/nodeagent/config"
	"github.com/nodeagent/nodeagent/etcd"
	"github.com/nodeagent/nodeagent/kube"
	"github.com/nodeagent/nodeagent/kubelet"
	"github.com/nodeagent/nodeagent/pki"
)

// Exit codes of `nodeagent validate`.
const (
	ValidateHealthy   = 0
	ValidateUnhealthy = 1
	ValidateUnknown   = 2 // nothing to judge with: no config, no credentials
)

// ValidateOptions configure `nodeagent validate`.
type ValidateOptions struct {
	// Socket is the daemon's status API, for the gossip ring's view.
	Socket string
	// Wait polls until the cluster is healthy or this long has passed; 0 judges once.
	Wait time.Duration
	// Interval between polls while waiting (default 5 s).
	Interval time.Duration
	Format   string // table, json or yaml
}

// Validation is what `nodeagent validate` found: the cluster as `kops validate
// cluster` shows it. Healthy only when Failures is empty.
type Validation struct {
	Cluster  string            `json:"cluster"`
	Healthy  bool              `json:"healthy"`
	Nodes    []ValidatedNode   `json:"nodes"`
	Pods     []ValidatedPod    `json:"podsNotRunning"`
	Etcd     []ValidatedMember `json:"etcd"`
	DNS      ValidatedDNS      `json:"dns"`
	Failures []ValidationError `json:"failures"`
}

// ValidatedNode is one node as the API server and the gossip ring see it.
type ValidatedNode struct {
	Name   string `json:"name"`
	Role   string `json:"role"` // control-plane or node
	Zone   string `json:"zone"`
	IP     string `json:"ip"`
	Ready  bool   `json:"ready"`
	Reason string `json:"reason,omitempty"`
	// InAPI and InGossip say where the node was seen.
	InAPI    bool `json:"inAPI"`
	InGossip bool `json:"inGossip"`
}

// ValidatedPod is a kube-system pod that is not running (or not ready).
type ValidatedPod struct {
	Name   string `json:"name"`
	Node   string `json:"node"`
	Phase  string `json:"phase"`
	Reason string `json:"reason"`
}

// ValidatedMember is one etcd member's health.
type ValidatedMember struct {
	Cluster  string `json:"cluster"`
	Name     string `json:"name"`
	Endpoint string `json:"endpoint"`
	Healthy  bool   `json:"healthy"`
	Leader   bool   `json:"leader"`
	Error    string `json:"error,omitempty"`
}

// ValidatedDNS is the cluster DNS's answer for the API's own Service name.
type ValidatedDNS struct {
	Server   string   `json:"server"`
	Name     string   `json:"name"`
	Answers  []string `json:"answers"`
	Error    string   `json:"error,omitempty"`
	Answered bool     `json:"answered"`
}

// ValidationError is one reason the cluster is not healthy, as kops lists them.
type ValidationError struct {
	Kind    string `json:"kind"` // Node, Pod, Etcd, DNS, API
	Name    string `json:"name"`
	Message string `json:"message"`
}

// Validate judges the cluster from this node, once or (Wait) until healthy,
// prints the last judgement and returns the exit code.
func Validate(ctx context.Context, o Options, vo ValidateOptions, w io.Writer) (int, error) {
	switch vo.Format {
	case "", "table", "json", "yaml":
	default:
		return ValidateUnknown, fmt.Errorf("unknown output format %q (table, json or yaml)", vo.Format)
	}
	v, err := newValidator(o, vo)
	if err != nil {
		return ValidateUnknown, err
	}
	var last *Validation
	judge := func(ctx context.Context) (bool, error) {
		last = v.validate(ctx)
		if !last.Healthy && vo.Wait > 0 {
			o.log().Info("cluster not healthy yet", "failures", len(last.Failures), "first", last.Failures[0].Message)
		}
		return last.Healthy, nil
	}
	if vo.Wait > 0 {
		interval := vo.Interval
		if interval <= 0 {
			interval = 5 * time.Second
		}
		err := wait.PollUntilContextTimeout(ctx, interval, vo.Wait, true, judge)
		if err != nil && !wait.Interrupted(err) {
			return ValidateUnknown, err
		}
	}
	if last == nil { // no poll ran (ctx ended first): judge once
		_, _ = judge(ctx)
	}
	if err := WriteValidation(w, last, vo.Format); err != nil {
		return ValidateUnknown, err
	}
	if !last.Healthy {
		return ValidateUnhealthy, nil
	}
	return ValidateHealthy, nil
}

type validator struct {
	o      Options
	vo     ValidateOptions
	cfg    *config.NodeConfig
	client *kube.Client
}

// validateKubeconfigs are tried in order: a master's add-ons identity sees
// everything; a worker's kubelet reads nodes and kube-system pods through the
// rbac add-on's nodeagent:validate role.
var validateKubeconfigs = []string{pki.DefaultPaths().AddonsConf, kubelet.KubeconfigPath}

func newValidator(o Options, vo ValidateOptions) (*validator, error) {
	raw, err := os.ReadFile(filepath.Join(o.stateDir(), effectiveConfigName))
	if err != nil {
		return nil, fmt.Errorf("this node's config (has nodeagent bootstrapped it?): %w", err)
	}
	cfg, err := config.Merge(nil, raw)
	if err != nil {
		return nil, fmt.Errorf("this node's config: %w", err)
	}
	v := &validator{o: o, vo: vo, cfg: cfg}
	var errs []error
	for _, kc := range validateKubeconfigs {
		c, err := kube.Load(o.Root, kc)
		if err == nil {
			v.client = c
			break
		}
		errs = append(errs, err)
	}
	if v.client == nil {
		return nil, fmt.Errorf("no credentials to ask the API server with: %w", errors.Join(errs...))
	}
	return v, nil
}

func (v *validator) validate(ctx context.Context) *Validation {
	res := &Validation{Cluster: v.cfg.Spec.Cluster.Name, Nodes: []ValidatedNode{}, Pods: []ValidatedPod{}, Etcd: []ValidatedMember{}, Failures: []ValidationError{}}
	fail := func(kind, name, format string, a ...any) {
		res.Failures = append(res.Failures, ValidationError{Kind: kind, Name: name, Message: fmt.Sprintf(format, a...)})
	}
	v.nodes(ctx, res, fail)
	v.pods(ctx, res, fail)
	v.etcd(ctx, res, fail)
	v.dns(ctx, res, fail)
	res.Healthy = len(res.Failures) == 0
	return res
}

// nodes: every Node Ready; every gossip member registered and alive.
func (v *validator) nodes(ctx context.Context, res *Validation, fail func(kind, name, format string, a ...any)) {
	rctx, cancel := context.WithTimeout(ctx, kube.RequestTimeout)
	defer cancel()
	nodes, err := v.client.Nodes(rctx)
	if err != nil {
		fail("API", config.APIInternalName(v.cfg.Spec.Cluster.Name), "cannot list nodes: %v", err)
	}
	byName := map[string]int{}
	for _, n := range nodes {
		vn := ValidatedNode{Name: n.Name, Role: nodeRole(&n), Zone: n.Labels[corev1.LabelTopologyZone], InAPI: true}
		for _, a := range n.Status.Addresses {
			if a.Type == corev1.NodeInternalIP {
				vn.IP = a.Address
				break
			}
		}
		vn.Ready, vn.Reason = kube.NodeReadiness(&n)
		if vn.Ready {
			vn.Reason = ""
		} else {
			fail("Node", n.Name, "%s: %s", vn.Role, vn.Reason)
		}
		byName[n.Name] = len(res.Nodes)
		res.Nodes = append(res.Nodes, vn)
	}
	var members []ClusterMember
	if !config.GossipCluster(v.cfg.Spec.Cluster.Name) {
		return
	}
	if err := queryAPI(ctx, v.vo.Socket, "/cluster", &members); err != nil {
		fail("Gossip", v.vo.Socket, "the local daemon's view of the gossip ring: %v", err)
		return
	}
	for _, m := range members {
		i, ok := byName[m.Name]
		if !ok {
			res.Nodes = append(res.Nodes, ValidatedNode{Name: m.Name, Role: gossipRole(m.Role), IP: m.IP, InGossip: true, Reason: "not registered in the API"})
			fail("Node", m.Name, "%s node %s (%s) is in the gossip ring (%s) but has no Node object", gossipRole(m.Role), m.Name, m.IP, m.State)
			continue
		}
		res.Nodes[i].InGossip = true
		if gossipRole(m.Role) == "control-plane" {
			// A master registered without the taint (kubelet config overridden) is still one.
			res.Nodes[i].Role = "control-plane"
		}
		if m.State != "alive" {
			fail("Node", m.Name, "gossip says node %s is %s", m.Name, m.State)
		}
	}
}

// nodeRole reads a Node's role from the control-plane taint or label.
func nodeRole(n *corev1.Node) string {
	if _, ok := n.Labels[kubelet.ControlPlaneTaint]; ok {
		return "control-plane"
	}
	for _, t := range n.Spec.Taints {
		if t.Key == kubelet.ControlPlaneTaint {
			return "control-plane"
		}
	}
	return "node"
}

func gossipRole(r string) string {
	if r == string(config.RoleControlPlane) {
		return "control-plane"
	}
	return "node"
}

// pods: every kube-system pod running with its containers ready (or done).
func (v *validator) pods(ctx context.Context, res *Validation, fail func(kind, name, format string, a ...any)) {
	rctx, cancel := context.WithTimeout(ctx, kube.RequestTimeout)
	defer cancel()
	pods, err := v.client.Pods(rctx, "kube-system")
	if err != nil {
		fail("API", "kube-system", "cannot list pods: %v", err)
		return
	}
	for _, p := range pods {
		if p.Status.Phase == corev1.PodSucceeded {
			continue
		}
		why := ""
		switch {
		case p.DeletionTimestamp != nil:
			why = "is being deleted"
		case p.Status.Phase != corev1.PodRunning:
			why = "is " + strings.ToLower(string(p.Status.Phase))
			for _, c := range p.Status.Conditions {
				if c.Type == corev1.PodScheduled && c.Status != corev1.ConditionTrue && c.Message != "" {
					why += ": " + c.Message
				}
			}
		default:
			var notReady []string
			for _, cs := range p.Status.ContainerStatuses {
				if !cs.Ready {
					notReady = append(notReady, cs.Name)
				}
			}
			if len(notReady) > 0 {
				why = "is running but not ready (" + strings.Join(notReady, ", ") + ")"
			}
		}
		if why == "" {
			continue
		}
		res.Pods = append(res.Pods, ValidatedPod{Name: p.Name, Node: p.Spec.NodeName, Phase: string(p.Status.Phase), Reason: why})
		fail("Pod", "kube-system/"+p.Name, "kube-system pod %s %s", p.Name, why)
	}
}

// etcd: on a master, every member of every etcd cluster answers with a leader
// (asked with this master's etcd client certificate); elsewhere, the API
// server's own etcd check.
func (v *validator) etcd(ctx context.Context, res *Validation, fail func(kind, name, format string, a ...any)) {
	if v.cfg.Spec.Role != config.RoleControlPlane || v.cfg.Spec.Etcd == nil {
		rctx, cancel := context.WithTimeout(ctx, kube.RequestTimeout)
		defer cancel()
		ok, msg := v.client.Readyz(rctx, "etcd")
		res.Etcd = append(res.Etcd, ValidatedMember{Cluster: "main", Name: "(through the API server)", Endpoint: "/readyz/etcd", Healthy: ok, Error: msg})
		if !ok {
			fail("Etcd", "main", "the API server's etcd check fails: %s", msg)
		}
		return
	}
	for _, ec := range v.cfg.Spec.Etcd.Clusters {
		v.etcdCluster(ctx, ec, res, fail)
	}
}

func (v *validator) etcdCluster(ctx context.Context, ec config.EtcdCluster, res *Validation, fail func(kind, name, format string, a ...any)) {
	tlsCfg, err := pki.ClientTLS(v.o.Root, ec.Name)
	if err != nil {
		fail("Etcd", ec.Name, "no client certificate for etcd %s: %v", ec.Name, err)
		return
	}
	local := net.JoinHostPort("127.0.0.1", strconv.Itoa(ec.ClientPort))
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{local}, TLS: tlsCfg, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		fail("Etcd", ec.Name, "etcd %s: %v", ec.Name, err)
		return
	}
	defer cli.Close()
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	ml, err := cli.MemberList(rctx)
	if err != nil {
		fail("Etcd", ec.Name, "etcd %s: member list from this master: %v", ec.Name, err)
		return
	}
	for _, m := range ml.Members {
		vm := ValidatedMember{Cluster: ec.Name, Name: m.Name}
		if len(m.ClientURLs) == 0 {
			vm.Error = "has not started (no client URL)"
		} else {
			vm.Endpoint = m.ClientURLs[0]
			mctx, mcancel := context.WithTimeout(ctx, 5*time.Second)
			h, err := etcd.Check(mctx, cli, strings.TrimPrefix(strings.TrimPrefix(vm.Endpoint, "https://"), "http://"))
			mcancel()
			vm.Healthy, vm.Leader = err == nil, h.IsLeader
			if err != nil {
				vm.Error = err.Error()
			}
		}
		if !vm.Healthy {
			fail("Etcd", ec.Name+"/"+m.Name, "etcd %s member %s %s", ec.Name, m.Name, vm.Error)
		}
		res.Etcd = append(res.Etcd, vm)
	}
	slices.SortFunc(res.Etcd, func(a, b ValidatedMember) int {
		return strings.Compare(a.Cluster+"/"+a.Name, b.Cluster+"/"+b.Name)
	})
}

// dns asks the cluster DNS IP (the one kubelets hand to pods) for the API's
// Service name, as a pod would.
func (v *validator) dns(ctx context.Context, res *Validation, fail func(kind, name, format string, a ...any)) {
	server := net.JoinHostPort(v.cfg.Spec.Networking.ClusterDNS, "53")
	name := "kubernetes.default.svc." + kubelet.ClusterDomain + "."
	res.DNS = ValidatedDNS{Server: server, Name: name, Answers: []string{}}
	r := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, server)
	}}
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	addrs, err := r.LookupHost(rctx, name)
	if err != nil {
		res.DNS.Error = err.Error()
		fail("DNS", server, "the cluster DNS at %s does not answer for %s: %v", server, name, err)
		return
	}
	res.DNS.Answered, res.DNS.Answers = true, addrs
}

// WriteValidation prints a judgement as a table (kops style), json or yaml.
func WriteValidation(w io.Writer, v *Validation, format string) error {
	switch format {
	case "json":
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	case "yaml":
		b, err := yaml.Marshal(v)
		if err != nil {
			return err
		}
		_, err = w.Write(b)
		return err
	}
	fmt.Fprintf(w, "Validating cluster %s\n\n", v.Cluster)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tROLE\tZONE\tIP\tREADY\tSEEN IN")
	for _, n := range v.Nodes {
		var seen []string
		if n.InAPI {
			seen = append(seen, "api")
		}
		if n.InGossip {
			seen = append(seen, "gossip")
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", n.Name, n.Role, orDash(n.Zone), orDash(n.IP), yesNo(n.Ready), strings.Join(seen, ","))
	}
	fmt.Fprintln(tw, "\nETCD\tMEMBER\tENDPOINT\tHEALTHY\tLEADER")
	for _, m := range v.Etcd {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", m.Cluster, m.Name, orDash(m.Endpoint), yesNo(m.Healthy), yesNo(m.Leader))
	}
	answer := "no"
	if v.DNS.Answered {
		answer = strings.Join(v.DNS.Answers, ",")
	}
	fmt.Fprintf(tw, "\nDNS\t%s\t%s\t%s\n", v.DNS.Server, v.DNS.Name, answer)
	if err := tw.Flush(); err != nil {
		return err
	}
	if v.Healthy {
		fmt.Fprintf(w, "\nYour cluster %s is ready\n", v.Cluster)
		return nil
	}
	fmt.Fprintln(w, "\nVALIDATION ERRORS")
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "KIND\tNAME\tMESSAGE")
	for _, f := range v.Failures {
		fmt.Fprintf(tw, "%s\t%s\t%s\n", f.Kind, f.Name, f.Message)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(w, "\nValidation failed: %d problem(s)\n", len(v.Failures))
	return nil
}
