//go:build e2e

package systemd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	sdbus "github.com/coreos/go-systemd/v22/dbus"

	"github.com/nodeagent/nodeagent/internal/fsutil"
	"github.com/nodeagent/nodeagent/internal/nspawn"
)

// connect dials the container's bus, retrying while dbus and systemd finish
// starting (the socket exists before the broker accepts).
func connect(t *testing.T, ctx context.Context) *Manager {
	t.Helper()
	var last error
	for ctx.Err() == nil {
		m, err := Connect(ctx)
		if err == nil {
			if _, err = m.UnitState(ctx, "basic.target"); err == nil {
				return m
			}
			m.Close()
		}
		last = err
		time.Sleep(250 * time.Millisecond)
	}
	t.Fatalf("connect to the container's systemd: %v", last)
	return nil
}

func writeUnit(t *testing.T, mc *nspawn.Machine, name, content string) {
	t.Helper()
	p := filepath.Join(mc.Dir, "etc/systemd/system", name)
	if err := fsutil.WriteFileAtomic(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func mainPID(t *testing.T, ctx context.Context, m *Manager, unit string) uint32 {
	t.Helper()
	p, err := m.conn.GetUnitTypePropertyContext(ctx, unit, "Service", "MainPID")
	if err != nil {
		t.Fatalf("MainPID of %s: %v", unit, err)
	}
	pid, _ := p.Value.Value().(uint32)
	return pid
}

func TestE2EManager(t *testing.T) {
	mc := bootMachine(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	m := connect(t, ctx)
	defer m.Close()

	writeUnit(t, mc, "na-sleep.service", `[Unit]
Description=nodeagent e2e sleeper
[Service]
Type=simple
ExecStart=/bin/sleep infinity
[Install]
WantedBy=multi-user.target
`)
	writeUnit(t, mc, "na-false.service", `[Unit]
Description=nodeagent e2e unit that exits 1 at once
[Service]
Type=simple
ExecStart=/bin/false
`)
	writeUnit(t, mc, "na-oneshot-false.service", `[Unit]
Description=nodeagent e2e oneshot that fails
[Service]
Type=oneshot
ExecStart=/bin/false
`)

	// Before the reload systemd has not seen the files.
	st, err := m.UnitState(ctx, "na-sleep.service")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("before reload: %+v (systemd loads a unit it has not seen from disk on first use)", st)
	if err := m.Reload(ctx); err != nil {
		t.Fatalf("Reload: %v", err)
	}
	st, err = m.UnitState(ctx, "na-sleep.service")
	if err != nil {
		t.Fatal(err)
	}
	if st.LoadState != "loaded" || st.UnitFileState != "disabled" || st.ActiveState != "inactive" {
		t.Fatalf("after reload: got %+v, want loaded/disabled/inactive", st)
	}

	if err := m.Enable(ctx, "na-sleep.service"); err != nil {
		t.Fatalf("Enable: %v", err)
	}
	if _, err := os.Lstat(filepath.Join(mc.Dir, "etc/systemd/system/multi-user.target.wants/na-sleep.service")); err != nil {
		t.Fatalf("Enable made no wants symlink: %v", err)
	}
	st, _ = m.UnitState(ctx, "na-sleep.service")
	if st.UnitFileState != "enabled" {
		t.Fatalf("after Enable: UnitFileState %q, want enabled", st.UnitFileState)
	}

	start := time.Now()
	if err := m.Start(ctx, "na-sleep.service"); err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Logf("Start took %v", time.Since(start).Round(time.Millisecond))
	st, _ = m.UnitState(ctx, "na-sleep.service")
	if st.ActiveState != "active" || st.SubState != "running" {
		t.Fatalf("after Start: %+v, want active/running", st)
	}
	pid1 := mainPID(t, ctx, m, "na-sleep.service")
	if pid1 == 0 {
		t.Fatal("running unit has no MainPID")
	}

	if err := m.Restart(ctx, "na-sleep.service"); err != nil {
		t.Fatalf("Restart: %v", err)
	}
	pid2 := mainPID(t, ctx, m, "na-sleep.service")
	if pid2 == 0 || pid2 == pid1 {
		t.Fatalf("Restart kept MainPID %d (before %d)", pid2, pid1)
	}

	// A simple service whose binary exits 1: the start job is "done" (the fork
	// worked), so only watching the state catches the failure.
	err = m.Start(ctx, "na-false.service")
	if err == nil {
		t.Fatal("Start of a unit running /bin/false succeeded")
	}
	for _, want := range []string{"start na-false.service: unit failed (failed/failed, result=exit-code)"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Start error %q does not mention %q", err, want)
		}
	}
	t.Logf("simple failing unit: %v", err)

	// A oneshot fails its start job itself.
	err = m.Start(ctx, "na-oneshot-false.service")
	if err == nil {
		t.Fatal("Start of a failing oneshot succeeded")
	}
	for _, want := range []string{"start na-oneshot-false.service: job failed (failed/failed, result=exit-code)"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Start error %q does not mention %q", err, want)
		}
	}
	t.Logf("oneshot failing unit: %v", err)

	// A unit that does not exist.
	err = m.Start(ctx, "na-missing.service")
	if err == nil || !strings.Contains(err.Error(), "na-missing.service") {
		t.Fatalf("Start of a missing unit: %v", err)
	}
	t.Logf("missing unit: %v", err)

	// Start is bounded by ctx: a unit stuck activating fails when ctx ends.
	writeUnit(t, mc, "na-slow.service", `[Service]
Type=notify
ExecStart=/bin/sleep infinity
TimeoutStartSec=infinity
`)
	if err := m.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	short, cancelShort := context.WithTimeout(ctx, 2*time.Second)
	err = m.Start(short, "na-slow.service")
	cancelShort()
	if err == nil || !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "activating/start") {
		t.Fatalf("Start of a never-ready notify unit: %v, want deadline exceeded", err)
	}
	t.Logf("slow unit: %v", err)
}

