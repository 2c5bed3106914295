package images

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A file is copied out of an image in containerd's store, whole, and the
// read-only view the copy was made through is gone again.
func TestExtractCopiesAFileOutOfAnImageInTheStore(t *testing.T) {
	n := newNode(t)
	const ref = "registry.k8s.io/etcd:3.5.35-0"
	converge(t, n.phase(serve(t, n.root, ref, dockerArchive(t, "etcdutl of this version", ref))))
	o := Options{Root: n.root, Address: n.d.Address}
	dst := filepath.Join(t.TempDir(), "bin", "tool")

	digest, err := Extract(ctx(t), o, ref, "/hello.txt", dst)
	if err != nil {
		t.Fatalf("Extract: %v", err)
	}
	if got, err := os.ReadFile(dst); err != nil || string(got) != "etcdutl of this version" {
		t.Errorf("extracted %q, %v", got, err)
	}
	if d, err := Digest(ctx(t), o, ref); err != nil || d != digest || !strings.HasPrefix(d, "sha256:") {
		t.Errorf("Digest = %q, %v; Extract said %q", d, err, digest)
	}
	snaps, err := n.d.Ctr(ctx(t), "snapshots", "--snapshotter", "overlayfs", "ls")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(snaps, "View") || strings.Contains(snaps, ".image-mount-") {
		t.Errorf("the mount's view snapshot is left:\n%s", snaps)
	}
	left, err := os.ReadDir(filepath.Dir(dst))
	if err != nil || len(left) != 1 {
		t.Errorf("beside the copy: %v %v, want only the copy", left, err)
	}

	// What is not there is refused by name, and nothing is written.
	missing := filepath.Join(t.TempDir(), "missing")
	if _, err := Extract(ctx(t), o, ref, "/usr/local/bin/etcdutl", missing); err == nil || !strings.Contains(err.Error(), "/usr/local/bin/etcdutl") {
		t.Errorf("a file the image lacks: %v", err)
	}
	if _, err := Extract(ctx(t), o, "registry.k8s.io/etcd:9.9.9-0", "/hello.txt", missing); err == nil || !strings.Contains(err.Error(), "not in the containerd image store") {
		t.Errorf("an image the store lacks: %v", err)
	}
	if _, err := os.Stat(missing); !os.IsNotExist(err) {
		t.Errorf("a failed extract left %s: %v", missing, err)
	}
}
