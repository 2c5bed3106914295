package etcd

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/nodeagent/nodeagent/bootstrap"
	"github.com/nodeagent/nodeagent/config"
	"github.com/nodeagent/nodeagent/internal/fsutil"
)

// JoinOptions configure the etcd-join phase.
type JoinOptions struct {
	Root        fsutil.Root
	ClusterName string // the Kubernetes cluster, for the gossip names
	Clusters    []config.EtcdCluster
	// TLS returns the client TLS configuration for one etcd cluster.
	TLS func(cluster string) (*tls.Config, error)
	// Existed says whether an etcd cluster is known to have existed (it has
	// backups in the state store). Nil: nothing is known (no state store).
	Existed func(ctx context.Context, cluster string) (bool, error)
	// Restored, when set, names the cluster a blank member may join after a
	// restore (the restored cluster's ID), or 0 when no restore is under way.
	Restored func(ctx context.Context, cluster string) (uint64, error)
	Log      *slog.Logger
	// Timeout bounds the asking of the peers in Act (default 1m).
	Timeout time.Duration
}

// JoinPhase is "etcd-join": for each local member whose data directory is
// blank, it decides with PlanJoin (asking the live peers) how the member
// starts, before the manifests phase writes its static pod. A member with data
// needs nothing: etcd ignores the initial-cluster flags then.
type JoinPhase struct {
	o JoinOptions

	mu      sync.Mutex
	members []bootstrap.EtcdMemberFact
	plans   map[string]JoinPlan
}

// NewJoinPhase returns the etcd-join phase.
func NewJoinPhase(o JoinOptions) *JoinPhase {
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.Timeout <= 0 {
		o.Timeout = time.Minute
	}
	return &JoinPhase{o: o, plans: map[string]JoinPlan{}}
}

var (
	_ bootstrap.Phase        = (*JoinPhase)(nil)
	_ bootstrap.FactConsumer = (*JoinPhase)(nil)
	_ bootstrap.FactProducer = (*JoinPhase)(nil)
)

func (p *JoinPhase) Name() string { return "etcd-join" }

// UseFacts takes this node's memberships, and how they joined if decided before.
func (p *JoinPhase) UseFacts(f bootstrap.Facts) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.members = f.Clone().EtcdMembers
	for _, m := range p.members {
		if m.ClusterState == "" {
			// Decided before and recorded, but the record is gone: a restore
			// reset this member, which must be decided afresh.
			delete(p.plans, m.Cluster)
		}
	}
}

// LearnFacts records the decisions made.
func (p *JoinPhase) LearnFacts(f *bootstrap.Facts) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i := range f.EtcdMembers {
		m := &f.EtcdMembers[i]
		if plan, ok := p.plans[m.Cluster]; ok && m.ClusterState == "" {
			m.ClusterState, m.InitialCluster = plan.State, slices.Clone(plan.InitialCluster)
		}
	}
}

// undecided are the members with a blank data directory and no decision yet.
func (p *JoinPhase) undecided() ([]bootstrap.EtcdMemberFact, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []bootstrap.EtcdMemberFact
	for _, m := range p.members {
		if m.ClusterState != "" || p.plans[m.Cluster].State != "" {
			continue
		}
		has, err := hasData(p.o.Root.Path(filepath.Join(m.MountPoint, "data")))
		if err != nil {
			return nil, err
		}
		if !has {
			out = append(out, m)
		}
	}
	return out, nil
}

// hasData says whether an etcd data directory holds a member.
func hasData(dir string) (bool, error) {
	_, err := os.Stat(filepath.Join(dir, "member"))
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("etcd data dir %s: %w", dir, err)
	}
	return true, nil
}

func (p *JoinPhase) Check(ctx context.Context) ([]bootstrap.Change, error) {
	ms, err := p.undecided()
	if err != nil {
		return nil, err
	}
	var changes []bootstrap.Change
	for _, m := range ms {
		changes = append(changes, bootstrap.Change{Kind: "etcd", Target: m.Cluster, Action: "join",
			Detail: "member " + m.Member + " has a blank data dir: ask the peers whether the cluster exists"})
	}
	return changes, nil
}

