package assets

import (
	"archive/tar"
	"archive/zip"
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"github.com/nodeagent/nodeagent/bootstrap"
	"github.com/nodeagent/nodeagent/config"
	"github.com/nodeagent/nodeagent/internal/fsutil"
)

// ErrUnsafeArchive is wrapped by every refusal of an archive whose members would
// reach outside the place they are installed to: an absolute name, a '..'
// element, or a link pointing out of the archive.
var ErrUnsafeArchive = errors.New("unsafe archive refused")

// archiveIndex lists what a verified archive holds. It is built once per archive
// hash by reading the verified cache entry, and kept beside it in the cache as
// <sha256>.index.json, so a converged node checks its installed members without
// unpacking anything. Every byte installed is still checked against it.
type archiveIndex struct {
	SHA256 string       `json:"sha256"` // of the archive
	Format string       `json:"format"`
	Files  []indexEntry `json:"files"`
}

// indexEntry is one regular file or link of an archive.
type indexEntry struct {
	Name   string `json:"name"` // cleaned, without "./"
	SHA256 string `json:"sha256,omitempty"`
	Size   int64  `json:"size,omitempty"`
	// Link is the archive file a symlink or hard link points at (cleaned, inside
	// the archive); empty for a regular file.
	Link string `json:"link,omitempty"`
}

func indexPath(cachePath string) string { return cachePath + ".index.json" }

// memberFile is one file an archive asset installs.
type memberFile struct {
	Member string // the archive file selected (maybe a link)
	From   string // the regular file whose bytes are installed
	Dest   string // host path, before Root
	SHA256 string
	Mode   fs.FileMode
}

// entryKind is what an archive entry is.
type entryKind int

const (
	kindOther entryKind = iota
	kindDir
	kindFile
	kindSymlink
	kindHardlink
)

// archEntry is one entry of an archive, its name already checked and cleaned.
type archEntry struct {
	name string
	kind entryKind
	link string // links: the cleaned archive name they point at
	size int64
}

