package config

// The names a cluster's nodes are reached at. For .k8s.local clusters the gossip
// ring publishes them (DESIGN.md, "Gossip names"); every package that writes or
// certifies one of these names takes it from here.

// APIInternalName is the name kubelets and the other masters reach the API
// servers at: api.internal.<cluster>.
func APIInternalName(cluster string) string { return "api.internal." + cluster }

// EtcdMemberHost is the name a member of an etcd cluster is reached at:
// etcd-<member>.internal.<cluster> for main, etcd-<etcd cluster>-<member>.internal.<cluster>
// for the others (etcd-events-a.internal.<cluster>).
func EtcdMemberHost(etcdCluster, member, cluster string) string {
	if etcdCluster == "main" {
		return "etcd-" + member + ".internal." + cluster
	}
	return "etcd-" + etcdCluster + "-" + member + ".internal." + cluster
}