// TestE2EUnitSetPhase runs the phase the agent uses against real systemd: a
// first run writes, enables and starts; a second finds nothing to do; changing a
// unit's config file restarts exactly that unit.
func TestE2EUnitSetPhase(t *testing.T) {
	mc := bootMachine(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	m := connect(t, ctx)
	defer m.Close()

	conf := File{Path: "/etc/na-demo/demo.conf", Content: []byte("v1\n"), Mode: 0o644, Unit: "na-demo.service"}
	unitVersion := "unit-v1"
	files := func(c File) []File {
		return []File{
			{Path: UnitDir + "/na-demo.service", Mode: 0o644, Content: []byte(`[Service]
ExecStart=/bin/sh -c 'echo ` + unitVersion + ` > /var/lib/na-demo.version; cat /etc/na-demo/demo.conf; exec sleep infinity'
[Install]
WantedBy=multi-user.target
`)},
			{Path: UnitDir + "/na-other.service", Mode: 0o644, Content: []byte(`[Service]
ExecStart=/bin/sleep infinity
[Install]
WantedBy=multi-user.target
`)},
			c,
		}
	}
	var log bytes.Buffer
	us := UnitSet{
		Root:    fsutil.Root(mc.Dir),
		Files:   files(conf),
		Enable:  []string{"na-demo.service", "na-other.service"},
		Start:   []string{"na-demo.service", "na-other.service"},
		Systemd: Connect,
		Log:     slog.New(slog.NewTextHandler(&log, nil)),
	}
	p := NewUnitSetPhase("demo", us)
	changes, err := p.Check(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(changes) != 3+4 { // 3 files; enable and start for 2 units
		t.Fatalf("first Check: %d changes, want 7: %v", len(changes), changes)
	}
	if err := p.Act(ctx); err != nil {
		t.Fatalf("Act: %v", err)
	}
	if err := p.Verify(ctx); err != nil {
		t.Fatalf("Verify: %v", err)
	}
	if changes, err := p.Check(ctx); err != nil || len(changes) != 0 {
		t.Fatalf("Check after Act: %v %v, want converged", changes, err)
	}
	// New units need no daemon-reload: systemd loads them when first asked for.
	if strings.Contains(log.String(), "reloading systemd") {
		t.Errorf("the first run reloaded systemd for units new to it:\n%s", log.String())
	}
	demoPID, otherPID := mainPID(t, ctx, m, "na-demo.service"), mainPID(t, ctx, m, "na-other.service")

	conf.Content = []byte("v2\n")
	p.SetFiles(files(conf))
	changes, err = p.Check(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"update file /etc/na-demo/demo.conf", "restart unit na-demo.service (its files changed)"}
	if got := changeStrings(changes); strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("Check after config change: %q, want %q", got, want)
	}
	if err := p.Act(ctx); err != nil {
		t.Fatalf("Act: %v", err)
	}
	if got := mainPID(t, ctx, m, "na-demo.service"); got == demoPID {
		t.Errorf("na-demo.service was not restarted (MainPID still %d)", got)
	}
	if got := mainPID(t, ctx, m, "na-other.service"); got != otherPID {
		t.Errorf("na-other.service was restarted (MainPID %d → %d) though its files did not change", otherPID, got)
	}
	b, err := os.ReadFile(filepath.Join(mc.Dir, "etc/na-demo/demo.conf"))
	if err != nil || !bytes.Equal(b, []byte("v2\n")) {
		t.Fatalf("config on disk: %q %v", b, err)
	}
	if strings.Contains(log.String(), "reloading systemd") {
		t.Errorf("a configuration file's change reloaded systemd:\n%s", log.String())
	}

	// The unit file of a running unit changes: systemd holds the old one, so the
	// phase reloads before the restart, which runs the new command.
	unitVersion = "unit-v2"
	p.SetFiles(files(conf))
	if err := p.Act(ctx); err != nil {
		t.Fatalf("Act: %v", err)
	}
	if !strings.Contains(log.String(), "reloading systemd") {
		t.Errorf("a loaded unit's changed file did not reload systemd:\n%s", log.String())
	}
	if st, err := m.UnitState(ctx, "na-demo.service"); err != nil || st.NeedDaemonReload || !st.Active() {
		t.Errorf("na-demo.service after the change: %+v %v", st, err)
	}
	b, err = os.ReadFile(filepath.Join(mc.Dir, "var/lib/na-demo.version"))
	if err != nil || strings.TrimSpace(string(b)) != "unit-v2" {
		t.Errorf("the restarted unit ran %q (%v), want the new file's command (unit-v2)", b, err)
	}
	if err := p.Verify(ctx); err != nil {
		t.Fatalf("Verify: %v", err)
	}
}

// bootMachine boots a real systemd machine (internal/nspawn) and points
// DBUS_SYSTEM_BUS_ADDRESS at its bus (t.Setenv: not for parallel tests).
func bootMachine(t *testing.T) *nspawn.Machine {
	t.Helper()
	if err := nspawn.Available(""); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var console bytes.Buffer
	m, err := nspawn.Boot(ctx, nspawn.Options{Log: &console})
	if err != nil {
		t.Fatalf("boot: %v\n%s", err, console.String())
	}
	t.Cleanup(func() { _ = m.Close() })
	t.Setenv("DBUS_SYSTEM_BUS_ADDRESS", m.BusAddress())
	return m
}

// TestE2ESessionSharesOneConnection: the Managers of one Session use one D-Bus
// connection, which closing a Manager leaves open; the Session's Close closes
// it, and a dropped connection is replaced at the next Connect.
func TestE2ESessionSharesOneConnection(t *testing.T) {
	bootMachine(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	connect(t, ctx).Close() // the bus is up
	dials := 0
	s := &Session{dial: func(ctx context.Context) (*sdbus.Conn, error) {
		dials++
		return sdbus.NewSystemConnectionContext(ctx)
	}}
	defer s.Close()
	use := func(what string) {
		t.Helper()
		m, err := s.Connect(ctx)
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		defer m.Close()
		if st, err := m.UnitState(ctx, "basic.target"); err != nil || !st.Active() {
			t.Fatalf("%s: basic.target %+v %v", what, st, err)
		}
	}
	for i := range 3 {
		use(fmt.Sprintf("manager %d", i))
	}
	if dials != 1 {
		t.Fatalf("3 managers dialled %d connections, want 1", dials)
	}
	s.Close()
	use("after the session's Close")
	if dials != 2 {
		t.Fatalf("after Close: %d dials, want 2", dials)
	}
	s.conn.Close() // dropped under the session
	use("after the connection dropped")
	if dials != 3 {
		t.Fatalf("after a drop: %d dials, want 3", dials)
	}
}
