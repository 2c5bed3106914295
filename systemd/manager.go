// Package systemd drives the host's systemd over D-Bus (never by running
// systemctl, whose output is for humans and whose exit codes hide why a unit did
// not start) and converges sets of unit files as a bootstrap phase.
package systemd

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"time"

	sdbus "github.com/coreos/go-systemd/v22/dbus"
)

// busConn is the part of go-systemd's connection the Manager uses; tests of the
// phase logic substitute a fake, the e2e test uses the real one.
type busConn interface {
	ReloadContext(ctx context.Context) error
	EnableUnitFilesContext(ctx context.Context, files []string, runtime, force bool) (bool, []sdbus.EnableUnitFileChange, error)
	StartUnitContext(ctx context.Context, name, mode string, ch chan<- string) (int, error)
	RestartUnitContext(ctx context.Context, name, mode string, ch chan<- string) (int, error)
	GetUnitPropertiesContext(ctx context.Context, unit string) (map[string]any, error)
	GetUnitTypePropertyContext(ctx context.Context, unit, unitType, propertyName string) (*sdbus.Property, error)
	Close()
}

// Manager is a connection to systemd's manager object.
type Manager struct {
	conn busConn
	// PollInterval is how often Start and Restart look at ActiveState while the
	// unit comes up.
	PollInterval time.Duration
	// Settle is how long a Type=simple (or exec) service must stay active before
	// Start believes it: such a service is "active" the moment it is forked, so a
	// binary that exits at once would otherwise pass for started. Services that
	// report readiness themselves (notify, forking, oneshot, dbus) are believed as
	// soon as they are active: systemd already waited for them.
	Settle time.Duration
}

// UnitState is what systemd says about one unit.
type UnitState struct {
	Name          string `json:"name"`
	LoadState     string `json:"loadState"`     // loaded, not-found, bad-setting, masked, ...
	ActiveState   string `json:"activeState"`   // active, activating, inactive, failed, ...
	SubState      string `json:"subState"`      // running, exited, dead, auto-restart, ...
	UnitFileState string `json:"unitFileState"` // enabled, disabled, static, ...
	// NeedDaemonReload says that the unit's files on disk changed since systemd
	// loaded them: only a daemon-reload makes it read them.
	NeedDaemonReload bool `json:"needDaemonReload,omitempty"`
	// FragmentPath is the unit file systemd loaded the unit from.
	FragmentPath string `json:"fragmentPath,omitempty"`
}

// Enabled reports whether the unit will be started at boot, or cannot be
// enabled at all (a unit without [Install] is "static" and that is its final state).
func (s UnitState) Enabled() bool {
	switch s.UnitFileState {
	case "enabled", "enabled-runtime", "static", "generated", "alias", "indirect":
		return true
	}
	return false
}

// Active reports whether the unit is running (or, for oneshots with
// RemainAfterExit, has run).
func (s UnitState) Active() bool { return s.ActiveState == "active" }

// Connect opens a private connection to the system bus. The bus address comes from
// DBUS_SYSTEM_BUS_ADDRESS when set (tests point it into a container), else the
// standard socket.
func Connect(ctx context.Context) (*Manager, error) {
	c, err := sdbus.NewSystemConnectionContext(ctx)
	if err != nil {
		return nil, fmt.Errorf("connect to systemd over D-Bus: %w", err)
	}
	return newManager(c), nil
}

func newManager(c busConn) *Manager {
	return &Manager{conn: c, PollInterval: 200 * time.Millisecond, Settle: time.Second}
}

// Close closes the D-Bus connection.
func (m *Manager) Close() {
	if m != nil && m.conn != nil {
		m.conn.Close()
	}
}

// Reload makes systemd re-read unit files (daemon-reload).
func (m *Manager) Reload(ctx context.Context) error {
	if err := m.conn.ReloadContext(ctx); err != nil {
		return fmt.Errorf("systemd daemon-reload: %w", err)
	}
	return nil
}

// Enable enables units for boot, replacing conflicting symlinks (force) since the
// agent owns these units.
func (m *Manager) Enable(ctx context.Context, units ...string) error {
	if len(units) == 0 {
		return nil
	}
	if _, _, err := m.conn.EnableUnitFilesContext(ctx, units, false, true); err != nil {
		return fmt.Errorf("enable %v: %w", units, err)
	}
	return nil
}

// Start starts a unit and returns once it is active. It fails when the start job
// does not finish "done", when the unit fails, or when ctx ends first; the error
// names the unit's state and systemd's Result (exit-code, timeout, ...).
func (m *Manager) Start(ctx context.Context, unit string) error {
	return m.runJob(ctx, "start", unit, m.conn.StartUnitContext)
}

// Restart restarts a unit (starting it when stopped) and returns once it is active.
func (m *Manager) Restart(ctx context.Context, unit string) error {
	return m.runJob(ctx, "restart", unit, m.conn.RestartUnitContext)
}

type jobFunc func(ctx context.Context, name, mode string, ch chan<- string) (int, error)

