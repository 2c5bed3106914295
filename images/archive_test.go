package images

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/nodeagent/nodeagent/config"
	"github.com/nodeagent/nodeagent/internal/fsutil"
)

// testArchive is a docker-save archive made for a test: one layer holding one
// small file.
type testArchive struct {
	Bytes   []byte
	SHA256  string // of Bytes
	LayerID string // the layer's diff ID (sha256:...), also its snapshot's chain ID
}

func sum(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

// tarOf writes files (name → content) into a tar, in the order given.
func tarOf(t *testing.T, names []string, files map[string][]byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, n := range names {
		hdr := &tar.Header{Name: n, Mode: 0o644, Size: int64(len(files[n])), ModTime: time.Unix(0, 0), Typeflag: tar.TypeReg}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(files[n]); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// dockerArchive builds what `docker save` writes for one image: manifest.json
// naming the image by repoTags, its config, and a layer whose only file is
// /hello.txt holding content (so different content makes a different image).
func dockerArchive(t *testing.T, content string, repoTags ...string) testArchive {
	t.Helper()
	layer := tarOf(t, []string{"hello.txt"}, map[string][]byte{"hello.txt": []byte(content)})
	layerID := "sha256:" + sum(layer)
	cfg, err := json.Marshal(map[string]any{
		"architecture": runtime.GOARCH,
		"os":           "linux",
		"config":       map[string]any{"Cmd": []string{"/hello.txt"}},
		"rootfs":       map[string]any{"type": "layers", "diff_ids": []string{layerID}},
	})
	if err != nil {
		t.Fatal(err)
	}
	cfgName := sum(cfg) + ".json"
	layerName := sum(layer) + "/layer.tar"
	manifest, err := json.Marshal([]map[string]any{{"Config": cfgName, "RepoTags": repoTags, "Layers": []string{layerName}}})
	if err != nil {
		t.Fatal(err)
	}
	b := tarOf(t, []string{cfgName, layerName, "manifest.json"}, map[string][]byte{cfgName: cfg, layerName: layer, "manifest.json": manifest})
	return testArchive{Bytes: b, SHA256: sum(b), LayerID: layerID}
}

func gzipped(t *testing.T, a testArchive) testArchive {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	zw.Write(a.Bytes)
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return testArchive{Bytes: buf.Bytes(), SHA256: sum(buf.Bytes()), LayerID: a.LayerID}
}

// serve puts the archive under root and returns the config entry that names it
// by a file:// URL (the assets installer resolves those under its Root).
func serve(t *testing.T, root fsutil.Root, name string, a testArchive) config.ImageArchive {
	t.Helper()
	p := "/srv/images/" + a.SHA256 + ".tar"
	if err := os.MkdirAll(filepath.Dir(root.Path(p)), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(root.Path(p), a.Bytes, 0o644); err != nil {
		t.Fatal(err)
	}
	return config.ImageArchive{Name: name, URLs: []string{"file://" + p}, SHA256: a.SHA256}
}