// cleanMember returns an archive entry's name relative to the archive's top,
// refusing names that could land outside it. "" is the top itself.
func cleanMember(raw string) (string, error) {
	switch {
	case raw == "":
		return "", fmt.Errorf("%w: a member has an empty name", ErrUnsafeArchive)
	case strings.HasPrefix(raw, "/"):
		return "", fmt.Errorf("%w: member %q has an absolute name", ErrUnsafeArchive, raw)
	case strings.Contains(raw, `\`):
		return "", fmt.Errorf("%w: member %q has a backslash in its name", ErrUnsafeArchive, raw)
	}
	for _, e := range strings.Split(raw, "/") {
		if e == ".." {
			return "", fmt.Errorf("%w: member %q climbs out of the archive ('..')", ErrUnsafeArchive, raw)
		}
	}
	n := path.Clean(raw)
	if n == "." {
		return "", nil
	}
	return n, nil
}

// linkTarget resolves a symlink's target against the link's own directory,
// refusing targets outside the archive.
func linkTarget(name, target string) (string, error) {
	if strings.HasPrefix(target, "/") {
		return "", fmt.Errorf("%w: symlink %q points outside the archive (%q)", ErrUnsafeArchive, name, target)
	}
	r := path.Join(path.Dir(name), target)
	if r == ".." || strings.HasPrefix(r, "../") {
		return "", fmt.Errorf("%w: symlink %q points outside the archive (%q)", ErrUnsafeArchive, name, target)
	}
	return r, nil
}

// detectFormat recognises tar, gzip-compressed tar and zip by their first bytes.
func detectFormat(file string) (string, error) {
	f, err := os.Open(file)
	if err != nil {
		return "", err
	}
	defer f.Close()
	head := make([]byte, 512)
	n, err := io.ReadFull(f, head)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		return "", fmt.Errorf("read %s: %w", file, err)
	}
	head = head[:n]
	switch {
	case bytes.HasPrefix(head, []byte{0x1f, 0x8b}):
		return config.ArchiveTarGz, nil
	case bytes.HasPrefix(head, []byte("PK\x03\x04")), bytes.HasPrefix(head, []byte("PK\x05\x06")):
		return config.ArchiveZip, nil
	case len(head) >= 262 && string(head[257:262]) == "ustar":
		return config.ArchiveTar, nil
	}
	return "", errors.New("not a tar, tar.gz or zip archive")
}

// walkArchive calls fn for every entry of the archive file, in archive order,
// with the entry's content for regular files. Unsafe names and links stop the
// walk with an ErrUnsafeArchive error.
func walkArchive(file, format string, fn func(e archEntry, body io.Reader) error) error {
	switch format {
	case config.ArchiveZip:
		return walkZip(file, fn)
	case config.ArchiveTar, config.ArchiveTarGz, config.ArchiveTgz:
		f, err := os.Open(file)
		if err != nil {
			return err
		}
		defer f.Close()
		var r io.Reader = bufio.NewReaderSize(f, 1<<20)
		if format != config.ArchiveTar {
			zr, err := gzip.NewReader(r)
			if err != nil {
				return fmt.Errorf("gzip: %w", err)
			}
			defer zr.Close()
			r = zr
		}
		return walkTar(tar.NewReader(r), fn)
	default:
		return fmt.Errorf("unknown archive format %q", format)
	}
}

func walkTar(tr *tar.Reader, fn func(e archEntry, body io.Reader) error) error {
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("tar: %w", err)
		}
		name, err := cleanMember(h.Name)
		if err != nil {
			return err
		}
		e := archEntry{name: name, size: h.Size}
		switch h.Typeflag {
		case tar.TypeReg, tar.TypeRegA:
			e.kind = kindFile
		case tar.TypeDir:
			e.kind = kindDir
		case tar.TypeSymlink:
			e.kind = kindSymlink
			if e.link, err = linkTarget(name, h.Linkname); err != nil {
				return err
			}
		case tar.TypeLink:
			e.kind = kindHardlink
			target, err := cleanMember(h.Linkname)
			if err != nil {
				return fmt.Errorf("hard link %q: %w", name, err)
			}
			e.link = target
		default:
			e.kind = kindOther
		}
		if name == "" {
			continue
		}
		if err := fn(e, tr); err != nil {
			return err
		}
	}
}

func walkZip(file string, fn func(e archEntry, body io.Reader) error) error {
	zr, err := zip.OpenReader(file)
	if err != nil {
		return fmt.Errorf("zip: %w", err)
	}
	defer zr.Close()
	for _, f := range zr.File {
		name, err := cleanMember(f.Name)
		if err != nil {
			return err
		}
		if name == "" {
			continue
		}
		e := archEntry{name: name, size: int64(f.UncompressedSize64)}
		mode := f.Mode()
		switch {
		case mode.IsDir():
			e.kind = kindDir
		case mode&fs.ModeSymlink != 0:
			e.kind = kindSymlink
			rc, err := f.Open()
			if err != nil {
				return fmt.Errorf("zip %s: %w", name, err)
			}
			target, err := io.ReadAll(io.LimitReader(rc, 4096))
			rc.Close()
			if err != nil {
				return fmt.Errorf("zip %s: %w", name, err)
			}
			if e.link, err = linkTarget(name, string(target)); err != nil {
				return err
			}
		case mode.IsRegular():
			e.kind = kindFile
		default:
			e.kind = kindOther
		}
		if e.kind != kindFile {
			if err := fn(e, nil); err != nil {
				return err
			}
			continue
		}
		rc, err := f.Open()
		if err != nil {
			return fmt.Errorf("zip %s: %w", name, err)
		}
		err = fn(e, rc)
		rc.Close()
		if err != nil {
			return err
		}
	}
	return nil
}

// buildIndex reads a verified archive once, hashing every regular file.
func buildIndex(cachePath, sum, format string) (*archiveIndex, error) {
	if format == "" {
		f, err := detectFormat(cachePath)
		if err != nil {
			return nil, err
		}
		format = f
	}
	idx := &archiveIndex{SHA256: sum, Format: format}
	seen := map[string]bool{}
	err := walkArchive(cachePath, format, func(e archEntry, body io.Reader) error {
		if e.kind == kindDir || e.kind == kindOther {
			return nil
		}
		if seen[e.name] {
			return fmt.Errorf("archive lists %q twice", e.name)
		}
		seen[e.name] = true
		ent := indexEntry{Name: e.name, Link: e.link}
		if e.kind == kindFile {
			h := sha256.New()
			n, err := io.Copy(h, body)
			if err != nil {
				return fmt.Errorf("read member %s: %w", e.name, err)
			}
			ent.SHA256, ent.Size = hex.EncodeToString(h.Sum(nil)), n
		}
		idx.Files = append(idx.Files, ent)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return idx, nil
}

// loadIndex reads the cached index of the archive with hash sum; nil when there
// is none (or it belongs to another archive).
func loadIndex(cachePath, sum string) (*archiveIndex, error) {
	b, err := os.ReadFile(indexPath(cachePath))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read archive index: %w", err)
	}
	var idx archiveIndex
	if err := json.Unmarshal(b, &idx); err != nil || idx.SHA256 != sum {
		return nil, nil // rebuilt from the verified archive when needed
	}
	return &idx, nil
}

// selectMembers resolves an archive asset's members against what the archive
// holds: every file installed, where, with which hash and mode.
func selectMembers(a config.Asset, idx *archiveIndex) ([]memberFile, error) {
	byName := make(map[string]indexEntry, len(idx.Files))
	for _, f := range idx.Files {
		byName[f.Name] = f
	}
	var out []memberFile
	dests := map[string]string{}
	for _, m := range a.Archive.Members {
		mode, err := m.FileMode()
		if err != nil {
			return nil, fmt.Errorf("asset %s: member %s: %w", a.Name, m.Name, err)
		}
		var names []string
		if m.IsPattern() {
			for _, f := range idx.Files {
				if m.Selects(f.Name) {
					names = append(names, f.Name)
				}
			}
			if len(names) == 0 {
				return nil, fmt.Errorf("asset %s: no file of the archive matches %q (it has %s)", a.Name, m.Name, listFiles(idx))
			}
		} else {
			if _, ok := byName[m.Name]; !ok {
				return nil, fmt.Errorf("asset %s: the archive has no member %q (it has %s)", a.Name, m.Name, listFiles(idx))
			}
			names = []string{m.Name}
		}
		for _, n := range names {
			reg, err := resolve(byName, n)
			if err != nil {
				return nil, fmt.Errorf("asset %s: %w", a.Name, err)
			}
			dest := m.Dest(n)
			if prev, dup := dests[dest]; dup {
				return nil, fmt.Errorf("asset %s: %s would be installed from both %q and %q", a.Name, dest, prev, n)
			}
			dests[dest] = n
			out = append(out, memberFile{Member: n, From: reg.Name, Dest: dest, SHA256: reg.SHA256, Mode: mode})
		}
	}
	return out, nil
}

// resolve follows links inside the archive to the regular file they name.
func resolve(byName map[string]indexEntry, name string) (indexEntry, error) {
	e := byName[name]
	for hops := 0; e.Link != ""; hops++ {
		next, ok := byName[e.Link]
		if !ok || hops > 16 {
			return indexEntry{}, fmt.Errorf("member %q is a link to %q, which is no file of the archive", name, e.Link)
		}
		e = next
	}
	return e, nil
}

// listFiles names the archive's files for an error message.
func listFiles(idx *archiveIndex) string {
	var names []string
	for _, f := range idx.Files {
		names = append(names, f.Name)
	}
	sort.Strings(names)
	if len(names) > 12 {
		names = append(names[:12], fmt.Sprintf("… %d more", len(names)-12))
	}
	if len(names) == 0 {
		return "no files"
	}
	return strings.Join(names, ", ")
}

// installedState compares one member file with what is installed.
func (i *Installer) installedState(mf memberFile) (want string, err error) {
	got, mode, exists, err := i.installedSum(i.Root.Path(mf.Dest))
	switch {
	case err != nil:
		return "", err
	case !exists:
		return "create", nil
	case got != mf.SHA256:
		return "update", nil
	case mode.Perm() != mf.Mode:
		return "mode", nil
	}
	return "", nil
}

// archiveChanges is Check for an archive asset: with the archive's index cached
// each member file is compared with what is installed; without it (nothing
// fetched yet) each configured member is listed as to be installed.
func (i *Installer) archiveChanges(a config.Asset, sum string) ([]bootstrap.Change, error) {
	idx, err := loadIndex(filepath.Join(i.cacheDir(), sum), sum)
	if err != nil {
		return nil, err
	}
	if idx == nil {
		var out []bootstrap.Change
		for _, m := range a.Archive.Members {
			what, target := m.Name, m.Path
			if !m.IsPattern() {
				target = m.Dest(m.Name)
			} else {
				what = "every file matching " + m.Name
				if len(m.Exclude) > 0 {
					what += " but " + strings.Join(m.Exclude, ", ")
				}
			}
			out = append(out, bootstrap.Change{Kind: "asset", Target: target, Action: "install",
				Detail: fmt.Sprintf("%s %s of archive sha256:%s", a.Name, what, sum[:12])})
		}
		return out, nil
	}
	files, err := selectMembers(a, idx)
	if err != nil {
		return nil, err
	}
	var out []bootstrap.Change
	for _, mf := range files {
		st, err := i.installedState(mf)
		if err != nil {
			return nil, err
		}
		switch st {
		case "create", "update":
			out = append(out, bootstrap.Change{Kind: "asset", Target: mf.Dest, Action: st, Detail: fmt.Sprintf("%s %s sha256:%s", a.Name, mf.Member, mf.SHA256[:12])})
		case "mode":
			out = append(out, bootstrap.Change{Kind: "asset", Target: mf.Dest, Action: "update", Detail: fmt.Sprintf("%s %s mode %04o", a.Name, mf.Member, mf.Mode)})
		}
	}
	return out, nil
}

// archiveFiles returns the member files of an archive asset, from the cached
// index, or nil when the archive has not been indexed yet.
func (i *Installer) archiveFiles(a config.Asset, sum string) ([]memberFile, error) {
	idx, err := loadIndex(filepath.Join(i.cacheDir(), sum), sum)
	if err != nil || idx == nil {
		return nil, err
	}
	return selectMembers(a, idx)
}

// installArchive installs an archive asset's members: nothing is fetched or
// unpacked when every member file is installed with its hash and mode; else the
// verified archive (from the cache, or downloaded into it) is read once and only
// the member files that differ are written, each atomically and checked against
// the archive's index on the way. It returns the source of the archive ("" when
// nothing had to be fetched) and the paths it changed.
func (i *Installer) installArchive(ctx context.Context, a config.Asset, sum string) (source string, changed []string, err error) {
	files, err := i.archiveFiles(a, sum)
	if err != nil {
		return "", nil, err
	}
	if files != nil {
		pending := false
		for _, mf := range files {
			st, err := i.installedState(mf)
			if err != nil {
				return "", nil, err
			}
			pending = pending || st != ""
		}
		if !pending {
			return "", nil, nil
		}
	}
	cachePath, source, err := i.Fetch(ctx, a)
	if err != nil {
		return "", nil, err
	}
	idx, err := loadIndex(cachePath, sum)
	if err != nil {
		return "", nil, err
	}
	if idx == nil {
		if idx, err = buildIndex(cachePath, sum, a.Archive.Format); err != nil {
			return "", nil, fmt.Errorf("asset %s: archive: %w", a.Name, err)
		}
		b, err := json.Marshal(idx)
		if err != nil {
			return "", nil, fmt.Errorf("asset %s: archive index: %w", a.Name, err)
		}
		if err := fsutil.WriteFileAtomic(indexPath(cachePath), b, 0o644); err != nil {
			return "", nil, fmt.Errorf("asset %s: archive index: %w", a.Name, err)
		}
	}
	if files, err = selectMembers(a, idx); err != nil {
		return "", nil, err
	}
	need := map[string][]memberFile{} // by the archive file whose bytes they take
	for _, mf := range files {
		st, err := i.installedState(mf)
		if err != nil {
			return "", nil, err
		}
		switch st {
		case "":
		case "mode":
			if err := os.Chmod(i.Root.Path(mf.Dest), mf.Mode); err != nil {
				return "", nil, fmt.Errorf("asset %s: %w", a.Name, err)
			}
			changed = append(changed, mf.Dest)
		default:
			need[mf.From] = append(need[mf.From], mf)
		}
	}
	if len(need) == 0 {
		return source, changed, nil
	}
	err = walkArchive(cachePath, idx.Format, func(e archEntry, body io.Reader) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		mfs, ok := need[e.name]
		if !ok || e.kind != kindFile {
			return nil
		}
		delete(need, e.name)
		dests := make([]string, len(mfs))
		for k, mf := range mfs {
			dests[k] = i.Root.Path(mf.Dest)
		}
		if err := writeVerified(body, dests, mfs[0].SHA256, modesOf(mfs)); err != nil {
			return fmt.Errorf("member %s: %w", e.name, err)
		}
		for _, mf := range mfs {
			changed = append(changed, mf.Dest)
			i.logger().Info("asset member installed", "asset", a.Name, "member", mf.Member, "path", mf.Dest, "sha256", mf.SHA256, "source", source)
		}
		return nil
	})
	if err != nil {
		return "", changed, fmt.Errorf("asset %s: %w", a.Name, err)
	}
	if len(need) > 0 {
		return "", changed, fmt.Errorf("asset %s: archive sha256:%s lacks members its index lists", a.Name, sum[:12])
	}
	return source, changed, nil
}

func modesOf(mfs []memberFile) []fs.FileMode {
	out := make([]fs.FileMode, len(mfs))
	for k, mf := range mfs {
		out[k] = mf.Mode
	}
	return out
}

// writeVerified streams body into a temporary file beside each destination,
// checks its SHA-256, and only then renames each into place: every destination
// ends up either as it was or with the verified bytes.
func writeVerified(body io.Reader, dests []string, sum string, modes []fs.FileMode) error {
	tmps := make([]*os.File, 0, len(dests))
	cleanup := func() {
		for _, t := range tmps {
			t.Close()
			os.Remove(t.Name())
		}
	}
	writers := make([]io.Writer, 0, len(dests)+1)
	for _, d := range dests {
		dir := filepath.Dir(d)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			cleanup()
			return fmt.Errorf("create %s: %w", dir, err)
		}
		t, err := os.CreateTemp(dir, "."+filepath.Base(d)+".tmp-*")
		if err != nil {
			cleanup()
			return fmt.Errorf("install %s: %w", d, err)
		}
		tmps = append(tmps, t)
		writers = append(writers, t)
	}
	h := sha256.New()
	writers = append(writers, h)
	if _, err := io.Copy(io.MultiWriter(writers...), body); err != nil {
		cleanup()
		return fmt.Errorf("unpack: %w", err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != sum {
		cleanup()
		return fmt.Errorf("unpacked sha256 %s, the archive's index says %s", got, sum)
	}
	for k, t := range tmps {
		if err := t.Chmod(modes[k]); err != nil {
			cleanup()
			return fmt.Errorf("install %s: %w", dests[k], err)
		}
		if err := t.Sync(); err != nil {
			cleanup()
			return fmt.Errorf("install %s: %w", dests[k], err)
		}
	}
	for k, t := range tmps {
		if err := t.Close(); err != nil {
			cleanup()
			return fmt.Errorf("install %s: %w", dests[k], err)
		}
	}
	for k, t := range tmps {
		if err := os.Rename(t.Name(), dests[k]); err != nil {
			for _, rest := range tmps[k:] {
				os.Remove(rest.Name())
			}
			return fmt.Errorf("install %s: %w", dests[k], err)
		}
		if err := fsutil.SyncDir(filepath.Dir(dests[k])); err != nil {
			return err
		}
	}
	return nil
}
