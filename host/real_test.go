package host

import (
	"bufio"
	"context"
	"errors"
	"os"
	"runtime"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/nodeagent/nodeagent/internal/fsutil"
)

// The phase against the real kernel's /proc/sys, in a throwaway network namespace
// so that the host's own net.* sysctls are untouched: the real /proc is bind
// mounted into a directory root, and the phase runs on an OS thread that has
// unshared its network namespace (/proc/sys/net resolves per opening thread).
func TestRealSysctlsInFreshNetns(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("needs root: bind mount and a new network namespace")
	}
	hostBefore := readTrim(t, "/proc/sys/net/ipv4/ip_forward")

	root := fsutil.Root(t.TempDir())
	proc := root.Path("/proc")
	must(t, os.MkdirAll(proc, 0o755))
	if err := unix.Mount("/proc", proc, "", unix.MS_BIND, ""); err != nil {
		t.Fatalf("bind mount /proc: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(proc, unix.MNT_DETACH) })

	type result struct {
		first, second []string
		warnings      []string
		forward       string
		err           error
	}
	done := make(chan result)
	go func() {
		// The thread is never unlocked, so Go discards it with its namespace.
		runtime.LockOSThread()
		var r result
		defer func() { done <- r }()
		if r.err = unix.Unshare(unix.CLONE_NEWNET); r.err != nil {
			return
		}
		// This test is about /proc/sys; module loading is declined, which leaves
		// warnings and (on a kernel without br_netfilter) net.bridge.* refused.
		notHere := errors.New("module loading is not under test")
		k := &fakeKernel{root: root, modErr: map[string]error{"overlay": notHere, "br_netfilter": notHere}}
		p := newTestPhase(Options{Root: root}, k)
		ctx := context.Background()
		cs, err := p.Check(ctx)
		if r.err = err; err != nil {
			return
		}
		r.first = changeStrings(cs)
		if r.err = p.Act(ctx); r.err != nil {
			return
		}
		if r.err = p.Verify(ctx); r.err != nil {
			return
		}
		r.warnings = p.Warnings()
		cs, r.err = p.Check(ctx)
		r.second = changeStrings(cs)
		b, _ := os.ReadFile("/proc/sys/net/ipv4/ip_forward")
		r.forward = strings.TrimSpace(string(b))
	}()
	r := <-done
	if r.err != nil {
		t.Fatalf("in netns: %v", r.err)
	}
	if !slices.Contains(r.first, "apply sysctl net.ipv4.ip_forward (0 -> 1)") {
		t.Errorf("a fresh netns has forwarding off; first check = %q", r.first)
	}
	if r.forward != "1" {
		t.Errorf("ip_forward in the netns = %q after Act", r.forward)
	}
	for _, c := range r.second {
		if strings.Contains(c, "sysctl") {
			t.Errorf("sysctl still differs after Act (warnings %q): %s", r.warnings, c)
		}
	}
	t.Logf("first check %q; warnings %q", r.first, r.warnings)
	if after := readTrim(t, "/proc/sys/net/ipv4/ip_forward"); after != hostBefore {
		t.Fatalf("host ip_forward changed from %s to %s", hostBefore, after)
	}
}

// readModules on the real /proc agrees with the kernel's own list of file systems
// about overlay, and loading it when absent works through modprobe.
func TestRealModulesOverlay(t *testing.T) {
	mods, err := readModules("/")
	must(t, err)
	if !mods.has("overlay") {
		if os.Geteuid() != 0 {
			t.Fatal("overlay not loaded and not root")
		}
		if err := (liveKernel{}).LoadModule(context.Background(), "overlay"); err != nil {
			t.Fatalf("this kernel cannot load overlay: %v", err)
		}
		if mods, err = readModules("/"); err != nil || !mods.has("overlay") {
			t.Fatalf("modprobe overlay succeeded but the module is not seen (%v)", err)
		}
	}
	if !procFilesystems(t)["overlay"] {
		t.Error("readModules says overlay is present but /proc/filesystems has no overlay")
	}
	if mods.has("nodeagent_no_such_module") {
		t.Error("a module that does not exist is reported present")
	}
}

func procFilesystems(t *testing.T) map[string]bool {
	f, err := os.Open("/proc/filesystems")
	must(t, err)
	defer f.Close()
	out := map[string]bool{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if fs := strings.Fields(sc.Text()); len(fs) > 0 {
			out[fs[len(fs)-1]] = true
		}
	}
	return out
}

func readTrim(t *testing.T, p string) string {
	b, err := os.ReadFile(p)
	must(t, err)
	return strings.TrimSpace(string(b))
}
