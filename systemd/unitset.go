package systemd

import (
	"context"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path"
	"slices"
	"strings"
	"sync"

	"github.com/nodeagent/nodeagent/bootstrap"
	"github.com/nodeagent/nodeagent/internal/fsutil"
)

// UnitDir is where the agent's units and drop-ins live.
const UnitDir = "/etc/systemd/system"

// File is one file a unit set owns: a unit, a drop-in, or a configuration file a
// unit reads.
type File struct {
	// Path is the host path, e.g. /etc/systemd/system/kubelet.service or
	// /etc/systemd/system/kubelet.service.d/10-nodeagent.conf.
	Path    string
	Content []byte
	// Mode is the file's permission bits; zero means 0644.
	Mode fs.FileMode
	// Unit is restarted when this file changes. Empty means the unit the path
	// names (a unit file or a file in its .d drop-in directory), or none.
	Unit string
}

func (f File) perm() fs.FileMode {
	if f.Mode == 0 {
		return 0o644
	}
	return f.Mode
}

// OwnerUnit is the unit restarted when the file changes.
func (f File) OwnerUnit() string {
	if f.Unit != "" {
		return f.Unit
	}
	dir, base := path.Split(path.Clean(f.Path))
	dir = path.Clean(dir)
	if dir == UnitDir && isUnitName(base) {
		return base
	}
	if path.Dir(dir) == UnitDir && strings.HasSuffix(dir, ".d") {
		if u := strings.TrimSuffix(path.Base(dir), ".d"); isUnitName(u) {
			return u
		}
	}
	return ""
}

func isUnitName(s string) bool {
	for _, t := range []string{".service", ".socket", ".target", ".timer", ".mount", ".path", ".slice"} {
		if strings.HasSuffix(s, t) && len(s) > len(t) {
			return true
		}
	}
	return false
}

// UnitSet is a group of files and the units they make up.
type UnitSet struct {
	Root  fsutil.Root
	Files []File
	// Enable are enabled for boot.
	Enable []string
	// Start are started, and restarted when one of their files changed.
	Start []string
	// Systemd connects to systemd; called by each of Check, Act and Verify so
	// that nothing is dialled until a phase runs.
	Systemd func(context.Context) (*Manager, error)
	Log     *slog.Logger
	// HealthChecked says that a later check proves the started units healthy
	// (kubelet's healthz in readiness): a Type=simple unit is then not watched
	// for Manager.Settle after it turned active, so the boot does not wait for it.
	HealthChecked bool
}

// UnitSetPhase converges a UnitSet. It is a bootstrap.Phase and a
// bootstrap.Reporter (the states of its units go into State.Units).
type UnitSetPhase struct {
	name string
	us   UnitSet

	mu     sync.Mutex
	states map[string]UnitState // last seen, for Report
}

var (
	_ bootstrap.Phase    = (*UnitSetPhase)(nil)
	_ bootstrap.Reporter = (*UnitSetPhase)(nil)
)

// NewUnitSetPhase returns the phase converging us.
func NewUnitSetPhase(name string, us UnitSet) *UnitSetPhase {
	if us.Log == nil {
		us.Log = slog.New(slog.DiscardHandler)
	}
	if us.Systemd == nil {
		us.Systemd = Connect
	}
	return &UnitSetPhase{name: name, us: us, states: map[string]UnitState{}}
}

// Name implements bootstrap.Phase.
func (p *UnitSetPhase) Name() string { return p.name }

// SetFiles replaces the files of the set; phases that render their files when
// they run (from what earlier phases installed) call it before Check and Act.
func (p *UnitSetPhase) SetFiles(files []File) { p.us.Files = files }

// Units is every unit the set enables or starts, in order, without duplicates.
func (p *UnitSetPhase) Units() []string {
	var out []string
	for _, u := range append(append([]string(nil), p.us.Enable...), p.us.Start...) {
		if !slices.Contains(out, u) {
			out = append(out, u)
		}
	}
	return out
}

