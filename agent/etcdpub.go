package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"slices"

	"github.com/nodeagent/nodeagent/bootstrap"
	"github.com/nodeagent/nodeagent/config"
	"github.com/nodeagent/nodeagent/etcd"
	"github.com/nodeagent/nodeagent/pki"
)

// etcdPublisher reports a control-plane node's status upward into its own etcd
// (main cluster) under a lease, as DESIGN.md's readiness contract asks. It is
// created lazily because the client certificate exists only after the pki phase.
type etcdPublisher struct {
	o   Options
	n   *Node
	log *slog.Logger
	pub *etcd.Publisher
}

func newEtcdPublisher(o Options, n *Node, log *slog.Logger) *etcdPublisher {
	return &etcdPublisher{o: o, n: n, log: log}
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
		// DESIGN.md puts the status into main; spec.etcd.clusters may list it anywhere.
		clusters := p.n.Config.Spec.Etcd.Clusters
		i := slices.IndexFunc(clusters, func(c config.EtcdCluster) bool { return c.Name == "main" })
		if i < 0 {
			return fmt.Errorf("no etcd cluster named main")
		}
		main := clusters[i]
		tlsCfg, err := pki.ClientTLS(p.o.Root, main.Name)
		if err != nil {
			return err
		}
		url := fmt.Sprintf("https://127.0.0.1:%d", main.ClientPort)
		pub, err := etcd.NewPublisher([]string{url}, tlsCfg, p.n.Name, etcd.DefaultTTL, p.log)
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
