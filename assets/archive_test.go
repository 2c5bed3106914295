package assets

import (
	"context"
	"errors"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/nodeagent/nodeagent/bootstrap"
	"github.com/nodeagent/nodeagent/config"
	"github.com/nodeagent/nodeagent/internal/fsutil"
	"github.com/nodeagent/nodeagent/internal/releasearchive"
)

// writeArchive writes files as the named archive in a temp dir and returns its bytes.
func writeArchive(t *testing.T, name string, files []releasearchive.File) []byte {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := releasearchive.Write(p, files); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Upstream's layouts: containerd's tarball keeps its binaries under bin/, the CNI
// plugins' tarball is flat with "./" names next to LICENSE and README.md.
func containerdTarball(t *testing.T, containerd, shim, ctr []byte) []byte {
	return writeArchive(t, "containerd-2.1.4-linux-amd64.tar.gz", []releasearchive.File{
		{Name: "bin/", Dir: true},
		{Name: "bin/containerd-shim-runc-v2", Body: shim},
		{Name: "bin/containerd", Body: containerd},
		{Name: "bin/ctr", Body: ctr},
	})
}

func cniTarball(t *testing.T, plugins map[string][]byte) []byte {
	files := []releasearchive.File{{Name: "./", Dir: true}}
	for _, n := range slices.Sorted(func(yield func(string) bool) {
		for n := range plugins {
			if !yield(n) {
				return
			}
		}
	}) {
		files = append(files, releasearchive.File{Name: "./" + n, Body: plugins[n]})
	}
	files = append(files,
		releasearchive.File{Name: "./LICENSE", Body: []byte("Apache License 2.0\n"), Mode: 0o644},
		releasearchive.File{Name: "./README.md", Body: []byte("# plugins\n"), Mode: 0o644})
	return writeArchive(t, "cni-plugins-linux-amd64-v1.8.0.tgz", files)
}

func containerdAsset(url, sum string) config.Asset {
	return config.Asset{Name: "containerd", URLs: []string{url}, SHA256: sum, Archive: &config.AssetArchive{Members: []config.ArchiveMember{
		{Name: "bin/containerd", Path: "/usr/local/bin/containerd"},
		{Name: "bin/containerd-shim-runc-v2", Path: "/usr/local/bin/"},
	}}}
}

func cniAsset(url, sum string) config.Asset {
	return config.Asset{Name: "cni-plugins", URLs: []string{url}, SHA256: sum, Archive: &config.AssetArchive{Members: []config.ArchiveMember{
		{Name: "*", Exclude: []string{"LICENSE", "README.md"}, Path: "/opt/cni/bin/"},
	}}}
}

func readFile(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func targets(cs []bootstrap.Change) []string {
	var out []string
	for _, c := range cs {
		out = append(out, c.Action+" "+c.Target)
	}
	return out
}

// Archives as upstream publishes them are verified by the archive's hash, and
// exactly the listed members land where the config says, with their modes; the
// plan names each member; a re-run fetches, unpacks and writes nothing.
func TestArchiveAssetsInstallTheirMembers(t *testing.T) {
	inst, _ := newInstaller(t)
	ctd, shim, ctr := randomBytes(t, 300<<10), randomBytes(t, 100<<10), randomBytes(t, 50<<10)
	ctdTar := containerdTarball(t, ctd, shim, ctr)
	plugins := map[string][]byte{"bridge": randomBytes(t, 40<<10), "host-local": randomBytes(t, 30<<10), "loopback": randomBytes(t, 20<<10)}
	cniTgz := cniTarball(t, plugins)
	crictl := randomBytes(t, 60<<10)
	crictlZip := writeArchive(t, "crictl.zip", []releasearchive.File{{Name: "crictl", Body: crictl}, {Name: "crictl-alias", Symlink: "crictl"}})
	m := newMirror(t, func(_ int, w http.ResponseWriter) {})
	bodies := map[string][]byte{"/dl/containerd.tar.gz": ctdTar, "/dl/cni.tgz": cniTgz, "/dl/crictl.zip": crictlZip}
	m.srv.Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		m.hits.Add(1)
		w.Write(bodies[r.URL.Path])
	})
	list := []config.Asset{
		containerdAsset(m.url("containerd.tar.gz"), sumOf(ctdTar)),
		cniAsset(m.url("cni.tgz"), sumOf(cniTgz)),
		{Name: "crictl", URLs: []string{m.url("crictl.zip")}, SHA256: sumOf(crictlZip), Archive: &config.AssetArchive{Members: []config.ArchiveMember{
			{Name: "crictl-alias", Path: "/usr/local/bin/crictl", Mode: "0700"},
		}}},
	}
	ctx := context.Background()

	plan, err := inst.Phase(list).Check(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"install /usr/local/bin/containerd", "install /usr/local/bin/containerd-shim-runc-v2", "install /opt/cni/bin/", "install /usr/local/bin/crictl"}
	if got := targets(plan); !slices.Equal(got, want) {
		t.Errorf("plan before anything is fetched = %q, want %q", got, want)
	}
	if !strings.Contains(plan[2].Detail, "every file matching * but LICENSE, README.md") {
		t.Errorf("plan of the CNI tarball says %q", plan[2].Detail)
	}

	p := inst.Phase(list)
	if _, err := runPhase(ctx, p); err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string][]byte{
		"/usr/local/bin/containerd": ctd, "/usr/local/bin/containerd-shim-runc-v2": shim,
		"/opt/cni/bin/bridge": plugins["bridge"], "/opt/cni/bin/host-local": plugins["host-local"], "/opt/cni/bin/loopback": plugins["loopback"],
		"/usr/local/bin/crictl": crictl,
	} {
		if got := readFile(t, inst.Root.Path(path)); !slices.Equal(got, want) {
			t.Errorf("%s does not hold its member's bytes", path)
		}
	}
	for path, mode := range map[string]fs.FileMode{"/usr/local/bin/containerd": 0o755, "/opt/cni/bin/bridge": 0o755, "/usr/local/bin/crictl": 0o700} {
		if fi, err := os.Stat(inst.Root.Path(path)); err != nil || fi.Mode().Perm() != mode {
			t.Errorf("%s: %v mode %v, want %04o", path, err, fi.Mode().Perm(), mode)
		}
	}
	for _, absent := range []string{"/usr/local/bin/ctr", "/opt/cni/bin/LICENSE", "/opt/cni/bin/README.md", "/usr/local/bin/bin", "/bin/containerd"} {
		if _, err := os.Lstat(inst.Root.Path(absent)); err == nil {
			t.Errorf("%s was unpacked though no member asks for it", absent)
		}
	}
	if l := leftovers(t, inst.Root.Path("/usr/local/bin"), inst.Root.Path("/opt/cni/bin")); len(l) > 0 {
		t.Errorf("temporary files left: %v", l)
	}
	for _, a := range list {
		if _, err := os.Stat(filepath.Join(inst.cacheDir(), a.SHA256)); err != nil {
			t.Errorf("archive %s not cached by its hash: %v", a.Name, err)
		}
	}
	var st bootstrap.State
	p.Report(&st)
	var members []string
	for _, a := range st.Assets {
		members = append(members, a.Name+":"+a.Member+"->"+a.Path)
	}
	if want := []string{
		"containerd:bin/containerd->/usr/local/bin/containerd", "containerd:bin/containerd-shim-runc-v2->/usr/local/bin/containerd-shim-runc-v2",
		"cni-plugins:bridge->/opt/cni/bin/bridge", "cni-plugins:host-local->/opt/cni/bin/host-local", "cni-plugins:loopback->/opt/cni/bin/loopback",
		"crictl:crictl-alias->/usr/local/bin/crictl",
	}; !slices.Equal(members, want) {
		t.Errorf("status assets = %q, want %q", members, want)
	}

	t.Run("a re-run touches nothing", func(t *testing.T) {
		hits := m.hits.Load()
		before, _ := os.Stat(inst.Root.Path("/opt/cni/bin/bridge"))
		again := inst.Phase(list)
		cs, err := again.Check(ctx)
		if err != nil || len(cs) != 0 {
			t.Fatalf("Check on a converged node = %v, %v", cs, err)
		}
		for _, a := range list {
			if changed, err := inst.Install(ctx, a); changed || err != nil {
				t.Errorf("Install(%s) again = %v, %v", a.Name, changed, err)
			}
		}
		if err := again.Verify(ctx); err != nil {
			t.Fatal(err)
		}
		after, _ := os.Stat(inst.Root.Path("/opt/cni/bin/bridge"))
		if !after.ModTime().Equal(before.ModTime()) || m.hits.Load() != hits {
			t.Errorf("re-run rewrote a member or fetched (%d requests)", m.hits.Load()-hits)
		}
	})

	t.Run("a changed member list is installed from the cached archive", func(t *testing.T) {
		hits := m.hits.Load()
		changed := slices.Clone(list)
		a := containerdAsset(list[0].URLs[0], list[0].SHA256)
		a.Archive.Members = append(a.Archive.Members, config.ArchiveMember{Name: "bin/ctr", Path: "/usr/local/sbin/ctr", Mode: "0750"})
		changed[0] = a
		p := inst.Phase(changed)
		cs, err := runPhase(ctx, p)
		if err != nil {
			t.Fatal(err)
		}
		if got := targets(cs); !slices.Equal(got, []string{"create /usr/local/sbin/ctr"}) || !strings.Contains(cs[0].Detail, "containerd bin/ctr sha256:") {
			t.Errorf("plan of the new member = %+v", cs)
		}
		if got := readFile(t, inst.Root.Path("/usr/local/sbin/ctr")); !slices.Equal(got, ctr) {
			t.Error("bin/ctr not installed")
		}
		if m.hits.Load() != hits {
			t.Errorf("the cached archive was downloaded again")
		}
	})

	t.Run("drift is shown per member and repaired", func(t *testing.T) {
		if err := os.WriteFile(inst.Root.Path("/opt/cni/bin/loopback"), []byte("edited"), 0o755); err != nil {
			t.Fatal(err)
		}
		cs, err := runPhase(ctx, inst.Phase(list))
		if err != nil {
			t.Fatal(err)
		}
		if got := targets(cs); !slices.Equal(got, []string{"update /opt/cni/bin/loopback"}) {
			t.Errorf("changes = %q", got)
		}
		if got := readFile(t, inst.Root.Path("/opt/cni/bin/loopback")); !slices.Equal(got, plugins["loopback"]) {
			t.Error("loopback not repaired")
		}
	})
}

