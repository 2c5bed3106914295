// Package manifests renders the static pods kubelet runs on a node (etcd, the
// control plane, kube-proxy) and keeps /etc/kubernetes/manifests in step with them.
//
// Every manifest the agent writes carries the annotation nodeagent.io/managed: "true".
// That marker is the only thing that lets the agent delete a manifest: a file without
// it is never deleted. (A file at one of the agent's own names, such as
// kube-apiserver.yaml, is overwritten with the rendered pod whatever it holds.)
//
// Every pod uses the host network, so the ports below share one namespace and
// rendering refuses any collision among them, the etcd ports of spec.etcd.clusters,
// kubelet's 10250 and the gossip port:
//
//	kube-apiserver           443 (/livez, /readyz)
//	kube-controller-manager  10257 on 127.0.0.1 (/healthz)
//	kube-scheduler           10259 on 127.0.0.1 (/healthz)
//	kube-proxy               10256 (/healthz), 10249 metrics on 127.0.0.1
//	etcd-<cluster>           clientPort, peerPort from the config; /health and
//	                         /metrics over plain HTTP on 127.0.0.1:8081+i for the
//	                         i-th cluster (main 8081, events 8082 by default)
//
// etcd keeps its data in <volume mount point>/data, which the phase creates (0700)
// only when the mount point exists, and which the pod mounts as a hostPath of type
// Directory: if the volume is missing after a reboot kubelet will not start etcd on
// the root disk.
package manifests

import (
	"log/slog"
	"net"

	"github.com/nodeagent/nodeagent/config"
	"github.com/nodeagent/nodeagent/internal/fsutil"
)

// ManagedAnnotation marks a static pod manifest as owned by nodeagent.
const ManagedAnnotation = "nodeagent.io/managed"

// DefaultDir is where kubelet looks for static pods (its staticPodPath).
const DefaultDir = "/etc/kubernetes/manifests"

// EtcdMember is this node's place in one etcd cluster, learned from the volume it
// claimed.
type EtcdMember struct {
	Cluster string   // etcd cluster name from spec.etcd.clusters, e.g. main
	Member  string   // this node's member name, e.g. b
	Members []string // every member of the cluster, in the order the volume tag lists them
	// DataDir is the mount point of the claimed volume, e.g. /mnt/master-vol-0abc;
	// etcd keeps its data in DataDir/data.
	DataDir string
	// ClusterState and InitialCluster, when set, are how the member joined a
	// live cluster (etcd-join): "existing" with the cluster's member list.
	// Unset, the member starts "new" from Members.
	ClusterState   string
	InitialCluster []string
}

// Options configures rendering and the phase.
type Options struct {
	Root     fsutil.Root
	Config   *config.NodeConfig
	NodeName string
	NodeIP   net.IP
	// Etcd are this node's etcd memberships; nil on workers. The phase takes them
	// from the run's facts (the volumes phase learns them). A control plane
	// without memberships is refused.
	Etcd []EtcdMember
	Log  *slog.Logger
	// Dir is the static pod directory on the host; default DefaultDir.
	Dir string
}
