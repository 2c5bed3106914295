package manifests_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nodeagent/nodeagent/bootstrap"
	"github.com/nodeagent/nodeagent/internal/fsutil"
	"github.com/nodeagent/nodeagent/manifests"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// longAgo is stamped on files before an Act, so "not rewritten" is observable
// whatever the filesystem's timestamp granularity.
var longAgo = time.Date(2020, 1, 2, 3, 4, 5, 0, time.UTC)

// withRoot gives the options a fresh host root in which the etcd volumes are
// "mounted": their mount points exist, as after the volumes phase.
func withRoot(t *testing.T, o manifests.Options) manifests.Options {
	t.Helper()
	o.Root = fsutil.Root(t.TempDir())
	o.Log = quiet
	if o.Etcd != nil {
		mountVolumes(t, o.Root, o.Etcd)
	}
	return o
}

func mountVolumes(t *testing.T, root fsutil.Root, ms []manifests.EtcdMember) {
	t.Helper()
	for _, m := range ms {
		if err := os.MkdirAll(root.Path(m.DataDir), 0o755); err != nil {
			t.Fatal(err)
		}
	}
}

func manifestDir(o manifests.Options) string { return o.Root.Path(manifests.DefaultDir) }

type fileID struct {
	ino   uint64
	mtime time.Time
}

// snapshot records every file in the manifest directory by inode and mtime: an
// atomic rewrite changes both, an untouched file neither.
func snapshot(t *testing.T, dir string) map[string]fileID {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]fileID{}
	for _, e := range entries {
		fi, err := os.Stat(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		out[e.Name()] = fileID{ino: fi.Sys().(*syscall.Stat_t).Ino, mtime: fi.ModTime()}
	}
	return out
}

func ageAll(t *testing.T, dir string) {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if err := os.Chtimes(filepath.Join(dir, e.Name()), longAgo, longAgo); err != nil {
			t.Fatal(err)
		}
	}
}

func mustCheck(t *testing.T, p *manifests.Phase) []bootstrap.Change {
	t.Helper()
	ch, err := p.Check(context.Background())
	if err != nil {
		t.Fatalf("Check: %v", err)
	}
	return ch
}

func actAndVerify(t *testing.T, p *manifests.Phase) {
	t.Helper()
	if err := p.Act(context.Background()); err != nil {
		t.Fatalf("Act: %v", err)
	}
	if err := p.Verify(context.Background()); err != nil {
		t.Fatalf("Verify after Act: %v", err)
	}
}

// changeSummary renders changes as "action base-name" lines for manifests and
// "action file path" for anything else, sorted.
func changeSummary(ch []bootstrap.Change) []string {
	out := make([]string, len(ch))
	for i, c := range ch {
		if c.Kind != "manifest" {
			out[i] = c.Action + " " + c.Kind + " " + c.Target
			continue
		}
		out[i] = c.Action + " " + filepath.Base(c.Target)
	}
	sort.Strings(out)
	return out
}

func TestPhaseFreshControlPlane(t *testing.T) {
	o := withRoot(t, controlPlaneOptions())
	p := manifests.NewPhase(o)
	if p.Name() != "manifests" {
		t.Fatalf("name %q", p.Name())
	}

	ch := mustCheck(t, p)
	want := []string{"create etcd-events.yaml", "create etcd-main.yaml", "create kube-apiserver.yaml",
		"create file /mnt/master-vol-0events/data", "create file /mnt/master-vol-0main/data",
		"create kube-controller-manager.yaml", "create kube-proxy.yaml", "create kube-scheduler.yaml"}
	sort.Strings(want)
	if got := changeSummary(ch); strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("Check = %v, want %v", got, want)
	}
	for _, c := range ch {
		if c.Kind == "manifest" && !strings.HasPrefix(c.Target, manifests.DefaultDir+"/") {
			t.Errorf("change target %q is not a host path under %s", c.Target, manifests.DefaultDir)
		}
	}
	if _, err := os.Stat(manifestDir(o)); !os.IsNotExist(err) {
		t.Fatalf("Check created the manifest directory (stat: %v)", err)
	}

	actAndVerify(t, p)
	rendered, err := manifests.Render(o)
	if err != nil {
		t.Fatal(err)
	}
	for name, data := range rendered {
		full := filepath.Join(manifestDir(o), name)
		got, err := os.ReadFile(full)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, data) {
			t.Errorf("%s on disk differs from Render", name)
		}
		fi, _ := os.Stat(full)
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s mode %04o, want 0600", name, fi.Mode().Perm())
		}
	}
	for _, d := range []string{"/mnt/master-vol-0main/data", "/mnt/master-vol-0events/data"} {
		fi, err := os.Stat(o.Root.Path(d))
		if err != nil || !fi.IsDir() || fi.Mode().Perm() != 0o700 {
			t.Errorf("etcd data directory %s: %v %v, want a 0700 directory", d, fi, err)
		}
	}
	if ch := mustCheck(t, p); len(ch) != 0 {
		t.Fatalf("Check after Act = %v, want nothing", ch)
	}
}

