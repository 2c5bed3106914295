package images

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/nodeagent/nodeagent/internal/lazyre"
)

// Docker Engine before 25 loads only docker-save archives (manifest.json);
// OCI image layout tarballs (index.json), which `ctr images import` and newer
// engines read, gain that manifest on the way: every entry is passed through
// unchanged and a manifest.json naming each image's config, layers and tag is
// appended. The blobs are the same files, so the image ID (the config's
// digest) is the one containerd would record.

// ociLimits bound what is read into memory while scanning an archive.
const (
	maxSmallBlob  = 1 << 20  // manifests and configs are a few KiB
	maxSmallTotal = 32 << 20 // over all small blobs kept
)

var blobPathRE = lazyre.New(`^(?:\./)?blobs/sha256/([0-9a-f]{64})$`)

// dockerSaveEntry is one image of docker save's manifest.json.
type dockerSaveEntry struct {
	Config   string   `json:"Config"`
	RepoTags []string `json:"RepoTags"`
	Layers   []string `json:"Layers"`
}

type ociDescriptor struct {
	MediaType   string            `json:"mediaType"`
	Digest      string            `json:"digest"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

// openArchive reads an archive file, gunzipping it when it is compressed.
func openArchive(file string) (io.Reader, func(), error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, nil, err
	}
	br := bufio.NewReader(f)
	magic, _ := br.Peek(2)
	if !bytes.Equal(magic, []byte{0x1f, 0x8b}) {
		return br, func() { f.Close() }, nil
	}
	zr, err := gzip.NewReader(br)
	if err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("gunzip %s: %w", file, err)
	}
	return zr, func() { zr.Close(); f.Close() }, nil
}

// dockerSaveManifest returns the manifest.json an OCI layout archive needs to
// be loaded by `docker load`, or nil when the archive is docker save's own.
func dockerSaveManifest(file string) ([]byte, error) {
	r, done, err := openArchive(file)
	if err != nil {
		return nil, err
	}
	defer done()
	var index []byte
	blobs := map[string][]byte{} // digest hex → content, small blobs only
	kept := 0
	tr := tar.NewReader(r)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", file, err)
		}
		name := strings.TrimPrefix(hdr.Name, "./")
		switch {
		case name == "manifest.json":
			return nil, nil
		case name == "index.json":
			if index, err = io.ReadAll(io.LimitReader(tr, maxSmallBlob+1)); err != nil {
				return nil, fmt.Errorf("read %s: index.json: %w", file, err)
			}
			if len(index) > maxSmallBlob {
				return nil, fmt.Errorf("read %s: index.json is larger than %d bytes", file, maxSmallBlob)
			}
		default:
			m := blobPathRE().FindStringSubmatch(name)
			if m == nil || hdr.Typeflag != tar.TypeReg || hdr.Size > maxSmallBlob || kept+int(hdr.Size) > maxSmallTotal {
				continue
			}
			b, err := io.ReadAll(tr)
			if err != nil {
				return nil, fmt.Errorf("read %s: %s: %w", file, name, err)
			}
			blobs[m[1]] = b
			kept += len(b)
		}
	}
	if index == nil {
		return nil, fmt.Errorf("%s has neither docker save's manifest.json nor an OCI layout's index.json", file)
	}
	var idx struct {
		Manifests []ociDescriptor `json:"manifests"`
	}
	if err := json.Unmarshal(index, &idx); err != nil {
		return nil, fmt.Errorf("%s: index.json: %w", file, err)
	}
	blob := func(d ociDescriptor, what string) ([]byte, error) {
		hex, ok := strings.CutPrefix(d.Digest, "sha256:")
		b, found := blobs[hex]
		if !ok || !found {
			return nil, fmt.Errorf("%s: %s %s is not among the archive's blobs", file, what, d.Digest)
		}
		return b, nil
	}
	var out []dockerSaveEntry
	for _, d := range idx.Manifests {
		switch d.MediaType {
		case "application/vnd.oci.image.manifest.v1+json", "application/vnd.docker.distribution.manifest.v2+json":
		default:
			return nil, fmt.Errorf("%s: index.json lists a %s; docker load (Engine before 25) takes single-platform image manifests only", file, d.MediaType)
		}
		b, err := blob(d, "manifest")
		if err != nil {
			return nil, err
		}
		var man struct {
			Config ociDescriptor   `json:"config"`
			Layers []ociDescriptor `json:"layers"`
		}
		if err := json.Unmarshal(b, &man); err != nil {
			return nil, fmt.Errorf("%s: manifest %s: %w", file, d.Digest, err)
		}
		e := dockerSaveEntry{Config: blobPath(man.Config.Digest), RepoTags: []string{}}
		if _, err := blob(man.Config, "config"); err != nil {
			return nil, err
		}
		for _, l := range man.Layers {
			e.Layers = append(e.Layers, blobPath(l.Digest))
		}
		if ref := refOf(d.Annotations); ref != "" {
			e.RepoTags = append(e.RepoTags, ref)
		}
		out = append(out, e)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s: index.json lists no image", file)
	}
	b, err := json.Marshal(out)
	if err != nil {
		return nil, fmt.Errorf("encode manifest.json: %w", err)
	}
	return b, nil
}

func blobPath(digest string) string { return "blobs/sha256/" + strings.TrimPrefix(digest, "sha256:") }

// refOf is the image's full name:tag from the annotations containerd and OCI
// tools write (the OCI one may hold only a tag, which names nothing alone).
func refOf(a map[string]string) string {
	for _, k := range []string{"io.containerd.image.name", "org.opencontainers.image.ref.name"} {
		ref := a[k]
		if ref == "" || strings.Contains(ref, "@") {
			continue
		}
		last := ref[strings.LastIndex(ref, "/")+1:]
		if strings.Contains(ref, "/") && strings.Contains(last, ":") {
			return ref
		}
	}
	return ""
}

// writeWithManifest copies the archive's entries to w and appends manifest.json.
func writeWithManifest(w io.Writer, file string, manifest []byte) error {
	r, done, err := openArchive(file)
	if err != nil {
		return err
	}
	defer done()
	tr, tw := tar.NewReader(r), tar.NewWriter(w)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("read %s: %w", file, err)
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if _, err := io.Copy(tw, tr); err != nil {
			return err
		}
	}
	if err := tw.WriteHeader(&tar.Header{Name: "manifest.json", Mode: 0o644, Size: int64(len(manifest)), Typeflag: tar.TypeReg}); err != nil {
		return err
	}
	if _, err := tw.Write(manifest); err != nil {
		return err
	}
	return tw.Close()
}
