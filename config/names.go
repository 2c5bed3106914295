package config

import (
	"net"
	"strings"
)

// The names a cluster's nodes are reached at. For .k8s.local clusters the gossip
// ring publishes them (DESIGN.md, "Gossip names"); every package that writes or
// certifies one of these names takes it from here.

// APIInternalName is the name kubelets and the other masters reach the API
// servers at: api.internal.<cluster>.
func APIInternalName(cluster string) string { return "api.internal." + cluster }

// APIPublicName is the name users reach the API servers at: api.<cluster>.
func APIPublicName(cluster string) string { return "api." + cluster }

// DefaultAPIServer is spec.cluster.apiServer when the config leaves it out:
// api.internal.<cluster>:443.
func DefaultAPIServer(cluster string) string { return APIInternalName(cluster) + ":443" }

// APIServerURL is the URL every kubeconfig of a node that reaches the API servers
// over the network names: https://<spec.cluster.apiServer> (a full URL is kept).
func APIServerURL(c Cluster) string {
	s := c.APIServer
	if s == "" {
		s = DefaultAPIServer(c.Name)
	}
	if strings.Contains(s, "://") {
		return s
	}
	return "https://" + s
}

// APIServerHost is the host part of spec.cluster.apiServer (what the API
// server's certificate must name), "" when it cannot be told.
func APIServerHost(c Cluster) string {
	u := APIServerURL(c)
	_, rest, _ := strings.Cut(u, "://")
	host, _, _ := strings.Cut(rest, "/")
	if h, _, err := net.SplitHostPort(host); err == nil {
		return h
	}
	return strings.Trim(host, "[]")
}

// EtcdMemberHost is the name a member of an etcd cluster is reached at:
// etcd-<member>.internal.<cluster> for main, etcd-<etcd cluster>-<member>.internal.<cluster>
// for the others (etcd-events-a.internal.<cluster>).
func EtcdMemberHost(etcdCluster, member, cluster string) string {
	if etcdCluster == "main" {
		return "etcd-" + member + ".internal." + cluster
	}
	return "etcd-" + etcdCluster + "-" + member + ".internal." + cluster
}

// SignerPort is the node signer's HTTPS port on every master.
const SignerPort = 3988

// SignerName is the name workers reach the masters' node signer at:
// nodeagent.internal.<cluster> (its serving certificate names it).
func SignerName(cluster string) string { return "nodeagent.internal." + cluster }
