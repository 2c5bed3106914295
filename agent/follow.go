package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/nodeagent/nodeagent/bootstrap"
	"github.com/nodeagent/nodeagent/cloud"
	"github.com/nodeagent/nodeagent/config"
)

// loadApplied reads the effective config the node last took (config.yaml under
// the state dir); nil when it never took one.
func loadApplied(o Options) (*config.NodeConfig, []byte, error) {
	raw, err := os.ReadFile(filepath.Join(o.stateDir(), effectiveConfigName))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("read the applied config: %w", err)
	}
	cfg, err := config.Parse(raw)
	if err != nil {
		return nil, nil, fmt.Errorf("the applied config %s: %w", filepath.Join(o.stateDir(), effectiveConfigName), err)
	}
	return cfg, raw, nil
}

// ReplacementError is a config the node cannot take in place: it keeps running
// as it was, and a rolling update must replace it.
type ReplacementError struct{ Changes []config.FieldChange }

func (e *ReplacementError) Error() string {
	return "needs-replacement: the new config changes what only a new instance can change (" + replacementReason(e.Changes) + "); the node keeps running as it was"
}

// replacementReason is the one-line why, as the EC2 tag and metrics carry it.
func replacementReason(cs []config.FieldChange) string {
	parts := make([]string, len(cs))
	for i, c := range cs {
		parts[i] = fmt.Sprintf("%s %s → %s", c.Path, orNone(c.Old), orNone(c.New))
	}
	return strings.Join(parts, "; ")
}

func orNone(s string) string {
	if s == "" {
		return "(unset)"
	}
	return s
}

// admit classifies next against the config the node runs and refuses it when a
// change needs a new instance.
func admit(applied *config.NodeConfig, next *Node) error {
	if rep := config.Replacements(config.Classify(applied, next.Config)); len(rep) > 0 {
		return &ReplacementError{Changes: rep}
	}
	return nil
}

// recordApplied makes n's config the node's: its raw inputs and effective
// config are kept, status says so, and an earlier rejection is cleared (with
// the instance's needs-replacement tag).
func recordApplied(ctx context.Context, o Options, n *Node) error {
	if err := saveInputs(o, n.Inputs); err != nil {
		return err
	}
	if err := saveEffectiveConfig(o, n.Config); err != nil {
		return err
	}
	effective, err := redactedJSON(n.Config)
	if err != nil {
		return err
	}
	var hadTag bool
	if _, err := o.store().Update(func(st *bootstrap.State) {
		prev := st.Config
		hadTag = prev != nil && prev.Rejected != nil && len(prev.Rejected.NeedsReplacement) > 0
		cs := &bootstrap.ConfigStatus{Hash: n.ConfigHash, Sources: n.Inputs.sources(n.Store), Effective: effective, AppliedAt: time.Now().UTC()}
		if prev != nil && prev.Hash == n.ConfigHash {
			cs.AppliedAt = prev.AppliedAt
		}
		st.Config = cs
		st.ConfigHash = n.ConfigHash
	}); err != nil {
		return fmt.Errorf("record the applied config: %w", err)
	}
	if hadTag {
		if err := tagNeedsReplacement(ctx, n, ""); err != nil {
			o.log().Warn("could not remove the needs-replacement tag", "err", err)
		}
	}
	return nil
}

// recordRejected says in status (and, for a change that needs a new
// instance, the EC2 tag) that a newer config was not taken.
func recordRejected(ctx context.Context, o Options, n *Node, hash string, cause error) error {
	rej := &bootstrap.RejectedConfig{Hash: hash, Since: time.Now().UTC()}
	var rerr *ReplacementError
	if errors.As(cause, &rerr) {
		for _, c := range rerr.Changes {
			rej.NeedsReplacement = append(rej.NeedsReplacement, c.String())
		}
	} else {
		rej.Error = cause.Error()
	}
	if _, err := o.store().Update(func(st *bootstrap.State) {
		if st.Config == nil {
			st.Config = &bootstrap.ConfigStatus{Hash: st.ConfigHash}
		}
		if old := st.Config.Rejected; old != nil && old.Hash == rej.Hash && old.Error == rej.Error {
			rej.Since = old.Since
		}
		st.Config.Rejected = rej
	}); err != nil {
		return fmt.Errorf("record the rejected config: %w", err)
	}
	if rerr != nil {
		if err := tagNeedsReplacement(ctx, n, replacementReason(rerr.Changes)); err != nil {
			return err
		}
	}
	return nil
}

