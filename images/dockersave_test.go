package images

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/nodeagent/nodeagent/internal/imagearchive"
)

// An OCI layout archive (what hack/images and `ctr export` write) is loaded
// by Docker Engine 20.10 only with docker save's manifest.json: the phase
// appends one naming the same blobs, and keeps every entry as it was.
func TestOCIArchivesGainTheManifestDockerLoadNeeds(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "hello")
	if err := os.WriteFile(bin, []byte("#!/bin/true\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, gz := range []bool{false, true} {
		file := filepath.Join(dir, map[bool]string{false: "plain.tar", true: "gzip.tar"}[gz])
		if _, err := imagearchive.WriteFile(file, imagearchive.Image{
			Refs:   []string{"nodeagent.test/hello:1"},
			Files:  []imagearchive.File{imagearchive.HostFile(bin, "/usr/local/bin/hello", 0o755)},
			Config: imagearchive.Config{Entrypoint: []string{"/usr/local/bin/hello"}},
			Gzip:   gz,
		}); err != nil {
			t.Fatal(err)
		}
		manifest, err := dockerSaveManifest(file)
		if err != nil {
			t.Fatal(err)
		}
		var entries []dockerSaveEntry
		if err := json.Unmarshal(manifest, &entries); err != nil {
			t.Fatalf("manifest.json %s: %v", manifest, err)
		}
		if len(entries) != 1 || !slices.Equal(entries[0].RepoTags, []string{"nodeagent.test/hello:1"}) || len(entries[0].Layers) != 1 {
			t.Fatalf("manifest.json %s, want one image tagged nodeagent.test/hello:1 with its layer", manifest)
		}
		var out bytes.Buffer
		if err := writeWithManifest(&out, file, manifest); err != nil {
			t.Fatal(err)
		}
		names := map[string][]byte{}
		tr := tar.NewReader(&out)
		for {
			hdr, err := tr.Next()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(tr)
			names[strings.TrimPrefix(hdr.Name, "./")] = b
		}
		for _, want := range append([]string{"index.json", "oci-layout", entries[0].Config}, entries[0].Layers...) {
			if _, ok := names[want]; !ok {
				t.Errorf("gzip=%v: %s missing from the stream docker load reads", gz, want)
			}
		}
		if !bytes.Equal(names["manifest.json"], manifest) {
			t.Errorf("gzip=%v: manifest.json not appended", gz)
		}
	}
}

func TestDockerSaveArchivesAreLoadedAsTheyAre(t *testing.T) {
	file := filepath.Join(t.TempDir(), "pause.tar")
	if err := os.WriteFile(file, dockerArchive(t, "pause", "registry.k8s.io/pause:3.10").Bytes, 0o644); err != nil {
		t.Fatal(err)
	}
	if m, err := dockerSaveManifest(file); err != nil || m != nil {
		t.Errorf("docker save archive: manifest %s, %v; want it loaded unchanged", m, err)
	}
}

func TestArchivesDockerCannotLoadAreRefusedByName(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, files map[string][]byte) string {
		var names []string
		for n := range files {
			names = append(names, n)
		}
		slices.Sort(names)
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, tarOf(t, names, files), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	for _, tc := range []struct {
		name  string
		files map[string][]byte
		want  string
	}{
		{"not an image", map[string][]byte{"hello.txt": []byte("hi")}, "neither docker save's manifest.json nor an OCI layout's index.json"},
		{"multi-platform index", map[string][]byte{"index.json": []byte(`{"manifests":[{"mediaType":"application/vnd.oci.image.index.v1+json","digest":"sha256:` + strings.Repeat("a", 64) + `"}]}`)}, "single-platform image manifests only"},
		{"missing manifest blob", map[string][]byte{"index.json": []byte(`{"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:` + strings.Repeat("b", 64) + `"}]}`)}, "is not among the archive's blobs"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			file := write(strings.ReplaceAll(tc.name, " ", "-")+".tar", tc.files)
			_, err := dockerSaveManifest(file)
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), file) {
				t.Errorf("got %v, want an error naming %s with %q", err, file, tc.want)
			}
		})
	}
}
