// Package config defines NodeConfig (nodeagent.io/v1alpha1), the document a node boots
// from, and everything needed to turn bytes into a valid one: strict decoding, EC2
// user-data unwrapping, merging over cluster-level defaults, defaulting and validation.
package config

import (
	"strings"
	"time"
)

// APIVersion and Kind identify a NodeConfig document.
const (
	APIVersion = "nodeagent.io/v1alpha1"
	Kind       = "NodeConfig"
)

// Role is what a node does in the cluster.
type Role string

const (
	RoleControlPlane Role = "ControlPlane"
	RoleNode         Role = "Node"
)

// Runtime is the container runtime kubelet talks to.
type Runtime string

const (
	RuntimeContainerd Runtime = "containerd"
	RuntimeDocker     Runtime = "docker"
)

// NodeConfig is the whole configuration of one node.
type NodeConfig struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Spec       Spec   `json:"spec"`
}

// Spec is what the node should become.
type Spec struct {
	Cluster           Cluster     `json:"cluster"`
	Role              Role        `json:"role"`
	KubernetesVersion string      `json:"kubernetesVersion"`
	ContainerRuntime  Runtime     `json:"containerRuntime,omitempty"`
	Assets            []Asset     `json:"assets,omitempty"`
	Kubelet           Kubelet     `json:"kubelet,omitempty"`
	Host              Host        `json:"host,omitempty"`
	Etcd              *Etcd       `json:"etcd,omitempty"`
	Gossip            Gossip      `json:"gossip,omitempty"`
	Readiness         Readiness   `json:"readiness,omitempty"`
	AssetChecks       AssetChecks `json:"assetChecks,omitempty"`
	Images            Images      `json:"images,omitempty"`
	Containerd        Containerd  `json:"containerd,omitempty"`
	Networking        Networking  `json:"networking,omitempty"`
	PKI               PKI         `json:"pki,omitempty"`
	Addons            Addons      `json:"addons,omitempty"`
	KubeProxy         KubeProxy   `json:"kubeProxy,omitempty"`
}

// KubeProxy holds the kube-proxy settings of its static pod.
type KubeProxy struct {
	// ConntrackMaxPerCore sizes the kernel's conntrack table (kube-proxy's
	// --conntrack-max-per-core; default 32768). 0 leaves the kernel's limit as
	// it is, for nodes whose kube-proxy cannot set it (containers).
	ConntrackMaxPerCore *int32 `json:"conntrackMaxPerCore,omitempty"`
}

// Addons configures the bootstrap add-ons the masters apply through the API
// server: the built-in ones of the release, and the users' own from the state
// store (addons/*.yaml).
type Addons struct {
	// Disable lists built-in add-ons not to apply (coredns, rbac, storage-class);
	// what was applied before stays as it is.
	Disable []string `json:"disable,omitempty"`
}

// Cluster names the cluster and where its shared configuration lives.
type Cluster struct {
	// Name is a DNS-1123 subdomain, e.g. proyecto.k8s.local.
	Name string `json:"name"`
	// StateStore is an s3://bucket/prefix URL holding nodeagent/cluster.yaml (a
	// NodeConfig whose spec fills what user-data leaves unset), pki/ca.crt,
	// nodeagent/gossip.key (every node reads them) and, under pki/private/, the
	// CA key and the service-account key (masters only).
	StateStore string `json:"stateStore,omitempty"`
	// APIServer is the host:port kubelets use; default api.internal.<name>:443.
	APIServer string `json:"apiServer,omitempty"`
}

// Asset is one file the node installs, verified by SHA-256 before it is used.
type Asset struct {
	Name string `json:"name"`
	// URLs are mirrors tried in order: https://, http:// or s3://bucket/key.
	URLs   []string `json:"urls"`
	SHA256 string   `json:"sha256"`
	// Path is where the file is installed; default /usr/local/bin/<name>. An
	// archive asset has no path: its members say where they go.
	Path string `json:"path,omitempty"`
	// Archive, when set, makes the downloaded file an archive as upstream
	// publishes it (containerd's tar.gz, the CNI plugins' tgz, crictl's tar.gz, a
	// zip): SHA256 is the archive's, and the listed members are installed.
	Archive *AssetArchive `json:"archive,omitempty"`
}

// AssetArchive says which members of an archive asset are installed where.
type AssetArchive struct {
	// Format is tar, tar.gz (or tgz) or zip; empty means recognised from the
	// archive's first bytes.
	Format string `json:"format,omitempty"`
	// Members are installed in order; each must match at least one file of the
	// archive.
	Members []ArchiveMember `json:"members"`
}

