package assets

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/nodeagent/nodeagent/bootstrap"
	"github.com/nodeagent/nodeagent/config"
)

// PhaseName is the name the phase is recorded under in the state file.
const PhaseName = "assets"

// Phase installs a list of assets. Check compares each installed file's hash with
// the configured one; Act installs every asset that differs (going on past
// failures, reporting them all); Verify compares them again. An archive asset's
// files are its selected members. A file's hash is read from the installed
// files' record while its device, inode, size, mtime and ctime are those it had
// when it was hashed, and re-read at least every Installer.FullCheckEvery.
type Phase struct {
	inst *Installer
	list []config.Asset

	mu sync.Mutex
	// status holds the files of each asset proven installed, by asset name.
	status map[string][]bootstrap.AssetStatus
	// source is where each asset's bytes came from in the run that fetched them.
	source map[string]string
}

var (
	_ bootstrap.Phase    = (*Phase)(nil)
	_ bootstrap.Reporter = (*Phase)(nil)
)

// Phase returns the "assets" phase for list.
func (i *Installer) Phase(list []config.Asset) *Phase {
	return &Phase{inst: i, list: list, status: map[string][]bootstrap.AssetStatus{}, source: map[string]string{}}
}

func (p *Phase) Name() string { return PhaseName }

// Check compares every installed asset's hash (an archive's members against the
// archive's cached index), hashing what the record cannot vouch for; it touches
// no network and writes nothing.
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
		if a.Archive != nil {
			ch, err := p.inst.archiveChanges(a, sum)
			if err != nil {
				return nil, err
			}
			out = append(out, ch...)
			continue
		}
		path := InstallPath(a)
		got, mode, exists, err := p.inst.installedSum(p.inst.Root.Path(path))
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
			p.mu.Lock()
			p.source[a.Name] = src
			p.mu.Unlock()
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
		files := []memberFile{{Dest: InstallPath(a), SHA256: sum, Mode: 0o755}}
		if a.Archive != nil {
			if files, err = p.inst.archiveFiles(a, sum); err != nil {
				errs = append(errs, err)
				continue
			}
			if files == nil {
				errs = append(errs, fmt.Errorf("asset %s: the archive sha256:%s is not indexed in the cache", a.Name, sum[:12]))
				continue
			}
		}
		var bad []error
		for _, f := range files {
			path := p.inst.Root.Path(f.Dest)
			got, mode, exists, err := p.inst.installedSum(path)
			switch {
			case err != nil:
				bad = append(bad, err)
			case !exists:
				bad = append(bad, fmt.Errorf("asset %s: %s is missing", a.Name, path))
			case got != f.SHA256:
				bad = append(bad, fmt.Errorf("asset %s: %s has sha256 %s, want %s", a.Name, path, got, f.SHA256))
			case mode.Perm() != f.Mode:
				bad = append(bad, fmt.Errorf("asset %s: %s has mode %04o, want %04o", a.Name, path, mode.Perm(), f.Mode))
			}
		}
		if len(bad) > 0 {
			errs = append(errs, bad...)
			continue
		}
		p.record(a, files)
	}
	// The hashes just proven let the next run trust unchanged files. Losing the
	// record only costs the next run a full hash, so it does not fail the phase.
	if err := p.inst.saveRecord(); err != nil {
		p.inst.logger().Warn("next run hashes every installed file again", "err", err)
	}
	return errors.Join(errs...)
}

// record notes the files of a as verified. An asset that was already installed
// when the phase started has no source: its bytes were verified in place and
// came from no fetch.
func (p *Phase) record(a config.Asset, files []memberFile) {
	p.mu.Lock()
	defer p.mu.Unlock()
	st := make([]bootstrap.AssetStatus, 0, len(files))
	for _, f := range files {
		st = append(st, bootstrap.AssetStatus{Name: a.Name, Path: f.Dest, SHA256: f.SHA256, Member: f.Member, Source: p.source[a.Name]})
	}
	p.status[a.Name] = st
}

// Report lists the files proven installed, in configuration order.
func (p *Phase) Report(st *bootstrap.State) {
	p.mu.Lock()
	defer p.mu.Unlock()
	st.Assets = st.Assets[:0]
	for _, a := range p.list {
		st.Assets = append(st.Assets, p.status[a.Name]...)
	}
}