// tagNeedsReplacement sets (or, with "", removes) the instance's
// nodeagent.io/needs-replacement tag.
func tagNeedsReplacement(ctx context.Context, n *Node, reason string) error {
	if n.AWS == nil || n.Identity.InstanceID == "" {
		return errors.New("needs-replacement tag: no AWS configuration or instance identity")
	}
	tctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	return cloud.SetInstanceTag(tctx, cloud.NewEC2(*n.AWS), n.Identity.InstanceID, cloud.NeedsReplacementTag, reason)
}

// redactedJSON is the config as status shows it: secrets replaced.
func redactedJSON(c *config.NodeConfig) (json.RawMessage, error) {
	cp := *c
	if cp.Spec.Kubelet.BootstrapToken != "" {
		cp.Spec.Kubelet.BootstrapToken = "(redacted)"
	}
	b, err := json.Marshal(&cp)
	if err != nil {
		return nil, fmt.Errorf("encode the effective config: %w", err)
	}
	return b, nil
}

// follower is the daemon's hold on its config: the node and phases it runs,
// re-derived from the raw inputs on every poll. A change it can take in place
// replaces them; one that needs a new instance is refused and reported.
type follower struct {
	o   Options
	log *slog.Logger
	m   *metrics

	mu sync.Mutex
	n  *Node
	ps *phaseSet
	// rejected is the hash (or error) last refused, reported once.
	rejected string
}

func (f *follower) current() (*Node, *phaseSet) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.n, f.ps
}

// poll re-reads the inputs (cluster.yaml by a conditional GET) and returns true
// when the node took a new config.
func (f *follower) poll(ctx context.Context) bool {
	cur, _ := f.current()
	saved, err := loadInputs(f.o)
	if err != nil {
		f.log.Warn("kept config inputs unreadable; reading them afresh", "err", err)
		saved = nil
	}
	in, store, err := readInputs(ctx, f.o, cur.AWS, cur.IMDS, errors.New("AWS is not configured"), saved, true)
	if err != nil {
		// Transient (IMDS, S3): the node keeps its config; the next poll retries.
		f.m.configPolls.WithLabelValues("error").Inc()
		f.log.Warn("config inputs unreadable; keeping the current config", "err", err)
		return false
	}
	next, err := cur.derive(in, store)
	if err != nil {
		f.m.configPolls.WithLabelValues("invalid").Inc()
		f.reject(ctx, cur, "invalid:"+err.Error(), "", err)
		return false
	}
	if next.ConfigHash == cur.ConfigHash {
		f.m.configPolls.WithLabelValues("unchanged").Inc()
		if f.rejected != "" || inputsMoved(saved, in) {
			// Back to what runs (user-data restored), or a new ETag for the
			// same content: keep the inputs, clear a rejection.
			if err := recordApplied(ctx, f.o, next); err != nil {
				f.log.Error("record config", "err", err)
				return false
			}
			f.rejected = ""
			f.m.setNeedsReplacement(false)
		}
		return false
	}
	if err := admit(cur.Config, next); err != nil {
		f.m.configPolls.WithLabelValues("needs-replacement").Inc()
		f.reject(ctx, cur, next.ConfigHash, next.ConfigHash, err)
		return false
	}
	ps, err := buildPhases(ctx, f.o, next)
	if err == nil {
		err = recordApplied(ctx, f.o, next)
	}
	if err != nil {
		f.m.configPolls.WithLabelValues("error").Inc()
		f.log.Error("could not take the new config; keeping the current one", "config", next.ConfigHash, "err", err)
		return false
	}
	changes := config.Classify(cur.Config, next.Config)
	paths := make([]string, len(changes))
	for i, c := range changes {
		paths[i] = c.Path
	}
	f.log.Info("config changed: applying in place", "from", cur.ConfigHash, "to", next.ConfigHash, "fields", strings.Join(paths, ","))
	f.mu.Lock()
	f.n, f.ps, f.rejected = next, ps, ""
	f.mu.Unlock()
	f.m.configPolls.WithLabelValues("changed").Inc()
	f.m.setConfig(next.ConfigHash)
	f.m.setNeedsReplacement(false)
	return true
}

func (f *follower) reject(ctx context.Context, cur *Node, key, hash string, cause error) {
	var rerr *ReplacementError
	f.m.setNeedsReplacement(errors.As(cause, &rerr))
	if f.rejected == key {
		return
	}
	f.log.Error("new config refused; the node keeps running as it was", "config", hash, "err", cause)
	if err := recordRejected(ctx, f.o, cur, hash, cause); err != nil {
		f.log.Error("record the refused config", "err", err)
		return // reported again on the next poll
	}
	f.rejected = key
}

// inputsMoved: the same effective config came from inputs of another version.
func inputsMoved(saved, in *configInputs) bool {
	return saved == nil || saved.NodeSource != in.NodeSource || saved.ClusterETag != in.ClusterETag ||
		string(saved.Node) != string(in.Node)
}
