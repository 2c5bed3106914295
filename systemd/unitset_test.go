package systemd

import (
	"context"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	sdbus "github.com/coreos/go-systemd/v22/dbus"
	godbus "github.com/godbus/dbus/v5"
	"github.com/nodeagent/nodeagent/bootstrap"
	"github.com/nodeagent/nodeagent/internal/fsutil"
)

var update = flag.Bool("update", false, "rewrite golden files")

// fakeBus models the part of systemd the phase sees: unit states, what a start
// job ends as, and a log of calls. The e2e test runs the same code on real systemd.
type fakeBus struct {
	mu      sync.Mutex
	units   map[string]*UnitState
	result  map[string]string // job result per unit; default "done"
	after   map[string]string // ActiveState a unit reaches after its job; default active
	svcRes  map[string]string // the Service Result property
	calls   []string
	nextPID uint32
	// disk, when set, makes the fake load units from their files as systemd does:
	// a unit is not-found until its file exists, and a loaded unit whose files
	// changed says NeedDaemonReload until a reload.
	disk fsutil.Root
	// noRetry is systemd before 245: a unit seen not-found stays so until a reload.
	noRetry bool
	loaded  map[string]string // the files' content each unit was loaded from
}

func newFakeBus() *fakeBus {
	return &fakeBus{units: map[string]*UnitState{}, result: map[string]string{}, after: map[string]string{}, svcRes: map[string]string{}}
}

func (f *fakeBus) unit(name string) *UnitState {
	u, ok := f.units[name]
	if !ok {
		u = &UnitState{Name: name, LoadState: "loaded", ActiveState: "inactive", SubState: "dead", UnitFileState: "disabled",
			FragmentPath: UnitDir + "/" + name}
		f.units[name] = u
		if f.disk != "" {
			f.load(u)
		}
	}
	if f.disk != "" {
		if u.LoadState == "not-found" && !f.noRetry {
			f.load(u)
		}
		// systemd compares the files it loaded with themselves: a unit from
		// another directory does not see ours.
		u.NeedDaemonReload = u.LoadState == "loaded" && u.FragmentPath == UnitDir+"/"+name && f.onDisk(name) != f.loaded[name]
	}
	return u
}

// onDisk is a unit's file and drop-ins as systemd would read them now.
func (f *fakeBus) onDisk(name string) string {
	b, err := os.ReadFile(f.disk.Path(UnitDir + "/" + name))
	if err != nil {
		return ""
	}
	drop, _ := filepath.Glob(f.disk.Path(UnitDir + "/" + name + ".d/*.conf"))
	for _, d := range drop {
		c, _ := os.ReadFile(d)
		b = append(b, c...)
	}
	return string(b)
}

func (f *fakeBus) load(u *UnitState) {
	if f.loaded == nil {
		f.loaded = map[string]string{}
	}
	f.loaded[u.Name] = f.onDisk(u.Name)
	u.LoadState, u.FragmentPath = "loaded", UnitDir+"/"+u.Name
	if f.loaded[u.Name] == "" {
		u.LoadState, u.FragmentPath = "not-found", ""
	}
}

func (f *fakeBus) log(s string) {
	f.calls = append(f.calls, s)
}

func (f *fakeBus) ReloadContext(context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.log("reload")
	if f.disk != "" {
		for _, u := range f.units {
			f.load(u)
		}
	}
	return nil
}

func (f *fakeBus) EnableUnitFilesContext(_ context.Context, files []string, runtime, force bool) (bool, []sdbus.EnableUnitFileChange, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if runtime || !force {
		return false, nil, errors.New("want runtime=false force=true")
	}
	f.log("enable " + strings.Join(files, " "))
	for _, u := range files {
		f.unit(u).UnitFileState = "enabled"
	}
	return false, nil, nil
}

func (f *fakeBus) job(verb, name string, ch chan<- string) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.log(verb + " " + name)
	u := f.unit(name)
	res := f.result[name]
	if res == "" {
		res = "done"
	}
	state := f.after[name]
	if state == "" {
		state = "active"
	}
	if res == "done" {
		u.ActiveState = state
		u.SubState = map[string]string{"active": "running", "failed": "failed", "activating": "auto-restart"}[state]
	}
	ch <- res
	return 1, nil
}

