package imagearchive

import (
	"archive/tar"
	"bytes"
	"cmp"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// epoch is the modification time of every tar entry.
var epoch = time.Unix(0, 0).UTC()

// Result describes a written archive.
type Result struct {
	SHA256   string // hex SHA-256 of the whole archive: the asset's hash
	Size     int64  // bytes of the archive
	Manifest string // digest of the image manifest ("sha256:…"): containerd's image target
	Config   string // digest of the image config: the image ID kubelet and crictl show
	Layer    string // digest of the layer blob
	DiffID   string // digest of the uncompressed layer
}

// WriteFile writes img as an archive at file, atomically: the file appears
// complete or not at all. Temporary data goes to file's directory.
func WriteFile(file string, img Image) (Result, error) {
	dir := filepath.Dir(file)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return Result{}, fmt.Errorf("image archive %s: %w", file, err)
	}
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(file)+".tmp-*")
	if err != nil {
		return Result{}, fmt.Errorf("image archive %s: %w", file, err)
	}
	fail := func(err error) (Result, error) {
		tmp.Close()
		os.Remove(tmp.Name())
		return Result{}, fmt.Errorf("image archive %s: %w", file, err)
	}
	res, err := write(tmp, img, dir)
	if err != nil {
		return fail(err)
	}
	if err := tmp.Chmod(0o644); err != nil {
		return fail(err)
	}
	if err := tmp.Sync(); err != nil {
		return fail(err)
	}
	if err := tmp.Close(); err != nil {
		return fail(err)
	}
	if err := os.Rename(tmp.Name(), file); err != nil {
		os.Remove(tmp.Name())
		return Result{}, fmt.Errorf("image archive %s: %w", file, err)
	}
	return res, nil
}

// Write writes img as an archive to w. The layer is staged in a temporary file
// under os.TempDir, since its digest must be known before it is written.
func Write(w io.Writer, img Image) (Result, error) {
	res, err := write(w, img, "")
	if err != nil {
		return Result{}, fmt.Errorf("image archive %v: %w", img.Refs, err)
	}
	return res, nil
}

func write(w io.Writer, img Image, tmpDir string) (Result, error) {
	if err := img.validate(); err != nil {
		return Result{}, err
	}
	files, err := layout(img.Files)
	if err != nil {
		return Result{}, err
	}
	layer, err := writeLayer(tmpDir, files, img.Gzip)
	if err != nil {
		return Result{}, err
	}
	defer layer.file.Close()

	cfg, err := json.Marshal(imageConfig{
		Architecture: Architecture,
		OS:           OS,
		Config: runtimeConfig{
			User:       img.Config.User,
			Env:        img.Config.env(),
			Entrypoint: img.Config.Entrypoint,
			Cmd:        img.Config.Cmd,
			WorkingDir: cmp.Or(img.Config.WorkingDir, "/"),
		},
		RootFS: rootFS{Type: "layers", DiffIDs: []string{layer.diffID}},
	})
	if err != nil {
		return Result{}, fmt.Errorf("encode image config: %w", err)
	}
	cfgDesc := descriptor{MediaType: MediaTypeConfig, Digest: digestOf(cfg), Size: int64(len(cfg))}
	layerDesc := descriptor{MediaType: layer.mediaType, Digest: layer.digest, Size: layer.size}
	mf, err := json.Marshal(manifest{
		SchemaVersion: 2,
		MediaType:     MediaTypeManifest,
		Config:        cfgDesc,
		Layers:        []descriptor{layerDesc},
	})
	if err != nil {
		return Result{}, fmt.Errorf("encode manifest: %w", err)
	}
	mfDesc := descriptor{MediaType: MediaTypeManifest, Digest: digestOf(mf), Size: int64(len(mf))}
	idx := index{SchemaVersion: 2, MediaType: MediaTypeIndex}
	for _, ref := range slices.Sorted(slices.Values(img.Refs)) {
		d := mfDesc
		d.Platform = &platform{Architecture: Architecture, OS: OS}
		d.Annotations = map[string]string{AnnotationContainerdName: ref, AnnotationRefName: ref}
		idx.Manifests = append(idx.Manifests, d)
	}
	idxJSON, err := json.Marshal(idx)
	if err != nil {
		return Result{}, fmt.Errorf("encode index: %w", err)
	}
	layoutJSON := []byte(`{"imageLayoutVersion":"1.0.0"}`)

	type blob struct {
		digest string
		size   int64
		open   func() (io.Reader, error)
	}
	fromBytes := func(b []byte) func() (io.Reader, error) {
		return func() (io.Reader, error) { return bytes.NewReader(b), nil }
	}
	blobs := []blob{
		{cfgDesc.Digest, cfgDesc.Size, fromBytes(cfg)},
		{mfDesc.Digest, mfDesc.Size, fromBytes(mf)},
		{layerDesc.Digest, layerDesc.Size, func() (io.Reader, error) {
			_, err := layer.file.Seek(0, io.SeekStart)
			return layer.file, err
		}},
	}
	slices.SortFunc(blobs, func(a, b blob) int { return strings.Compare(a.digest, b.digest) })

	out := newHashWriter(w)
	tw := tar.NewWriter(out)
	for _, d := range []string{"blobs/", "blobs/sha256/"} {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d, Mode: 0o755, ModTime: epoch}); err != nil {
			return Result{}, fmt.Errorf("write archive: %w", err)
		}
	}
	for _, b := range blobs {
		r, err := b.open()
		if err != nil {
			return Result{}, fmt.Errorf("read staged blob %s: %w", b.digest, err)
		}
		if err := writeTarFile(tw, "blobs/sha256/"+strings.TrimPrefix(b.digest, "sha256:"), b.size, r); err != nil {
			return Result{}, fmt.Errorf("write archive: %w", err)
		}
	}
	for _, f := range []struct {
		name string
		data []byte
	}{{"index.json", idxJSON}, {"oci-layout", layoutJSON}} {
		if err := writeTarFile(tw, f.name, int64(len(f.data)), bytes.NewReader(f.data)); err != nil {
			return Result{}, fmt.Errorf("write archive: %w", err)
		}
	}
	if err := tw.Close(); err != nil {
		return Result{}, fmt.Errorf("write archive: %w", err)
	}
	return Result{
		SHA256:   hex.EncodeToString(out.h.Sum(nil)),
		Size:     out.n,
		Manifest: mfDesc.Digest,
		Config:   cfgDesc.Digest,
		Layer:    layerDesc.Digest,
		DiffID:   layer.diffID,
	}, nil
}