// TestPhaseRefusesUnmountedVolume: without the claimed volume's mount point the
// phase creates no data directory (etcd would start empty on the root disk) and
// writes no manifest.
func TestPhaseRefusesUnmountedVolume(t *testing.T) {
	o := controlPlaneOptions()
	o.Root = fsutil.Root(t.TempDir())
	o.Log = quiet
	mountVolumes(t, o.Root, o.Etcd[:1]) // main is there, events is not
	p := manifests.NewPhase(o)
	if _, err := p.Check(context.Background()); err == nil || !strings.Contains(err.Error(), "/mnt/master-vol-0events is not there (is the volume mounted?)") {
		t.Fatalf("Check = %v", err)
	}
	if err := p.Act(context.Background()); err == nil {
		t.Fatal("Act succeeded")
	}
	if _, err := os.Stat(o.Root.Path("/mnt/master-vol-0events")); !os.IsNotExist(err) {
		t.Errorf("the mount point was created (stat: %v)", err)
	}
	if _, err := os.Stat(manifestDir(o)); !os.IsNotExist(err) {
		t.Errorf("manifests were written (stat: %v)", err)
	}
}

// TestPhaseTightensDataDirMode: etcd warns about a data directory others can read.
func TestPhaseTightensDataDirMode(t *testing.T) {
	o := withRoot(t, controlPlaneOptions())
	p := manifests.NewPhase(o)
	actAndVerify(t, p)
	dir := o.Root.Path("/mnt/master-vol-0main/data")
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	ch := mustCheck(t, p)
	if len(ch) != 1 || ch[0].Action != "update" || ch[0].Target != "/mnt/master-vol-0main/data" || !strings.Contains(ch[0].Detail, "0755 -> 0700") {
		t.Fatalf("Check = %v", ch)
	}
	actAndVerify(t, p)
	if fi, _ := os.Stat(dir); fi.Mode().Perm() != 0o700 {
		t.Errorf("mode %04o after Act", fi.Mode().Perm())
	}
}

// TestPhaseRerunChangesNothing: a second run finds nothing to do and leaves every
// file as it was, so kubelet sees no event and restarts no pod.
func TestPhaseRerunChangesNothing(t *testing.T) {
	o := withRoot(t, controlPlaneOptions())
	actAndVerify(t, manifests.NewPhase(o))
	dir := manifestDir(o)
	ageAll(t, dir)
	before := snapshot(t, dir)

	p := manifests.NewPhase(o) // a fresh process, as after a reboot
	if ch := mustCheck(t, p); len(ch) != 0 {
		t.Fatalf("Check = %v, want nothing", ch)
	}
	actAndVerify(t, p)
	after := snapshot(t, dir)
	for name, id := range before {
		if after[name] != id {
			t.Errorf("%s was rewritten: %+v -> %+v", name, id, after[name])
		}
	}
	if len(after) != len(before) {
		t.Errorf("files %v -> %v", keys(before), keys(after))
	}
}

// TestPhaseVersionUpgradeRewritesOnlyAffected: the etcd pods do not depend on
// kubernetesVersion and must not be touched (a rewrite would restart etcd).
func TestPhaseVersionUpgradeRewritesOnlyAffected(t *testing.T) {
	o := withRoot(t, controlPlaneOptions())
	actAndVerify(t, manifests.NewPhase(o))
	dir := manifestDir(o)
	ageAll(t, dir)
	before := snapshot(t, dir)

	o.Config.Spec.KubernetesVersion = "v1.31.3"
	p := manifests.NewPhase(o)
	got := changeSummary(mustCheck(t, p))
	want := []string{"update kube-apiserver.yaml", "update kube-controller-manager.yaml", "update kube-proxy.yaml", "update kube-scheduler.yaml"}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("Check = %v, want %v", got, want)
	}
	actAndVerify(t, p)
	after := snapshot(t, dir)
	for name, id := range before {
		rewritten := after[name] != id
		wantRewritten := !strings.HasPrefix(name, "etcd-")
		if rewritten != wantRewritten {
			t.Errorf("%s rewritten=%v, want %v", name, rewritten, wantRewritten)
		}
	}
	b, err := os.ReadFile(filepath.Join(dir, "kube-apiserver.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(b, []byte("image: registry.k8s.io/kube-apiserver:v1.31.3")) {
		t.Errorf("kube-apiserver.yaml does not run v1.31.3:\n%s", b)
	}
}