// ArchiveMember is one file of an archive (or a pattern of files) and where it
// is installed.
type ArchiveMember struct {
	// Name is the member's path inside the archive without a leading "./", e.g.
	// bin/containerd; or a pattern (path.Match: "*", "bin/*") selecting every
	// regular file it matches.
	Name string `json:"name"`
	// Exclude lists patterns of members Name matches that are not installed
	// (e.g. LICENSE, README.md of the CNI plugins' tarball).
	Exclude []string `json:"exclude,omitempty"`
	// Path is the installed file; a path ending in "/" is a directory the member
	// is installed into under its base name (required for a pattern).
	Path string `json:"path"`
	// Mode is the installed file's permission bits in octal; default "0755".
	Mode string `json:"mode,omitempty"`
}

// Kubelet holds the node's kubelet settings.
type Kubelet struct {
	NodeLabels map[string]string `json:"nodeLabels,omitempty"`
	// Config holds KubeletConfiguration (kubelet.config.k8s.io/v1beta1) fields merged
	// over the agent's defaults.
	Config map[string]any `json:"config,omitempty"`
	// BootstrapToken, when set, is written into the bootstrap kubeconfig. It is a
	// secret: never logged, never shown by status.
	BootstrapToken string `json:"bootstrapToken,omitempty"`
}

// Host holds host preparation settings.
type Host struct {
	// Sysctls are merged over the defaults Kubernetes needs.
	Sysctls map[string]string `json:"sysctls,omitempty"`
	// KernelModules are loaded now and at every boot.
	KernelModules []string `json:"kernelModules,omitempty"`
	// Hostname overrides the name taken from instance metadata.
	Hostname string `json:"hostname,omitempty"`
}

// Etcd describes the etcd clusters a control-plane node runs.
type Etcd struct {
	// Version is the etcd image tag, e.g. 3.5.15-0.
	Version  string        `json:"version,omitempty"`
	Clusters []EtcdCluster `json:"clusters,omitempty"`
	// Backups are taken into the state store (backups/etcd/<cluster>/) when
	// spec.cluster.stateStore is set.
	Backups EtcdBackups `json:"backups,omitempty"`
}

// EtcdBackups schedules etcd's backups and says how long they are kept.
type EtcdBackups struct {
	// Schedule is how often one is taken, e.g. "1h" (the default).
	Schedule string `json:"schedule,omitempty"`
	// KeepHourly keeps every backup this long (default "168h", 7 days);
	// KeepDaily keeps the newest of each day this long (default "8760h", a year).
	KeepHourly string `json:"keepHourly,omitempty"`
	KeepDaily  string `json:"keepDaily,omitempty"`
}

// EtcdCluster is one etcd cluster (kops runs "main" and "events").
type EtcdCluster struct {
	Name       string `json:"name"`
	ClientPort int    `json:"clientPort"`
	PeerPort   int    `json:"peerPort"`
}

// Gossip configures the memberlist ring that replaces DNS for .k8s.local clusters.
type Gossip struct {
	Port int `json:"port,omitempty"`
	// SecretKeyFile holds the 16, 24 or 32 byte key; when empty and a state store is
	// set, the key is read from it.
	SecretKeyFile string `json:"secretKeyFile,omitempty"`
}

// AssetChecks configures how installed assets are checked on every run.
type AssetChecks struct {
	// FullCheckInterval is how long an installed file's recorded hash is trusted
	// while its device, inode, size, mtime and ctime are unchanged; after it the
	// file is hashed again (default 24h, at least 1m).
	FullCheckInterval string `json:"fullCheckInterval,omitempty"`
}

// Interval is FullCheckInterval as a duration (DefaultFullCheckInterval when
// unset or invalid; validation refuses invalid ones).
func (a AssetChecks) Interval() time.Duration {
	d, err := time.ParseDuration(a.FullCheckInterval)
	if err != nil || d < time.Minute {
		d, _ = time.ParseDuration(DefaultFullCheckInterval)
	}
	return d
}

