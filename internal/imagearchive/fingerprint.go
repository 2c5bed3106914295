package imagearchive

import (
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"os"
	"slices"
	"strings"
)

// writerVersion changes whenever the bytes written for the same Image change, so
// that fingerprints taken by an older writer no longer match.
const writerVersion = "imagearchive/1"

// Fingerprint digests everything the archive of img is made from: the
// references, the config, the compression, and each file's path, kind, mode,
// link target and content (host files are read and hashed, so this costs a read
// of every source). Equal fingerprints mean WriteFile would write the same bytes,
// which lets a build skip an archive whose inputs did not change.
func (img Image) Fingerprint() (string, error) {
	if err := img.validate(); err != nil {
		return "", err
	}
	type fileFP struct {
		Path, Kind, Link, Content string
		Mode                      fs.FileMode
	}
	fp := struct {
		Version string
		Refs    []string
		Config  runtimeConfig
		Gzip    bool
		Files   []fileFP
	}{
		Version: writerVersion,
		Refs:    slices.Sorted(slices.Values(img.Refs)),
		Config: runtimeConfig{
			User: img.Config.User, Env: img.Config.env(), Entrypoint: img.Config.Entrypoint,
			Cmd: img.Config.Cmd, WorkingDir: cmp.Or(img.Config.WorkingDir, "/"),
		},
		Gzip: img.Gzip,
	}
	for _, f := range img.Files {
		e := fileFP{Path: f.Path, Link: f.Link, Mode: f.Mode}
		switch {
		case f.Dir:
			e.Kind = "dir"
		case f.Link != "":
			e.Kind = "symlink"
		case f.Source != "":
			e.Kind = "file"
			src, _, mode, err := f.source()
			if err != nil {
				return "", fmt.Errorf("fingerprint %s: %w", f.Path, err)
			}
			e.Content, err = sha256Of(src)
			src.Close()
			if err != nil {
				return "", fmt.Errorf("fingerprint %s: %w", f.Path, err)
			}
			e.Mode = mode
		default:
			e.Kind = "file"
			sum := sha256.Sum256(f.Data)
			e.Content = hex.EncodeToString(sum[:])
		}
		fp.Files = append(fp.Files, e)
	}
	slices.SortFunc(fp.Files, func(a, b fileFP) int { return strings.Compare(a.Path, b.Path) })
	b, err := json.Marshal(fp)
	if err != nil {
		return "", fmt.Errorf("fingerprint: %w", err)
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:]), nil
}

// SHA256File returns the hex SHA-256 of a file's content.
func SHA256File(name string) (string, error) {
	f, err := os.Open(name)
	if err != nil {
		return "", err
	}
	defer f.Close()
	return sha256Of(f)
}

// sha256Of returns the hex SHA-256 of what f holds from where it stands.
func sha256Of(f *os.File) (string, error) {
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("read %s: %w", f.Name(), err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
