// Package fsutil holds the two file primitives every part of the agent relies on:
// resolving host paths under --root, and writing files so that a crash never leaves
// a half-written file behind.
package fsutil

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// Root is the host filesystem root the agent works on ("/" on a real node; a
// directory in tests and in `bake --root`). Every host path goes through it.
type Root string

// Path returns the host path p resolved under the root.
func (r Root) Path(p string) string {
	if r == "" || r == "/" {
		return filepath.Clean("/" + p)
	}
	return filepath.Join(string(r), filepath.Clean("/"+p))
}

// WriteFileAtomic writes data to path through a temporary file in the same
// directory, fsyncs it, renames it into place and fsyncs the directory. Readers see
// the old content or the new one, never a mix. Parent directories are created 0755.
func WriteFileAtomic(path string, data []byte, perm fs.FileMode) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	name := tmp.Name()
	cleanup := func(err error) error {
		tmp.Close()
		os.Remove(name)
		return fmt.Errorf("write %s: %w", path, err)
	}
	if _, err := tmp.Write(data); err != nil {
		return cleanup(err)
	}
	if err := tmp.Chmod(perm); err != nil {
		return cleanup(err)
	}
	if err := tmp.Sync(); err != nil {
		return cleanup(err)
	}
	if err := tmp.Close(); err != nil {
		return cleanup(err)
	}
	// gofail: var fsutilBeforeRename string
	// failpointCrash("fsutilBeforeRename", fsutilBeforeRename, path)
	if err := os.Rename(name, path); err != nil {
		os.Remove(name)
		return fmt.Errorf("write %s: %w", path, err)
	}
	return SyncDir(dir)
}

// WriteFileIfChanged writes data atomically only when the file's content or mode
// differs, so that watchers (kubelet's static pod loop, systemd) see no change when
// there is none. It reports whether it wrote.
func WriteFileIfChanged(path string, data []byte, perm fs.FileMode) (bool, error) {
	same, err := FileEquals(path, data, perm)
	if err != nil {
		return false, err
	}
	if same {
		return false, nil
	}
	return true, WriteFileAtomic(path, data, perm)
}

// FileEquals reports whether path exists with exactly this content and mode.
func FileEquals(path string, data []byte, perm fs.FileMode) (bool, error) {
	fi, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if fi.Mode().Perm() != perm.Perm() || fi.Size() != int64(len(data)) {
		return false, nil
	}
	old, err := os.ReadFile(path)
	if err != nil {
		return false, err
	}
	return bytes.Equal(old, data), nil
}

// SyncDir makes a rename or create in dir durable: a file renamed into place is
// only safe across a crash once its directory entry is on disk.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil && !errors.Is(err, os.ErrInvalid) {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}
