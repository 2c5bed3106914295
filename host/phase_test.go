package host

import (
	"context"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/nodeagent/nodeagent/bootstrap"
	"github.com/nodeagent/nodeagent/internal/fsutil"
	"github.com/nodeagent/nodeagent/internal/procfs"
)

var update = flag.Bool("update", false, "rewrite golden files")

// fakeKernel plays the running kernel for a directory root: a module it loads
// appears in <root>/proc/modules (and br_netfilter brings its sysctls, as the real
// one does), a swap it turns off leaves <root>/proc/swaps. Errors make it refuse.
type fakeKernel struct {
	root     fsutil.Root
	modErr   map[string]error
	swapErr  error
	hostErr  error
	hostname string
	calls    []string
}

func (k *fakeKernel) LoadModule(_ context.Context, name string) error {
	k.calls = append(k.calls, "modprobe "+name)
	if err := k.modErr[name]; err != nil {
		return err
	}
	f, err := os.OpenFile(k.root.Path("/proc/modules"), os.O_APPEND|os.O_WRONLY|os.O_CREATE, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := f.WriteString(name + " 32768 0 - Live 0x0000000000000000\n"); err != nil {
		return err
	}
	if name == "br_netfilter" {
		for _, s := range []string{"bridge-nf-call-iptables", "bridge-nf-call-ip6tables"} {
			if err := writeFile(k.root.Path("/proc/sys/net/bridge/"+s), "0\n"); err != nil {
				return err
			}
		}
	}
	return nil
}

func (k *fakeKernel) Swapoff(path string) error {
	k.calls = append(k.calls, "swapoff "+path)
	if k.swapErr != nil {
		return k.swapErr
	}
	p := k.root.Path("/proc/swaps")
	b, err := os.ReadFile(p)
	if err != nil {
		return err
	}
	var keep []string
	for _, l := range strings.SplitAfter(string(b), "\n") {
		if f := strings.Fields(l); len(f) == 0 || procfs.Unescape(f[0]) != path {
			keep = append(keep, l)
		}
	}
	return os.WriteFile(p, []byte(strings.Join(keep, "")), 0o644)
}

func (k *fakeKernel) Hostname() (string, error) { return k.hostname, nil }

func (k *fakeKernel) Sethostname(name string) error {
	k.calls = append(k.calls, "sethostname "+name)
	if k.hostErr != nil {
		return k.hostErr
	}
	k.hostname = name
	return nil
}

func writeFile(p, s string) error {
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	return os.WriteFile(p, []byte(s), 0o644)
}

const swapsHeader = "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n"

const fstabWithSwap = `# /etc/fstab: static file system information.
UUID=1234 / ext4 errors=remount-ro 0 1
/swapfile none swap sw 0 0
# /olds none swap sw 0 0
/dev/xvdb   none   swap   defaults   0   0
tmpfs /tmp tmpfs defaults 0 0
`

// freshNode is a root as a stock cloud image boots: nothing loaded, forwarding
// off, a swap file on and listed in fstab.
func freshNode(t *testing.T) fsutil.Root {
	t.Helper()
	root := fsutil.Root(t.TempDir())
	files := map[string]string{
		"/proc/modules":                      "ext4 1 0 - Live 0x0\n",
		"/proc/sys/net/ipv4/ip_forward":      "0\n",
		"/proc/sys/kernel/random/boot_id":    "boot-1\n",
		"/proc/swaps":                        swapsHeader + "/swapfile                               file\t\t1048572\t\t0\t\t-2\n",
		"/etc/fstab":                         fstabWithSwap,
		"/etc/hostname":                      "localhost\n",
		"/etc/systemd/system/.keep":          "",
		"/etc/sysctl.d/10-distro.conf":       "kernel.panic = 10\n",
		"/etc/modules-load.d/distro.conf":    "loop\n",
		"/sys/module/overlay/parameters/foo": "N\n",
	}
	for p, s := range files {
		if err := writeFile(root.Path(p), s); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func newTestPhase(o Options, k *fakeKernel) *PrepPhase {
	p := NewPrepPhase(o)
	p.kernel, p.setHostname = k, true
	return p
}

func changeStrings(cs []bootstrap.Change) []string {
	var out []string
	for _, c := range cs {
		out = append(out, c.String())
	}
	slices.Sort(out)
	return out
}

func sorted(s ...string) []string { slices.Sort(s); return s }

func run(t *testing.T, p *PrepPhase) []bootstrap.Change {
	t.Helper()
	ctx := context.Background()
	changes, err := p.Check(ctx)
	if err != nil {
		t.Fatalf("check: %v", err)
	}
	if len(changes) > 0 {
		if err := p.Act(ctx); err != nil {
			t.Fatalf("act: %v", err)
		}
	}
	if err := p.Verify(ctx); err != nil {
		t.Fatalf("verify: %v", err)
	}
	return changes
}

func TestPrepPhase(t *testing.T) {
	enoent := errors.New("modprobe: FATAL: Module br_netfilter not found in directory /lib/modules/6.1.0-cloud-amd64")
	tests := []struct {
		name string
		opts Options
		// setup changes the fresh node before the first run.
		setup       func(t *testing.T, root fsutil.Root, k *fakeKernel)
		wantChanges []string
		wantWarn    []string
		wantCalls   []string
		// check runs after the first run, on the converged root.
		check func(t *testing.T, root fsutil.Root, k *fakeKernel)
	}{
		{
			name: "fresh node converges",
			opts: Options{Hostname: "ip-10-0-1-5.ec2.internal"},
			wantChanges: sorted(
				"create file /etc/sysctl.d/99-nodeagent.conf",
				"create file /etc/modules-load.d/nodeagent.conf",
				"update file /etc/hostname",
				"update file /etc/fstab (comment out 2 swap entries)",
				"mask unit swap.target (/etc/systemd/system/swap.target -> /dev/null)",
				"load module br_netfilter",
				"apply sysctl net.bridge.bridge-nf-call-iptables (absent -> 1)",
				"apply sysctl net.bridge.bridge-nf-call-ip6tables (absent -> 1)",
				"apply sysctl net.ipv4.ip_forward (0 -> 1)",
				"disable swap /swapfile (swapoff)",
				"apply hostname ip-10-0-1-5.ec2.internal (was localhost)",
			),
			wantCalls: []string{"modprobe br_netfilter", "swapoff /swapfile", "sethostname ip-10-0-1-5.ec2.internal"},
			check: func(t *testing.T, root fsutil.Root, k *fakeKernel) {
				for key, want := range map[string]string{
					"/proc/sys/net/ipv4/ip_forward":                 "1\n",
					"/proc/sys/net/bridge/bridge-nf-call-iptables":  "1\n",
					"/proc/sys/net/bridge/bridge-nf-call-ip6tables": "1\n",
					"/etc/hostname":                   "ip-10-0-1-5.ec2.internal\n",
					"/proc/swaps":                     swapsHeader,
					"/etc/sysctl.d/10-distro.conf":    "kernel.panic = 10\n",
					"/etc/modules-load.d/distro.conf": "loop\n",
				} {
					assertFile(t, root.Path(key), want)
				}
				assertFile(t, root.Path("/etc/fstab"), `# /etc/fstab: static file system information.
UUID=1234 / ext4 errors=remount-ro 0 1
# disabled by nodeagent: /swapfile none swap sw 0 0
# /olds none swap sw 0 0
# disabled by nodeagent: /dev/xvdb   none   swap   defaults   0   0
tmpfs /tmp tmpfs defaults 0 0
`)
				if l, err := os.Readlink(root.Path(SwapTargetMask)); err != nil || l != "/dev/null" {
					t.Errorf("swap.target mask = %q, %v; want a link to /dev/null", l, err)
				}
				if _, err := os.Stat(root.Path(RefusalsFile)); !os.IsNotExist(err) {
					t.Errorf("nothing was refused, yet %s exists (%v)", RefusalsFile, err)
				}
				golden(t, "default-sysctl.conf", root.Path(SysctlFile))
				golden(t, "default-modules.conf", root.Path(ModulesLoadFile))
			},
		},
		{
			name: "user sysctls and modules merge over the defaults",
			opts: Options{
				Sysctls:       map[string]string{"net.ipv4.ip_forward": "1", "vm.max_map_count": "262144", "net.ipv4.ip_local_port_range": "1024\t65000"},
				KernelModules: []string{"ip_vs", "br-netfilter", "overlay"},
			},
			setup: func(t *testing.T, root fsutil.Root, k *fakeKernel) {
				must(t, writeFile(root.Path("/proc/sys/vm/max_map_count"), "65530\n"))
				must(t, writeFile(root.Path("/proc/sys/net/ipv4/ip_local_port_range"), "32768\t60999\n"))
			},
			wantChanges: sorted(
				"create file /etc/sysctl.d/99-nodeagent.conf",
				"create file /etc/modules-load.d/nodeagent.conf",
				"update file /etc/fstab (comment out 2 swap entries)",
				"mask unit swap.target (/etc/systemd/system/swap.target -> /dev/null)",
				"load module br_netfilter",
				"load module ip_vs",
				"apply sysctl net.bridge.bridge-nf-call-iptables (absent -> 1)",
				"apply sysctl net.bridge.bridge-nf-call-ip6tables (absent -> 1)",
				"apply sysctl net.ipv4.ip_forward (0 -> 1)",
				"apply sysctl net.ipv4.ip_local_port_range (32768 60999 -> 1024 65000)",
				"apply sysctl vm.max_map_count (65530 -> 262144)",
				"disable swap /swapfile (swapoff)",
			),
			wantCalls: []string{"modprobe br_netfilter", "modprobe ip_vs", "swapoff /swapfile"},
			check: func(t *testing.T, root fsutil.Root, k *fakeKernel) {
				golden(t, "custom-sysctl.conf", root.Path(SysctlFile))
				golden(t, "custom-modules.conf", root.Path(ModulesLoadFile))
				assertFile(t, root.Path("/proc/sys/vm/max_map_count"), "262144\n")
			},
		},
		{
			name: "container: no modules, kernel refuses, phase warns and converges",
			setup: func(t *testing.T, root fsutil.Root, k *fakeKernel) {
				k.modErr = map[string]error{"br_netfilter": enoent}
				k.swapErr = syscall.EPERM
			},
			wantChanges: sorted(
				"create file /etc/sysctl.d/99-nodeagent.conf",
				"create file /etc/modules-load.d/nodeagent.conf",
				"update file /etc/fstab (comment out 2 swap entries)",
				"mask unit swap.target (/etc/systemd/system/swap.target -> /dev/null)",
				"load module br_netfilter",
				"apply sysctl net.bridge.bridge-nf-call-iptables (absent -> 1)",
				"apply sysctl net.bridge.bridge-nf-call-ip6tables (absent -> 1)",
				"apply sysctl net.ipv4.ip_forward (0 -> 1)",
				"disable swap /swapfile (swapoff)",
			),
			wantWarn: []string{
				"kernel refused module br_netfilter: " + enoent.Error(),
				"kernel refused swapoff /swapfile: operation not permitted",
				"sysctl net.bridge.bridge-nf-call-ip6tables: open {root}/proc/sys/net/bridge/bridge-nf-call-ip6tables: no such file or directory",
				"sysctl net.bridge.bridge-nf-call-iptables: open {root}/proc/sys/net/bridge/bridge-nf-call-iptables: no such file or directory",
			},
			wantCalls: []string{"modprobe br_netfilter", "swapoff /swapfile"},
			check: func(t *testing.T, root fsutil.Root, k *fakeKernel) {
				// What could be applied was, and the persisted half is complete so
				// the next boot gets it all.
				assertFile(t, root.Path("/proc/sys/net/ipv4/ip_forward"), "1\n")
				golden(t, "default-sysctl.conf", root.Path(SysctlFile))
			},
		},
		{
			name: "sethostname refused",
			opts: Options{Hostname: "node-a"},
			setup: func(t *testing.T, root fsutil.Root, k *fakeKernel) {
				k.hostErr = syscall.EPERM
				must(t, writeFile(root.Path("/proc/swaps"), swapsHeader))
				must(t, writeFile(root.Path("/etc/fstab"), "UUID=1 / ext4 defaults 0 1\n"))
			},
			wantChanges: sorted(
				"create file /etc/sysctl.d/99-nodeagent.conf",
				"create file /etc/modules-load.d/nodeagent.conf",
				"update file /etc/hostname",
				"mask unit swap.target (/etc/systemd/system/swap.target -> /dev/null)",
				"load module br_netfilter",
				"apply sysctl net.bridge.bridge-nf-call-iptables (absent -> 1)",
				"apply sysctl net.bridge.bridge-nf-call-ip6tables (absent -> 1)",
				"apply sysctl net.ipv4.ip_forward (0 -> 1)",
				"apply hostname node-a (was localhost)",
			),
			wantWarn:  []string{"kernel refused host name node-a: operation not permitted"},
			wantCalls: []string{"modprobe br_netfilter", "sethostname node-a"},
			check: func(t *testing.T, root fsutil.Root, k *fakeKernel) {
				assertFile(t, root.Path("/etc/hostname"), "node-a\n")
				assertFile(t, root.Path("/etc/fstab"), "UUID=1 / ext4 defaults 0 1\n")
			},
		},
		{
			name: "already converged node: no changes, no kernel calls",
			opts: Options{Hostname: "node-b"},
			setup: func(t *testing.T, root fsutil.Root, k *fakeKernel) {
				d, err := desiredFrom(Options{Hostname: "node-b"})
				must(t, err)
				for _, f := range d.files() {
					must(t, writeFile(root.Path(f.path), string(f.data)))
				}
				must(t, writeFile(root.Path("/proc/modules"), "br_netfilter 1 0 - Live 0x0\n"))
				for _, k := range []string{"net/ipv4/ip_forward", "net/bridge/bridge-nf-call-iptables", "net/bridge/bridge-nf-call-ip6tables"} {
					must(t, writeFile(root.Path("/proc/sys/"+k), "1\n"))
				}
				must(t, writeFile(root.Path("/proc/swaps"), swapsHeader))
				must(t, writeFile(root.Path("/etc/fstab"), "# disabled by nodeagent: /swapfile none swap sw 0 0\n"))
				must(t, os.Symlink("/dev/null", root.Path(SwapTargetMask)))
				k.hostname = "node-b"
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			root := freshNode(t)
			k := &fakeKernel{root: root, hostname: "localhost"}
			if tc.setup != nil {
				tc.setup(t, root, k)
			}
			o := tc.opts
			o.Root = root
			p := newTestPhase(o, k)

			got := changeStrings(run(t, p))
			if !slices.Equal(got, tc.wantChanges) {
				t.Errorf("changes:\n got %q\nwant %q", got, tc.wantChanges)
			}
			want := make([]string, len(tc.wantWarn))
			for i, w := range tc.wantWarn {
				want[i] = strings.ReplaceAll(w, "{root}", string(root))
			}
			if w := p.Warnings(); !slices.Equal(w, want) {
				t.Errorf("warnings:\n got %q\nwant %q", w, want)
			}
			if !slices.Equal(k.calls, tc.wantCalls) {
				t.Errorf("kernel calls: got %q, want %q", k.calls, tc.wantCalls)
			}
			if tc.check != nil {
				tc.check(t, root, k)
			}

			// The re-run, by a new process (a new phase value): nothing to change,
			// nothing asked of the kernel, the same warnings.
			k.calls = nil
			again := newTestPhase(o, k)
			if cs := run(t, again); len(cs) != 0 {
				t.Errorf("re-run after success reported changes: %q", changeStrings(cs))
			}
			if len(k.calls) != 0 {
				t.Errorf("re-run called the kernel: %q", k.calls)
			}
			if w := again.Warnings(); !slices.Equal(w, want) {
				t.Errorf("re-run warnings:\n got %q\nwant %q", w, want)
			}
		})
	}
}

// A refusal is remembered for one boot only: after a reboot (new boot id) the
// phase tries again, and succeeds if the new kernel can.
func TestRefusalIsForgottenOnReboot(t *testing.T) {
	root := freshNode(t)
	k := &fakeKernel{root: root, modErr: map[string]error{"br_netfilter": errors.New("modprobe: FATAL: Module br_netfilter not found")}}
	run(t, newTestPhase(Options{Root: root}, k))

	must(t, writeFile(root.Path("/proc/sys/kernel/random/boot_id"), "boot-2\n"))
	k.modErr, k.calls = nil, nil
	p := newTestPhase(Options{Root: root}, k)
	got := changeStrings(run(t, p))
	want := sorted(
		"load module br_netfilter",
		"apply sysctl net.bridge.bridge-nf-call-iptables (absent -> 1)",
		"apply sysctl net.bridge.bridge-nf-call-ip6tables (absent -> 1)",
	)
	if !slices.Equal(got, want) {
		t.Errorf("after reboot: got %q, want %q", got, want)
	}
	if w := p.Warnings(); len(w) != 0 {
		t.Errorf("after a successful retry warnings remain: %q", w)
	}
	if _, err := os.Stat(root.Path(RefusalsFile)); !os.IsNotExist(err) {
		t.Errorf("refusal record should be gone: %v", err)
	}
}

// A hand edit of a managed file is a change again; an edited runtime value too.
func TestDriftIsAChange(t *testing.T) {
	root := freshNode(t)
	k := &fakeKernel{root: root}
	run(t, newTestPhase(Options{Root: root}, k))

	must(t, writeFile(root.Path(SysctlFile), "net.ipv4.ip_forward = 0\n"))
	must(t, writeFile(root.Path("/proc/sys/net/ipv4/ip_forward"), "0\n"))
	p := newTestPhase(Options{Root: root}, k)
	cs, err := p.Check(context.Background())
	must(t, err)
	want := []string{"apply sysctl net.ipv4.ip_forward (0 -> 1)", "update file /etc/sysctl.d/99-nodeagent.conf"}
	if got := changeStrings(cs); !slices.Equal(got, want) {
		t.Errorf("got %q, want %q", got, want)
	}
	if err := p.Verify(context.Background()); err == nil {
		t.Error("Verify passed on a drifted node")
	}
	run(t, p)
	golden(t, "default-sysctl.conf", root.Path(SysctlFile))
}

// The kernel accepting a write but keeping another value is a refusal, not success.
func TestSysctlReadBackMismatchWarns(t *testing.T) {
	root := freshNode(t)
	p := root.Path("/proc/sys/net/ipv4/ip_forward")
	must(t, os.Remove(p))
	must(t, os.Symlink("/dev/null", p)) // swallows writes, reads back empty
	ph := newTestPhase(Options{Root: root}, &fakeKernel{root: root})
	run(t, ph)
	want := `sysctl net.ipv4.ip_forward: wrote "1" to ` + p + ` but the kernel reads back ""`
	if w := ph.Warnings(); !slices.Contains(w, want) {
		t.Errorf("warnings %q lack %q", w, want)
	}
}

// A read-only /proc/sys (as in an unprivileged container) gives the kernel's
// EROFS text in the warning. Needs root for the read-only bind mount.
func TestReadOnlyProcSys(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("needs root for a read-only bind mount")
	}
	root := freshNode(t)
	sys := root.Path("/proc/sys")
	if err := unix.Mount(sys, sys, "", unix.MS_BIND, ""); err != nil {
		t.Fatalf("bind mount: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(sys, unix.MNT_DETACH) })
	must(t, unix.Mount("", sys, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY, ""))

	p := newTestPhase(Options{Root: root}, &fakeKernel{root: root, modErr: map[string]error{"br_netfilter": errors.New("modprobe: FATAL: Module br_netfilter not found")}})
	run(t, p)
	want := "sysctl net.ipv4.ip_forward: open " + sys + "/net/ipv4/ip_forward: read-only file system"
	if w := p.Warnings(); !slices.Contains(w, want) {
		t.Errorf("warnings %q lack %q", w, want)
	}
	if cs := run(t, newTestPhase(Options{Root: root}, &fakeKernel{root: root})); len(cs) != 0 {
		t.Errorf("re-run reported changes: %q", changeStrings(cs))
	}
}

// Under a directory root the real host is off limits: the kernel is never asked,
// /etc/hostname is written but the host name is not set, and what was not done is
// a warning.
func TestDirectoryRootLeavesKernelAlone(t *testing.T) {
	root := freshNode(t)
	before, err := os.Hostname()
	must(t, err)
	p := NewPrepPhase(Options{Root: root, Hostname: "not-this-host"})
	cs := run(t, p)
	if slices.ContainsFunc(cs, func(c bootstrap.Change) bool { return c.Kind == "hostname" }) {
		t.Errorf("a directory root planned to set the kernel's host name: %q", changeStrings(cs))
	}
	if after, _ := os.Hostname(); after != before {
		t.Fatalf("host name changed from %q to %q", before, after)
	}
	assertFile(t, root.Path("/etc/hostname"), "not-this-host\n")
	want := "kernel refused module br_netfilter: root " + string(root) + " is not the running system, its kernel is left alone"
	if w := p.Warnings(); !slices.Contains(w, want) {
		t.Errorf("warnings %q lack %q", w, want)
	}
}

func TestBadInput(t *testing.T) {
	for _, o := range []Options{
		{Sysctls: map[string]string{"../../etc/passwd": "1"}},
		{Sysctls: map[string]string{"net.ipv4.ip_forward": "1\nkernel.panic=1"}},
		{KernelModules: []string{"../evil"}},
		{Hostname: "a b"},
	} {
		o.Root = fsutil.Root(t.TempDir())
		if _, err := NewPrepPhase(o).Check(context.Background()); err == nil {
			t.Errorf("Check accepted %+v", o)
		}
	}
}

func assertFile(t *testing.T, path, want string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Errorf("read %s: %v", path, err)
		return
	}
	if string(b) != want {
		t.Errorf("%s:\n got %q\nwant %q", path, b, want)
	}
}

func golden(t *testing.T, name, path string) {
	t.Helper()
	got, err := os.ReadFile(path)
	must(t, err)
	g := filepath.Join("testdata", name)
	if *update {
		must(t, os.MkdirAll("testdata", 0o755))
		must(t, os.WriteFile(g, got, 0o644))
	}
	want, err := os.ReadFile(g)
	if err != nil {
		t.Fatalf("golden %s: %v (run with -update)", g, err)
	}
	if string(got) != string(want) {
		t.Errorf("%s differs from %s:\n got %q\nwant %q", path, g, got, want)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// modprobe reporting success is not proof: only the kernel's module list is.
func TestModprobeSuccessWithoutModuleWarns(t *testing.T) {
	root := freshNode(t)
	p := newTestPhase(Options{Root: root}, &fakeKernel{root: root})
	p.kernel = silentKernel{&fakeKernel{root: root}}
	run(t, p)
	want := "kernel refused module br_netfilter: modprobe succeeded but the module is not loaded (an install rule in modprobe.d?)"
	if w := p.Warnings(); !slices.Contains(w, want) {
		t.Errorf("warnings %q lack %q", w, want)
	}
}

// silentKernel's modprobe exits 0 and loads nothing.
type silentKernel struct{ *fakeKernel }

func (silentKernel) LoadModule(context.Context, string) error { return nil }
