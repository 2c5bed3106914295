// Package imagearchive writes container images as OCI image layout tarballs, the
// archives that `ctr -n k8s.io images import FILE` (and nodeagent's image phase)
// load without any registry. An image is one linux/amd64 layer made from a list of
// files plus an image config, tagged with one or more full references.
//
// The output is deterministic: entries are sorted, owned by 0:0 and dated at the
// Unix epoch, and JSON is written with sorted keys, so the same inputs give the
// same bytes and the archive can be served as an asset verified by its SHA-256.
//
// Format: the tarball holds `oci-layout`, `index.json` and `blobs/sha256/<hex>`.
// Each manifest descriptor in index.json carries the full reference twice: in
// `io.containerd.image.name` (which containerd's importer prefers) and in
// `org.opencontainers.image.ref.name` (as `docker save` writes it), so neither
// containerd nor other OCI tools need a `--base-name`.
package imagearchive

import (
	"errors"
	"fmt"
	"io/fs"
	"path"
	"strings"

	"github.com/nodeagent/nodeagent/internal/lazyre"
)

// DefaultPath is the PATH an image gets when its config does not set one.
const DefaultPath = "/usr/local/bin:/usr/bin:/bin"

// The only platform written.
const (
	OS           = "linux"
	Architecture = "amd64"
)

// Annotations on index.json's manifest descriptors.
const (
	AnnotationContainerdName = "io.containerd.image.name"
	AnnotationRefName        = "org.opencontainers.image.ref.name"
)

// Media types written.
const (
	MediaTypeIndex     = "application/vnd.oci.image.index.v1+json"
	MediaTypeManifest  = "application/vnd.oci.image.manifest.v1+json"
	MediaTypeConfig    = "application/vnd.oci.image.config.v1+json"
	MediaTypeLayer     = "application/vnd.oci.image.layer.v1.tar"
	MediaTypeLayerGzip = "application/vnd.oci.image.layer.v1.tar+gzip"
)

// Image is what an archive is made from.
type Image struct {
	// Refs are the full references the image is tagged with, each
	// registry/repository:tag (e.g. registry.k8s.io/kube-apiserver:v1.34.4).
	Refs []string
	// Files make up the image's single layer. Parent directories are added
	// (0755) where no File names them.
	Files []File
	// Config is the runtime part of the image config.
	Config Config
	// Gzip compresses the layer; otherwise it is stored as a plain tar.
	Gzip bool
}

// Config is the runtime configuration recorded in the image config.
type Config struct {
	Entrypoint []string
	Cmd        []string
	// Env holds KEY=value entries; PATH=DefaultPath is put first unless one sets PATH.
	Env []string
	// WorkingDir defaults to "/".
	WorkingDir string
	// User defaults to root.
	User string
}

// File is one entry of the image's filesystem. Exactly one kind is set: Source
// (a host file whose bytes are copied, symlinks followed), Link (a symlink), Dir
// (a directory), or none of them (a regular file holding Data).
type File struct {
	Path string // absolute, clean path in the image
	// Mode holds the permission bits plus fs.ModeSetuid, fs.ModeSetgid and
	// fs.ModeSticky. Zero means the source file's permissions, 0644 for Data and
	// 0755 for a directory. Symlinks are always 0777.
	Mode   fs.FileMode
	Source string
	Data   []byte
	Link   string
	Dir    bool
}

// HostFile copies the host file src (symlinks followed) to path in the image.
func HostFile(src, path string, mode fs.FileMode) File {
	return File{Path: path, Source: src, Mode: mode}
}

// Bytes makes a regular file at path holding data.
func Bytes(path string, data []byte, mode fs.FileMode) File {
	return File{Path: path, Data: data, Mode: mode}
}

// Symlink makes path a symlink to target.
func Symlink(path, target string) File { return File{Path: path, Link: target} }

// Dir makes a directory at path.
func Dir(path string, mode fs.FileMode) File { return File{Path: path, Dir: true, Mode: mode} }

const specialBits = fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky

