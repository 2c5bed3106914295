package config

import (
	"fmt"
	"io/fs"
	"path"
	"strconv"
	"strings"
)

// Archive formats of AssetArchive.Format.
const (
	ArchiveTar   = "tar"
	ArchiveTarGz = "tar.gz"
	ArchiveTgz   = "tgz"
	ArchiveZip   = "zip"
)

// DefaultMemberMode is the mode of an installed archive member unless it says otherwise.
const DefaultMemberMode fs.FileMode = 0o755

// IsPattern reports whether the member's name selects files by pattern
// (path.Match syntax) rather than naming one.
func (m ArchiveMember) IsPattern() bool { return strings.ContainsAny(m.Name, `*?[\`) }

// Selects reports whether the archive file name (cleaned, without "./") is one
// this member installs: equal to its name, or matching its pattern and none of
// its exclusions.
func (m ArchiveMember) Selects(name string) bool {
	if !m.IsPattern() {
		return name == m.Name
	}
	if ok, _ := path.Match(m.Name, name); !ok {
		return false
	}
	for _, x := range m.Exclude {
		if ok, _ := path.Match(x, name); ok {
			return false
		}
		if ok, _ := path.Match(x, path.Base(name)); ok {
			return false
		}
	}
	return true
}

// Dest is where the archive file name is installed: Path, or Path + its base
// name when Path is a directory (ends in "/").
func (m ArchiveMember) Dest(name string) string {
	if strings.HasSuffix(m.Path, "/") {
		return m.Path + path.Base(name)
	}
	return m.Path
}

// FileMode is the member's installed mode (DefaultMemberMode when unset).
func (m ArchiveMember) FileMode() (fs.FileMode, error) {
	if m.Mode == "" {
		return DefaultMemberMode, nil
	}
	v, err := strconv.ParseUint(m.Mode, 8, 32)
	if err != nil || v > 0o777 {
		return 0, fmt.Errorf("mode %q is not octal permission bits like 0755", m.Mode)
	}
	return fs.FileMode(v), nil
}

// validateArchive checks an archive asset's format and members; paths collects
// the installed paths known from the config alone (literal members).
func validateArchive(add func(path, format string, args ...any), p string, a Asset, paths map[string]string) {
	if a.Path != "" {
		add(p+".path", "an archive asset has no path: its archive.members say where each file goes")
	}
	ar := a.Archive
	switch ar.Format {
	case "", ArchiveTar, ArchiveTarGz, ArchiveTgz, ArchiveZip:
	default:
		add(p+".archive.format", "must be tar, tar.gz, tgz or zip (or empty to recognise it), got %q", ar.Format)
	}
	if len(ar.Members) == 0 {
		add(p+".archive.members", "at least one member is required, e.g. {name: bin/containerd, path: /usr/local/bin/containerd}")
	}
	for j, m := range ar.Members {
		mp := fmt.Sprintf("%s.archive.members[%d]", p, j)
		switch {
		case m.Name == "":
			add(mp+".name", "required: the file's path inside the archive, or a pattern such as *")
		case strings.HasPrefix(m.Name, "/"):
			add(mp+".name", "%q: a member name is relative to the archive's top, with '/' separators", m.Name)
		case hasDotDot(m.Name) || path.Clean(m.Name) != m.Name:
			add(mp+".name", "%q: must be a clean path without '.' or '..' elements or a leading './'", m.Name)
		default:
			if _, err := path.Match(m.Name, ""); err != nil {
				add(mp+".name", "%q is not a valid pattern: %v", m.Name, err)
			}
		}
		for k, x := range m.Exclude {
			if _, err := path.Match(x, ""); err != nil || x == "" {
				add(fmt.Sprintf("%s.exclude[%d]", mp, k), "%q is not a valid pattern", x)
			}
		}
		if len(m.Exclude) > 0 && !m.IsPattern() {
			add(mp+".exclude", "only a pattern member can exclude files")
		}
		switch {
		case m.Path == "":
			add(mp+".path", "required: the installed file, or a directory ending in '/'")
		case !strings.HasPrefix(m.Path, "/") || hasDotDot(m.Path):
			add(mp+".path", "must be an absolute path without '..', got %q", m.Path)
		case m.IsPattern() && !strings.HasSuffix(m.Path, "/"):
			add(mp+".path", "a pattern installs many files: path must be a directory ending in '/', got %q", m.Path)
		case !strings.HasSuffix(m.Path, "/"):
			if prev, dup := paths[m.Path]; dup {
				add(mp+".path", "%q already used by %s", m.Path, prev)
			} else {
				paths[m.Path] = mp
			}
		}
		if _, err := m.FileMode(); err != nil {
			add(mp+".mode", "%v", err)
		}
	}
}

func hasDotDot(p string) bool {
	for _, e := range strings.Split(p, "/") {
		if e == ".." {
			return true
		}
	}
	return false
}
