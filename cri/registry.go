package cri

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path"
	"slices"
	"strconv"
	"strings"

	"github.com/nodeagent/nodeagent/internal/fsutil"
	"github.com/nodeagent/nodeagent/systemd"
)

// managedMark is in the first line of every file this package writes; only
// files carrying it are ever removed.
const managedMark = "Managed by nodeagent"

// managedHeader starts the TOML files.
const managedHeader = "# " + managedMark + "; changes are overwritten.\n"

// managedFile reports whether the file exists and its first line carries
// managedMark.
func managedFile(p string) bool {
	f, err := os.Open(p)
	if err != nil {
		return false
	}
	defer f.Close()
	line, err := bufio.NewReader(f).ReadString('\n')
	if err != nil && line == "" {
		return false
	}
	return strings.Contains(line, managedMark)
}

// upstream is the server a registry host's pulls go to when no mirror answers.
// Docker Hub is the one registry whose API host differs from its name.
func upstream(host string) string {
	if host == "docker.io" {
		return "https://registry-1.docker.io"
	}
	return "https://" + host
}

// hostsTOML is one registry's hosts.toml: mirrors in order, then the upstream.
func hostsTOML(host string, mirrors []string) []byte {
	var b strings.Builder
	b.WriteString(managedHeader)
	fmt.Fprintf(&b, "server = %s\n", strconv.Quote(upstream(host)))
	for _, m := range mirrors {
		fmt.Fprintf(&b, "\n[host.%s]\n  capabilities = [\"pull\", \"resolve\"]\n", strconv.Quote(m))
	}
	return []byte(b.String())
}

// registryHosts returns a hosts.toml per configured registry, and the managed
// hosts.toml files of registries no longer configured.
func registryHosts(root fsutil.Root, mirrors map[string][]string) (files []systemd.File, stale []string, err error) {
	for _, host := range slices.Sorted(maps.Keys(mirrors)) {
		if host == "" || host == "." || host == ".." || strings.ContainsAny(host, "/\\\x00") {
			return nil, nil, fmt.Errorf("registry mirrors: %q is not a registry host", host)
		}
		files = append(files, systemd.File{
			Path: path.Join(RegistryHostsDir, host, "hosts.toml"), Content: hostsTOML(host, mirrors[host]), Mode: 0o644,
		})
	}
	entries, err := os.ReadDir(root.Path(RegistryHostsDir))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, nil, fmt.Errorf("registry mirrors: %w", err)
	}
	for _, e := range entries {
		if _, wanted := mirrors[e.Name()]; wanted || !e.IsDir() {
			continue
		}
		f := path.Join(RegistryHostsDir, e.Name(), "hosts.toml")
		if managedFile(root.Path(f)) {
			stale = append(stale, f)
		}
	}
	return files, stale, nil
}
