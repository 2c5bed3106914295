package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/netip"
	"os"
	"sync"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/nodeagent/nodeagent/config"
	"github.com/nodeagent/nodeagent/gossip"
	"github.com/nodeagent/nodeagent/internal/fsutil"
	"github.com/nodeagent/nodeagent/kube"
	"github.com/nodeagent/nodeagent/kubelet"
	"github.com/nodeagent/nodeagent/podroutes"
)

// nodeObject is the readiness check "node": the API server must report this
// node's Node object Ready (DESIGN.md, Readiness upward). It asks with kubelet's
// own kubeconfig, and remembers the pod CIDR the controller-manager allocated, for
// the gossip ring and the pod routes.
type nodeObject struct {
	root fsutil.Root
	path string // kubelet's kubeconfig, a host path
	name string

	mu      sync.Mutex
	kc      []byte // the kubeconfig the client was built from
	client  nodeStatuser
	podCIDR netip.Prefix
}

// nodeStatuser is what the check needs of the API server; *kube.Client has it.
type nodeStatuser interface {
	NodeStatus(ctx context.Context, name string) (ready bool, reason string, podCIDR string, err error)
}

// addNodeCheck makes the Node object's readiness a condition of this node's,
// unless kubelet runs standalone (no API server to ask). Both kubeconfig modes
// end with kubelet's client-certificate kubeconfig at kubelet.KubeconfigPath:
// written by the kubelet phase, or by kubelet itself after TLS bootstrap.
func (ps *phaseSet) addNodeCheck(o Options, n *Node, mode kubelet.KubeconfigMode) {
	if _, standalone := mode.(kubelet.Standalone); standalone {
		return
	}
	ps.node = &nodeObject{root: o.Root, path: kubelet.KubeconfigPath, name: n.Name}
	ps.readiness.checks = append(ps.readiness.checks, readyCheck{name: "node", fn: ps.node.check})
}

func (w *nodeObject) check(ctx context.Context) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	data, err := os.ReadFile(w.root.Path(w.path))
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("kubelet has no kubeconfig at %s yet", w.path)
	}
	if err != nil {
		return fmt.Errorf("read kubelet's kubeconfig: %w", err)
	}
	// The kubeconfig changes when TLS bootstrap completes or the pki phase rewrites
	// it; the certificate files it names are re-read by client-go on their own.
	if w.client == nil || !bytes.Equal(data, w.kc) {
		c, err := kube.FromBytes(w.root, w.path, data)
		if err != nil {
			return err
		}
		w.client, w.kc = c, data
	}
	ready, reason, cidr, err := w.client.NodeStatus(ctx, w.name)
	if err != nil {
		return err
	}
	if p, perr := netip.ParsePrefix(cidr); perr == nil && p == p.Masked() {
		w.podCIDR = p
	}
	if !ready {
		return errors.New(reason)
	}
	return nil
}

// learnPodCIDR asks the API server for this node's pod CIDR outside a readiness
// evaluation; whether the Node is Ready is the run's to judge, so that part of
// the answer is not used here.
func (ps *phaseSet) learnPodCIDR(ctx context.Context) {
	if ps.node == nil {
		return
	}
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	_ = ps.node.check(cctx) // only its pod CIDR is wanted; readiness is judged elsewhere
}

// PodCIDR is the Node's spec.podCIDR as last seen; zero until then.
func (w *nodeObject) PodCIDR() netip.Prefix {
	if w == nil {
		return netip.Prefix{}
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.podCIDR
}

// podNetwork publishes this node's pod CIDR in the gossip ring and, with
// spec.networking.podRoutes gossip, keeps a route to every alive peer's pod CIDR
// via the peer (podroutes). The daemon calls update on every readiness report.
type podNetwork struct {
	node   *nodeObject
	g      *gossipRunner
	self   string
	routes *podroutes.Syncer // nil: routes are managed elsewhere
	nl     *netlink.Handle
	log    *slog.Logger
}

// startPodNetwork returns nil when there is nothing to do: no gossip ring, or no
// API server to learn a pod CIDR from. The pod CIDR is published either way;
// with podRoutes none, routes an earlier configuration added are removed, once.
func startPodNetwork(o Options, n *Node, ps *phaseSet, g *gossipRunner) *podNetwork {
	log := o.log().With("component", "podroutes")
	nw := n.Config.Spec.Networking
	if nw.PodRoutes != config.PodRoutesGossip {
		removeOurPodRoutes(log)
	}
	if g == nil || ps.node == nil {
		return nil
	}
	pn := &podNetwork{node: ps.node, g: g, self: n.Name, log: log}
	if nw.PodRoutes != config.PodRoutesGossip {
		return pn
	}
	cluster, err := netip.ParsePrefix(nw.PodCIDR)
	if err == nil {
		pn.nl, err = netlink.NewHandle()
	}
	if err == nil {
		pn.routes, err = podroutes.New(podroutes.Options{Netlink: pn.nl, ClusterCIDR: cluster, Log: log})
	}
	if err != nil {
		// The ring still learns the pod CIDR; only the routes are missing.
		log.Error("pod routes disabled", "err", err)
	}
	return pn
}

// removeOurPodRoutes drops routes nodeagent added while podRoutes was gossip.
func removeOurPodRoutes(log *slog.Logger) {
	h, err := netlink.NewHandle()
	if err != nil {
		log.Warn("cannot check for pod routes to remove", "err", err)
		return
	}
	defer h.Close()
	if _, err := podroutes.RemoveAll(h, log); err != nil {
		log.Warn("remove pod routes", "err", err)
	}
}

func (pn *podNetwork) update() {
	if pn == nil {
		return
	}
	local := pn.node.PodCIDR()
	pn.g.setPodCIDR(local)
	if pn.routes == nil {
		return
	}
	if _, err := pn.routes.Sync(local, peersOf(pn.g.agent.Members(), pn.self)); err != nil {
		pn.log.Warn("pod routes", "err", err)
	}
}

func (pn *podNetwork) close() {
	if pn != nil && pn.nl != nil {
		pn.nl.Close()
	}
}

// peersOf lists the alive members other than self, with their pod CIDRs.
func peersOf(members []gossip.Member, self string) []podroutes.Peer {
	var out []podroutes.Peer
	for _, m := range members {
		if m.Name == self || m.State != gossip.StateAlive {
			continue
		}
		ip, ok := netip.AddrFromSlice(m.IP)
		if !ok {
			continue
		}
		out = append(out, podroutes.Peer{Name: m.Name, IP: ip.Unmap(), PodCIDR: m.PodCIDR})
	}
	return out
}

// setPodCIDR publishes this node's pod CIDR in the ring when it changed.
func (g *gossipRunner) setPodCIDR(p netip.Prefix) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.podCIDR == p || g.left {
		return
	}
	if err := g.agent.SetPodCIDR(p); err != nil {
		return
	}
	g.podCIDR = p
}