// changedFiles lists the files whose content or mode differ from the host.
func (p *UnitSetPhase) changedFiles() ([]File, []bool, error) {
	var changed []File
	var exists []bool
	for _, f := range p.us.Files {
		hp := p.us.Root.Path(f.Path)
		same, err := fsutil.FileEquals(hp, f.Content, f.perm())
		if err != nil {
			return nil, nil, fmt.Errorf("compare %s: %w", hp, err)
		}
		if !same {
			changed = append(changed, f)
			exists = append(exists, fileExists(hp))
		}
	}
	return changed, exists, nil
}

// restartSet is the units whose files changed.
func restartSet(changed []File) map[string]bool {
	out := map[string]bool{}
	for _, f := range changed {
		if u := f.OwnerUnit(); u != "" {
			out[u] = true
		}
	}
	return out
}

// Check implements bootstrap.Phase. Without D-Bus (plan on a build machine, in a
// container) unit states are reported as unknown changes instead of failing.
func (p *UnitSetPhase) Check(ctx context.Context) ([]bootstrap.Change, error) {
	changed, exists, err := p.changedFiles()
	if err != nil {
		return nil, err
	}
	var out []bootstrap.Change
	for i, f := range changed {
		action := "create"
		if exists[i] {
			action = "update"
		}
		out = append(out, bootstrap.Change{Kind: "file", Target: f.Path, Action: action})
	}
	units := p.Units()
	if len(units) == 0 {
		return out, nil
	}
	m, err := p.us.Systemd(ctx)
	if err != nil {
		for _, u := range units {
			out = append(out, bootstrap.Change{Kind: "unit", Target: u, Action: p.intent(u),
				Detail: fmt.Sprintf("unit %s: state unknown (no D-Bus: %v)", u, err)})
		}
		return out, nil
	}
	defer m.Close()
	restart := restartSet(changed)
	for _, u := range units {
		st, err := m.UnitState(ctx, u)
		if err != nil {
			return nil, err
		}
		p.remember(st)
		if slices.Contains(p.us.Enable, u) && !st.Enabled() {
			out = append(out, bootstrap.Change{Kind: "unit", Target: u, Action: "enable", Detail: "unit file state " + orUnknown(st.UnitFileState)})
		}
		if !slices.Contains(p.us.Start, u) {
			continue
		}
		switch {
		case !st.Active():
			out = append(out, bootstrap.Change{Kind: "unit", Target: u, Action: "start", Detail: st.ActiveState + "/" + st.SubState})
		case restart[u]:
			out = append(out, bootstrap.Change{Kind: "unit", Target: u, Action: "restart", Detail: "its files changed"})
		}
	}
	return out, nil
}

func (p *UnitSetPhase) intent(u string) string {
	if slices.Contains(p.us.Start, u) {
		return "start"
	}
	return "enable"
}

// Act implements bootstrap.Phase: write changed files, enable, daemon-reload
// when systemd holds an outdated copy of a written unit (reloadNeeded), then
// start units (restarting those whose files changed).
func (p *UnitSetPhase) Act(ctx context.Context) error {
	changed, _, err := p.changedFiles()
	if err != nil {
		return err
	}
	for _, f := range changed {
		hp := p.us.Root.Path(f.Path)
		if err := fsutil.WriteFileAtomic(hp, f.Content, f.perm()); err != nil {
			return err
		}
		p.us.Log.Info("wrote file", "phase", p.name, "path", f.Path)
	}
	if len(p.Units()) == 0 && len(changed) == 0 {
		return nil
	}
	m, err := p.us.Systemd(ctx)
	if err != nil {
		return err
	}
	defer m.Close()
	if p.us.HealthChecked {
		m.Settle = 0
	}
	if err := m.Enable(ctx, p.us.Enable...); err != nil {
		return err
	}
	if why, err := reloadNeeded(ctx, m, changed); err != nil {
		return err
	} else if why != "" {
		p.us.Log.Info("reloading systemd", "phase", p.name, "reason", why)
		if err := m.Reload(ctx); err != nil {
			return err
		}
	}
	restart := restartSet(changed)
	for _, u := range p.us.Start {
		st, err := m.UnitState(ctx, u)
		if err != nil {
			return err
		}
		switch {
		case restart[u]:
			p.us.Log.Info("restarting unit", "phase", p.name, "unit", u, "reason", "files changed")
			err = m.Restart(ctx, u)
		case !st.Active():
			p.us.Log.Info("starting unit", "phase", p.name, "unit", u, "state", st.ActiveState)
			err = m.Start(ctx, u)
		}
		if err != nil {
			return err
		}
	}
	p.refresh(ctx, m)
	return nil
}

