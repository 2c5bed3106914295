package host

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"

	"github.com/nodeagent/nodeagent/bootstrap"
	"github.com/nodeagent/nodeagent/internal/fsutil"
)

// PhaseName is the name the phase is recorded under in the state file.
const PhaseName = "host-prep"

// PrepPhase is the "host-prep" phase.
//
// Changes and warnings. Persisted state (the sysctl.d and modules-load.d files,
// commented swap lines in /etc/fstab, the swap.target mask, /etc/hostname) is
// always within the agent's reach, so any difference there is a Change and a
// failure to write it fails the phase. Runtime state (loaded modules, /proc/sys
// values, active swap, the kernel's host name) may be out of reach: a container
// cannot load modules, its /proc/sys may be read-only, swapoff and sethostname may
// be EPERM. Act tries every runtime difference; when the kernel refuses one, the
// phase does not fail and does not pretend: it records a warning with the kernel's
// own error text, and remembers the refusal in RefusalsFile for the rest of this
// boot. Check reports a runtime difference as a Change only if it was not already
// refused this boot; one that was is reported as a warning instead. So a re-run
// after success reports no changes, the warnings stay visible in status, and the
// next boot (fresh /run, new boot id) tries again. Verify fails on a runtime
// difference that was neither applied nor refused — the phase never claims a value
// the kernel does not have.
type PrepPhase struct {
	o      Options
	log    *slog.Logger
	kernel kernel
	// setHostname is false under a directory Root: only /etc/hostname is written
	// there, never the real host's name.
	setHostname bool

	mu       sync.Mutex
	warnings []string
}

var (
	_ bootstrap.Phase  = (*PrepPhase)(nil)
	_ bootstrap.Warner = (*PrepPhase)(nil)
)

// NewPrepPhase returns the host preparation phase for o.
func NewPrepPhase(o Options) *PrepPhase {
	p := &PrepPhase{o: o, log: o.Log}
	if p.log == nil {
		p.log = slog.New(slog.DiscardHandler)
	}
	p.log = p.log.With("phase", PhaseName)
	if o.Root == "" || o.Root == "/" {
		p.kernel, p.setHostname = liveKernel{}, true
	} else {
		p.kernel = detachedKernel{root: string(o.Root)}
	}
	return p
}

func (p *PrepPhase) Name() string { return PhaseName }

// Warnings are the runtime changes the kernel refused, as of the last Check, Act
// or Verify.
func (p *PrepPhase) Warnings() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.warnings)
}

func (p *PrepPhase) setWarnings(w []string) {
	slices.Sort(w)
	p.mu.Lock()
	p.warnings = slices.Compact(w)
	p.mu.Unlock()
}

// Check reports what Act would change; it writes nothing.
func (p *PrepPhase) Check(ctx context.Context) ([]bootstrap.Change, error) {
	d, err := desiredFrom(p.o)
	if err != nil {
		return nil, err
	}
	changes, err := p.persistedChanges(d)
	if err != nil {
		return nil, err
	}
	refused, err := loadRefusals(p.o.Root)
	if err != nil {
		return nil, err
	}
	var warns []string
	for _, stage := range p.stages() {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		diffs, err := stage(d)
		if err != nil {
			return nil, err
		}
		for _, df := range diffs {
			if r, ok := refused[df.key()]; ok {
				warns = append(warns, r.Warning)
				continue
			}
			changes = append(changes, df.change)
		}
	}
	p.setWarnings(warns)
	return changes, nil
}

// Act writes the persisted files, then applies every runtime difference: modules
// first, since some sysctls (net.bridge.*) exist only once their module is loaded.
func (p *PrepPhase) Act(ctx context.Context) error {
	d, err := desiredFrom(p.o)
	if err != nil {
		return err
	}
	if err := p.persist(d); err != nil {
		return err
	}
	refused := map[string]refusal{}
	var warns []string
	for _, stage := range p.stages() {
		if err := ctx.Err(); err != nil {
			return err
		}
		diffs, err := stage(d)
		if err != nil {
			return err
		}
		for _, df := range diffs {
			if err := df.apply(ctx); err != nil {
				r := df.refusal
				r.Warning = df.warn(err)
				refused[r.key()] = r
				warns = append(warns, r.Warning)
				p.log.Warn("kernel refused a change", "kind", r.Kind, "target", r.Target, "err", err)
				continue
			}
			p.log.Info("applied", "kind", df.Kind, "target", df.Target, "value", df.Want)
		}
	}
	p.setWarnings(warns)
	return saveRefusals(p.o.Root, refused)
}

// Verify proves the persisted files are in place and every runtime value either
// holds or was refused by the kernel (and so is a warning).
func (p *PrepPhase) Verify(ctx context.Context) error {
	d, err := desiredFrom(p.o)
	if err != nil {
		return err
	}
	pending, err := p.persistedChanges(d)
	if err != nil {
		return err
	}
	var errs []error
	for _, c := range pending {
		errs = append(errs, fmt.Errorf("not converged: %s", c))
	}
	refused, err := loadRefusals(p.o.Root)
	if err != nil {
		return err
	}
	var warns []string
	for _, stage := range p.stages() {
		diffs, err := stage(d)
		if err != nil {
			return err
		}
		for _, df := range diffs {
			if r, ok := refused[df.key()]; ok {
				warns = append(warns, r.Warning)
				continue
			}
			errs = append(errs, fmt.Errorf("not converged: %s", df.change))
		}
	}
	p.setWarnings(warns)
	return errors.Join(errs...)
}

func (p *PrepPhase) persistedChanges(d desired) ([]bootstrap.Change, error) {
	var out []bootstrap.Change
	for _, f := range d.files() {
		act, err := fileAction(p.o.Root.Path(f.path), f.data)
		if err != nil {
			return nil, err
		}
		if act != "" {
			out = append(out, bootstrap.Change{Kind: "file", Target: f.path, Action: act})
		}
	}
	fstab, _, err := readFstab(p.o.Root)
	if err != nil {
		return nil, err
	}
	if _, n := disableFstabSwap(fstab); n > 0 {
		out = append(out, bootstrap.Change{Kind: "file", Target: FstabFile, Action: "update",
			Detail: fmt.Sprintf("comment out %d swap entr%s", n, plural(n, "y", "ies"))})
	}
	act, err := maskState(p.o.Root)
	if err != nil {
		return nil, err
	}
	if act != "" {
		out = append(out, bootstrap.Change{Kind: "unit", Target: "swap.target", Action: "mask",
			Detail: SwapTargetMask + " -> /dev/null"})
	}
	return out, nil
}

func (p *PrepPhase) persist(d desired) error {
	for _, f := range d.files() {
		changed, err := fsutil.WriteFileIfChanged(p.o.Root.Path(f.path), f.data, 0o644)
		if err != nil {
			return err
		}
		if changed {
			p.log.Info("wrote file", "path", f.path)
		}
	}
	fstab, mode, err := readFstab(p.o.Root)
	if err != nil {
		return err
	}
	if out, n := disableFstabSwap(fstab); n > 0 {
		if err := fsutil.WriteFileAtomic(p.o.Root.Path(FstabFile), out, mode); err != nil {
			return err
		}
		p.log.Info("commented out swap entries", "path", FstabFile, "entries", n)
	}
	act, err := maskState(p.o.Root)
	if err != nil {
		return err
	}
	if act != "" {
		if err := maskSwapTarget(p.o.Root); err != nil {
			return err
		}
		p.log.Info("masked unit", "unit", "swap.target")
	}
	return nil
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}