func (p *JoinPhase) port(cluster string) (client, peer int) {
	for _, c := range p.o.Clusters {
		if c.Name == cluster {
			return c.ClientPort, c.PeerPort
		}
	}
	return 0, 0
}

func (p *JoinPhase) Act(ctx context.Context) error {
	ms, err := p.undecided()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, p.o.Timeout)
	defer cancel()
	// The clusters are asked at once: a peer that does not answer costs a
	// probe timeout, which they need not pay one after the other.
	errs := make([]error, len(ms))
	var wg sync.WaitGroup
	for i, m := range ms {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Waiting (peers not reachable yet, e.g. their gossip names not
			// known yet; a restore not done yet) is asked again until the
			// phase's timeout.
			var plan JoinPlan
			err := wait.PollUntilContextCancel(ctx, 2*time.Second, true, func(ctx context.Context) (bool, error) {
				var err error
				plan, err = p.plan(ctx, m)
				if bootstrap.IsWaiting(err) {
					errs[i] = err
					bootstrap.Progress(ctx, err.Error())
					return false, nil
				}
				errs[i] = err
				return true, err
			})
			if err != nil {
				if errs[i] == nil {
					errs[i] = err
				}
				return
			}
			p.o.Log.Info("etcd member with a blank data dir", "cluster", m.Cluster, "member", m.Member, "state", plan.State,
				"initialCluster", plan.InitialCluster, "removed", plan.Removed, "learner", plan.Learner)
			p.mu.Lock()
			p.plans[m.Cluster] = plan
			p.mu.Unlock()
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

func (p *JoinPhase) plan(ctx context.Context, m bootstrap.EtcdMemberFact) (JoinPlan, error) {
	clientPort, peerPort := p.port(m.Cluster)
	if clientPort == 0 {
		return JoinPlan{}, fmt.Errorf("etcd %s: not in spec.etcd.clusters", m.Cluster)
	}
	self := Self{Cluster: m.Cluster, Name: m.Member, Members: m.Members, PeerURLOf: func(member string) string {
		return "https://" + net.JoinHostPort(config.EtcdMemberHost(m.Cluster, member, p.o.ClusterName), strconv.Itoa(peerPort))
	}}
	var peers []string
	for _, o := range m.Members {
		if o != m.Member {
			peers = append(peers, "https://"+net.JoinHostPort(config.EtcdMemberHost(m.Cluster, o, p.o.ClusterName), strconv.Itoa(clientPort)))
		}
	}
	existed := false
	if p.o.Existed != nil {
		var err error
		if existed, err = p.o.Existed(ctx, m.Cluster); err != nil {
			return JoinPlan{}, fmt.Errorf("etcd %s: does the cluster have backups: %w", m.Cluster, err)
		}
	}
	if len(peers) == 0 {
		if existed {
			return JoinPlan{}, bootstrap.Waiting("etcd %s: the one-member cluster has backups and its member's data dir is blank: restore a backup (nodeagent etcd restore)", m.Cluster)
		}
		return JoinPlan{State: StateNew, InitialCluster: tagCluster(self)}, nil
	}
	if p.o.Restored != nil {
		id, err := p.o.Restored(ctx, m.Cluster)
		if err != nil {
			return JoinPlan{}, fmt.Errorf("etcd %s: restore under way: %w", m.Cluster, err)
		}
		self.ClusterID = id
	}
	tlsCfg, err := p.o.TLS(m.Cluster)
	if err != nil {
		return JoinPlan{}, err
	}
	cli, err := newClient(peers, tlsCfg)
	if err != nil {
		return JoinPlan{}, err
	}
	defer cli.Close()
	return PlanJoin(ctx, cli, self, existed)
}

func (p *JoinPhase) Verify(ctx context.Context) error {
	ms, err := p.undecided()
	if err != nil {
		return err
	}
	if len(ms) > 0 {
		return fmt.Errorf("etcd %s: no decision how its blank member starts", ms[0].Cluster)
	}
	return nil
}