func writeTarFile(tw *tar.Writer, name string, size int64, r io.Reader) error {
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: size, ModTime: epoch}); err != nil {
		return err
	}
	n, err := io.Copy(tw, r)
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	if n != size {
		return fmt.Errorf("%s: wrote %d bytes, want %d", name, n, size)
	}
	return nil
}

// layout returns the files with their missing parent directories added, sorted
// so that every directory comes before what it holds. Two files at one path, or
// a file below a non-directory, are errors.
func layout(files []File) ([]File, error) {
	byPath := make(map[string]File, len(files))
	for _, f := range files {
		if _, dup := byPath[f.Path]; dup {
			return nil, fmt.Errorf("path %s: listed twice", f.Path)
		}
		byPath[f.Path] = f
	}
	for _, f := range files {
		for p := path.Dir(f.Path); p != "/"; p = path.Dir(p) {
			parent, ok := byPath[p]
			if !ok {
				byPath[p] = Dir(p, 0)
				continue
			}
			if !parent.Dir {
				return nil, fmt.Errorf("path %s: parent %s is not a directory", f.Path, p)
			}
		}
	}
	out := make([]File, 0, len(byPath))
	for _, f := range byPath {
		out = append(out, f)
	}
	// A plain byte order puts a directory before its contents: a parent is a
	// prefix of its children.
	slices.SortFunc(out, func(a, b File) int { return strings.Compare(a.Path, b.Path) })
	return out, nil
}

type stagedLayer struct {
	file      *os.File
	mediaType string
	digest    string
	diffID    string
	size      int64
}