// TestPhaseRemovesOnlyStaleManagedManifests: turning a control plane into a worker
// removes the control-plane pods and a leftover managed pod, and leaves files the
// agent does not own exactly as they were.
func TestPhaseRemovesOnlyStaleManagedManifests(t *testing.T) {
	cp := withRoot(t, controlPlaneOptions())
	actAndVerify(t, manifests.NewPhase(cp))
	dir := manifestDir(cp)

	foreign := map[string]string{
		// A pod somebody else placed here: no marker.
		"custom.yaml": "apiVersion: v1\nkind: Pod\nmetadata:\n  name: custom\n  namespace: kube-system\nspec:\n  containers:\n  - name: c\n    image: busybox\n",
		// The marker must be "true" exactly.
		"half.yaml": "apiVersion: v1\nkind: Pod\nmetadata:\n  name: half\n  annotations:\n    nodeagent.io/managed: \"false\"\n",
		// Not a manifest at all.
		"README": "{{ not yaml: [",
		// Hidden files are invisible to kubelet, and to us.
		".old-kube-dns.yaml": "metadata:\n  name: kube-dns\n  annotations:\n    nodeagent.io/managed: \"true\"\n",
	}
	for name, content := range foreign {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(filepath.Join(dir, "subdir.yaml"), 0o755); err != nil {
		t.Fatal(err)
	}
	// A managed pod an older agent version wrote and this one no longer renders.
	stale := "# written by an older nodeagent\napiVersion: v1\nkind: Pod\nmetadata:\n  name: kube-dns\n  annotations:\n    nodeagent.io/managed: \"true\"\n"
	if err := os.WriteFile(filepath.Join(dir, "kube-dns.yml"), []byte(stale), 0o600); err != nil {
		t.Fatal(err)
	}
	ageAll(t, dir)
	before := snapshot(t, dir)

	worker := cp
	worker.Config = workerOptions().Config
	worker.NodeName = cp.NodeName // same machine, so kube-proxy's manifest stays as is
	worker.Etcd = nil
	p := manifests.NewPhase(worker)
	got := changeSummary(mustCheck(t, p))
	want := []string{"delete etcd-events.yaml", "delete etcd-main.yaml", "delete kube-apiserver.yaml",
		"delete kube-controller-manager.yaml", "delete kube-dns.yml", "delete kube-scheduler.yaml"}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("Check = %v, want %v", got, want)
	}
	if after := snapshot(t, dir); len(after) != len(before) {
		t.Fatalf("Check changed the directory: %v -> %v", keys(before), keys(after))
	}

	actAndVerify(t, p)
	after := snapshot(t, dir)
	wantLeft := []string{".old-kube-dns.yaml", "README", "custom.yaml", "half.yaml", "kube-proxy.yaml", "subdir.yaml"}
	if got := keys(after); strings.Join(got, ",") != strings.Join(wantLeft, ",") {
		t.Fatalf("left in the directory: %v, want %v", got, wantLeft)
	}
	for _, name := range wantLeft {
		if after[name] != before[name] {
			t.Errorf("%s was touched", name)
		}
	}
	for name, content := range foreign {
		if b, _ := os.ReadFile(filepath.Join(dir, name)); string(b) != content {
			t.Errorf("%s content changed", name)
		}
	}
}

// TestPhaseRepairsDrift: an edited manifest or a loosened mode is put back, and
// Check says which one it was without touching anything.
func TestPhaseRepairsDrift(t *testing.T) {
	o := withRoot(t, workerOptions())
	p := manifests.NewPhase(o)
	actAndVerify(t, p)
	file := filepath.Join(manifestDir(o), "kube-proxy.yaml")
	good, _ := os.ReadFile(file)

	if err := os.Chmod(file, 0o644); err != nil {
		t.Fatal(err)
	}
	ch := mustCheck(t, p)
	if len(ch) != 1 || ch[0].Action != "update" || ch[0].Detail != "mode 0644 -> 0600" {
		t.Fatalf("Check after chmod = %v", ch)
	}
	if err := p.Verify(context.Background()); err == nil || !strings.Contains(err.Error(), "kube-proxy.yaml") {
		t.Fatalf("Verify after chmod = %v, want an error naming the file", err)
	}
	actAndVerify(t, p)
	if fi, _ := os.Stat(file); fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %04o after Act", fi.Mode().Perm())
	}

	edited := bytes.Replace(good, []byte("--cluster-cidr=100.96.0.0/11"), []byte("--cluster-cidr=10.0.0.0/8"), 1)
	if err := os.WriteFile(file, edited, 0o600); err != nil {
		t.Fatal(err)
	}
	ch = mustCheck(t, p)
	if len(ch) != 1 || ch[0].Action != "update" || ch[0].Detail != "content differs" {
		t.Fatalf("Check after edit = %v", ch)
	}
	if b, _ := os.ReadFile(file); !bytes.Equal(b, edited) {
		t.Fatal("Check rewrote the file")
	}
	actAndVerify(t, p)
	if b, _ := os.ReadFile(file); !bytes.Equal(b, good) {
		t.Fatal("Act did not restore the rendered manifest")
	}
}

