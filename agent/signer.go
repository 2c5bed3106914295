package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"time"

	"github.com/nodeagent/nodeagent/bootstrap"
	"github.com/nodeagent/nodeagent/cloud"
	"github.com/nodeagent/nodeagent/config"
	"github.com/nodeagent/nodeagent/gossip"
	"github.com/nodeagent/nodeagent/signer"
)

// usesSigner says whether this node gets its kubelet and kube-proxy
// certificates from the masters' node signer: a worker whose cluster CA comes
// from the state store (workers never read the CA key). A config naming the CA
// files signs locally, and a bootstrap token means kubelet's TLS bootstrap.
func usesSigner(n *Node) bool {
	return !n.IsControlPlane() && n.Store != nil && n.Config.Spec.PKI.CACertFile == ""
}

// signerPhase is a worker's "pki" phase in signer mode.
func signerPhase(o Options, n *Node) (bootstrap.Phase, error) {
	if n.AWS == nil {
		return nil, errors.New("the node signer needs AWS: the worker proves its identity with its instance profile")
	}
	spec := n.Config.Spec
	// The masters' seed list is the list of signers; a worker asks no EC2.
	seeds := &gossip.StoreSeeds{Store: n.Store, Key: cloud.GossipSeedsKey, Self: n.Identity.PrivateIP}
	return signer.NewPhase(signer.PhaseOptions{
		Root: o.Root, ClusterName: spec.Cluster.Name, APIServer: spec.Cluster.APIServer,
		NodeName: n.Name, NodeIP: n.Identity.PrivateIP, CACert: n.Store.CACert,
		Client: &signer.Client{
			ClusterName: spec.Cluster.Name, Presign: signer.AWSPresigner(*n.AWS),
			Endpoints: signer.Endpoints(spec.Cluster.Name, seeds.Seeds),
		},
		Log: o.log(),
	}), nil
}

// startSigner serves the node signer on a master (DESIGN.md, "Node identity
// and the state store"), on config.SignerPort; nil when this node signs for
// nobody (a worker, or a master without a CA key source or AWS).
func startSigner(ctx context.Context, o Options, n *Node, log *slog.Logger) (stop func(), err error) {
	ca := caSourceFor(o, n)
	if !n.IsControlPlane() || ca == nil || n.AWS == nil {
		return nil, nil
	}
	validity := signer.DefaultValidity
	if v := n.Config.Spec.PKI.NodeCredentialsValidity; v != "" {
		if validity, err = time.ParseDuration(v); err != nil {
			return nil, fmt.Errorf("spec.pki.nodeCredentialsValidity: %w", err)
		}
	}
	sts, err := signer.STSEndpoint(ctx, *n.AWS)
	if err != nil {
		return nil, fmt.Errorf("node signer: %w", err)
	}
	srv, err := signer.NewServer(signer.ServerOptions{
		ClusterName: n.Config.Spec.Cluster.Name, CA: ca, EC2: cloud.NewEC2(*n.AWS), STSEndpoint: sts,
		Validity: validity, Log: log.With("component", "signer"),
	})
	if err != nil {
		return nil, err
	}
	l, err := net.Listen("tcp", net.JoinHostPort("", strconv.Itoa(config.SignerPort)))
	if err != nil {
		return nil, fmt.Errorf("node signer: %w", err)
	}
	sctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(sctx, l); err != nil {
			log.Error("node signer stopped", "err", err)
		}
	}()
	log.Info("node signer serving", "port", config.SignerPort, "name", config.SignerName(n.Config.Spec.Cluster.Name), "validity", validity)
	return func() { cancel(); <-done }, nil
}
