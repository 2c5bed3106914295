// Package systemdtest boots a real systemd in a container for tests: a
// copy-on-write view of the e2e rootfs run with systemd-nspawn, whose system bus
// the host reaches through /proc/<init>/root. Tests that use it skip where
// nspawn or the rootfs is missing.
package systemdtest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Rootfs is a debootstrapped Debian with systemd and dbus (made by hack/rootfs.sh).
var Rootfs = envOr("NODEAGENT_E2E_ROOTFS", "/var/cache/nodeagent-e2e/rootfs")

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

// Machine is a booted systemd container whose system bus the host can reach.
type Machine struct {
	Dir    string // the container's root as seen from the host
	Leader int    // the container's PID 1, as a host PID
	Bus    string // DBUS_SYSTEM_BUS_ADDRESS for the container's bus
}

// Boot boots a copy-on-write view of the rootfs with systemd-nspawn, waits for
// its system bus socket and points DBUS_SYSTEM_BUS_ADDRESS at it (t.Setenv, so
// not in parallel tests). dbus may still be starting when the socket appears:
// callers retry their first connection. Everything is torn down in t.Cleanup.
func Boot(t testing.TB) *Machine {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for systemd-nspawn")
	}
	if _, err := exec.LookPath("systemd-nspawn"); err != nil {
		t.Skip("systemd-nspawn not installed")
	}
	if _, err := os.Stat(filepath.Join(Rootfs, "usr/lib/systemd/systemd")); err != nil {
		t.Skipf("no e2e rootfs at %s (run hack/rootfs.sh): %v", Rootfs, err)
	}
	tmp := t.TempDir()
	dir := filepath.Join(tmp, "merged")
	for _, d := range []string{"upper", "work", "merged"} {
		if err := os.Mkdir(filepath.Join(tmp, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// An overlay keeps the shared rootfs pristine and costs nothing; fall back to
	// a copy where overlayfs is unavailable.
	opts := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s", Rootfs, filepath.Join(tmp, "upper"), filepath.Join(tmp, "work"))
	if err := syscall.Mount("overlay", dir, "overlay", 0, opts); err != nil {
		t.Logf("overlay mount failed (%v); copying the rootfs", err)
		if out, err := exec.Command("cp", "-a", "--reflink=auto", Rootfs+"/.", dir).CombinedOutput(); err != nil {
			t.Fatalf("copy rootfs: %v: %s", err, out)
		}
	} else {
		t.Cleanup(func() {
			if err := syscall.Unmount(dir, 0); err != nil {
				_ = syscall.Unmount(dir, syscall.MNT_DETACH)
			}
		})
	}

	name := fmt.Sprintf("na-e2e-%d", os.Getpid()%100000)
	logPath := filepath.Join(tmp, "nspawn.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("systemd-nspawn", "-q", "-b", "-D", dir, "--register=no", "-M", name, "--keep-unit")
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start systemd-nspawn: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		// SIGTERM asks nspawn to shut the container down cleanly; it gets 20s.
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-done
		}
		logf.Close()
		if t.Failed() {
			if b, err := os.ReadFile(logPath); err == nil {
				t.Logf("systemd-nspawn output (tail):\n%s", tail(b, 4000))
			}
		}
	})

	m := &Machine{Dir: dir}
	deadline := time.Now().Add(90 * time.Second)
	for {
		select {
		case err := <-done:
			b, _ := os.ReadFile(logPath)
			t.Fatalf("systemd-nspawn exited early: %v\n%s", err, tail(b, 4000))
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("container's system bus did not appear within 90s (leader %d)", m.Leader)
		}
		// Asked each time: nspawn's first child is a helper that exits once it has
		// forked the container's init.
		m.Leader = initOf(cmd.Process.Pid)
		if m.Leader != 0 {
			sock := fmt.Sprintf("/proc/%d/root/run/dbus/system_bus_socket", m.Leader)
			if _, err := os.Stat(sock); err == nil {
				m.Bus = "unix:path=" + sock
				break
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Setenv("DBUS_SYSTEM_BUS_ADDRESS", m.Bus)
	return m
}

// initOf returns the child of nspawn (pid) that runs systemd: the container's
// init, as a host PID. Zero until it exists.
func initOf(pid int) int {
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pid))
	for _, f := range tasks {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for _, s := range strings.Fields(string(b)) {
			n, err := strconv.Atoi(s)
			if err != nil {
				continue
			}
			if comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", n)); err == nil && strings.TrimSpace(string(comm)) == "systemd" {
				return n
			}
		}
	}
	return 0
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}