func (f File) validate() error {
	if f.Path == "" || f.Path[0] != '/' || path.Clean(f.Path) != f.Path || f.Path == "/" {
		return fmt.Errorf("path %q: not an absolute, clean path below /", f.Path)
	}
	if strings.ContainsRune(f.Path, 0) || strings.ContainsRune(f.Link, 0) {
		return fmt.Errorf("path %q: contains NUL", f.Path)
	}
	kinds := 0
	for _, set := range []bool{f.Source != "", f.Link != "", f.Dir} {
		if set {
			kinds++
		}
	}
	if kinds > 1 || (f.Data != nil && kinds > 0) {
		return fmt.Errorf("path %q: more than one of source, data, link and dir set", f.Path)
	}
	if f.Mode&^(fs.ModePerm|specialBits) != 0 {
		return fmt.Errorf("path %q: mode %v has bits other than permissions, setuid, setgid and sticky", f.Path, f.Mode)
	}
	return nil
}

// Reference grammar (a subset of the distribution one): a registry host with an
// optional port, one or more lowercase path components, and a tag. The registry
// is required so that containerd stores exactly the name that pod specs use.
var (
	domainRE    = lazyre.New(`^(localhost|[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?(\.[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?)+)(:[0-9]+)?$`)
	componentRE = lazyre.New(`^[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*$`)
	tagRE       = lazyre.New(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$`)
)

// ValidateRef reports whether ref is a full reference registry/repository:tag.
func ValidateRef(ref string) error {
	if len(ref) > 255 {
		return fmt.Errorf("reference %q: longer than 255 characters", ref)
	}
	slash := strings.IndexByte(ref, '/')
	if slash < 0 {
		return fmt.Errorf("reference %q: no registry (want e.g. registry.k8s.io/pause:3.10)", ref)
	}
	domain, rest := ref[:slash], ref[slash+1:]
	if !domainRE().MatchString(domain) {
		return fmt.Errorf("reference %q: registry %q is not a host name (with a dot, or localhost) and optional port", ref, domain)
	}
	colon := strings.LastIndexByte(rest, ':')
	if colon < 0 {
		return fmt.Errorf("reference %q: no tag", ref)
	}
	repo, tag := rest[:colon], rest[colon+1:]
	if !tagRE().MatchString(tag) {
		return fmt.Errorf("reference %q: invalid tag %q", ref, tag)
	}
	for _, c := range strings.Split(repo, "/") {
		if !componentRE().MatchString(c) {
			return fmt.Errorf("reference %q: invalid repository component %q (lowercase letters, digits, separators)", ref, c)
		}
	}
	return nil
}

func (img Image) validate() error {
	if len(img.Refs) == 0 {
		return errors.New("no reference to tag the image with")
	}
	seen := map[string]bool{}
	for _, r := range img.Refs {
		if err := ValidateRef(r); err != nil {
			return err
		}
		if seen[r] {
			return fmt.Errorf("reference %q listed twice", r)
		}
		seen[r] = true
	}
	for _, e := range img.Config.Env {
		if k, _, ok := strings.Cut(e, "="); !ok || k == "" {
			return fmt.Errorf("env %q: not KEY=value", e)
		}
	}
	if wd := img.Config.WorkingDir; wd != "" && (wd[0] != '/' || path.Clean(wd) != wd) {
		return fmt.Errorf("working dir %q: not an absolute, clean path", wd)
	}
	for _, f := range img.Files {
		if err := f.validate(); err != nil {
			return err
		}
	}
	return nil
}

// env returns the image's environment with PATH first.
func (c Config) env() []string {
	for _, e := range c.Env {
		if strings.HasPrefix(e, "PATH=") {
			return c.Env
		}
	}
	return append([]string{"PATH=" + DefaultPath}, c.Env...)
}

// FileName is the conventional archive name for a reference: the last
// repository component and the tag, e.g. kube-apiserver-v1.34.4.tar.
func FileName(ref string) (string, error) {
	if err := ValidateRef(ref); err != nil {
		return "", err
	}
	i := strings.LastIndexByte(ref, ':')
	repo, tag := ref[:i], ref[i+1:]
	return path.Base(repo) + "-" + tag + ".tar", nil
}
