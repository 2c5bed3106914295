package doctor

import (
	"bufio"
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"
	"sigs.k8s.io/yaml"

	"github.com/nodeagent/nodeagent/internal/fsutil"
	"github.com/nodeagent/nodeagent/internal/lazyre"
)

// Host paths the host checks read (resolved under the root).
const (
	KubeletConfigPath    = "/var/lib/kubelet/config.yaml"
	ContainerdConfigPath = "/etc/containerd/config.toml"
	DockerDaemonPath     = "/etc/docker/daemon.json"
)

// kubeletConfig reads the fields of the rendered KubeletConfiguration the
// checks compare; a missing file is the zero value (kubelet's defaults).
type kubeletConfig struct {
	FailSwapOn   *bool  `json:"failSwapOn"`
	CgroupDriver string `json:"cgroupDriver"`
}

func readKubeletConfig(root fsutil.Root) (kubeletConfig, bool, error) {
	var kc kubeletConfig
	b, err := os.ReadFile(root.Path(KubeletConfigPath))
	if errors.Is(err, fs.ErrNotExist) {
		return kc, false, nil
	}
	if err != nil {
		return kc, false, err
	}
	if err := yaml.Unmarshal(b, &kc); err != nil {
		return kc, false, fmt.Errorf("%s: %w", KubeletConfigPath, err)
	}
	return kc, true, nil
}

// Swap: kubelet refuses to start with swap on unless failSwapOn is false.
func Swap(root fsutil.Root) Check {
	return Check{Name: "swap", Run: func(context.Context) []Finding {
		b, err := os.ReadFile(root.Path("/proc/swaps"))
		if err != nil {
			return warn("", "cannot read /proc/swaps: %v", err)
		}
		var active []string
		for i, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
			if f := strings.Fields(line); i > 0 && len(f) > 0 {
				active = append(active, f[0])
			}
		}
		if len(active) == 0 {
			return ok("swap is off")
		}
		kc, _, err := readKubeletConfig(root)
		if err != nil {
			return warn("", "swap is on (%s) and kubelet's configuration is unreadable: %v", strings.Join(active, ", "), err)
		}
		fix := "swapoff -a, and remove the swap entries from /etc/fstab (nodeagent's host-prep keeps swap off once it runs)"
		if kc.FailSwapOn != nil && !*kc.FailSwapOn {
			return warn(fix, "swap is on (%s); kubelet tolerates it (failSwapOn: false) but pods' memory limits are not what they say", strings.Join(active, ", "))
		}
		return fail(fix, "swap is on (%s): kubelet refuses to start while swap is on (failSwapOn)", strings.Join(active, ", "))
	}}
}

// Kernel: the configured modules are loaded and the sysctls have their values.
func Kernel(root fsutil.Root, modules []string, sysctls map[string]string) Check {
	return Check{Name: "kernel", Run: func(context.Context) []Finding {
		loaded := map[string]bool{}
		if b, err := os.ReadFile(root.Path("/proc/modules")); err == nil {
			for _, line := range strings.Split(string(b), "\n") {
				if f := strings.Fields(line); len(f) > 0 {
					loaded[f[0]] = true
				}
			}
		}
		var missing, wrong []string
		for _, m := range modules {
			name := strings.ReplaceAll(m, "-", "_")
			if loaded[name] {
				continue
			}
			if _, err := os.Stat(root.Path("/sys/module/" + name)); err == nil {
				continue // built into the kernel
			}
			missing = append(missing, m)
		}
		keys := make([]string, 0, len(sysctls))
		for k := range sysctls {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			b, err := os.ReadFile(root.Path("/proc/sys/" + strings.ReplaceAll(k, ".", "/")))
			got := strings.Join(strings.Fields(string(b)), " ")
			if err != nil {
				got = "unreadable: " + err.Error()
			}
			if want := strings.Join(strings.Fields(sysctls[k]), " "); got != want {
				wrong = append(wrong, fmt.Sprintf("%s=%s (want %s)", k, got, want))
			}
		}
		var out []Finding
		if len(missing) > 0 {
			out = append(out, fail("modprobe "+strings.Join(missing, " ")+"; nodeagent lists them in /etc/modules-load.d/nodeagent.conf for the next boot",
				"kernel modules not loaded: %s", strings.Join(missing, ", "))...)
		}
		if len(wrong) > 0 {
			out = append(out, fail("sysctl --system (nodeagent writes /etc/sysctl.d/99-nodeagent.conf); a key the kernel lacks needs its module (net.bridge.* needs br_netfilter)",
				"sysctls differ from the configuration: %s", strings.Join(wrong, "; "))...)
		}
		if len(out) == 0 {
			out = ok("%d kernel module(s) loaded, %d sysctl(s) as configured", len(modules), len(sysctls))
		}
		return out
	}}
}

