package agent

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"testing"

	"github.com/nodeagent/nodeagent/assets"
	"github.com/nodeagent/nodeagent/internal/fsutil"
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
