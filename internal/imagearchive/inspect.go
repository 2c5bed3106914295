package imagearchive

import (
	"archive/tar"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"slices"
	"strings"

	"github.com/nodeagent/nodeagent/internal/lazyre"
)

// Inspection is what an archive holds, read back and checked.
type Inspection struct {
	Refs     []string // the full references, sorted
	Manifest string   // digest of the image manifest
	Config   Config   // the runtime config
	Platform string   // os/architecture, e.g. linux/amd64
	Files    []FileInfo
}

// FileInfo is one entry of the image's layers, in archive order.
type FileInfo struct {
	Path string      // absolute path in the image
	Mode fs.FileMode // type and permission bits
	Size int64       // bytes of a regular file
	Link string      // symlink target
}

// maxMetadata bounds the JSON documents read into memory.
const maxMetadata = 4 << 20

var blobNameRE = lazyre.New(`^blobs/sha256/[0-9a-f]{64}$`)

// Inspect reads an archive written by this package (or any single-image OCI
// layout tarball) and checks it the way an importer relies on it: an OCI layout
// version, every blob matching its digest and size, every manifest descriptor in
// index.json naming one image with a full reference, and each layer's
// uncompressed digest matching the config's diff_ids.
func Inspect(file string) (*Inspection, error) {
	insp, err := inspect(file)
	if err != nil {
		return nil, fmt.Errorf("inspect %s: %w", file, err)
	}
	return insp, nil
}

func inspect(file string) (*Inspection, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, err
	}
	defer f.Close()

	sizes := map[string]int64{}  // digest → size of every blob
	small := map[string][]byte{} // digest → content of blobs small enough to be metadata
	top := map[string][]byte{}   // oci-layout, index.json
	tr := tar.NewReader(f)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("read archive: %w", err)
		}
		name := strings.TrimPrefix(hdr.Name, "./")
		switch {
		case hdr.Typeflag == tar.TypeDir:
			continue
		case hdr.Typeflag != tar.TypeReg:
			return nil, fmt.Errorf("entry %s: not a regular file or directory", hdr.Name)
		case name == "oci-layout" || name == "index.json":
			b, err := io.ReadAll(io.LimitReader(tr, maxMetadata+1))
			if err != nil {
				return nil, fmt.Errorf("read %s: %w", name, err)
			}
			if len(b) > maxMetadata {
				return nil, fmt.Errorf("%s: larger than %d bytes", name, maxMetadata)
			}
			top[name] = b
		case blobNameRE().MatchString(name):
			digest := "sha256:" + strings.TrimPrefix(name, "blobs/sha256/")
			if _, dup := sizes[digest]; dup {
				return nil, fmt.Errorf("blob %s: stored twice", digest)
			}
			h := sha256.New()
			var keep []byte
			var w io.Writer = h
			if hdr.Size <= maxMetadata {
				keep = make([]byte, 0, hdr.Size)
				w = io.MultiWriter(h, (*appender)(&keep))
			}
			if _, err := io.Copy(w, tr); err != nil {
				return nil, fmt.Errorf("read blob %s: %w", digest, err)
			}
			if got := "sha256:" + hex.EncodeToString(h.Sum(nil)); got != digest {
				return nil, fmt.Errorf("blob %s: content has digest %s", digest, got)
			}
			sizes[digest] = hdr.Size
			if keep != nil {
				small[digest] = keep
			}
		default:
			return nil, fmt.Errorf("entry %s: not part of an OCI image layout", hdr.Name)
		}
	}

	var lay ociLayout
	if err := decodeTop(top, "oci-layout", &lay); err != nil {
		return nil, err
	}
	if lay.ImageLayoutVersion != "1.0.0" {
		return nil, fmt.Errorf("oci-layout: version %q, want 1.0.0", lay.ImageLayoutVersion)
	}
	var idx index
	if err := decodeTop(top, "index.json", &idx); err != nil {
		return nil, err
	}
	if idx.SchemaVersion != 2 || len(idx.Manifests) == 0 {
		return nil, fmt.Errorf("index.json: schemaVersion %d with %d manifests, want 2 and at least one", idx.SchemaVersion, len(idx.Manifests))
	}
	insp := &Inspection{}
	for _, d := range idx.Manifests {
		name := d.Annotations[AnnotationContainerdName]
		if err := ValidateRef(name); err != nil {
			return nil, fmt.Errorf("index.json: manifest %s: %s: %w", d.Digest, AnnotationContainerdName, err)
		}
		if rn := d.Annotations[AnnotationRefName]; rn != name {
			return nil, fmt.Errorf("index.json: manifest %s: %s is %q, %s is %q", d.Digest, AnnotationRefName, rn, AnnotationContainerdName, name)
		}
		if insp.Manifest != "" && d.Digest != insp.Manifest {
			return nil, fmt.Errorf("index.json: more than one image (%s and %s)", insp.Manifest, d.Digest)
		}
		if d.MediaType != MediaTypeManifest {
			return nil, fmt.Errorf("index.json: manifest %s: media type %q", d.Digest, d.MediaType)
		}
		if d.Platform == nil {
			return nil, fmt.Errorf("index.json: manifest %s: no platform", d.Digest)
		}
		insp.Manifest = d.Digest
		insp.Platform = d.Platform.OS + "/" + d.Platform.Architecture
		insp.Refs = append(insp.Refs, name)
	}
	slices.Sort(insp.Refs)

	var mf manifest
	if err := decodeBlob(sizes, small, descriptor{Digest: insp.Manifest, Size: -1}, "manifest", &mf); err != nil {
		return nil, err
	}
	if mf.SchemaVersion != 2 || mf.Config.MediaType != MediaTypeConfig {
		return nil, fmt.Errorf("manifest: schemaVersion %d, config media type %q", mf.SchemaVersion, mf.Config.MediaType)
	}
	var cfg imageConfig
	if err := decodeBlob(sizes, small, mf.Config, "config", &cfg); err != nil {
		return nil, err
	}
	if got := cfg.OS + "/" + cfg.Architecture; got != insp.Platform {
		return nil, fmt.Errorf("config: platform %s, index says %s", got, insp.Platform)
	}
	if cfg.RootFS.Type != "layers" || len(cfg.RootFS.DiffIDs) != len(mf.Layers) {
		return nil, fmt.Errorf("config: rootfs %q with %d diff_ids for %d layers", cfg.RootFS.Type, len(cfg.RootFS.DiffIDs), len(mf.Layers))
	}
	insp.Config = Config{
		Entrypoint: cfg.Config.Entrypoint, Cmd: cfg.Config.Cmd, Env: cfg.Config.Env,
		WorkingDir: cfg.Config.WorkingDir, User: cfg.Config.User,
	}
	for i, l := range mf.Layers {
		size, ok := sizes[l.Digest]
		if !ok || size != l.Size {
			return nil, fmt.Errorf("layer %s: missing, or size %d not the manifest's %d", l.Digest, size, l.Size)
		}
		files, diffID, err := readLayer(f, l)
		if err != nil {
			return nil, fmt.Errorf("layer %s: %w", l.Digest, err)
		}
		if diffID != cfg.RootFS.DiffIDs[i] {
			return nil, fmt.Errorf("layer %s: uncompressed digest %s, config's diff_id %s", l.Digest, diffID, cfg.RootFS.DiffIDs[i])
		}
		insp.Files = append(insp.Files, files...)
	}
	return insp, nil
}