func (m *Manager) runJob(ctx context.Context, verb, unit string, job jobFunc) error {
	// Buffered: go-systemd sends once and must not block if we stop listening.
	ch := make(chan string, 1)
	if _, err := job(ctx, unit, "replace", ch); err != nil {
		return fmt.Errorf("%s %s: %w", verb, unit, err)
	}
	select {
	case result := <-ch:
		if result != "done" {
			return fmt.Errorf("%s %s: job %s (%s)", verb, unit, result, m.why(ctx, unit))
		}
	case <-ctx.Done():
		return fmt.Errorf("%s %s: waiting for the job: %w (%s)", verb, unit, ctx.Err(), m.why(context.WithoutCancel(ctx), unit))
	}
	return m.waitActive(ctx, verb, unit)
}

// waitActive polls until the unit has been active for Settle, or has failed.
func (m *Manager) waitActive(ctx context.Context, verb, unit string) error {
	settle := m.Settle
	if m.reportsReadiness(ctx, unit) {
		settle = 0
	}
	t := time.NewTicker(m.PollInterval)
	defer t.Stop()
	var activeSince time.Time
	for {
		st, err := m.UnitState(ctx, unit)
		if err != nil {
			if ctx.Err() != nil {
				return fmt.Errorf("%s %s: not active: %w (%s)", verb, unit, ctx.Err(), m.why(context.WithoutCancel(ctx), unit))
			}
			return fmt.Errorf("%s %s: %w", verb, unit, err)
		}
		switch st.ActiveState {
		case "active":
			if activeSince.IsZero() {
				activeSince = time.Now()
			}
			if time.Since(activeSince) >= settle {
				return nil
			}
		case "failed":
			return fmt.Errorf("%s %s: unit failed (%s)", verb, unit, m.why(ctx, unit))
		default:
			activeSince = time.Time{}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s %s: not active: %w (%s)", verb, unit, ctx.Err(), m.why(context.WithoutCancel(ctx), unit))
		case <-t.C:
		}
	}
}

// reportsReadiness tells whether systemd itself waits for the service to be ready
// (Type=notify, forking, oneshot, dbus). When the type cannot be read, it answers
// false, which only costs the settle time.
func (m *Manager) reportsReadiness(ctx context.Context, unit string) bool {
	if !strings.HasSuffix(unit, ".service") {
		return false
	}
	p, err := m.conn.GetUnitTypePropertyContext(ctx, unit, "Service", "Type")
	if err != nil || p == nil {
		return false
	}
	typ, ok := p.Value.Value().(string)
	if !ok {
		return false
	}
	switch typ {
	case "notify", "notify-reload", "forking", "oneshot", "dbus":
		return true
	}
	return false
}

// why describes a unit for an error: "failed/failed, result=exit-code". It says
// what it can; a unit that cannot be read leaves only what is known.
func (m *Manager) why(ctx context.Context, unit string) string {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	state := "state unknown"
	if st, err := m.UnitState(ctx, unit); err == nil {
		state = st.ActiveState + "/" + st.SubState
	}
	typ := unitType(unit)
	if typ == "" {
		return state
	}
	p, err := m.conn.GetUnitTypePropertyContext(ctx, unit, typ, "Result")
	if err != nil || p == nil {
		return state
	}
	if s, ok := p.Value.Value().(string); ok && s != "" {
		state += ", result=" + s
	}
	if strings.HasPrefix(state, "active/") {
		return state
	}
	return state + lastLogLines(ctx, unit)
}

// journalLines is how many of a failed unit's last journal lines its error
// carries: the unit's own words (a config it refused, a missing file), not just
// systemd's job result.
const journalLines = 5

// lastLogLines returns "; last log lines: a | b | c" from the unit's journal, or
// "" when journalctl cannot tell (it reads the same machine systemd runs on).
func lastLogLines(ctx context.Context, unit string) string {
	out, err := exec.CommandContext(ctx, "journalctl", "--no-pager", "--quiet", "-o", "cat",
		"-n", strconv.Itoa(journalLines), "-u", unit).Output()
	if err != nil {
		return ""
	}
	var lines []string
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if l = strings.TrimSpace(l); l != "" {
			lines = append(lines, l)
		}
	}
	if len(lines) == 0 {
		return ""
	}
	return "; last log lines: " + strings.Join(lines, " | ")
}

// unitType maps a unit name to its D-Bus interface suffix (foo.service → Service).
func unitType(unit string) string {
	for i := len(unit) - 1; i >= 0; i-- {
		if unit[i] == '.' {
			t := unit[i+1:]
			if t == "" {
				return ""
			}
			return string(t[0]-'a'+'A') + t[1:]
		}
	}
	return ""
}

// UnitState reads a unit's states. A unit systemd does not know is not an error:
// its LoadState is "not-found".
func (m *Manager) UnitState(ctx context.Context, unit string) (UnitState, error) {
	props, err := m.conn.GetUnitPropertiesContext(ctx, unit)
	if err != nil {
		return UnitState{}, fmt.Errorf("read state of %s: %w", unit, err)
	}
	get := func(k string) string {
		s, _ := props[k].(string)
		return s
	}
	st := UnitState{
		Name:          unit,
		LoadState:     get("LoadState"),
		ActiveState:   get("ActiveState"),
		SubState:      get("SubState"),
		UnitFileState: get("UnitFileState"),
	}
	st.NeedDaemonReload, _ = props["NeedDaemonReload"].(bool)
	st.FragmentPath = get("FragmentPath")
	if st.ActiveState == "" {
		return st, errors.New("read state of " + unit + ": systemd returned no ActiveState")
	}
	return st, nil
}
