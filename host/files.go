package host

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/nodeagent/nodeagent/internal/fsutil"
)

const managedHeader = "# Managed by nodeagent; local edits are overwritten on the next run.\n"

// fstabMark prefixes each swap line the phase comments out, so a human (or a
// later tool) can tell these lines from comments that were already there.
const fstabMark = "# disabled by nodeagent: "

// desired is the merged configuration the phase converges to.
type desired struct {
	sysctls  map[string]string
	modules  []string // sorted, unique
	hostname string
}

func desiredFrom(o Options) (desired, error) {
	d := desired{sysctls: DefaultSysctls(), hostname: o.Hostname}
	maps.Copy(d.sysctls, o.Sysctls)
	for k, v := range d.sysctls {
		if err := validSysctl(k, v); err != nil {
			return d, err
		}
	}
	seen := map[string]bool{}
	for _, m := range append(DefaultKernelModules(), o.KernelModules...) {
		if m == "" || strings.ContainsAny(m, "/ \t\n\x00") {
			return d, fmt.Errorf("invalid kernel module name %q", m)
		}
		if n := moduleKey(m); !seen[n] {
			seen[n] = true
			d.modules = append(d.modules, m)
		}
	}
	slices.Sort(d.modules)
	if strings.ContainsAny(d.hostname, "/ \t\n\x00") || len(d.hostname) > 64 {
		return d, fmt.Errorf("invalid host name %q", d.hostname)
	}
	return d, nil
}

// validSysctl refuses keys that would name a path outside /proc/sys and values
// that would break the one-line-per-key file format.
func validSysctl(k, v string) error {
	if k == "" || strings.ContainsAny(k, "/ \t\n=\x00") || strings.HasPrefix(k, ".") ||
		strings.HasSuffix(k, ".") || strings.Contains(k, "..") {
		return fmt.Errorf("invalid sysctl name %q", k)
	}
	if strings.TrimSpace(v) == "" || strings.ContainsAny(v, "\n\r\x00") {
		return fmt.Errorf("sysctl %s: value must be a non-empty single line", k)
	}
	return nil
}

// moduleKey is how the kernel names a module in /proc/modules: modprobe accepts
// br-netfilter and br_netfilter alike.
func moduleKey(name string) string { return strings.ReplaceAll(name, "-", "_") }

func renderSysctls(s map[string]string) []byte {
	var b bytes.Buffer
	b.WriteString(managedHeader)
	for _, k := range slices.Sorted(maps.Keys(s)) {
		fmt.Fprintf(&b, "%s = %s\n", k, normalizeSysctl(s[k]))
	}
	return b.Bytes()
}

func renderModules(mods []string) []byte {
	var b bytes.Buffer
	b.WriteString(managedHeader)
	for _, m := range mods {
		b.WriteString(m + "\n")
	}
	return b.Bytes()
}

// managedFile is one whole file the phase owns.
type managedFile struct {
	path string // host path, before Root
	data []byte
}

func (d desired) files() []managedFile {
	fs := []managedFile{
		{SysctlFile, renderSysctls(d.sysctls)},
		{ModulesLoadFile, renderModules(d.modules)},
	}
	if d.hostname != "" {
		fs = append(fs, managedFile{HostnameFile, []byte(d.hostname + "\n")})
	}
	return fs
}

// fileAction says whether writing data to path would create or update it; "" when
// it already holds exactly that.
func fileAction(path string, data []byte) (string, error) {
	same, err := fsutil.FileEquals(path, data, 0o644)
	if err != nil {
		return "", fmt.Errorf("read %s: %w", path, err)
	}
	if same {
		return "", nil
	}
	if _, err := os.Lstat(path); errors.Is(err, fs.ErrNotExist) {
		return "create", nil
	}
	return "update", nil
}

// disableFstabSwap comments out every active swap entry of an fstab and reports
// how many it commented; everything else, including the trailing newline state,
// is kept byte for byte.
func disableFstabSwap(fstab []byte) ([]byte, int) {
	lines := strings.SplitAfter(string(fstab), "\n")
	n := 0
	for i, l := range lines {
		if isSwapEntry(l) {
			lines[i] = fstabMark + l
			n++
		}
	}
	return []byte(strings.Join(lines, "")), n
}

func isSwapEntry(line string) bool {
	f := strings.Fields(line)
	return len(f) >= 3 && !strings.HasPrefix(f[0], "#") && f[2] == "swap"
}

// readFstab returns the fstab under root and its mode; a missing fstab is empty.
func readFstab(root fsutil.Root) ([]byte, fs.FileMode, error) {
	p := root.Path(FstabFile)
	fi, err := os.Stat(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, 0, nil
	}
	if err != nil {
		return nil, 0, fmt.Errorf("read %s: %w", p, err)
	}
	b, err := os.ReadFile(p)
	if err != nil {
		return nil, 0, fmt.Errorf("read %s: %w", p, err)
	}
	return b, fi.Mode().Perm(), nil
}

// maskState says what masking swap.target needs: "" when it is already masked.
// A real unit file there is somebody's deliberate override and is not replaced.
func maskState(root fsutil.Root) (string, error) {
	p := root.Path(SwapTargetMask)
	fi, err := os.Lstat(p)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return "create", nil
	case err != nil:
		return "", fmt.Errorf("inspect %s: %w", p, err)
	case fi.Mode()&fs.ModeSymlink == 0:
		return "", fmt.Errorf("cannot mask swap.target: %s exists and is not a symlink; remove it or link it to /dev/null", p)
	}
	target, err := os.Readlink(p)
	if err != nil {
		return "", fmt.Errorf("inspect %s: %w", p, err)
	}
	if target == "/dev/null" {
		return "", nil
	}
	return "update", nil
}

// maskSwapTarget links swap.target to /dev/null, which is how systemd persists a
// mask, replacing the old link in one rename.
func maskSwapTarget(root fsutil.Root) error {
	p := root.Path(SwapTargetMask)
	dir := filepath.Dir(p)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("mask swap.target: %w", err)
	}
	tmp := filepath.Join(dir, ".swap.target.tmp-"+strconv.Itoa(os.Getpid()))
	os.Remove(tmp)
	if err := os.Symlink("/dev/null", tmp); err != nil {
		return fmt.Errorf("mask swap.target: %w", err)
	}
	if err := os.Rename(tmp, p); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("mask swap.target: %w", err)
	}
	return nil
}
