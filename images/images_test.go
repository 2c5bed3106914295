package images

import (
	"context"
	"errors"
	"io"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nodeagent/nodeagent/assets"
	"github.com/nodeagent/nodeagent/bootstrap"
	"github.com/nodeagent/nodeagent/config"
	"github.com/nodeagent/nodeagent/internal/containerdtest"
	"github.com/nodeagent/nodeagent/internal/fsutil"
)

// node is a host root with its asset cache, and a real containerd to import into.
// n.d.Ctr looks into containerdtest.Namespace, k8s.io: the CRI plugin's, where
// the phase imports.
type node struct {
	root fsutil.Root
	d    *containerdtest.Daemon
	inst *assets.Installer
}

func newNode(t *testing.T) *node {
	t.Helper()
	d := containerdtest.Paths(t)
	d.Start(t, d.MinimalConfig())
	root := fsutil.Root(t.TempDir())
	return &node{root: root, d: d, inst: &assets.Installer{Root: root}}
}

func (n *node) phase(archives ...config.ImageArchive) *Phase {
	return NewPhase(Options{Root: n.root, Archives: archives, Fetcher: n.inst, Address: n.d.Address})
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return c
}

func changeStrings(cs []bootstrap.Change) []string {
	var out []string
	for _, c := range cs {
		out = append(out, c.String())
	}
	return out
}

// converge runs the phase as the runner does and expects it to end converged.
func converge(t *testing.T, p *Phase) []bootstrap.Change {
	t.Helper()
	changes, err := p.Check(ctx(t))
	if err != nil {
		t.Fatalf("Check: %v", err)
	}
	if err := p.Act(ctx(t)); err != nil {
		t.Fatalf("Act: %v", err)
	}
	if err := p.Verify(ctx(t)); err != nil {
		t.Fatalf("Verify: %v", err)
	}
	if again, err := p.Check(ctx(t)); err != nil || len(again) != 0 {
		t.Fatalf("Check after Act: %q %v, want converged", changeStrings(again), err)
	}
	return changes
}

func TestArchivesAreImportedWhereKubeletFindsThem(t *testing.T) {
	n := newNode(t)
	apiserver := dockerArchive(t, "apiserver", "registry.k8s.io/kube-apiserver:v1.34.4")
	pause := gzipped(t, dockerArchive(t, "pause", "registry.k8s.io/pause:3.10"))
	p := n.phase(
		serve(t, n.root, "registry.k8s.io/kube-apiserver:v1.34.4", apiserver),
		serve(t, n.root, "registry.k8s.io/pause:3.10", pause),
	)

	changes := converge(t, p)
	want := []string{
		"import image registry.k8s.io/kube-apiserver:v1.34.4 (not in the image store; archive sha256:" + apiserver.SHA256[:12] + ")",
		"import image registry.k8s.io/pause:3.10 (not in the image store; archive sha256:" + pause.SHA256[:12] + ")",
	}
	if !slices.Equal(changeStrings(changes), want) {
		t.Errorf("plan %q\nwant %q", changeStrings(changes), want)
	}

	// The CRI plugin (kubelet's view) has both, and the layers are unpacked into
	// the snapshotter the CRI plugin uses, so the first pod start need not.
	for _, ref := range []string{"registry.k8s.io/kube-apiserver:v1.34.4", "registry.k8s.io/pause:3.10"} {
		img, found, err := n.d.ImageStatus(ctx(t), ref)
		if err != nil || !found || !slices.Contains(img.RepoTags, ref) {
			t.Errorf("CRI ImageStatus(%s) = %+v found=%v err=%v", ref, img, found, err)
		}
	}
	snaps, err := n.d.Ctr(ctx(t), "snapshots", "--snapshotter", "overlayfs", "ls")
	if err != nil {
		t.Fatal(err)
	}
	for _, layer := range []string{apiserver.LayerID, pause.LayerID} {
		if !strings.Contains(snaps, layer) {
			t.Errorf("layer %s is not unpacked:\n%s", layer, snaps)
		}
	}
	// Verified copies stay in the asset cache, by hash, for the next import.
	for _, a := range []testArchive{apiserver, pause} {
		if _, err := os.Stat(n.root.Path(assets.DefaultCacheDir + "/" + a.SHA256)); err != nil {
			t.Errorf("archive not cached: %v", err)
		}
	}
}

