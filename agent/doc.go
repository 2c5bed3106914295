// Package agent composes the node's boot and its daemon from the single-concern
// packages (host, assets, cri, kubelet, volumes, pki, manifests, etcd, gossip): it
// loads the NodeConfig and the instance's identity, builds the ordered phase list,
// runs it through bootstrap.Runner, reports readiness upward and serves the local
// status API. cmd/nodeagent only parses flags and calls into here.
package agent

// Version and Commit are set at link time (-ldflags -X).
var (
	Version = "dev"
	Commit  = "unknown"
)