// Readiness configures how readiness is reported upward.
type Readiness struct {
	// LifecycleHook is the Auto Scaling lifecycle hook completed once the node is ready.
	LifecycleHook string `json:"lifecycleHook,omitempty"`
	// Timeout bounds how long bootstrap waits for readiness, e.g. "5m".
	Timeout string `json:"timeout,omitempty"`
	// TerminationHook is the Auto Scaling terminate lifecycle hook
	// (autoscaling:EC2_INSTANCE_TERMINATING) completed with CONTINUE once the
	// node has left gracefully (drained, left the gossip ring, etcd handed on).
	TerminationHook string `json:"terminationHook,omitempty"`
	// DrainTimeout bounds the drain of a terminating node, e.g. "90s"
	// (default 90s; a spot notice gives two minutes in all).
	DrainTimeout string `json:"drainTimeout,omitempty"`
}

// Images says where the images the node runs come from: a registry, and verified
// archives imported into the container runtime before kubelet starts, so that a
// node needs no registry for them.
type Images struct {
	// Registry is the prefix of the control-plane images in the static pod
	// manifests, e.g. registry.k8s.io or mirror.example:5000/k8s.
	Registry string `json:"registry,omitempty"`
	// PauseImage is the pod sandbox image; default <registry>/pause:3.10.
	PauseImage string `json:"pauseImage,omitempty"`
	// Archives are image tarballs (docker save or OCI layout) imported before
	// kubelet starts.
	Archives []ImageArchive `json:"archives,omitempty"`
}

// ImageArchive is one image tarball, fetched and verified like an asset.
type ImageArchive struct {
	// Name is the full reference the manifests use, with its tag, e.g.
	// registry.k8s.io/kube-apiserver:v1.34.4. The archive must carry it.
	Name string `json:"name"`
	// URLs are mirrors tried in order: https://, http:// or s3://bucket/key.
	URLs   []string `json:"urls"`
	SHA256 string   `json:"sha256"`
}

// Containerd holds settings of containerd's CRI plugin.
type Containerd struct {
	// RegistryMirrors maps a registry host (registry.k8s.io, docker.io,
	// mirror.example:5000) to mirror URLs tried in order before it; each becomes
	// /etc/containerd/certs.d/<host>/hosts.toml.
	RegistryMirrors map[string][]string `json:"registryMirrors,omitempty"`
}

// NetworkMode is how pods get their network.
type NetworkMode string

const (
	// NetworkKubenet gives each node's pods a bridge over the node's pod CIDR
	// (kubelet's old kubenet, done by containerd from a CNI config template).
	NetworkKubenet NetworkMode = "kubenet"
	// NetworkCNI leaves the CNI configuration to something else (an add-on's
	// DaemonSet dropping its config into /etc/cni/net.d).
	NetworkCNI NetworkMode = "cni"
)

// Networking holds cluster network ranges and how pods are networked.
type Networking struct {
	ServiceCIDR string `json:"serviceCIDR,omitempty"`
	PodCIDR     string `json:"podCIDR,omitempty"`
	ClusterDNS  string `json:"clusterDNS,omitempty"`
	// Mode is kubenet (default) or cni.
	Mode NetworkMode `json:"mode,omitempty"`
	// PodRoutes says who routes each node's pod CIDR to it: gossip (the daemon
	// keeps a route to every gossip peer's pod CIDR via the peer's IP, for nodes on
	// one subnet) or none (the cloud's route table or the CNI plugin does it).
	// Default gossip for a .k8s.local (gossip) cluster, none otherwise.
	PodRoutes PodRoutes `json:"podRoutes,omitempty"`
}

// PodRoutes is how routes to other nodes' pod CIDRs are kept.
type PodRoutes string

const (
	PodRoutesGossip PodRoutes = "gossip"
	PodRoutesNone   PodRoutes = "none"
)

// GossipCluster reports whether a cluster relies on the gossip ring for its
// internal names, as kops does for names ending in .k8s.local (no DNS zone).
func GossipCluster(name string) bool { return strings.HasSuffix(name, ".k8s.local") }

// PKI names where the cluster CA comes from when not from the state store.
type PKI struct {
	CACertFile string `json:"caCertFile,omitempty"`
	CAKeyFile  string `json:"caKeyFile,omitempty"`
	// ServiceAccountKeyFile is the cluster's shared service-account signing key
	// (PEM) on control planes; with a state store it comes from
	// pki/private/service-account.key. Every master of an HA control plane needs
	// the same one.
	ServiceAccountKeyFile string `json:"serviceAccountKeyFile,omitempty"`
	// NodeCredentialsValidity (masters) is how long the kubelet and kube-proxy
	// client certificates the node signer issues to workers live, a duration
	// from 1m to 8760h; default 24h. Workers renew when a third is left.
	NodeCredentialsValidity string `json:"nodeCredentialsValidity,omitempty"`
}
