package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"

	"github.com/nodeagent/nodeagent/internal/imagearchive"
)

// The host files kube-proxy's iptables mode runs, from Debian's iptables and
// conntrack packages.
const (
	xtablesMulti = "/usr/sbin/xtables-nft-multi"
	conntrackBin = "/usr/sbin/conntrack"
	// xtablesLibDir holds the match and target extensions iptables loads with
	// dlopen to parse rules (-m comment, -j DNAT, …); ldd cannot see them.
	xtablesLibDir = "/usr/lib/x86_64-linux-gnu/xtables"
)

// iptablesApplets are the commands kube-proxy runs (and checks the versions of).
// Each becomes a symlink to xtables-nft-multi, as Debian's alternatives resolve
// them with the nft backend selected; the -nft names (iptables-nft-save, …) are
// linked too.
var iptablesApplets = []string{"iptables", "iptables-save", "iptables-restore", "ip6tables", "ip6tables-save", "ip6tables-restore"}

const installHint = "install Debian's iptables and conntrack packages (apt-get install -y iptables conntrack)"

// netfilterTools lists the image files that give kube-proxy iptables (nft
// backend), ip6tables and conntrack: the host's binaries and extensions, every
// shared library ldd finds for them, and the dynamic loader, each at the path ldd
// names so that the loader finds it in the image's default library directories.
func netfilterTools() ([]imagearchive.File, error) {
	for _, f := range []string{xtablesMulti, conntrackBin} {
		if _, err := os.Stat(f); err != nil {
			return nil, fmt.Errorf("kube-proxy's netfilter tools: %w: %s", err, installHint)
		}
	}
	files := []imagearchive.File{
		imagearchive.HostFile(xtablesMulti, xtablesMulti, 0o755),
		imagearchive.HostFile(conntrackBin, conntrackBin, 0o755),
	}
	for _, name := range iptablesApplets {
		// The host's -nft name (iptables-nft-save, …) proves this iptables has the
		// applet in its nft multi-binary.
		host := "/usr/sbin/" + strings.Replace(name, "tables", "tables-nft", 1)
		target, err := filepath.EvalSymlinks(host)
		if err != nil || target != xtablesMulti {
			return nil, fmt.Errorf("kube-proxy's netfilter tools: %s does not lead to %s (%v): %s", host, xtablesMulti, err, installHint)
		}
		files = append(files,
			imagearchive.Symlink("/usr/sbin/"+name, filepath.Base(xtablesMulti)),
			imagearchive.Symlink(host, filepath.Base(xtablesMulti)))
	}
	exts, err := filepath.Glob(filepath.Join(xtablesLibDir, "*.so"))
	if err != nil || len(exts) == 0 {
		return nil, fmt.Errorf("kube-proxy's netfilter tools: no iptables extensions in %s: %s", xtablesLibDir, installHint)
	}
	for _, e := range exts {
		files = append(files, imagearchive.HostFile(e, e, 0o644))
	}
	libs, err := sharedLibraries(append([]string{xtablesMulti, conntrackBin}, exts...))
	if err != nil {
		return nil, fmt.Errorf("kube-proxy's netfilter tools: %w", err)
	}
	for _, l := range libs {
		files = append(files, imagearchive.HostFile(l, l, 0o755))
	}
	return files, nil
}

// sharedLibraries runs ldd once on all the binaries and returns every library
// path it resolved (the loader included), sorted and without duplicates. A
// library ldd cannot find is an error naming it.
func sharedLibraries(binaries []string) ([]string, error) {
	ldd, err := exec.LookPath("ldd")
	if err != nil {
		return nil, fmt.Errorf("ldd not found (Debian's libc-bin provides it): %w", err)
	}
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(ldd, binaries...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("ldd %s: %w: %s", strings.Join(binaries, " "), err, strings.TrimSpace(stderr.String()))
	}
	libs, err := parseLdd(stdout.String(), len(binaries) > 1)
	if err != nil {
		return nil, err
	}
	for _, l := range libs {
		if _, err := os.Stat(l); err != nil {
			return nil, fmt.Errorf("ldd names %s: %w", l, err)
		}
	}
	return libs, nil
}

// parseLdd reads ldd's output: "name => /path (0x…)" and "/path (0x…)" lines
// give libraries, "name => not found" is an error, and the kernel's vDSO (no path)
// is no file. With several binaries, ldd heads each one's block with "file:".
func parseLdd(out string, headed bool) ([]string, error) {
	var libs []string
	current := ""
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		line := sc.Text()
		if headed && !strings.HasPrefix(line, "\t") && strings.HasSuffix(line, ":") {
			current = strings.TrimSuffix(line, ":")
			continue
		}
		line = strings.TrimSpace(line)
		switch {
		case line == "" || line == "statically linked":
			continue
		case strings.Contains(line, "=> not found"):
			lib, _, _ := strings.Cut(line, " ")
			return nil, fmt.Errorf("ldd: %s needs %s, which is not installed", current, lib)
		}
		if _, after, ok := strings.Cut(line, "=> "); ok {
			line = after
		}
		path, _, _ := strings.Cut(line, " ")
		if strings.HasPrefix(path, "/") {
			libs = append(libs, path)
		}
	}
	if len(libs) == 0 {
		return nil, errors.New("ldd found no shared libraries, not even the loader")
	}
	slices.Sort(libs)
	return slices.Compact(libs), nil
}