// TestPhaseRefusesBeforeVolumes: a control plane whose etcd membership is not
// known yet fails every step with the reason, and writes nothing.
func TestPhaseRefusesBeforeVolumes(t *testing.T) {
	o := withRoot(t, controlPlaneOptions())
	o.Etcd = nil
	p := manifests.NewPhase(o)
	ctx := context.Background()
	if _, err := p.Check(ctx); err == nil || !strings.Contains(err.Error(), "volumes phase") {
		t.Errorf("Check = %v", err)
	}
	if err := p.Act(ctx); err == nil || !strings.Contains(err.Error(), "volumes phase") {
		t.Errorf("Act = %v", err)
	}
	if err := p.Verify(ctx); err == nil {
		t.Error("Verify passed")
	}
	if _, err := os.Stat(manifestDir(o)); !os.IsNotExist(err) {
		t.Errorf("something was written (stat: %v)", err)
	}
}

// TestPhaseEtcdKnownLate: membership comes from the run's facts, which the
// volumes phase before it fills in, not from when the phase was built.
func TestPhaseEtcdKnownLate(t *testing.T) {
	o := withRoot(t, controlPlaneOptions())
	o.Etcd = nil
	p := manifests.NewPhase(o)
	claims := members("main", "events")
	p.UseFacts(bootstrap.Facts{EtcdMembers: []bootstrap.EtcdMemberFact{
		{Cluster: "main", Member: "b", Members: []string{"a", "b", "c"}, VolumeID: "vol-0main", MountPoint: "/mnt/master-vol-0main"},
		{Cluster: "events", Member: "b", Members: []string{"a", "b", "c"}, VolumeID: "vol-0events", MountPoint: "/mnt/master-vol-0events"},
	}})
	mountVolumes(t, o.Root, claims)
	actAndVerify(t, p)
	if _, err := os.Stat(filepath.Join(manifestDir(o), "etcd-main.yaml")); err != nil {
		t.Fatal(err)
	}
}

func TestPhaseCustomDir(t *testing.T) {
	o := withRoot(t, workerOptions())
	o.Dir = "/srv/static-pods/"
	actAndVerify(t, manifests.NewPhase(o))
	if _, err := os.Stat(o.Root.Path("/srv/static-pods/kube-proxy.yaml")); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(manifestDir(o)); !os.IsNotExist(err) {
		t.Errorf("default directory used as well (stat: %v)", err)
	}
}

// TestPhaseReport: status lists what is on disk and owned, with the hash of the
// bytes actually there.
func TestPhaseReport(t *testing.T) {
	o := withRoot(t, controlPlaneOptions())
	p := manifests.NewPhase(o)

	st := &bootstrap.State{Manifests: []bootstrap.ManifestStatus{{Name: "from-an-earlier-run"}}}
	p.Report(st)
	if len(st.Manifests) != 0 {
		t.Fatalf("before Act, Report = %+v, want nothing", st.Manifests)
	}

	actAndVerify(t, p)
	custom := filepath.Join(manifestDir(o), "custom.yaml")
	if err := os.WriteFile(custom, []byte("metadata:\n  name: custom\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	p.Report(st)
	var names []string
	for _, m := range st.Manifests {
		names = append(names, m.Name)
		data, err := os.ReadFile(o.Root.Path(m.Path))
		if err != nil {
			t.Fatalf("%s: %v", m.Path, err)
		}
		h := sha256.Sum256(data)
		if m.SHA256 != hex.EncodeToString(h[:]) {
			t.Errorf("%s: sha256 %s does not match the file", m.Path, m.SHA256)
		}
		if m.Path != manifests.DefaultDir+"/"+m.Name+".yaml" {
			t.Errorf("%s: path %s", m.Name, m.Path)
		}
	}
	want := "etcd-events,etcd-main,kube-apiserver,kube-controller-manager,kube-proxy,kube-scheduler"
	if strings.Join(names, ",") != want {
		t.Errorf("reported %v, want %s", names, want)
	}
}

func keys[V any](m map[string]V) []string { return sortedNames(m) }