// writeLayer writes the layer tar (gzip-compressed if asked) to an unlinked
// temporary file in dir, hashing it compressed and uncompressed on the way.
func writeLayer(dir string, files []File, gz bool) (*stagedLayer, error) {
	f, err := os.CreateTemp(dir, ".layer-*")
	if err != nil {
		return nil, fmt.Errorf("stage layer: %w", err)
	}
	os.Remove(f.Name()) // the open descriptor keeps it; nothing is left behind on a crash
	fail := func(err error) (*stagedLayer, error) {
		f.Close()
		return nil, err
	}
	blob := newHashWriter(f)
	var uncompressed *hashWriter
	var zw *gzip.Writer
	if gz {
		zw = gzip.NewWriter(blob) // no name, no mtime in the header: deterministic
		uncompressed = newHashWriter(zw)
	} else {
		uncompressed = blob
	}
	tw := tar.NewWriter(uncompressed)
	for _, file := range files {
		if err := writeEntry(tw, file); err != nil {
			return fail(err)
		}
	}
	if err := tw.Close(); err != nil {
		return fail(fmt.Errorf("stage layer: %w", err))
	}
	l := &stagedLayer{file: f, mediaType: MediaTypeLayer, size: blob.n}
	l.diffID = "sha256:" + hex.EncodeToString(uncompressed.h.Sum(nil))
	if gz {
		if err := zw.Close(); err != nil {
			return fail(fmt.Errorf("stage layer: %w", err))
		}
		l.mediaType, l.size = MediaTypeLayerGzip, blob.n
	}
	l.digest = "sha256:" + hex.EncodeToString(blob.h.Sum(nil))
	return l, nil
}

func writeEntry(tw *tar.Writer, f File) error {
	name := strings.TrimPrefix(f.Path, "/")
	hdr := &tar.Header{Name: name, ModTime: epoch}
	switch {
	case f.Dir:
		hdr.Typeflag, hdr.Name, hdr.Mode = tar.TypeDir, name+"/", tarMode(f.Mode, 0o755)
		return wrapEntry(f, tw.WriteHeader(hdr))
	case f.Link != "":
		hdr.Typeflag, hdr.Linkname, hdr.Mode = tar.TypeSymlink, f.Link, 0o777
		return wrapEntry(f, tw.WriteHeader(hdr))
	case f.Source == "":
		hdr.Typeflag, hdr.Mode, hdr.Size = tar.TypeReg, tarMode(f.Mode, 0o644), int64(len(f.Data))
		if err := tw.WriteHeader(hdr); err != nil {
			return wrapEntry(f, err)
		}
		_, err := tw.Write(f.Data)
		return wrapEntry(f, err)
	}
	src, size, mode, err := f.source()
	if err != nil {
		return wrapEntry(f, err)
	}
	defer src.Close()
	hdr.Typeflag, hdr.Mode, hdr.Size = tar.TypeReg, tarMode(mode, 0o644), size
	if err := tw.WriteHeader(hdr); err != nil {
		return wrapEntry(f, err)
	}
	if _, err := io.CopyN(tw, src, size); err != nil {
		return wrapEntry(f, fmt.Errorf("copy %s: %w (did it change while being read?)", f.Source, err))
	}
	return nil
}

// source opens the host file of f, which must be a regular file, and returns it
// with its size and the mode of its entry: f.Mode, or when that is zero the
// source's permission and special bits.
func (f File) source() (src *os.File, size int64, mode fs.FileMode, err error) {
	src, err = os.Open(f.Source)
	if err != nil {
		return nil, 0, 0, err
	}
	st, err := src.Stat()
	if err != nil {
		src.Close()
		return nil, 0, 0, err
	}
	if !st.Mode().IsRegular() {
		src.Close()
		return nil, 0, 0, fmt.Errorf("%s is not a regular file", f.Source)
	}
	mode = f.Mode
	if mode == 0 {
		mode = st.Mode() & (fs.ModePerm | specialBits)
	}
	return src, st.Size(), mode, nil
}

func wrapEntry(f File, err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("layer entry %s: %w", f.Path, err)
}

// tarMode converts permission and special bits to tar's mode field.
func tarMode(m, def fs.FileMode) int64 {
	if m == 0 {
		m = def
	}
	mode := int64(m.Perm())
	if m&fs.ModeSetuid != 0 {
		mode |= 0o4000
	}
	if m&fs.ModeSetgid != 0 {
		mode |= 0o2000
	}
	if m&fs.ModeSticky != 0 {
		mode |= 0o1000
	}
	return mode
}

type hashWriter struct {
	w io.Writer
	h hash.Hash
	n int64
}

func newHashWriter(w io.Writer) *hashWriter { return &hashWriter{w: w, h: sha256.New()} }

func (hw *hashWriter) Write(p []byte) (int, error) {
	n, err := hw.w.Write(p)
	hw.h.Write(p[:n])
	hw.n += int64(n)
	return n, err
}

func digestOf(b []byte) string {
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}
