package assets

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"

	"github.com/nodeagent/nodeagent/bootstrap"
	"github.com/nodeagent/nodeagent/config"
)

// PhaseName is the name the phase is recorded under in the state file.
const PhaseName = "assets"

// Phase installs a list of assets. Check hashes each installed file; Act installs
// every asset that differs (going on past failures, reporting them all); Verify
// hashes them again.
type Phase struct {
	inst *Installer
	list []config.Asset

	mu sync.Mutex
	// status holds each asset proven installed, by name; source is kept from the
	// run that fetched it.
	status map[string]bootstrap.AssetStatus
}

var (
	_ bootstrap.Phase    = (*Phase)(nil)
	_ bootstrap.Reporter = (*Phase)(nil)
)

// Phase returns the "assets" phase for list.
func (i *Installer) Phase(list []config.Asset) *Phase {
	return &Phase{inst: i, list: list, status: map[string]bootstrap.AssetStatus{}}
}

func (p *Phase) Name() string { return PhaseName }

// Check hashes every installed asset; it touches neither cache nor network.
func (p *Phase) Check(ctx context.Context) ([]bootstrap.Change, error) {
	var out []bootstrap.Change
	for _, a := range p.list {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		sum, err := checkedSum(a)
		if err != nil {
			return nil, err
		}
		path := InstallPath(a)
		got, mode, exists, err := hashFile(p.inst.Root.Path(path))
		if err != nil {
			return nil, err
		}
		switch {
		case !exists:
			out = append(out, bootstrap.Change{Kind: "asset", Target: path, Action: "create", Detail: a.Name + " sha256:" + sum[:12]})
		case got != sum:
			out = append(out, bootstrap.Change{Kind: "asset", Target: path, Action: "update", Detail: a.Name + " sha256:" + sum[:12]})
		case mode.Perm() != 0o755:
			out = append(out, bootstrap.Change{Kind: "asset", Target: path, Action: "update", Detail: fmt.Sprintf("mode %04o -> 0755", mode.Perm())})
		}
	}
	return out, nil
}

// Act installs every asset. One asset failing does not stop the others, so a
// single run says everything that is wrong.
func (p *Phase) Act(ctx context.Context) error {
	var errs []error
	for _, a := range p.list {
		src, changed, err := p.inst.install(ctx, a)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if changed && src != "" {
			p.record(a, src)
		}
	}
	return errors.Join(errs...)
}

// Verify hashes every installed asset again.
func (p *Phase) Verify(ctx context.Context) error {
	var errs []error
	for _, a := range p.list {
		if err := ctx.Err(); err != nil {
			return err
		}
		sum, err := checkedSum(a)
		if err != nil {
			return err
		}
		path := p.inst.Root.Path(InstallPath(a))
		got, mode, exists, err := hashFile(path)
		switch {
		case err != nil:
			errs = append(errs, err)
		case !exists:
			errs = append(errs, fmt.Errorf("asset %s: %s is missing", a.Name, path))
		case got != sum:
			errs = append(errs, fmt.Errorf("asset %s: %s has sha256 %s, want %s", a.Name, path, got, sum))
		case mode.Perm() != 0o755:
			errs = append(errs, fmt.Errorf("asset %s: %s has mode %04o, want 0755", a.Name, path, mode.Perm()))
		default:
			p.record(a, "")
		}
	}
	return errors.Join(errs...)
}

// record notes a as verified; a non-empty source replaces the known one. An asset
// that was already installed when the phase started keeps an empty source: its
// bytes were verified in place and came from no fetch of this run.
func (p *Phase) record(a config.Asset, source string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	st := p.status[a.Name]
	if source != "" {
		st.Source = source
	}
	st.Name, st.Path, st.SHA256 = a.Name, InstallPath(a), strings.ToLower(a.SHA256)
	p.status[a.Name] = st
}

// Report lists the assets proven installed, in configuration order.
func (p *Phase) Report(st *bootstrap.State) {
	p.mu.Lock()
	defer p.mu.Unlock()
	st.Assets = st.Assets[:0]
	for _, a := range p.list {
		if s, ok := p.status[a.Name]; ok {
			st.Assets = append(st.Assets, s)
		}
	}
}
