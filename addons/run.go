package addons

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"

	"github.com/nodeagent/nodeagent/election"
)

// LeaseName is the coordination.k8s.io Lease in kube-system that elects the one
// master applying add-ons at a time.
const LeaseName = "nodeagent-addons"

// Election timings: a dead applier's lease is taken over within LeaseDuration.
const (
	LeaseDuration = 15 * time.Second
	RenewDeadline = 10 * time.Second
	RetryPeriod   = 2 * time.Second
)

// RunOptions configure the elected applier.
type RunOptions struct {
	Config *rest.Config
	// Node is this master's name: its identity in the lease and the record.
	Node string
	// Set returns the add-ons to apply now: the built-in ones and the users'
	// (read again on every round, so a new one in the state store is picked up).
	Set func(ctx context.Context) ([]Addon, error)
	// Interval between rounds while leading (default 30 s).
	Interval time.Duration
	Log      *slog.Logger
	// Observe, when set, is told each round's result.
	Observe func(Result)
}

// NewApplier is an Applier talking to the API server of cfg, its REST mapping
// learnt from the server's discovery of the group-versions the add-ons name
// (cached, reset each round).
func NewApplier(cfg *rest.Config, node string, log *slog.Logger) (*Applier, error) {
	hc, err := rest.HTTPClientFor(cfg)
	if err != nil {
		return nil, fmt.Errorf("add-ons: %w", err)
	}
	dyn, err := dynamic.NewForConfigAndClient(cfg, hc)
	if err != nil {
		return nil, fmt.Errorf("add-ons: %w", err)
	}
	rc, err := rest.UnversionedRESTClientForConfigAndClient(dynamic.ConfigFor(cfg), hc)
	if err != nil {
		return nil, fmt.Errorf("add-ons: %w", err)
	}
	return &Applier{Client: dyn, Mapper: newAPIMapper(rc), Node: node, Log: log}, nil
}

// Run campaigns for the add-on lease until ctx ends; while this node leads, it
// applies the add-on set every Interval (only what changed is applied).
func Run(ctx context.Context, o RunOptions) error {
	if o.Interval <= 0 {
		o.Interval = 30 * time.Second
	}
	log := o.Log
	if log == nil {
		log = slog.Default()
	}
	ap, err := NewApplier(o.Config, o.Node, log)
	if err != nil {
		return err
	}
	round := func(ctx context.Context) {
		set, err := o.Set(ctx)
		if err != nil {
			log.Error("add-ons: the set to apply", "err", err)
			// The built-in ones may still be there: apply what could be read.
		}
		if r, ok := ap.Mapper.(resetter); ok {
			r.Reset() // a new API group (a CRD of a user's add-on) since the last round
		}
		res := ap.Apply(ctx, set)
		if err := res.Err(); err != nil {
			log.Error("add-ons not applied", "err", err)
		}
		if o.Observe != nil {
			o.Observe(res)
		}
	}
	for ctx.Err() == nil {
		err := election.Run(ctx, election.Config{
			Leases: election.LeasesOf(ap.Client, RecordNamespace), Name: LeaseName, Identity: o.Node,
			LeaseDuration: LeaseDuration, RenewDeadline: RenewDeadline, RetryPeriod: RetryPeriod, Log: log,
			OnStartedLeading: func(ctx context.Context) {
				log.Info("add-ons: leading; applying", "lease", LeaseName)
				t := time.NewTicker(o.Interval)
				defer t.Stop()
				for {
					round(ctx)
					select {
					case <-ctx.Done():
						return
					case <-t.C:
					}
				}
			},
			OnStoppedLeading: func() { log.Info("add-ons: not leading", "lease", LeaseName) },
			OnNewLeader: func(id string) {
				if id != o.Node {
					log.Info("add-ons: applied by another master", "leader", id)
				}
			},
		})
		if err != nil {
			return fmt.Errorf("add-ons: %w", err)
		}
	}
	return nil
}
