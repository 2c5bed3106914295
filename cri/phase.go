package cri

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"

	"github.com/nodeagent/nodeagent/bootstrap"
	"github.com/nodeagent/nodeagent/config"
	"github.com/nodeagent/nodeagent/systemd"
)

// phase is the rendered unit set plus the removal of managed files the
// configuration no longer wants: a registry's hosts.toml once its mirrors are
// gone, the kubenet template once networking is cni.
type phase struct {
	*systemd.RenderedPhase
	o Options
}

var (
	_ bootstrap.Phase    = (*phase)(nil)
	_ bootstrap.Reporter = (*phase)(nil)
	_ bootstrap.Warner   = (*phase)(nil)
)

// stale lists the managed files to remove, as the configuration stands now.
func (p *phase) stale() ([]string, error) {
	pl, err := Render(p.o)
	if err != nil {
		return nil, err
	}
	return pl.Remove, nil
}

func (p *phase) Check(ctx context.Context) ([]bootstrap.Change, error) {
	changes, err := p.RenderedPhase.Check(ctx)
	if err != nil {
		return nil, err
	}
	stale, err := p.stale()
	if err != nil {
		return nil, err
	}
	for _, f := range stale {
		changes = append(changes, bootstrap.Change{Kind: "file", Target: f, Action: "delete", Detail: "no longer configured"})
	}
	return changes, nil
}

// Act removes the stale files, then converges the unit set. containerd reads
// neither kind of file at start, so the order does not matter to it.
func (p *phase) Act(ctx context.Context) error {
	stale, err := p.stale()
	if err != nil {
		return err
	}
	for _, f := range stale {
		hp := p.o.Root.Path(f)
		if err := os.Remove(hp); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("remove %s: %w", hp, err)
		}
		p.o.Log.Info("removed file", "phase", PhaseName, "path", f, "reason", "no longer configured")
		// A registry's directory goes with its last file; a non-empty one stays.
		if dir := path.Dir(f); path.Dir(dir) == RegistryHostsDir {
			_ = os.Remove(p.o.Root.Path(dir))
		}
	}
	return p.RenderedPhase.Act(ctx)
}

func (p *phase) Verify(ctx context.Context) error {
	if err := p.RenderedPhase.Verify(ctx); err != nil {
		return err
	}
	stale, err := p.stale()
	if err != nil {
		return err
	}
	if len(stale) > 0 {
		return fmt.Errorf("files no longer configured are still there: %v", stale)
	}
	if p.o.Runtime == config.RuntimeDocker {
		return p.verifyDocker(ctx)
	}
	return nil
}

// verifyDocker asks the running engine, not its files, whether it runs as
// daemon.json says: an engine that kept an old configuration, or one started
// by something else on the socket, is told apart from a converged one.
func (p *phase) verifyDocker(ctx context.Context) error {
	info, err := ReadDockerInfo(ctx, p.o.Root.Path(DockerSocket))
	if err != nil {
		return err
	}
	if err := CheckDockerInfo(info); err != nil {
		return err
	}
	p.o.Log.Debug("docker engine verified", "phase", PhaseName, "version", info.ServerVersion, "cgroupDriver", info.CgroupDriver, "cgroupVersion", info.CgroupVersion)
	return nil
}