var systemdCgroup = lazyre.New(`(?m)^\s*SystemdCgroup\s*=\s*(true|false)`)

// Cgroups: cgroup v2, and the container runtime's cgroup driver is kubelet's.
func Cgroups(root fsutil.Root, runtime string) Check {
	return Check{Name: "cgroups", Run: func(context.Context) []Finding {
		var out []Finding
		if _, err := os.Stat(root.Path("/sys/fs/cgroup/cgroup.controllers")); err != nil {
			out = append(out, warn("boot with the unified hierarchy (systemd.unified_cgroup_hierarchy=1; the default of current AMIs)",
				"cgroup v2 is not mounted at /sys/fs/cgroup (cgroup v1 is in maintenance mode in kubelet)")...)
		}
		kc, found, err := readKubeletConfig(root)
		if err != nil {
			return append(out, fail("", "%v", err)...)
		}
		if !found {
			return append(out, skip("no kubelet configuration yet (%s)", KubeletConfigPath)...)
		}
		kubeletDriver := kc.CgroupDriver
		if kubeletDriver == "" {
			kubeletDriver = "cgroupfs" // KubeletConfiguration's default
		}
		var runtimeDriver, where string
		switch runtime {
		case "docker":
			where = DockerDaemonPath
			b, err := os.ReadFile(root.Path(where))
			if err != nil {
				return append(out, fail("", "cannot read %s: %v", where, err)...)
			}
			var dc struct {
				ExecOpts []string `json:"exec-opts"`
			}
			if err := json.Unmarshal(b, &dc); err != nil {
				return append(out, fail("", "%s: %v", where, err)...)
			}
			runtimeDriver = "cgroupfs"
			for _, o := range dc.ExecOpts {
				if v, ok := strings.CutPrefix(o, "native.cgroupdriver="); ok {
					runtimeDriver = v
				}
			}
		default:
			where = ContainerdConfigPath
			b, err := os.ReadFile(root.Path(where))
			if err != nil {
				return append(out, fail("", "cannot read %s: %v", where, err)...)
			}
			runtimeDriver = "cgroupfs"
			if m := systemdCgroup().FindSubmatch(b); m != nil && string(m[1]) == "true" {
				runtimeDriver = "systemd"
			}
		}
		if runtimeDriver != kubeletDriver {
			return append(out, fail("make both systemd: SystemdCgroup = true in "+ContainerdConfigPath+" (or native.cgroupdriver=systemd for Docker) and cgroupDriver: systemd in "+KubeletConfigPath+"; nodeagent renders both so",
				"the container runtime's cgroup driver is %s (%s) but kubelet's is %s: pods fail to start or are killed", runtimeDriver, where, kubeletDriver)...)
		}
		return append(out, ok("cgroup driver %s for both the runtime and kubelet", kubeletDriver)...)
	}}
}

// Thresholds of kubelet's default hard eviction (nodefs.available<10%,
// nodefs.inodesFree<5%): below them kubelet evicts pods; the warnings come a
// little earlier.
const (
	failFreePct, warnFreePct     = 10, 15
	failInodesPct, warnInodesPct = 5, 10
)

// Disk: free space and inodes of the filesystem holding path (/var/lib).
func Disk(root fsutil.Root, path string) Check {
	return Check{Name: "disk", Run: func(context.Context) []Finding {
		var st unix.Statfs_t
		if err := unix.Statfs(root.Path(path), &st); err != nil {
			return fail("", "statfs %s: %v", path, err)
		}
		total := float64(st.Blocks) * float64(st.Bsize)
		free := float64(st.Bavail) * float64(st.Bsize)
		freePct := 100 * free / max(total, 1)
		inodesPct := 100.0
		if st.Files > 0 {
			inodesPct = 100 * float64(st.Ffree) / float64(st.Files)
		}
		what := fmt.Sprintf("%s: %s free of %s (%.0f%%), %.0f%% of inodes free", path, bytesStr(free), bytesStr(total), freePct, inodesPct)
		fix := "free space under " + path + " (old images: crictl rmi --prune; logs: journalctl --vacuum-size), or grow the volume"
		switch {
		case freePct < failFreePct || inodesPct < failInodesPct:
			return fail(fix, "%s is (nearly) full: %s; below kubelet's eviction thresholds (10%% space, 5%% inodes) pods are evicted and images cannot be pulled", path, what)
		case freePct < warnFreePct || inodesPct < warnInodesPct:
			return warn(fix, "%s is filling up: %s", path, what)
		}
		return ok("%s", what)
	}}
}

