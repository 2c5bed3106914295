package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"slices"

	"github.com/nodeagent/nodeagent/bootstrap"
	"github.com/nodeagent/nodeagent/etcd"
	"github.com/nodeagent/nodeagent/pki"
)

// etcdPublisher reports a control-plane node's status upward into its own etcd
// (main cluster) under a lease, as DESIGN.md's readiness contract asks. It is
// created lazily because the client certificate exists only after the pki phase.
type etcdPublisher struct {
	o   Options
	n   *Node
	ps  *phaseSet
	log *slog.Logger
	pub *etcd.Publisher
}

func newEtcdPublisher(o Options, n *Node, ps *phaseSet, log *slog.Logger) *etcdPublisher {
	return &etcdPublisher{o: o, n: n, ps: ps, log: log}
}

// publish puts the current state file into etcd; failures are logged, not fatal:
// the node's readiness does not depend on being able to announce it.
func (p *etcdPublisher) publish(ctx context.Context, store bootstrap.StateStore) {
	if err := p.tryPublish(ctx, store); err != nil {
		p.log.Warn("publish status to etcd", "err", err)
	}
}

func (p *etcdPublisher) tryPublish(ctx context.Context, store bootstrap.StateStore) error {
	st, err := store.Load()
	if err != nil {
		return err
	}
	if p.pub == nil {
		members := p.ps.localEtcdMembers(p.n)
		if len(members) == 0 {
			return fmt.Errorf("no local etcd member")
		}
		// DESIGN.md puts the status into main; spec.etcd.clusters may list it anywhere.
		i := slices.IndexFunc(members, func(m etcd.Member) bool { return m.Cluster == "main" })
		if i < 0 {
			return fmt.Errorf("no local member of etcd main")
		}
		main := members[i]
		tlsCfg, err := pki.ClientTLS(p.o.Root, main.Cluster)
		if err != nil {
			return err
		}
		pub, err := etcd.NewPublisher([]string{main.ClientURL}, tlsCfg, p.n.Name, etcd.DefaultTTL, p.log)
		if err != nil {
			return err
		}
		p.pub = pub
	}
	b, err := json.Marshal(st)
	if err != nil {
		return err
	}
	return p.pub.Publish(ctx, b)
}

func (p *etcdPublisher) close() {
	if p.pub != nil {
		_ = p.pub.Close()
	}
}
