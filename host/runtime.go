package host

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/nodeagent/nodeagent/internal/fsutil"
	"github.com/nodeagent/nodeagent/internal/procfs"
)

// sysctlPath is the /proc/sys file of a dotted key, under root.
func sysctlPath(root fsutil.Root, key string) string {
	return root.Path("/proc/sys/" + strings.ReplaceAll(key, ".", "/"))
}

// normalizeSysctl makes values comparable: the kernel prints multi-field values
// (net.ipv4.ip_local_port_range) tab-separated whatever was written.
func normalizeSysctl(v string) string { return strings.Join(strings.Fields(v), " ") }

// readSysctl returns the kernel's current value; ok is false when the key does not
// exist (yet: net.bridge.* appears only once br_netfilter is loaded).
func readSysctl(root fsutil.Root, key string) (val string, ok bool, err error) {
	b, err := os.ReadFile(sysctlPath(root, key))
	if errors.Is(err, fs.ErrNotExist) {
		return "", false, nil
	}
	if err != nil {
		return "", false, fmt.Errorf("sysctl %s: %w", key, err)
	}
	return normalizeSysctl(string(b)), true, nil
}

// writeSysctl writes the value and reads it back: the kernel may accept a write and
// keep another value (clamping, a namespace that ignores it), and the phase must
// not claim a value it does not have.
func writeSysctl(root fsutil.Root, key, want string) error {
	p := sysctlPath(root, key)
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		return fmt.Errorf("sysctl %s: %w", key, err)
	}
	_, werr := f.WriteString(strings.TrimSpace(want) + "\n")
	cerr := f.Close()
	if werr != nil {
		return fmt.Errorf("sysctl %s: write %s: %w", key, p, werr)
	}
	if cerr != nil {
		return fmt.Errorf("sysctl %s: write %s: %w", key, p, cerr)
	}
	got, ok, err := readSysctl(root, key)
	if err != nil {
		return err
	}
	if !ok || got != normalizeSysctl(want) {
		return fmt.Errorf("sysctl %s: wrote %q to %s but the kernel reads back %q", key, want, p, got)
	}
	return nil
}

// loadedModules is what the kernel has: loadable modules from /proc/modules plus
// built-in ones, which never appear there but show under /sys/module or in
// modules.builtin. A kernel without module support has no /proc/modules at all.
type loadedModules struct {
	root    fsutil.Root
	loaded  map[string]bool
	builtin map[string]bool
}

func readModules(root fsutil.Root) (*loadedModules, error) {
	m := &loadedModules{root: root, loaded: map[string]bool{}, builtin: map[string]bool{}}
	p := root.Path("/proc/modules")
	b, err := os.ReadFile(p)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("read %s: %w", p, err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) > 0 {
			m.loaded[moduleKey(f[0])] = true
		}
	}
	var u unix.Utsname
	if unix.Uname(&u) == nil {
		bp := root.Path("/lib/modules/" + unix.ByteSliceToString(u.Release[:]) + "/modules.builtin")
		if b, err := os.ReadFile(bp); err == nil {
			for _, line := range strings.Split(string(b), "\n") {
				base := line[strings.LastIndexByte(line, '/')+1:]
				if name, ok := strings.CutSuffix(base, ".ko"); ok {
					m.builtin[moduleKey(name)] = true
				}
			}
		}
	}
	return m, nil
}

func (m *loadedModules) has(name string) bool {
	k := moduleKey(name)
	if m.loaded[k] || m.builtin[k] {
		return true
	}
	_, err := os.Stat(m.root.Path("/sys/module/" + k))
	return err == nil
}

// activeSwaps lists the swap areas in use, from /proc/swaps.
func activeSwaps(root fsutil.Root) ([]string, error) {
	p := root.Path("/proc/swaps")
	b, err := os.ReadFile(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", p, err)
	}
	var out []string
	sc := bufio.NewScanner(bytes.NewReader(b))
	for first := true; sc.Scan(); first = false {
		f := strings.Fields(sc.Text())
		if first || len(f) == 0 {
			continue // header: Filename Type Size Used Priority
		}
		out = append(out, procfs.Unescape(f[0]))
	}
	return out, sc.Err()
}