// A member the archive does not have is a clear error naming what it has, and
// nothing is installed.
func TestArchiveMissingMember(t *testing.T) {
	inst, _ := newInstaller(t)
	tgz := containerdTarball(t, []byte("c"), []byte("s"), []byte("r"))
	if err := os.MkdirAll(inst.Root.Path("/srv"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(inst.Root.Path("/srv/containerd.tar.gz"), tgz, 0o644); err != nil {
		t.Fatal(err)
	}
	a := containerdAsset("file:///srv/containerd.tar.gz", sumOf(tgz))
	root := inst.Root.Path("/opt/target")
	a.Archive.Members = []config.ArchiveMember{
		{Name: "bin/containerd", Path: "/opt/target/containerd"},
		{Name: "containerd-shim-runc-v2", Path: "/opt/target/shim"},
	}
	_, err := inst.Install(context.Background(), a)
	if err == nil || !strings.Contains(err.Error(), `the archive has no member "containerd-shim-runc-v2" (it has bin/containerd, bin/containerd-shim-runc-v2, bin/ctr)`) {
		t.Fatalf("err = %v", err)
	}
	if ents, _ := os.ReadDir(root); len(ents) != 0 {
		t.Errorf("files written although a member is missing: %v", ents)
	}
	a.Archive.Members = []config.ArchiveMember{{Name: "sbin/*", Path: "/opt/target/"}}
	if _, err := inst.Install(context.Background(), a); err == nil || !strings.Contains(err.Error(), `no file of the archive matches "sbin/*"`) {
		t.Fatalf("pattern matching nothing: %v", err)
	}
}

// Archives whose members would land outside their place are refused whole:
// nothing is written, inside the target or outside it.
func TestUnsafeArchivesAreRefused(t *testing.T) {
	for _, tc := range []struct {
		name string
		evil releasearchive.File
	}{
		{"a ../ member", releasearchive.File{Name: "../../../../evil", Body: []byte("x")}},
		{"a ../ member inside a path", releasearchive.File{Name: "bin/../../evil", Body: []byte("x")}},
		{"an absolute member", releasearchive.File{Name: "/tmp/evil", Body: []byte("x")}},
		{"a symlink pointing outside", releasearchive.File{Name: "bin/evil", Symlink: "../../../../etc/passwd"}},
		{"an absolute symlink", releasearchive.File{Name: "bin/evil", Symlink: "/etc/shadow"}},
		{"a hard link outside", releasearchive.File{Name: "bin/evil", Hardlink: "../etc/passwd"}},
	} {
		for _, format := range []string{"x.tar.gz", "x.tar", "x.zip"} {
			if format == "x.zip" && tc.evil.Hardlink != "" {
				continue
			}
			t.Run(tc.name+" in "+format, func(t *testing.T) {
				top := t.TempDir()
				root := filepath.Join(top, "root")
				inst, _ := newInstaller(t)
				inst.Root = fsutil.Root(root)
				b := writeArchive(t, format, []releasearchive.File{{Name: "bin/containerd", Body: []byte("containerd")}, tc.evil})
				if err := os.MkdirAll(inst.Root.Path("/srv"), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(inst.Root.Path("/srv/"+format), b, 0o644); err != nil {
					t.Fatal(err)
				}
				a := config.Asset{Name: "containerd", URLs: []string{"file:///srv/" + format}, SHA256: sumOf(b), Archive: &config.AssetArchive{Members: []config.ArchiveMember{
					{Name: "bin/*", Path: "/usr/local/bin/"},
				}}}
				_, err := inst.Install(context.Background(), a)
				if !errors.Is(err, ErrUnsafeArchive) {
					t.Fatalf("install = %v, want an unsafe archive refused", err)
				}
				if _, err := os.Lstat(filepath.Join(root, "usr/local/bin/containerd")); err == nil {
					t.Error("a member of a refused archive was installed")
				}
				filepath.WalkDir(top, func(p string, d fs.DirEntry, err error) error {
					if err == nil && strings.Contains(d.Name(), "evil") {
						t.Errorf("written: %s", p)
					}
					return nil
				})
				for _, p := range []string{"/tmp/evil", "/evil"} {
					if _, err := os.Lstat(p); err == nil {
						t.Errorf("%s exists", p)
					}
				}
			})
		}
	}
}

// A tampered archive (the mirror's bytes do not have the configured hash) is
// refused, and the members installed from the previous archive stay as they were.
func TestTamperedArchiveKeepsInstalledMembers(t *testing.T) {
	inst, _ := newInstaller(t)
	v1 := containerdTarball(t, []byte("containerd v1"), []byte("shim v1"), []byte("ctr v1"))
	v2 := containerdTarball(t, []byte("containerd v2"), []byte("shim v2"), []byte("ctr v2"))
	tampered := slices.Clone(v2)
	tampered[len(tampered)/2] ^= 0xff
	served := v1
	m := newMirror(t, func(_ int, w http.ResponseWriter) { w.Write(served) })
	ctx := context.Background()
	if _, err := runPhase(ctx, inst.Phase([]config.Asset{containerdAsset(m.url("c.tgz"), sumOf(v1))})); err != nil {
		t.Fatal(err)
	}
	dest := inst.Root.Path("/usr/local/bin/containerd")
	before, _ := os.Stat(dest)
	served = tampered
	_, err := runPhase(ctx, inst.Phase([]config.Asset{containerdAsset(m.url("c.tgz"), sumOf(v2))}))
	var mm *MismatchError
	if !errors.As(err, &mm) {
		t.Fatalf("tampered archive: %v, want a sha256 mismatch", err)
	}
	if got := string(readFile(t, dest)); got != "containerd v1" {
		t.Errorf("installed containerd is now %q", got)
	}
	// Installs are atomic renames: a rewrite would be another file.
	if after, err := os.Stat(dest); err != nil || !os.SameFile(before, after) {
		t.Errorf("installed containerd rewritten (%v)", err)
	}
	if _, err := os.Stat(filepath.Join(inst.cacheDir(), sumOf(v2))); err == nil {
		t.Error("tampered archive cached")
	}
	if l := leftovers(t, inst.cacheDir(), filepath.Dir(dest)); len(l) > 0 {
		t.Errorf("left behind: %v", l)
	}
}
