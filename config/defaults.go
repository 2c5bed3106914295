package config

import "strings"

// Defaults used when a field is left empty.
const (
	DefaultRegistry = "registry.k8s.io"
	// DefaultPauseImageName is the sandbox image under the registry: the pause
	// image is <registry>/pause:3.10 unless spec.images.pauseImage says otherwise.
	DefaultPauseImageName = "pause:3.10"
	DefaultNetworkMode    = NetworkKubenet
	DefaultEtcdVersion    = "3.5.16-0"
	DefaultGossipPort     = 3999
	DefaultServiceCIDR    = "100.64.0.0/13"
	DefaultPodCIDR        = "100.96.0.0/11"
	DefaultClusterDNS     = "100.64.0.10"
	DefaultTimeout        = "10m"
	// DefaultFullCheckInterval is how often every installed asset is hashed again.
	DefaultFullCheckInterval = "24h"
)

// DefaultSysctls are what kubelet and kube-proxy need of every node.
var DefaultSysctls = map[string]string{
	"net.bridge.bridge-nf-call-iptables":  "1",
	"net.bridge.bridge-nf-call-ip6tables": "1",
	"net.ipv4.ip_forward":                 "1",
}

// DefaultKernelModules are loaded on every node.
var DefaultKernelModules = []string{"overlay", "br_netfilter"}

// DefaultEtcdClusters are kops' two etcd clusters.
var DefaultEtcdClusters = []EtcdCluster{
	{Name: "main", ClientPort: 2379, PeerPort: 2380},
	{Name: "events", ClientPort: 4002, PeerPort: 2381},
}

// SetDefaults fills every empty field that has a default. User values win; maps
// (sysctls) are merged over the defaults; module lists are extended.
func (c *NodeConfig) SetDefaults() {
	s := &c.Spec
	if s.ContainerRuntime == "" {
		s.ContainerRuntime = RuntimeContainerd
	}
	if s.Cluster.APIServer == "" && s.Cluster.Name != "" {
		s.Cluster.APIServer = DefaultAPIServer(s.Cluster.Name)
	}
	sysctls := make(map[string]string, len(DefaultSysctls)+len(s.Host.Sysctls))
	for k, v := range DefaultSysctls {
		sysctls[k] = v
	}
	for k, v := range s.Host.Sysctls {
		sysctls[k] = v
	}
	s.Host.Sysctls = sysctls
	s.Host.KernelModules = appendMissing(s.Host.KernelModules, DefaultKernelModules...)
	for i := range s.Assets {
		if s.Assets[i].Path == "" && s.Assets[i].Archive == nil {
			s.Assets[i].Path = "/usr/local/bin/" + s.Assets[i].Name
		}
		s.Assets[i].SHA256 = strings.ToLower(s.Assets[i].SHA256)
	}
	if s.Role == RoleControlPlane {
		if s.Etcd == nil {
			s.Etcd = &Etcd{}
		}
		if len(s.Etcd.Clusters) == 0 {
			s.Etcd.Clusters = append([]EtcdCluster(nil), DefaultEtcdClusters...)
		}
		if s.Etcd.Version == "" {
			s.Etcd.Version = DefaultEtcdVersion
		}
	}
	if s.Gossip.Port == 0 {
		s.Gossip.Port = DefaultGossipPort
	}
	if s.Images.Registry == "" {
		s.Images.Registry = DefaultRegistry
	}
	if s.Images.PauseImage == "" {
		s.Images.PauseImage = strings.TrimSuffix(s.Images.Registry, "/") + "/" + DefaultPauseImageName
	}
	for i := range s.Images.Archives {
		s.Images.Archives[i].SHA256 = strings.ToLower(s.Images.Archives[i].SHA256)
	}
	if s.Networking.Mode == "" {
		s.Networking.Mode = DefaultNetworkMode
	}
	if s.Networking.ServiceCIDR == "" {
		s.Networking.ServiceCIDR = DefaultServiceCIDR
	}
	if s.Networking.PodCIDR == "" {
		s.Networking.PodCIDR = DefaultPodCIDR
	}
	if s.Networking.ClusterDNS == "" {
		s.Networking.ClusterDNS = DefaultClusterDNS
	}
	if s.Networking.PodRoutes == "" {
		s.Networking.PodRoutes = PodRoutesNone
		if GossipCluster(s.Cluster.Name) {
			s.Networking.PodRoutes = PodRoutesGossip
		}
	}
	if s.Readiness.Timeout == "" {
		s.Readiness.Timeout = DefaultTimeout
	}
	if s.AssetChecks.FullCheckInterval == "" {
		s.AssetChecks.FullCheckInterval = DefaultFullCheckInterval
	}
}

func appendMissing(list []string, items ...string) []string {
	seen := make(map[string]bool, len(list))
	for _, v := range list {
		seen[v] = true
	}
	for _, v := range items {
		if !seen[v] {
			list = append(list, v)
			seen[v] = true
		}
	}
	return list
}
