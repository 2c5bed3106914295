package systemd

import (
	"context"
	"slices"

	"github.com/nodeagent/nodeagent/bootstrap"
)

// Rendered is what a RenderedPhase's render function produces each time it runs.
type Rendered struct {
	Files         []File
	Enable, Start []string
	// Warnings are things the rendering had to leave out (a missing binary, a
	// label kubelet refuses); they are logged once and shown in status.
	Warnings []string
}

// RenderedPhase is a unit set whose files are rendered when the phase runs, not
// when it is built: their inputs (installed binaries, a CA file) are produced by
// the phases before it.
type RenderedPhase struct {
	name     string
	base     UnitSet
	render   func() (Rendered, error)
	set      *UnitSetPhase
	warnings []string
}

var (
	_ bootstrap.Phase    = (*RenderedPhase)(nil)
	_ bootstrap.Reporter = (*RenderedPhase)(nil)
	_ bootstrap.Warner   = (*RenderedPhase)(nil)
)

// NewRenderedPhase returns a phase named name that renders with render and then
// behaves as a UnitSetPhase over base (Root, Systemd, Log) and the rendered units.
func NewRenderedPhase(name string, base UnitSet, render func() (Rendered, error)) *RenderedPhase {
	return &RenderedPhase{name: name, base: base, render: render}
}

func (p *RenderedPhase) Name() string { return p.name }

func (p *RenderedPhase) load() error {
	r, err := p.render()
	if err != nil {
		return err
	}
	for _, w := range r.Warnings {
		if !slices.Contains(p.warnings, w) {
			p.warnings = append(p.warnings, w)
			if p.base.Log != nil {
				p.base.Log.Warn(w, "phase", p.name)
			}
		}
	}
	us := p.base
	us.Files, us.Enable, us.Start = r.Files, r.Enable, r.Start
	p.set = NewUnitSetPhase(p.name, us)
	return nil
}

func (p *RenderedPhase) Check(ctx context.Context) ([]bootstrap.Change, error) {
	if err := p.load(); err != nil {
		return nil, err
	}
	return p.set.Check(ctx)
}

func (p *RenderedPhase) Act(ctx context.Context) error {
	if err := p.load(); err != nil {
		return err
	}
	return p.set.Act(ctx)
}

// Verify checks what Act applied; it renders only when the phase has not run yet.
func (p *RenderedPhase) Verify(ctx context.Context) error {
	if p.set == nil {
		if err := p.load(); err != nil {
			return err
		}
	}
	return p.set.Verify(ctx)
}

// Warnings implements bootstrap.Warner.
func (p *RenderedPhase) Warnings() []string { return p.warnings }

// Report implements bootstrap.Reporter.
func (p *RenderedPhase) Report(st *bootstrap.State) {
	if p.set != nil {
		p.set.Report(st)
	}
}
