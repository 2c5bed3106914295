// Package releasearchive writes archives laid out as upstream projects publish
// their releases (containerd's tar.gz with bin/…, the CNI plugins' flat tgz with
// "./" names, zips), from bytes or host files, for the tests and the demo to
// serve as assets. Entries are written in the given order with a fixed time, so
// the same input gives the same archive (and SHA-256).
package releasearchive

import (
	"archive/tar"
	"archive/zip"
	"compress/gzip"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// File is one entry of an archive.
type File struct {
	Name string // as stored, e.g. "bin/containerd", "./bridge", "../evil"
	// Exactly one of the following: the content, a host file to copy, a link
	// target, or a directory.
	Body     []byte
	From     string
	Symlink  string
	Hardlink string
	Dir      bool
	Mode     fs.FileMode // default 0755 for files and directories
}

var stamp = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)

func (f File) mode() fs.FileMode {
	if f.Mode == 0 {
		return 0o755
	}
	return f.Mode
}

func (f File) open() (io.ReadCloser, int64, error) {
	if f.From == "" {
		return io.NopCloser(strings.NewReader(string(f.Body))), int64(len(f.Body)), nil
	}
	h, err := os.Open(f.From)
	if err != nil {
		return nil, 0, err
	}
	fi, err := h.Stat()
	if err != nil {
		h.Close()
		return nil, 0, err
	}
	return h, fi.Size(), nil
}

// Write writes files to path as a tar, tar.gz (for names ending in .tar.gz or
// .tgz) or zip (.zip) archive.
func Write(path string, files []File) error {
	out, err := os.Create(path)
	if err != nil {
		return err
	}
	switch {
	case strings.HasSuffix(path, ".zip"):
		err = writeZip(out, files)
	case strings.HasSuffix(path, ".tar.gz"), strings.HasSuffix(path, ".tgz"):
		zw, _ := gzip.NewWriterLevel(out, gzip.BestSpeed)
		err = writeTar(zw, files)
		if cerr := zw.Close(); err == nil {
			err = cerr
		}
	default:
		err = writeTar(out, files)
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
		return fmt.Errorf("write %s: %w", filepath.Base(path), err)
	}
	return nil
}

func writeTar(w io.Writer, files []File) error {
	tw := tar.NewWriter(w)
	for _, f := range files {
		h := &tar.Header{Name: f.Name, Mode: int64(f.mode()), ModTime: stamp, Format: tar.FormatPAX}
		switch {
		case f.Dir:
			h.Typeflag = tar.TypeDir
		case f.Symlink != "":
			h.Typeflag, h.Linkname = tar.TypeSymlink, f.Symlink
		case f.Hardlink != "":
			h.Typeflag, h.Linkname = tar.TypeLink, f.Hardlink
		default:
			body, size, err := f.open()
			if err != nil {
				return err
			}
			h.Typeflag, h.Size = tar.TypeReg, size
			if err := tw.WriteHeader(h); err != nil {
				body.Close()
				return err
			}
			_, err = io.Copy(tw, body)
			body.Close()
			if err != nil {
				return err
			}
			continue
		}
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
	}
	return tw.Close()
}

func writeZip(w io.Writer, files []File) error {
	zw := zip.NewWriter(w)
	for _, f := range files {
		h := &zip.FileHeader{Name: f.Name, Method: zip.Deflate, Modified: stamp}
		var body io.ReadCloser
		switch {
		case f.Dir:
			h.Name = strings.TrimSuffix(f.Name, "/") + "/"
			h.SetMode(fs.ModeDir | f.mode())
		case f.Symlink != "":
			h.SetMode(fs.ModeSymlink | 0o777)
			body = io.NopCloser(strings.NewReader(f.Symlink))
		case f.Hardlink != "":
			return fmt.Errorf("zip has no hard links (%s)", f.Name)
		default:
			h.SetMode(f.mode())
			var err error
			if body, _, err = f.open(); err != nil {
				return err
			}
		}
		fw, err := zw.CreateHeader(h)
		if err != nil {
			return err
		}
		if body != nil {
			_, err = io.Copy(fw, body)
			body.Close()
			if err != nil {
				return err
			}
		}
	}
	return zw.Close()
}
