package etcd

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/nodeagent/nodeagent/bootstrap"
)

// How a member starts, etcd's --initial-cluster-state.
const (
	StateNew      = "new"
	StateExisting = "existing"
)

// Self is the member this node runs in one etcd cluster.
type Self struct {
	Cluster string // etcd cluster: main, events
	Name    string // member name, from the volume tag
	// Members are every member the volume tags name, this one included.
	Members []string
	// PeerURLOf is a member's peer URL: https://etcd-<name>.internal.<cluster>:<peerPort>
	// through the gossip names in the agent.
	PeerURLOf func(member string) string
	// ClusterID, when set, is the only cluster this member may join (after a
	// restore: the restored cluster, not a stale member of the lost one).
	ClusterID uint64
}

// PeerURL is this member's own peer URL.
func (s Self) PeerURL() string { return s.PeerURLOf(s.Name) }

// JoinPlan is how a member whose data directory is blank must start.
type JoinPlan struct {
	// State is StateNew (the cluster is being created; every member starts
	// from the tags' member list) or StateExisting (the member was added to a
	// live cluster and must catch up from it).
	State string `json:"state"`
	// InitialCluster is etcd's --initial-cluster: name=peerURL for every member.
	InitialCluster []string `json:"initialCluster"`
	// Removed names the members removed to make room (the dead predecessor of
	// this member, which lost its data with its volume).
	Removed []string `json:"removed,omitempty"`
	// Learner: the member was added as a learner and must be promoted once it
	// has caught up.
	Learner bool `json:"learner,omitempty"`
}

// PlanJoin decides how a member with a blank data directory starts, asking the
// live peers through cli (connected to the other members' client URLs).
//
//   - If a peer answers, the cluster exists: a started member under this name (or
//     this peer URL) is this member's former self, whose data went with its
//     volume; it is removed first, so the member count never grows past the
//     tags' list, then this member is added as a learner (raft's safety needs
//     it to join with an empty log as a new member, never under its old ID) and
//     starts "existing" with the cluster's current member list. An earlier,
//     unfinished attempt (added, never started) is reused.
//   - If no peer answers and the cluster is known to exist (existed: it has
//     backups in the state store), nothing is started: that is a lost quorum,
//     for `nodeagent etcd restore`, not for a new empty cluster.
//   - Otherwise the cluster is new: every member starts "new" from the same tag
//     list and token, which etcd turns into one cluster ID, so masters booting
//     together form one cluster and cannot form two (each needs a majority of
//     the same list).
func PlanJoin(ctx context.Context, cli *clientv3.Client, self Self, existed bool) (JoinPlan, error) {
	lctx, cancel := context.WithTimeout(ctx, probeTimeout)
	ml, err := cli.MemberList(lctx)
	cancel()
	if err != nil {
		if existed {
			return JoinPlan{}, bootstrap.Waiting("etcd %s: the cluster has backups but no peer answers (%v); "+
				"a blank member does not start a new cluster: wait for the peers, or restore a backup (nodeagent etcd restore)", self.Cluster, err)
		}
		return JoinPlan{State: StateNew, InitialCluster: tagCluster(self)}, nil
	}
	if self.ClusterID != 0 && ml.Header != nil && ml.Header.ClusterId != self.ClusterID {
		return JoinPlan{}, bootstrap.Waiting("etcd %s: a peer answers for cluster %x, not the restored cluster %x; waiting for it to stop",
			self.Cluster, ml.Header.ClusterId, self.ClusterID)
	}
	var mine *etcdserverpb.Member
	var others int
	for _, m := range ml.Members {
		if m.Name == self.Name || slices.Contains(m.PeerURLs, self.PeerURL()) {
			if mine != nil {
				return JoinPlan{}, fmt.Errorf("etcd %s: two members answer to %s (%s); a human has to look", self.Cluster, self.Name, self.PeerURL())
			}
			mine = m
			continue
		}
		others++
	}
	plan := JoinPlan{State: StateExisting, Learner: true}
	switch {
	case mine != nil && len(mine.ClientURLs) == 0 && slices.Contains(mine.PeerURLs, self.PeerURL()):
		// A member that never started (it publishes its client URLs when it
		// does): listed in the static first boot of the cluster and started
		// late, or added by an earlier run that did not get to start it. It
		// has no data anywhere to forget: it starts as it is.
		plan.Learner = mine.IsLearner
	default:
		if mine != nil {
			if _, err := cli.MemberRemove(ctx, mine.ID); err != nil {
				return JoinPlan{}, fmt.Errorf("etcd %s: remove the lost member %s (%x): %w", self.Cluster, mine.Name, mine.ID, err)
			}
			plan.Removed = append(plan.Removed, fmt.Sprintf("%s=%x", mine.Name, mine.ID))
		}
		if others+1 > len(self.Members) {
			return JoinPlan{}, fmt.Errorf("etcd %s: the cluster already has %d other members and the tags list %d in all; "+
				"adding %s would grow it past its size", self.Cluster, others, len(self.Members), self.Name)
		}
		// Right after the removal etcd may refuse the add until it has heard
		// from a majority of the new voter set (its "unhealthy cluster"
		// check); it is asked again until ctx ends.
		var addErr error
		err := wait.PollUntilContextCancel(ctx, 500*time.Millisecond, true, func(ctx context.Context) (bool, error) {
			_, addErr = cli.MemberAddAsLearner(ctx, []string{self.PeerURL()})
			if errors.Is(addErr, rpctypes.ErrUnhealthy) {
				return false, nil
			}
			return true, addErr
		})
		if err != nil {
			if addErr != nil {
				err = addErr
			}
			return JoinPlan{}, fmt.Errorf("etcd %s: add %s (%s) as a learner: %w", self.Cluster, self.Name, self.PeerURL(), err)
		}
	}
	// The list after the change, as etcd's own "member add" prints it: names of
	// members that never started are empty.
	ml, err = cli.MemberList(ctx)
	if err != nil {
		return JoinPlan{}, fmt.Errorf("etcd %s: member list after adding %s: %w", self.Cluster, self.Name, err)
	}
	for _, m := range ml.Members {
		name := m.Name
		if slices.Contains(m.PeerURLs, self.PeerURL()) {
			name = self.Name
		}
		for _, u := range m.PeerURLs {
			plan.InitialCluster = append(plan.InitialCluster, name+"="+u)
		}
	}
	slices.Sort(plan.InitialCluster)
	return plan, nil
}

