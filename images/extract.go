package images

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"
)

// extractor copies one file out of an image in the runtime's store.
type extractor interface {
	extract(ctx context.Context, ref, file, dst string) error
}

// Extract copies the regular file at file (an absolute path inside the image)
// out of image ref as the runtime stores it, to dst, and returns the image's
// digest. dst is written beside itself and renamed, so it is whole or absent.
// The image must be in the store already: nothing is pulled.
func Extract(ctx context.Context, o Options, ref, file, dst string) (digest string, err error) {
	p := NewPhase(o)
	s, err := p.store()
	if err != nil {
		return "", err
	}
	ref = Normalize(ref)
	if digest, err = p.digest(ctx, s, ref); err != nil {
		return "", err
	}
	x, ok := s.(extractor)
	if !ok {
		return "", fmt.Errorf("%s: copying files out of images is not supported", p.o.Runtime)
	}
	if !path.IsAbs(file) || path.Clean(file) != file {
		return "", fmt.Errorf("extract %q from %s: want a clean absolute path", file, ref)
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return "", err
	}
	tmp := dst + ".extract-" + randomSuffix()
	defer os.Remove(tmp)
	if err := x.extract(ctx, ref, file, tmp); err != nil {
		return "", fmt.Errorf("copy %s out of image %s: %w", file, ref, err)
	}
	fi, err := os.Lstat(tmp)
	if err != nil {
		return "", fmt.Errorf("copy %s out of image %s: %w", file, ref, err)
	}
	if !fi.Mode().IsRegular() {
		return "", fmt.Errorf("%s in image %s is not a regular file (%s)", file, ref, fi.Mode().Type())
	}
	if err := syncFile(tmp); err != nil {
		return "", err
	}
	if err := os.Rename(tmp, dst); err != nil {
		return "", err
	}
	return digest, nil
}

// Digest returns the digest of image ref in the runtime's store.
func Digest(ctx context.Context, o Options, ref string) (string, error) {
	p := NewPhase(o)
	s, err := p.store()
	if err != nil {
		return "", err
	}
	return p.digest(ctx, s, Normalize(ref))
}

func (p *Phase) digest(ctx context.Context, s store, ref string) (string, error) {
	got, err := s.digests(ctx, []string{ref})
	if err != nil {
		return "", err
	}
	d, ok := got[ref]
	if !ok {
		return "", fmt.Errorf("image %s is not in the %s image store", ref, p.o.Runtime)
	}
	return d, nil
}

// extract mounts the image's unpacked root read-only (`ctr images mount`, a
// view snapshot of the default snapshotter), copies the file and removes the
// view again.
func (c *containerd) extract(ctx context.Context, ref, file, dst string) (err error) {
	mnt, err := os.MkdirTemp(filepath.Dir(dst), ".image-mount-")
	if err != nil {
		return err
	}
	defer func() {
		if rerr := os.Remove(mnt); rerr != nil && err == nil {
			err = fmt.Errorf("remove the mount point %s: %w", mnt, rerr)
		}
	}()
	if _, err := c.run(ctx, nil, "images", "mount", ref, mnt); err != nil {
		return fmt.Errorf("mount: %w", err)
	}
	// Unmounted and the view removed even when the copy failed or ctx ended.
	defer func() {
		if _, uerr := c.run(context.WithoutCancel(ctx), nil, "images", "unmount", "--rm", mnt); uerr != nil {
			err = errors.Join(err, fmt.Errorf("unmount %s: %w", mnt, uerr))
		}
	}()
	return copyRegular(filepath.Join(mnt, filepath.FromSlash(strings.TrimPrefix(file, "/"))), dst)
}

// extract creates a container of the image (never started), copies the file
// out with `docker cp` and removes the container.
func (d *docker) extract(ctx context.Context, ref, file, dst string) (err error) {
	name := "nodeagent-extract-" + randomSuffix()
	if _, err := d.exec.Run(ctx, nil, d.docker, "-H", d.host, "create", "--name", name, ref, file); err != nil {
		return fmt.Errorf("create a container of it: %w", err)
	}
	defer func() {
		if _, rerr := d.exec.Run(context.WithoutCancel(ctx), nil, d.docker, "-H", d.host, "rm", name); rerr != nil {
			err = errors.Join(err, fmt.Errorf("remove container %s: %w", name, rerr))
		}
	}()
	_, err = d.exec.Run(ctx, nil, d.docker, "-H", d.host, "cp", "--follow-link", name+":"+file, dst)
	return err
}

// copyRegular copies the regular file src (symlinks followed) to a new file
// dst with its permission bits.
func copyRegular(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	fi, err := in.Stat()
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%s is not a regular file", src)
	}
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, fi.Mode().Perm())
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

func syncFile(p string) error {
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func randomSuffix() string {
	b := make([]byte, 6)
	_, _ = rand.Read(b) // crypto/rand.Read never fails on Linux (getrandom)
	return hex.EncodeToString(b)
}
