package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path"
	"strings"
	"time"

	"k8s.io/klog/v2"

	"github.com/nodeagent/nodeagent/addons"
	"github.com/nodeagent/nodeagent/cloud"
	"github.com/nodeagent/nodeagent/kube"
	"github.com/nodeagent/nodeagent/kubelet"
	"github.com/nodeagent/nodeagent/pki"
)

// addonVars are the cluster values of the built-in add-ons: the CoreDNS Service
// takes spec.networking.clusterDNS, the very value the kubelet phase gives
// kubelet as clusterDNS.
func addonVars(n *Node) addons.Vars {
	spec := n.Config.Spec
	return addons.Vars{ClusterDNS: spec.Networking.ClusterDNS, ClusterDomain: kubelet.ClusterDomain, Registry: spec.Images.Registry}
}

// addonSet is what a master applies: the release's built-in add-ons not
// disabled in spec.addons.disable, then the users' from the state store's
// addons/ (one manifest per add-on, <name>.yaml, .yml or .json). A user add-on
// that cannot be read is left out of this round with an error; the others go on.
func addonSet(n *Node) func(ctx context.Context) ([]addons.Addon, error) {
	return func(ctx context.Context) ([]addons.Addon, error) {
		set, err := addons.Builtin(addonVars(n), n.Config.Spec.Addons.Disable)
		if err != nil {
			return nil, err
		}
		if n.Store == nil {
			return set, nil
		}
		keys, err := n.Store.List(ctx, cloud.AddonsDir)
		if err != nil {
			return set, fmt.Errorf("users' add-ons: %w", err)
		}
		var errs []error
		for _, key := range keys {
			base := path.Base(key)
			ext := path.Ext(base)
			if ext != ".yaml" && ext != ".yml" && ext != ".json" {
				continue
			}
			name := strings.TrimSuffix(base, ext)
			if isBuiltin(name) {
				errs = append(errs, fmt.Errorf("state store %s: %q is a built-in add-on's name; disable the built-in one in spec.addons.disable and name yours differently", key, name))
				continue
			}
			b, err := n.Store.Get(ctx, key)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			a, err := addons.Parse(name, "", "state store "+key, b)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			set = append(set, a)
		}
		return set, errors.Join(errs...)
	}
}

func isBuiltin(name string) bool {
	for _, b := range addons.BuiltinNames() {
		if b == name {
			return true
		}
	}
	return false
}

// startAddons runs the add-on applier on a master: it campaigns for the
// kube-system Lease with the other masters' daemons, and the one holding it
// applies the add-ons. It waits for the add-ons kubeconfig the pki phase
// writes. It returns at once; the applier ends with ctx.
func startAddons(ctx context.Context, o Options, n *Node, log *slog.Logger) (wait func()) {
	log = log.With("component", "addons")
	// client-go's leader election logs through klog: into the daemon's log instead of klog's own format.
	klog.SetSlogLogger(log)
	done := make(chan struct{})
	go func() {
		defer close(done)
		conf := pki.DefaultPaths().AddonsConf
		t := time.NewTicker(10 * time.Second)
		defer t.Stop()
		for {
			rc, err := kube.RESTConfig(o.Root, conf)
			if err == nil {
				if err := addons.Run(ctx, addons.RunOptions{Config: rc, Node: n.Name, Set: addonSet(n), Log: log}); err != nil {
					log.Error("add-on applier stopped", "err", err)
				}
				return
			}
			log.Debug("add-on applier waits for its kubeconfig", "err", err)
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	return func() { <-done }
}
