package assets

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nodeagent/nodeagent/bootstrap"
	"github.com/nodeagent/nodeagent/config"
	"github.com/nodeagent/nodeagent/internal/fsutil"
	"github.com/nodeagent/nodeagent/internal/releasearchive"
)

// trustNode is one node's root with a plain asset (kubelet) and an archive asset
// (containerd, two members) served by a mirror; each run builds a new Installer
// on it, as every reconcile of the daemon does.
type trustNode struct {
	root   fsutil.Root
	assets []config.Asset
	bodies map[string][]byte // installed path → the right content
	now    time.Time
	every  time.Duration
}

func newTrustNode(t *testing.T) *trustNode {
	n := &trustNode{root: fsutil.Root(t.TempDir()), bodies: map[string][]byte{},
		now: time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC), every: 24 * time.Hour}
	kubelet := randomBytes(t, 2<<20)
	containerd, ctr := randomBytes(t, 1<<20), randomBytes(t, 512<<10)
	tgz := filepath.Join(t.TempDir(), "containerd.tar.gz")
	if err := releasearchive.Write(tgz, []releasearchive.File{
		{Name: "bin/", Dir: true}, {Name: "bin/containerd", Body: containerd}, {Name: "bin/ctr", Body: ctr},
	}); err != nil {
		t.Fatal(err)
	}
	archive, err := os.ReadFile(tgz)
	if err != nil {
		t.Fatal(err)
	}
	m := newMirror(t, func(_ int, w http.ResponseWriter) {})
	m.srv.Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		m.hits.Add(1)
		switch filepath.Base(r.URL.Path) {
		case "kubelet":
			w.Write(kubelet)
		case "containerd.tar.gz":
			w.Write(archive)
		default:
			http.NotFound(w, r)
		}
	})
	n.assets = []config.Asset{
		{Name: "kubelet", URLs: []string{m.url("kubelet")}, SHA256: sumOf(kubelet)},
		{Name: "containerd", URLs: []string{m.url("containerd.tar.gz")}, SHA256: sumOf(archive),
			Archive: &config.AssetArchive{Members: []config.ArchiveMember{{Name: "bin/*", Path: "/usr/local/bin/"}}}},
	}
	n.bodies["/usr/local/bin/kubelet"] = kubelet
	n.bodies["/usr/local/bin/containerd"] = containerd
	n.bodies["/usr/local/bin/ctr"] = ctr
	return n
}

func (n *trustNode) installer() *Installer {
	now := n.now
	return &Installer{Root: n.root, HTTP: &http.Client{Timeout: 5 * time.Second}, Retry: fastRetry,
		FullCheckEvery: n.every, Now: func() time.Time { return now }}
}

// run is one reconcile: check, act when needed, verify. It returns the changes
// found and how many installed files were read and hashed.
func (n *trustNode) run(t *testing.T) ([]bootstrap.Change, int) {
	t.Helper()
	inst := n.installer()
	cs, err := runPhase(context.Background(), inst.Phase(n.assets))
	if err != nil {
		t.Fatalf("run: %v", err)
	}
	return cs, inst.record.hashes
}

func (n *trustNode) requireInstalled(t *testing.T) {
	t.Helper()
	for p, want := range n.bodies {
		got, err := os.ReadFile(n.root.Path(p))
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("%s is not the verified asset (err %v)", p, err)
		}
	}
}

// tamper overwrites an installed file in place with other bytes of the same size
// and puts its modification time back, as `touch -d` would.
func (n *trustNode) tamper(t *testing.T, p string) {
	t.Helper()
	path := n.root.Path(p)
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	evil := bytes.Repeat([]byte{0x90}, int(fi.Size()))
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(evil, 0); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(path, fi.ModTime(), fi.ModTime()); err != nil {
		t.Fatal(err)
	}
	if after, _ := os.Stat(path); after.Size() != fi.Size() || !after.ModTime().Equal(fi.ModTime()) {
		t.Fatalf("tampered file must keep size and mtime: %d %v, was %d %v", after.Size(), after.ModTime(), fi.Size(), fi.ModTime())
	}
}

func changedTargets(cs []bootstrap.Change) []string {
	var out []string
	for _, c := range cs {
		out = append(out, c.Target)
	}
	return out
}