func tagCluster(self Self) []string {
	out := make([]string, 0, len(self.Members))
	for _, m := range self.Members {
		out = append(out, m+"="+self.PeerURLOf(m))
	}
	return out
}

// ErrNotInSync is returned by Promote while the learner is catching up.
var ErrNotInSync = errors.New("learner not caught up yet")

// Promote makes the learner with this peer URL a voting member once it has
// caught up with the leader; before that it returns ErrNotInSync. A member that
// is already a voter is left alone. cli must reach voting members (a learner
// does not serve membership changes).
func Promote(ctx context.Context, cli *clientv3.Client, peerURL string) (promoted bool, err error) {
	ml, err := cli.MemberList(ctx)
	if err != nil {
		return false, fmt.Errorf("member list: %w", err)
	}
	i := slices.IndexFunc(ml.Members, func(m *etcdserverpb.Member) bool { return slices.Contains(m.PeerURLs, peerURL) })
	if i < 0 {
		return false, fmt.Errorf("no member has peer URL %s", peerURL)
	}
	m := ml.Members[i]
	if !m.IsLearner {
		return false, nil
	}
	if _, err := cli.MemberPromote(ctx, m.ID); err != nil {
		if strings.Contains(err.Error(), "in sync") {
			return false, fmt.Errorf("%w: %v", ErrNotInSync, err)
		}
		return false, fmt.Errorf("promote %s (%x): %w", m.Name, m.ID, err)
	}
	return true, nil
}

// NewClient connects to endpoints over mutual TLS (the nodeagent's etcd client
// certificate), for callers outside this package.
func NewClient(endpoints []string, tlsCfg *tls.Config) (*clientv3.Client, error) {
	return newClient(endpoints, tlsCfg)
}
