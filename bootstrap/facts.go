package bootstrap

import "slices"

// Facts are what one phase learns and later phases (and the daemon) need: which
// etcd member this node is, where its data lives. They travel in this one typed
// record, which the runner hands to each phase before it runs and records in the
// state file after each phase that learned something, so a later process (the
// daemon started mid-boot, a re-run after a reboot) starts from what is known.
type Facts struct {
	// EtcdMembers are this node's memberships, one per etcd cluster, from the
	// volumes it claimed (control plane only).
	EtcdMembers []EtcdMemberFact `json:"etcdMembers,omitempty"`
}

// EtcdMemberFact is this node's place in one etcd cluster.
type EtcdMemberFact struct {
	Cluster string `json:"cluster"` // etcd cluster: main, events
	Member  string `json:"member"`  // this node's member name, e.g. a
	// Members are every member of the cluster, this one included (the volume tag).
	Members  []string `json:"members"`
	VolumeID string   `json:"volumeID"`
	// MountPoint is the host path the volume is mounted at (not under --root).
	MountPoint string `json:"mountPoint"`
	// ClusterState and InitialCluster are how the member starts when its data
	// directory was blank (etcd's --initial-cluster-state and
	// --initial-cluster), decided once by the etcd-join phase for this volume
	// and kept: "existing" after it was added to a live cluster.
	ClusterState   string   `json:"clusterState,omitempty"`
	InitialCluster []string `json:"initialCluster,omitempty"`
}

// EtcdMember returns this node's membership of one etcd cluster.
func (f Facts) EtcdMember(cluster string) (EtcdMemberFact, bool) {
	for _, m := range f.EtcdMembers {
		if m.Cluster == cluster {
			return m, true
		}
	}
	return EtcdMemberFact{}, false
}

// Clone returns a deep copy, so a phase can keep what it was given.
func (f Facts) Clone() Facts {
	out := Facts{EtcdMembers: slices.Clone(f.EtcdMembers)}
	for i := range out.EtcdMembers {
		out.EtcdMembers[i].Members = slices.Clone(out.EtcdMembers[i].Members)
		out.EtcdMembers[i].InitialCluster = slices.Clone(out.EtcdMembers[i].InitialCluster)
	}
	return out
}

// FactConsumer is a phase that needs facts earlier phases learned. The runner
// calls UseFacts before the phase's Check.
type FactConsumer interface {
	UseFacts(Facts)
}

// FactProducer is a phase that learns facts. The runner calls LearnFacts after
// the phase's Check (so `plan` sees what it found) and again after it is done;
// the phase fills in what it knows and leaves the rest alone.
type FactProducer interface {
	LearnFacts(*Facts)
}
