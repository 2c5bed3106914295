package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/nodeagent/nodeagent/internal/fsutil"
	"github.com/nodeagent/nodeagent/internal/imagearchive"
)

// IndexFile lists the archives in the output directory.
const IndexFile = "images.json"

// entry is one archive in images.json. File is relative to the directory
// holding images.json.
type entry struct {
	Name   string `json:"name"` // full reference, e.g. registry.k8s.io/kube-apiserver:v1.34.4
	File   string `json:"file"`
	SHA256 string `json:"sha256"`
	Size   int64  `json:"size"`
	status string // built or unchanged, for the summary
}

// stamp records which inputs made an archive.
type stamp struct {
	Fingerprint string `json:"fingerprint"`
	SHA256      string `json:"sha256"`
	Size        int64  `json:"size"`
}

// writeIfChanged writes img to dir/file unless dir/file.stamp says the same
// inputs made it and the archive still has the hash recorded there.
func writeIfChanged(log *slog.Logger, dir, file string, img imagearchive.Image) (entry, error) {
	ref := img.Refs[0]
	path := filepath.Join(dir, file)
	stampPath := path + ".stamp"
	fp, err := img.Fingerprint()
	if err != nil {
		return entry{}, fmt.Errorf("image %s: %w", ref, err)
	}
	var old stamp
	if b, err := os.ReadFile(stampPath); err == nil && json.Unmarshal(b, &old) == nil && old.Fingerprint == fp {
		if st, err := os.Stat(path); err == nil && st.Size() == old.Size {
			if sum, err := imagearchive.SHA256File(path); err == nil && sum == old.SHA256 {
				log.Info("unchanged", "image", ref, "file", path)
				return entry{Name: ref, File: file, SHA256: sum, Size: old.Size, status: "unchanged"}, nil
			}
		}
		log.Warn("archive differs from its stamp; rebuilding", "image", ref, "file", path)
	}
	start := time.Now()
	res, err := imagearchive.WriteFile(path, img)
	if err != nil {
		return entry{}, err
	}
	b, err := json.MarshalIndent(stamp{Fingerprint: fp, SHA256: res.SHA256, Size: res.Size}, "", "  ")
	if err != nil {
		return entry{}, fmt.Errorf("stamp %s: %w", path, err)
	}
	if err := fsutil.WriteFileAtomic(stampPath, append(b, '\n'), 0o644); err != nil {
		return entry{}, fmt.Errorf("stamp: %w", err)
	}
	log.Info("built", "image", ref, "file", path, "size", res.Size, "sha256", res.SHA256, "took", time.Since(start).Round(time.Millisecond))
	return entry{Name: ref, File: file, SHA256: res.SHA256, Size: res.Size, status: "built"}, nil
}

// updateIndex writes images.json: the entries of this run, plus those of an
// earlier run for images not built now whose archive is still there. It returns
// the index's path.
func updateIndex(dir string, built []entry) (string, error) {
	path := filepath.Join(dir, IndexFile)
	all := map[string]entry{}
	if b, err := os.ReadFile(path); err == nil {
		var prev []entry
		if err := json.Unmarshal(b, &prev); err != nil {
			return "", fmt.Errorf("read %s: %w", path, err)
		}
		for _, e := range prev {
			if st, err := os.Stat(filepath.Join(dir, e.File)); err == nil && st.Size() == e.Size {
				all[e.Name] = e
			}
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("read %s: %w", path, err)
	}
	for _, e := range built {
		all[e.Name] = e
	}
	list := make([]entry, 0, len(all))
	for _, e := range all {
		list = append(list, e)
	}
	slices.SortFunc(list, func(a, b entry) int { return strings.Compare(a.Name, b.Name) })
	b, err := json.MarshalIndent(list, "", "  ")
	if err != nil {
		return "", fmt.Errorf("encode %s: %w", path, err)
	}
	if err := fsutil.WriteFileAtomic(path, append(b, '\n'), 0o644); err != nil {
		return "", err
	}
	return path, nil
}