func TestAChangedArchiveIsImportedAgain(t *testing.T) {
	n := newNode(t)
	const ref = "registry.k8s.io/kube-proxy:v1.34.4"
	converge(t, n.phase(serve(t, n.root, ref, dockerArchive(t, "one", ref))))
	before, _, _ := n.d.ImageStatus(ctx(t), ref)

	two := dockerArchive(t, "two", ref)
	p := n.phase(serve(t, n.root, ref, two))
	changes := converge(t, p)
	if want := []string{"import image " + ref + " (archive changed; archive sha256:" + two.SHA256[:12] + ")"}; !slices.Equal(changeStrings(changes), want) {
		t.Errorf("plan %q, want %q", changeStrings(changes), want)
	}
	after, _, _ := n.d.ImageStatus(ctx(t), ref)
	if after.ID == "" || after.ID == before.ID {
		t.Errorf("image id %q after, %q before: the new archive's image is not the one served", after.ID, before.ID)
	}
}

func TestAnImageReplacedBehindOurBackIsImportedAgain(t *testing.T) {
	n := newNode(t)
	const ref = "registry.k8s.io/kube-scheduler:v1.34.4"
	ours := serve(t, n.root, ref, dockerArchive(t, "ours", ref))
	converge(t, n.phase(ours))

	// Someone imports another image under the same name.
	other := dockerArchive(t, "theirs", ref)
	file := n.root.Path("/tmp/theirs.tar")
	if err := os.MkdirAll(n.root.Path("/tmp"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(file, other.Bytes, 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := n.d.Ctr(ctx(t), "images", "import", file); err != nil {
		t.Fatalf("ctr import: %v\n%s", err, out)
	}
	changes := converge(t, n.phase(ours))
	if len(changes) != 1 || !strings.Contains(changes[0].Detail, "the store has sha256:") {
		t.Errorf("plan %q, want one import saying the digest differs", changeStrings(changes))
	}

	// And removed: imported again too.
	if out, err := n.d.Ctr(ctx(t), "images", "rm", ref); err != nil {
		t.Fatalf("ctr rm: %v\n%s", err, out)
	}
	changes = converge(t, n.phase(ours))
	if len(changes) != 1 || !strings.Contains(changes[0].Detail, "not in the image store") {
		t.Errorf("plan %q, want one import of the missing image", changeStrings(changes))
	}
}

func TestAnArchiveWithoutTheConfiguredNameFails(t *testing.T) {
	n := newNode(t)
	good := serve(t, n.root, "registry.k8s.io/etcd:3.5.16-0", dockerArchive(t, "etcd", "registry.k8s.io/etcd:3.5.16-0"))
	wrong := serve(t, n.root, "registry.k8s.io/kube-apiserver:v1.34.4", dockerArchive(t, "x", "registry.k8s.io/kube-apiserver:v1.34.3"))
	p := n.phase(wrong, good)
	err := p.Act(ctx(t))
	if err == nil || !strings.Contains(err.Error(), "the store has no registry.k8s.io/kube-apiserver:v1.34.4") || !strings.Contains(err.Error(), "RepoTags") {
		t.Fatalf("Act: %v, want an error naming the missing reference and where archives carry names", err)
	}
	// The good archive was imported all the same.
	if _, found, _ := n.d.ImageStatus(ctx(t), "registry.k8s.io/etcd:3.5.16-0"); !found {
		t.Error("one bad archive stopped the others")
	}
	if err := p.Verify(ctx(t)); err == nil || !strings.Contains(err.Error(), "kube-apiserver:v1.34.4: not in the image store") {
		t.Errorf("Verify: %v", err)
	}
}

func TestAnArchiveThatIsNotWhatItsHashSaysIsNotImported(t *testing.T) {
	n := newNode(t)
	const ref = "registry.k8s.io/kube-controller-manager:v1.34.4"
	a := serve(t, n.root, ref, dockerArchive(t, "real", ref))
	a.SHA256 = strings.Repeat("0", 64)
	err := n.phase(a).Act(ctx(t))
	var mismatch *assets.MismatchError
	if !errors.As(err, &mismatch) {
		t.Fatalf("Act: %v, want the installer's sha256 mismatch", err)
	}
	if _, found, _ := n.d.ImageStatus(ctx(t), ref); found {
		t.Error("an unverified archive was imported")
	}
}

func TestCheckBeforeContainerdRunsPlansEveryImport(t *testing.T) {
	root := fsutil.Root(t.TempDir())
	a := config.ImageArchive{Name: "registry.k8s.io/pause:3.10", URLs: []string{"https://m.example/p.tar"}, SHA256: strings.Repeat("ab", 32)}
	p := NewPhase(Options{Root: root, Archives: []config.ImageArchive{a}, Exec: failExec{}})
	changes, err := p.Check(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"import image registry.k8s.io/pause:3.10 (containerd is not running yet (no " + root.Path("/run/containerd/containerd.sock") + "); archive sha256:abababababab)"}
	if !slices.Equal(changeStrings(changes), want) {
		t.Errorf("plan %q\nwant %q", changeStrings(changes), want)
	}
}

func TestAMissingCtrNamesTheAssetToAdd(t *testing.T) {
	root := fsutil.Root(t.TempDir())
	sock := root.Path("/run/containerd/containerd.sock")
	if err := os.MkdirAll(root.Path("/run/containerd"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(sock, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", t.TempDir())
	a := config.ImageArchive{Name: "registry.k8s.io/pause:3.10", URLs: []string{"https://m.example/p.tar"}, SHA256: strings.Repeat("ab", 32)}
	_, err := NewPhase(Options{Root: root, Archives: []config.ImageArchive{a}}).Check(context.Background())
	if err == nil || !strings.Contains(err.Error(), "add ctr (it ships with containerd) to spec.assets") || !strings.Contains(err.Error(), "/usr/local/bin/ctr") {
		t.Fatalf("Check: %v, want an error naming the ctr asset", err)
	}
}

func TestNoArchivesNeedNoRuntime(t *testing.T) {
	p := NewPhase(Options{Root: fsutil.Root(t.TempDir()), Exec: failExec{}})
	if changes, err := p.Check(context.Background()); err != nil || len(changes) != 0 {
		t.Errorf("Check: %v %v", changes, err)
	}
	if err := p.Act(context.Background()); err != nil {
		t.Error(err)
	}
	if err := p.Verify(context.Background()); err != nil {
		t.Error(err)
	}
	if w := p.Warnings(); len(w) != 0 {
		t.Errorf("warnings %q", w)
	}
}

func TestNormalize(t *testing.T) {
	for in, want := range map[string]string{
		"registry.k8s.io/pause:3.10":       "registry.k8s.io/pause:3.10",
		"busybox:1.36":                     "docker.io/library/busybox:1.36",
		"calico/node:v3.28.0":              "docker.io/calico/node:v3.28.0",
		"docker.io/busybox:1.36":           "docker.io/library/busybox:1.36",
		"localhost/app:1":                  "localhost/app:1",
		"mirror.example:5000/k8s/etcd:3.5": "mirror.example:5000/k8s/etcd:3.5",
	} {
		if got := Normalize(in); got != want {
			t.Errorf("Normalize(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestParseCtrList(t *testing.T) {
	out := "REF                     TYPE                                                 DIGEST          SIZE     PLATFORMS   LABELS \n" +
		"registry.k8s.io/a:v1    application/vnd.docker.distribution.manifest.v2+json sha256:aaaa     10.6 KiB linux/amd64 io.cri-containerd.image=managed \n" +
		"sha256:f292            application/vnd.docker.distribution.manifest.v2+json sha256:aaaa     10.6 KiB linux/amd64 - \n"
	got, err := parseCtrList([]byte(out), []string{"registry.k8s.io/a:v1", "registry.k8s.io/b:v1"})
	if err != nil || len(got) != 1 || got["registry.k8s.io/a:v1"] != "sha256:aaaa" {
		t.Errorf("got %v %v", got, err)
	}
	if got, err := parseCtrList([]byte("REF TYPE DIGEST SIZE PLATFORMS LABELS \n"), []string{"x"}); err != nil || len(got) != 0 {
		t.Errorf("empty store: %v %v", got, err)
	}
	if _, err := parseCtrList([]byte("NAME DIGEST\n"), nil); err == nil {
		t.Error("an unknown table was accepted")
	}
}

// failExec fails every command: a test using it must not run any.
type failExec struct{}

func (failExec) Run(context.Context, io.Reader, string, ...string) ([]byte, error) {
	return nil, errors.New("no command may run here")
}

func TestBakeCachesArchivesAndImportsWhenContainerdAnswers(t *testing.T) {
	n := newNode(t)
	const ref = "registry.k8s.io/kube-apiserver:v1.34.4"
	a := serve(t, n.root, ref, dockerArchive(t, "baked", ref))
	imported, err := n.phase(a).Bake(ctx(t))
	if err != nil || !imported {
		t.Fatalf("Bake: imported=%v err=%v", imported, err)
	}
	if _, found, _ := n.d.ImageStatus(ctx(t), ref); !found {
		t.Error("baked image is not in containerd")
	}
	// The boot of the baked machine finds nothing to do, even with its mirror gone.
	if err := os.RemoveAll(n.root.Path("/srv")); err != nil {
		t.Fatal(err)
	}
	if changes, err := n.phase(a).Check(ctx(t)); err != nil || len(changes) != 0 {
		t.Errorf("Check after bake: %q %v, want converged", changeStrings(changes), err)
	}
}

func TestBakeWithoutARuntimeOnlyCaches(t *testing.T) {
	root := fsutil.Root(t.TempDir())
	const ref = "registry.k8s.io/pause:3.10"
	a := serve(t, root, ref, dockerArchive(t, "pause", ref))
	p := NewPhase(Options{Root: root, Archives: []config.ImageArchive{a}, Fetcher: &assets.Installer{Root: root}, Exec: failExec{}})
	imported, err := p.Bake(ctx(t))
	if err != nil || imported {
		t.Fatalf("Bake: imported=%v err=%v, want cached only", imported, err)
	}
	if _, err := os.Stat(root.Path(assets.DefaultCacheDir + "/" + a.SHA256)); err != nil {
		t.Errorf("archive not in the cache: %v", err)
	}
	a.SHA256 = strings.Repeat("1", 64)
	p = NewPhase(Options{Root: root, Archives: []config.ImageArchive{a}, Fetcher: &assets.Installer{Root: root}, Exec: failExec{}})
	if _, err := p.Bake(ctx(t)); err == nil || !strings.Contains(err.Error(), "sha256 mismatch") {
		t.Errorf("Bake of a wrong archive: %v, want the mismatch", err)
	}
}

func TestArchiveAssetNamesAreAcceptedByTheInstaller(t *testing.T) {
	for _, ref := range []string{"registry.k8s.io/kube-apiserver:v1.34.4", "mirror.example:5000/a/b:v1..2"} {
		a := asset(config.ImageArchive{Name: ref, SHA256: strings.Repeat("a", 64)})
		if strings.ContainsAny(a.Name, "/") || strings.Contains(a.Name, "..") || !strings.HasPrefix(assets.InstallPath(a), "/") {
			t.Errorf("asset name %q for %s", a.Name, ref)
		}
	}
}