func (f *fakeBus) StartUnitContext(_ context.Context, name, _ string, ch chan<- string) (int, error) {
	return f.job("start", name, ch)
}

func (f *fakeBus) RestartUnitContext(_ context.Context, name, _ string, ch chan<- string) (int, error) {
	return f.job("restart", name, ch)
}

func (f *fakeBus) GetUnitPropertiesContext(_ context.Context, unit string) (map[string]any, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	u := f.unit(unit)
	return map[string]any{"Id": unit, "LoadState": u.LoadState, "ActiveState": u.ActiveState, "SubState": u.SubState,
		"UnitFileState": u.UnitFileState, "NeedDaemonReload": u.NeedDaemonReload, "FragmentPath": u.FragmentPath}, nil
}

func (f *fakeBus) GetUnitTypePropertyContext(_ context.Context, unit, typ, prop string) (*sdbus.Property, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if typ != "Service" || prop != "Result" {
		return nil, errors.New("unexpected property " + typ + "." + prop)
	}
	r := f.svcRes[unit]
	if r == "" {
		r = "success"
	}
	return &sdbus.Property{Name: prop, Value: godbus.MakeVariant(r)}, nil
}

func (f *fakeBus) Close() {}

func (f *fakeBus) takeCalls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	c := f.calls
	f.calls = nil
	return c
}

func (f *fakeBus) connect(context.Context) (*Manager, error) {
	m := newManager(f)
	m.PollInterval = time.Millisecond
	m.Settle = 0
	return m, nil
}

