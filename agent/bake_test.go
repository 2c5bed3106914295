package agent

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/nodeagent/nodeagent/assets"
	"github.com/nodeagent/nodeagent/internal/fsutil"
	"github.com/nodeagent/nodeagent/internal/releasearchive"
)

// TestBakeCachesAssetsAndImageArchives bakes a root with no container runtime
// running: the binary is installed, and both it and the image archive are in the
// verified cache for a boot without network.
func TestBakeCachesAssetsAndImageArchives(t *testing.T) {
	root := fsutil.Root(t.TempDir())
	put := func(p string, b []byte) string {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(root.Path(p)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(root.Path(p), b, 0o644); err != nil {
			t.Fatal(err)
		}
		h := sha256.Sum256(b)
		return hex.EncodeToString(h[:])
	}
	binSum := put("/srv/kubelet", []byte("#!/bin/true\n"))
	imgSum := put("/srv/pause.tar", []byte("an image archive; bake only verifies and caches it here"))
	cfg := filepath.Join(t.TempDir(), "bake.yaml")
	doc := `apiVersion: nodeagent.io/v1alpha1
kind: NodeConfig
spec:
  cluster: {name: bake.k8s.local}
  gossip: {secretKeyFile: /etc/nodeagent/gossip.key}
  role: Node
  kubernetesVersion: v1.34.4
  assets:
  - {name: kubelet, urls: ["file:///srv/kubelet"], sha256: ` + binSum + `}
  images:
    archives:
    - {name: "registry.k8s.io/pause:3.10", urls: ["file:///srv/pause.tar"], sha256: ` + imgSum + `}
`
	if err := os.WriteFile(cfg, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := Bake(context.Background(), Options{Root: root, ConfigFile: cfg, Log: quietLog()}); err != nil {
		t.Fatalf("bake: %v", err)
	}
	for _, p := range []string{"/usr/local/bin/kubelet", assets.DefaultCacheDir + "/" + binSum, assets.DefaultCacheDir + "/" + imgSum} {
		if _, err := os.Stat(root.Path(p)); err != nil {
			t.Errorf("after bake: %v", err)
		}
	}
}

// TestBakeUnpacksOnlyListedMembers bakes containerd's release tarball as
// published: the tarball is cached by its hash, the listed members are
// installed, and nothing else of it is unpacked anywhere in the image.
func TestBakeUnpacksOnlyListedMembers(t *testing.T) {
	root := fsutil.Root(t.TempDir())
	if err := os.MkdirAll(root.Path("/srv"), 0o755); err != nil {
		t.Fatal(err)
	}
	tarball := root.Path("/srv/containerd-2.1.4-linux-amd64.tar.gz")
	if err := releasearchive.Write(tarball, []releasearchive.File{
		{Name: "bin/", Dir: true},
		{Name: "bin/containerd", Body: []byte("containerd")},
		{Name: "bin/containerd-shim-runc-v2", Body: []byte("shim")},
		{Name: "bin/containerd-stress", Body: []byte("stress")},
		{Name: "bin/ctr", Body: []byte("ctr")},
	}); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(tarball)
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.Sum256(b)
	sum := hex.EncodeToString(h[:])
	cfg := filepath.Join(t.TempDir(), "bake.yaml")
	doc := `apiVersion: nodeagent.io/v1alpha1
kind: NodeConfig
spec:
  cluster: {name: bake.example.com}
  role: Node
  kubernetesVersion: v1.34.4
  assets:
  - name: containerd
    urls: ["file:///srv/containerd-2.1.4-linux-amd64.tar.gz"]
    sha256: ` + sum + `
    archive:
      members:
      - {name: bin/containerd, path: /usr/local/bin/containerd}
      - {name: bin/containerd-shim-runc-v2, path: /usr/local/bin/}
`
	if err := os.WriteFile(cfg, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := Bake(context.Background(), Options{Root: root, ConfigFile: cfg, Log: quietLog()}); err != nil {
		t.Fatalf("bake: %v", err)
	}
	var files []string
	filepath.WalkDir(string(root), func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			rel, _ := filepath.Rel(string(root), p)
			files = append(files, "/"+rel)
		}
		return nil
	})
	sort.Strings(files)
	want := []string{
		"/srv/containerd-2.1.4-linux-amd64.tar.gz",
		"/usr/local/bin/containerd",
		"/usr/local/bin/containerd-shim-runc-v2",
		assets.DefaultCacheDir + "/" + sum,
		assets.DefaultCacheDir + "/" + sum + ".index.json",
	}
	sort.Strings(want)
	if !slices.Equal(files, want) {
		t.Errorf("files after bake:\n%s\nwant:\n%s", strings.Join(files, "\n"), strings.Join(want, "\n"))
	}
}