func TestConvergedRunReadsNoInstalledFile(t *testing.T) {
	n := newTrustNode(t)
	cs, hashed := n.run(t)
	if len(cs) != 2 || hashed != 3 {
		t.Fatalf("first run: changes %v, %d files hashed; want kubelet and the archive installed, their 3 files hashed", changedTargets(cs), hashed)
	}
	n.requireInstalled(t)

	for range 3 {
		n.now = n.now.Add(time.Hour)
		cs, hashed = n.run(t)
		if len(cs) != 0 || hashed != 0 {
			t.Fatalf("converged run: changes %v, %d files hashed; want none and none", changedTargets(cs), hashed)
		}
	}

	// Once the recorded hashes are older than the full-check interval, every file
	// is read again, and then trusted again.
	n.now = n.now.Add(n.every)
	if cs, hashed = n.run(t); len(cs) != 0 || hashed != 3 {
		t.Fatalf("run after %v: changes %v, %d files hashed; want none and 3", n.every, changedTargets(cs), hashed)
	}
	n.now = n.now.Add(time.Minute)
	if cs, hashed = n.run(t); len(cs) != 0 || hashed != 0 {
		t.Fatalf("run after the full check: changes %v, %d files hashed; want none and none", changedTargets(cs), hashed)
	}
}

func TestTamperedBinaryIsFoundAndReplaced(t *testing.T) {
	t.Run("same size and mtime put back: its ctime moved, so the next run hashes and replaces it", func(t *testing.T) {
		n := newTrustNode(t)
		n.run(t)
		n.tamper(t, "/usr/local/bin/kubelet")
		n.tamper(t, "/usr/local/bin/ctr")

		n.now = n.now.Add(time.Minute)
		cs, hashed := n.run(t)
		got := changedTargets(cs)
		if len(got) != 2 || got[0] != "/usr/local/bin/kubelet" || got[1] != "/usr/local/bin/ctr" {
			t.Fatalf("changes %v, want kubelet and ctr updated", got)
		}
		// The two tampered files, then the two replaced ones in Verify; containerd is trusted.
		if hashed != 4 {
			t.Fatalf("%d files hashed, want 4", hashed)
		}
		n.requireInstalled(t)
	})

	t.Run("changed under an unchanged identity: the periodic full check finds and replaces it", func(t *testing.T) {
		n := newTrustNode(t)
		n.run(t)
		n.tamper(t, "/usr/local/bin/containerd")
		// What no file system call can do (a write to the block device, a flipped
		// bit): the record's identity of the file matches the tampered file.
		forgeRecord(t, n.installer(), n.root.Path("/usr/local/bin/containerd"))

		n.now = n.now.Add(n.every - time.Minute)
		if cs, hashed := n.run(t); len(cs) != 0 || hashed != 0 {
			t.Fatalf("before the full check: changes %v, %d hashed; the record is trusted until then", changedTargets(cs), hashed)
		}
		n.now = n.now.Add(2 * time.Minute)
		cs, _ := n.run(t)
		if got := changedTargets(cs); len(got) != 1 || got[0] != "/usr/local/bin/containerd" {
			t.Fatalf("full check: changes %v, want containerd updated", got)
		}
		n.requireInstalled(t)
		n.now = n.now.Add(time.Minute)
		if cs, hashed := n.run(t); len(cs) != 0 || hashed != 0 {
			t.Fatalf("after the repair: changes %v, %d hashed; want none", changedTargets(cs), hashed)
		}
	})
}

// forgeRecord rewrites the recorded identity of path to the file's current one,
// keeping the recorded (good) hash and time.
func forgeRecord(t *testing.T, inst *Installer, path string) {
	t.Helper()
	b, err := os.ReadFile(inst.recordPath())
	if err != nil {
		t.Fatal(err)
	}
	var rec map[string]fileStamp
	if err := json.Unmarshal(b, &rec); err != nil {
		t.Fatal(err)
	}
	old, ok := rec[path]
	if !ok {
		t.Fatalf("no record of %s", path)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	st, _ := stampOf(fi)
	st.SHA256, st.Hashed = old.SHA256, old.Hashed
	rec[path] = st
	if b, err = json.Marshal(rec); err != nil {
		t.Fatal(err)
	}
	if err := fsutil.WriteFileAtomic(inst.recordPath(), b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestPlanWritesNoHashRecord(t *testing.T) {
	n := newTrustNode(t)
	n.run(t)
	inst := n.installer()
	if err := os.Remove(inst.recordPath()); err != nil {
		t.Fatal(err)
	}
	if cs, err := inst.Phase(n.assets).Check(context.Background()); err != nil || len(cs) != 0 {
		t.Fatalf("Check = %v, %v", cs, err)
	}
	if _, err := os.Stat(inst.recordPath()); !os.IsNotExist(err) {
		t.Fatalf("Check alone wrote the record (%v)", err)
	}
}

func TestUnreadableHashRecordMeansHashEverything(t *testing.T) {
	n := newTrustNode(t)
	n.run(t)
	if err := os.WriteFile(n.installer().recordPath(), []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	if cs, hashed := n.run(t); len(cs) != 0 || hashed != 3 {
		t.Fatalf("changes %v, %d hashed; want none and 3", changedTargets(cs), hashed)
	}
	if cs, hashed := n.run(t); len(cs) != 0 || hashed != 0 {
		t.Fatalf("record rewritten: changes %v, %d hashed; want none", changedTargets(cs), hashed)
	}
}