func TestUnitSetPhaseConverges(t *testing.T) {
	root := fsutil.Root(t.TempDir())
	bus := newFakeBus()
	files := func(conf string) []File {
		return []File{
			{Path: UnitDir + "/demo.service", Content: []byte("[Service]\nExecStart=/bin/demo\n"), Mode: 0o644},
			{Path: UnitDir + "/demo.service.d/10-nodeagent.conf", Content: []byte("[Service]\nEnvironment=A=1\n"), Mode: 0o644},
			{Path: "/etc/demo/demo.conf", Content: []byte(conf), Mode: 0o600, Unit: "demo.service"},
			{Path: UnitDir + "/other.service", Content: []byte("[Service]\nExecStart=/bin/other\n")}, // Mode 0: 0644
		}
	}
	p := NewUnitSetPhase("demo", UnitSet{
		Root: root, Files: files("v1"), Enable: []string{"demo.service", "other.service"},
		Start: []string{"demo.service", "other.service"}, Systemd: bus.connect,
	})
	ctx := context.Background()

	steps := []struct {
		name        string
		conf        string
		wantChanges []string
		wantCalls   []string
	}{
		{
			name: "first run writes everything, enables and starts",
			conf: "v1",
			wantChanges: []string{
				"create file /etc/systemd/system/demo.service",
				"create file /etc/systemd/system/demo.service.d/10-nodeagent.conf",
				"create file /etc/demo/demo.conf",
				"create file /etc/systemd/system/other.service",
				"enable unit demo.service (unit file state disabled)",
				"start unit demo.service (inactive/dead)",
				"enable unit other.service (unit file state disabled)",
				"start unit other.service (inactive/dead)",
			},
			// Files of a unit not yet running changed: a restart starts it too.
			wantCalls: []string{"enable demo.service other.service", "restart demo.service", "restart other.service"},
		},
		{
			name: "second run is a no-op",
			conf: "v1",
		},
		{
			name:        "a config change restarts only its unit",
			conf:        "v2",
			wantChanges: []string{"update file /etc/demo/demo.conf", "restart unit demo.service (its files changed)"},
			wantCalls:   []string{"enable demo.service other.service", "restart demo.service"},
		},
	}
	for _, s := range steps {
		t.Run(s.name, func(t *testing.T) {
			p.SetFiles(files(s.conf))
			changes, err := p.Check(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if got := changeStrings(changes); !slices.Equal(got, s.wantChanges) {
				t.Fatalf("Check:\n got %q\nwant %q", got, s.wantChanges)
			}
			if len(changes) == 0 {
				return
			}
			bus.takeCalls()
			if err := p.Act(ctx); err != nil {
				t.Fatal(err)
			}
			var acts []string
			for _, c := range bus.takeCalls() {
				if c == "reload" || strings.HasPrefix(c, "enable") || strings.HasPrefix(c, "start") || strings.HasPrefix(c, "restart") {
					acts = append(acts, c)
				}
			}
			if !slices.Equal(acts, s.wantCalls) {
				t.Fatalf("Act calls:\n got %q\nwant %q", acts, s.wantCalls)
			}
			if err := p.Verify(ctx); err != nil {
				t.Fatal(err)
			}
		})
	}
	b, err := os.ReadFile(root.Path("/etc/demo/demo.conf"))
	if err != nil || string(b) != "v2" {
		t.Fatalf("config on disk %q, %v", b, err)
	}
	for p, want := range map[string]os.FileMode{"/etc/demo/demo.conf": 0o600, UnitDir + "/other.service": 0o644} {
		fi, err := os.Stat(root.Path(p))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != want {
			t.Fatalf("%s: mode %v, want %v", p, fi.Mode().Perm(), want)
		}
	}

	var st bootstrap.State
	st.Units = []bootstrap.UnitStatus{{Name: "demo.service", ActiveState: "stale"}, {Name: "unrelated.service"}}
	p.Report(&st)
	want := []bootstrap.UnitStatus{
		{Name: "demo.service", ActiveState: "active", SubState: "running", Enabled: true},
		{Name: "unrelated.service"},
		{Name: "other.service", ActiveState: "active", SubState: "running", Enabled: true},
	}
	if !slices.Equal(st.Units, want) {
		t.Fatalf("Report:\n got %+v\nwant %+v", st.Units, want)
	}
}

// systemd re-reads unit files only on a daemon-reload, which costs a booting
// node 0.3–0.5 s per unit phase. A unit set reloads only when systemd holds an
// outdated copy of a unit it wrote: never for units new to systemd (it loads them
// when first asked) or for a unit's configuration files, always for a loaded
// unit whose file or drop-in changed, and when an old systemd still does not
// find a unit just written.
func TestUnitSetPhaseReloadsOnlyWhenSystemdNeedsIt(t *testing.T) {
	unit := func(execStart string) File {
		return File{Path: UnitDir + "/demo.service", Content: []byte("[Service]\nExecStart=" + execStart + "\n")}
	}
	dropIn := File{Path: UnitDir + "/demo.service.d/10-nodeagent.conf", Content: []byte("[Service]\nEnvironment=A=1\n")}
	conf := func(v string) File {
		return File{Path: "/etc/demo/demo.conf", Content: []byte(v), Unit: "demo.service"}
	}
	steps := []struct {
		name      string
		files     []File
		wantCalls []string
	}{
		{"new unit, drop-in and config: no reload", []File{unit("/bin/demo"), dropIn, conf("v1")},
			[]string{"restart demo.service"}},
		{"config file changed: no reload", []File{unit("/bin/demo"), dropIn, conf("v2")},
			[]string{"restart demo.service"}},
		{"loaded unit's file changed: reload", []File{unit("/bin/demo --new"), dropIn, conf("v2")},
			[]string{"reload", "restart demo.service"}},
		{"a new drop-in for the loaded unit: reload", []File{unit("/bin/demo --new"), dropIn, conf("v2"),
			{Path: UnitDir + "/demo.service.d/20-extra.conf", Content: []byte("[Service]\nEnvironment=B=1\n")}},
			[]string{"reload", "restart demo.service"}},
	}
	root := fsutil.Root(t.TempDir())
	bus := newFakeBus()
	bus.disk = root
	p := NewUnitSetPhase("demo", UnitSet{Root: root, Start: []string{"demo.service"}, Systemd: bus.connect})
	ctx := context.Background()
	for _, s := range steps {
		p.SetFiles(s.files)
		if _, err := p.Check(ctx); err != nil {
			t.Fatal(err)
		}
		bus.takeCalls()
		if err := p.Act(ctx); err != nil {
			t.Fatalf("%s: Act: %v", s.name, err)
		}
		var acts []string
		for _, c := range bus.takeCalls() {
			if c == "reload" || strings.HasPrefix(c, "start") || strings.HasPrefix(c, "restart") {
				acts = append(acts, c)
			}
		}
		if !slices.Equal(acts, s.wantCalls) {
			t.Errorf("%s: Act calls %q, want %q", s.name, acts, s.wantCalls)
		}
		if st := bus.unit("demo.service"); st.NeedDaemonReload || st.LoadState != "loaded" {
			t.Errorf("%s: systemd left with %+v", s.name, *st)
		}
	}

	t.Run("a distribution's unit that ours overrides is reloaded", func(t *testing.T) {
		root := fsutil.Root(t.TempDir())
		bus := newFakeBus()
		bus.disk = root
		// Loaded from the package's /lib/systemd/system/demo.service, running.
		bus.units["demo.service"] = &UnitState{Name: "demo.service", LoadState: "loaded", ActiveState: "active", SubState: "running",
			UnitFileState: "enabled", FragmentPath: "/lib/systemd/system/demo.service"}
		p := NewUnitSetPhase("demo", UnitSet{Root: root, Files: []File{unit("/bin/demo")}, Start: []string{"demo.service"}, Systemd: bus.connect})
		if err := p.Act(ctx); err != nil {
			t.Fatal(err)
		}
		if got := bus.takeCalls(); !slices.Equal(got, []string{"reload", "restart demo.service"}) {
			t.Errorf("calls %q, want a reload before the restart", got)
		}
	})

	t.Run("systemd before 245 keeps a unit not-found until a reload", func(t *testing.T) {
		root := fsutil.Root(t.TempDir())
		bus := newFakeBus()
		bus.disk, bus.noRetry = root, true
		p := NewUnitSetPhase("demo", UnitSet{Root: root, Files: []File{unit("/bin/demo")}, Start: []string{"demo.service"}, Systemd: bus.connect})
		if _, err := p.Check(ctx); err != nil { // sees demo.service not-found
			t.Fatal(err)
		}
		if err := p.Act(ctx); err != nil {
			t.Fatal(err)
		}
		if got := bus.takeCalls(); !slices.Contains(got, "reload") {
			t.Errorf("calls %q: no reload", got)
		}
		if err := p.Verify(ctx); err != nil {
			t.Fatal(err)
		}
	})
}

func TestUnitSetPhaseWithoutDBus(t *testing.T) {
	root := fsutil.Root(t.TempDir())
	noBus := func(context.Context) (*Manager, error) {
		return nil, errors.New("dial unix /run/dbus/system_bus_socket: no such file")
	}
	p := NewUnitSetPhase("agent", UnitSet{
		Root: root, Files: []File{NodeagentUnit("/usr/local/bin/nodeagent")},
		Enable: []string{"nodeagent.service"}, Systemd: noBus,
	})
	changes, err := p.Check(context.Background())
	if err != nil {
		t.Fatalf("Check without D-Bus must not fail: %v", err)
	}
	want := []string{
		"create file /etc/systemd/system/nodeagent.service",
		"enable unit nodeagent.service (unit nodeagent.service: state unknown (no D-Bus: dial unix /run/dbus/system_bus_socket: no such file))",
	}
	if got := changeStrings(changes); !slices.Equal(got, want) {
		t.Fatalf("got %q\nwant %q", got, want)
	}
	if _, err := os.Stat(root.Path(UnitDir + "/nodeagent.service")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Check wrote a file: %v", err)
	}
	if err := p.Act(context.Background()); err == nil || !strings.Contains(err.Error(), "no such file") {
		t.Fatalf("Act without D-Bus: %v, want the dial error", err)
	}
}

func TestStartFailures(t *testing.T) {
	tests := []struct {
		name    string
		result  string // job result
		after   string // state reached
		svcRes  string
		timeout time.Duration
		wantErr []string // substrings; none means success
	}{
		{name: "job done, unit active", result: "done", after: "active"},
		{name: "job failed", result: "failed", svcRes: "exit-code", wantErr: []string{"start x.service: job failed (inactive/dead, result=exit-code)"}},
		{name: "dependency failed", result: "dependency", wantErr: []string{"job dependency"}},
		{name: "unit dies after the job", result: "done", after: "failed", svcRes: "exit-code", wantErr: []string{"start x.service: unit failed (failed/failed, result=exit-code)"}},
		{name: "unit never becomes active", result: "done", after: "activating", svcRes: "success", timeout: 50 * time.Millisecond,
			wantErr: []string{"start x.service: not active: context deadline exceeded (activating/auto-restart, result=success)"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			bus := newFakeBus()
			bus.result["x.service"] = tc.result
			bus.after["x.service"] = tc.after
			bus.svcRes["x.service"] = tc.svcRes
			m, _ := bus.connect(context.Background())
			ctx := context.Background()
			if tc.timeout > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, tc.timeout)
				defer cancel()
			}
			err := m.Start(ctx, "x.service")
			if len(tc.wantErr) == 0 {
				if err != nil {
					t.Fatalf("Start: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("Start succeeded")
			}
			for _, w := range tc.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}

func TestOwnerUnit(t *testing.T) {
	tests := []struct {
		f    File
		want string
	}{
		{File{Path: "/etc/systemd/system/kubelet.service"}, "kubelet.service"},
		{File{Path: "/etc/systemd/system/kubelet.service.d/10-nodeagent.conf"}, "kubelet.service"},
		{File{Path: "/etc/systemd/system/docker.socket"}, "docker.socket"},
		{File{Path: "/etc/containerd/config.toml"}, ""},
		{File{Path: "/etc/containerd/config.toml", Unit: "containerd.service"}, "containerd.service"},
		{File{Path: "/etc/systemd/system/multi-user.target.wants/x.service"}, ""},
		{File{Path: "/etc/systemd/system/README"}, ""},
	}
	for _, tc := range tests {
		if got := tc.f.OwnerUnit(); got != tc.want {
			t.Errorf("OwnerUnit(%s, %q) = %q, want %q", tc.f.Path, tc.f.Unit, got, tc.want)
		}
	}
}

func TestExecQuote(t *testing.T) {
	tests := map[string]string{
		"/usr/local/bin/nodeagent": "/usr/local/bin/nodeagent",
		"/opt/my tools/nodeagent":  `"/opt/my tools/nodeagent"`,
		"/opt/50%/nodeagent":       "/opt/50%%/nodeagent",
		"/opt/$HOME/nodeagent":     "/opt/$$HOME/nodeagent",
	}
	for in, want := range tests {
		if got := ExecQuote(in); got != want {
			t.Errorf("ExecQuote(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestNodeagentUnitGolden(t *testing.T) {
	f := NodeagentUnit("/usr/local/bin/nodeagent")
	if f.Path != "/etc/systemd/system/nodeagent.service" || f.Mode != 0o644 {
		t.Fatalf("path %s mode %v", f.Path, f.Mode)
	}
	golden(t, "nodeagent.service", f.Content)
}

func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	p := filepath.Join("testdata", name+".golden")
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(p)
	if err != nil {
		t.Fatalf("%v (run with -update to create)", err)
	}
	if string(got) != string(want) {
		t.Errorf("%s differs from %s (run with -update if intended):\n--- got\n%s\n--- want\n%s", name, p, got, want)
	}
}

// A unit set whose health a later check proves (kubelet's healthz in readiness)
// does not watch a Type=simple unit for Manager.Settle after it turned active;
// one that is not health-checked does.
func TestHealthCheckedUnitSetDoesNotSettle(t *testing.T) {
	for _, tt := range []struct {
		healthChecked bool
		wantSettle    bool
	}{{true, false}, {false, true}} {
		bus := newFakeBus()
		connect := func(ctx context.Context) (*Manager, error) {
			m, err := bus.connect(ctx)
			if m != nil {
				m.Settle = time.Hour
			}
			return m, err
		}
		p := NewUnitSetPhase("x", UnitSet{
			Root: fsutil.Root(t.TempDir()), Files: []File{{Path: UnitDir + "/x.service", Content: []byte("[Service]\nExecStart=/bin/x\n")}},
			Start: []string{"x.service"}, Systemd: connect, HealthChecked: tt.healthChecked,
		})
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		err := p.Act(ctx)
		cancel()
		if settled := err != nil && strings.Contains(err.Error(), "deadline exceeded"); settled != tt.wantSettle || (err != nil && !settled) {
			t.Errorf("HealthChecked=%v: Act = %v, want settle wait %v", tt.healthChecked, err, tt.wantSettle)
		}
	}
}