func decodeTop(top map[string][]byte, name string, v any) error {
	b, ok := top[name]
	if !ok {
		return fmt.Errorf("no %s", name)
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	return nil
}

func decodeBlob(sizes map[string]int64, small map[string][]byte, d descriptor, what string, v any) error {
	b, ok := small[d.Digest]
	if !ok {
		return fmt.Errorf("%s %s: not in the archive (or larger than %d bytes)", what, d.Digest, maxMetadata)
	}
	if d.Size >= 0 && sizes[d.Digest] != d.Size {
		return fmt.Errorf("%s %s: %d bytes, descriptor says %d", what, d.Digest, sizes[d.Digest], d.Size)
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("%s %s: %w", what, d.Digest, err)
	}
	return nil
}

// readLayer finds the layer blob in the archive and lists its entries, returning
// its uncompressed digest.
func readLayer(f *os.File, l descriptor) ([]FileInfo, string, error) {
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return nil, "", err
	}
	want := "blobs/sha256/" + strings.TrimPrefix(l.Digest, "sha256:")
	tr := tar.NewReader(f)
	for {
		hdr, err := tr.Next()
		if err != nil {
			return nil, "", fmt.Errorf("find blob: %w", err)
		}
		if strings.TrimPrefix(hdr.Name, "./") == want {
			break
		}
	}
	var r io.Reader = tr
	switch l.MediaType {
	case MediaTypeLayer:
	case MediaTypeLayerGzip:
		zr, err := gzip.NewReader(tr)
		if err != nil {
			return nil, "", fmt.Errorf("gunzip: %w", err)
		}
		defer zr.Close()
		r = zr
	default:
		return nil, "", fmt.Errorf("media type %q", l.MediaType)
	}
	h := sha256.New()
	lr := tar.NewReader(io.TeeReader(r, h))
	var files []FileInfo
	for {
		hdr, err := lr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, "", fmt.Errorf("read layer tar: %w", err)
		}
		fi := hdr.FileInfo()
		files = append(files, FileInfo{
			Path: "/" + strings.TrimSuffix(strings.TrimPrefix(hdr.Name, "./"), "/"),
			Mode: fi.Mode(),
			Size: hdr.Size,
			Link: hdr.Linkname,
		})
	}
	// The tar reader stops at the end-of-archive marker; hash the padding after it too.
	if _, err := io.Copy(h, r); err != nil {
		return nil, "", fmt.Errorf("read layer: %w", err)
	}
	return files, "sha256:" + hex.EncodeToString(h.Sum(nil)), nil
}

// appender is an io.Writer appending to a byte slice.
type appender []byte

func (a *appender) Write(p []byte) (int, error) {
	*a = append(*a, p...)
	return len(p), nil
}