func bytesStr(b float64) string {
	const unit = 1024
	if b < unit {
		return fmt.Sprintf("%.0f B", b)
	}
	div, exp := float64(unit), 0
	for n := b / unit; n >= unit; n /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", b/div, "KMGTPE"[exp])
}

// CertWarnBefore is how close to expiry a certificate is reported: the pki
// phase renews 30 days before, so less than that means renewal is not happening.
// Short-lived certificates (the node signer's, renewed when a third of their
// life is left) are reported when less than a quarter of their life is left.
const CertWarnBefore = 30 * 24 * time.Hour

func certWarnBefore(c *x509.Certificate) time.Duration {
	return min(CertWarnBefore, c.NotAfter.Sub(c.NotBefore)/4)
}

// Certificates: every certificate under dirs (*.crt, *.pem) is valid now and
// not about to expire.
func Certificates(root fsutil.Root, dirs []string, now func() time.Time) Check {
	return Check{Name: "certificates", Run: func(context.Context) []Finding {
		t := now()
		var (
			out      []Finding
			n        int
			soonest  time.Time
			soonName string
		)
		for _, dir := range dirs {
			_ = filepath.WalkDir(root.Path(dir), func(p string, d fs.DirEntry, err error) error {
				if err != nil || d.IsDir() || !(strings.HasSuffix(p, ".crt") || strings.HasSuffix(p, ".pem")) {
					return nil
				}
				b, err := os.ReadFile(p)
				if err != nil {
					out = append(out, warn("", "cannot read %s: %v", hostPath(root, p), err)...)
					return nil
				}
				for rest := b; ; {
					var blk *pem.Block
					blk, rest = pem.Decode(rest)
					if blk == nil {
						break
					}
					if blk.Type != "CERTIFICATE" {
						continue
					}
					c, err := x509.ParseCertificate(blk.Bytes)
					if err != nil {
						out = append(out, fail("reissue it: delete it and run nodeagent bootstrap", "%s holds an unparsable certificate: %v", hostPath(root, p), err)...)
						continue
					}
					n++
					name := fmt.Sprintf("%s (%s)", hostPath(root, p), c.Subject.CommonName)
					fix := certFix(hostPath(root, p))
					switch {
					case t.After(c.NotAfter):
						out = append(out, fail(fix, "certificate %s expired on %s", name, c.NotAfter.UTC().Format(time.RFC3339))...)
					case t.Before(c.NotBefore):
						out = append(out, fail("check the clock (see the clock check)", "certificate %s is not valid before %s: this node's clock is behind, or it was issued by a clock ahead", name, c.NotBefore.UTC().Format(time.RFC3339))...)
					case c.NotAfter.Sub(t) < certWarnBefore(c):
						out = append(out, warn(fix, "certificate %s expires on %s", name, c.NotAfter.UTC().Format(time.RFC3339))...)
					}
					if soonest.IsZero() || c.NotAfter.Before(soonest) {
						soonest, soonName = c.NotAfter, name
					}
				}
				return nil
			})
		}
		if n == 0 && len(out) == 0 {
			return skip("no certificates under %s", strings.Join(dirs, ", "))
		}
		if len(out) == 0 {
			return ok("%d certificate(s) valid; the first to expire is %s on %s", n, soonName, soonest.UTC().Format("2006-01-02"))
		}
		return out
	}}
}

func certFix(path string) string {
	if strings.HasPrefix(path, "/var/lib/kubelet/pki/") {
		return "remove " + path + " (and its key) and restart kubelet (systemctl restart kubelet) so it makes or requests a new one; nodeagent's pki phase reissues the ones it owns"
	}
	return "remove " + path + " and run nodeagent bootstrap (or wait for the daemon's next reconcile): the pki phase reissues it from the cluster CA"
}

// hostPath strips the root from a resolved path, for messages.
func hostPath(root fsutil.Root, p string) string {
	r := string(root)
	if r == "" || r == "/" {
		return p
	}
	if rel, err := filepath.Rel(r, p); err == nil && !strings.HasPrefix(rel, "..") {
		return "/" + rel
	}
	return p
}

// hostsLookup finds name in the hosts file at path.
func hostsLookup(path, name string) []string {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	var ips []string
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line, _, _ := strings.Cut(sc.Text(), "#")
		f := strings.Fields(line)
		if len(f) > 1 && slices.Contains(f[1:], name) {
			ips = append(ips, f[0])
		}
	}
	return ips
}