// Verify implements bootstrap.Phase: every Start unit is active.
func (p *UnitSetPhase) Verify(ctx context.Context) error {
	if len(p.Units()) == 0 {
		return nil
	}
	m, err := p.us.Systemd(ctx)
	if err != nil {
		return err
	}
	defer m.Close()
	// Each unit's state is read once (one D-Bus call, every property): what
	// status reports is what was judged.
	states := map[string]UnitState{}
	for _, u := range p.Units() {
		st, err := m.UnitState(ctx, u)
		if err != nil {
			return err
		}
		p.remember(st)
		states[u] = st
	}
	for _, u := range p.us.Start {
		if !states[u].Active() {
			return fmt.Errorf("unit %s is not active (%s)", u, m.why(ctx, u))
		}
	}
	for _, u := range p.us.Enable {
		if st := states[u]; !st.Enabled() {
			return fmt.Errorf("unit %s is not enabled (unit file state %s)", u, orUnknown(st.UnitFileState))
		}
	}
	return nil
}

// reloadNeeded says why systemd must re-read its unit files after changed were
// written, or "" when it need not. A daemon-reload re-reads every unit and costs
// 0.3–0.5 s on a booting node, one per unit phase. It is needed only for a unit
// systemd has loaded and whose files differ from what it loaded (its
// NeedDaemonReload). A unit new to systemd is loaded from disk when it is first
// asked for (systemd ≥ 245 retries a not-found unit once its directories
// changed), which the state query below does; a unit still not found after that
// (an older systemd) gets the reload, and so does a unit loaded from another
// file than the one written (a distribution's unit in /lib/systemd/system that
// ours in /etc overrides). Configuration files a unit reads (not unit files or
// drop-ins) never need one: the restart reads them.
func reloadNeeded(ctx context.Context, m *Manager, changed []File) (string, error) {
	var units []string
	fragment := map[string]string{} // unit -> the unit file written
	for _, f := range changed {
		u := (File{Path: f.Path}).OwnerUnit()
		if u == "" {
			continue
		}
		if !slices.Contains(units, u) {
			units = append(units, u)
		}
		if path.Clean(f.Path) == UnitDir+"/"+u {
			fragment[u] = UnitDir + "/" + u
		}
	}
	for _, u := range units {
		st, err := m.UnitState(ctx, u)
		if err != nil {
			return "", err
		}
		switch {
		case st.NeedDaemonReload:
			return u + "'s files changed since systemd loaded them", nil
		case st.LoadState != "loaded":
			return fmt.Sprintf("%s is %s after its files were written", u, orUnknown(st.LoadState)), nil
		case fragment[u] != "" && st.FragmentPath != fragment[u]:
			return fmt.Sprintf("%s is loaded from %s, not %s", u, orUnknown(st.FragmentPath), fragment[u]), nil
		}
	}
	return "", nil
}

func (p *UnitSetPhase) refresh(ctx context.Context, m *Manager) {
	for _, u := range p.Units() {
		if st, err := m.UnitState(ctx, u); err == nil {
			p.remember(st)
		}
	}
}

func (p *UnitSetPhase) remember(st UnitState) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.states[st.Name] = st
}

// Report implements bootstrap.Reporter with the unit states last seen.
func (p *UnitSetPhase) Report(st *bootstrap.State) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, u := range p.Units() {
		us, ok := p.states[u]
		if !ok {
			us = UnitState{Name: u, ActiveState: "unknown"}
		}
		rec := bootstrap.UnitStatus{Name: u, ActiveState: us.ActiveState, SubState: us.SubState, Enabled: us.UnitFileState != "" && us.Enabled()}
		i := slices.IndexFunc(st.Units, func(x bootstrap.UnitStatus) bool { return x.Name == u })
		if i >= 0 {
			st.Units[i] = rec
		} else {
			st.Units = append(st.Units, rec)
		}
	}
}

func orUnknown(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}

func fileExists(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
}
