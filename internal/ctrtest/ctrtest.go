// Package ctrtest runs a private containerd for tests: Debian's /usr/bin/containerd
// as a child process with its own root, state, socket and a minimal config (the
// CRI plugin disabled), driven with Debian's `ctr`, so images are imported and run
// by the real thing without touching the host's containerd. Tests using it need
// root and the containerd and runc packages; without them they fail, saying what
// to install, rather than skip.
package ctrtest

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Binaries from Debian's containerd and runc packages.
const (
	ContainerdBin = "/usr/bin/containerd"
	CtrBin        = "/usr/bin/ctr"
	ShimBin       = "/usr/bin/containerd-shim-runc-v2"
	RuncBin       = "/usr/sbin/runc"
)

// Namespace is the containerd namespace used, the one kubelet's CRI uses.
const Namespace = "k8s.io"

// path is the PATH containerd and its shims run with (runc is in /usr/sbin).
const path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// Containerd is a running private containerd.
type Containerd struct {
	Address string // its gRPC socket
	Dir     string // root, state and config live here
	t       testing.TB
	log     *bytes.Buffer
}

// Start starts a containerd for the test and stops it in t.Cleanup. It fails the
// test when containerd cannot run here.
func Start(t testing.TB) *Containerd {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatalf("a private containerd needs root (run the test as root)")
	}
	for _, b := range []string{ContainerdBin, CtrBin, ShimBin, RuncBin} {
		if _, err := os.Stat(b); err != nil {
			t.Fatalf("%s missing: install Debian's containerd and runc (apt-get install -y containerd runc, or hack/deps.sh)", b)
		}
	}
	// Unix socket paths are limited to 108 bytes: keep the directory short.
	dir, err := os.MkdirTemp("", "ctrtest-")
	if err != nil {
		t.Fatalf("temp dir: %v", err)
	}
	c := &Containerd{Address: filepath.Join(dir, "containerd.sock"), Dir: dir, t: t, log: &bytes.Buffer{}}
	config := fmt.Sprintf(`version = 2
root = %q
state = %q
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = %q

[plugins."io.containerd.internal.v1.opt"]
  path = %q
`, filepath.Join(dir, "root"), filepath.Join(dir, "state"), c.Address, filepath.Join(dir, "opt"))
	cfgPath := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(cfgPath, []byte(config), 0o644); err != nil {
		t.Fatalf("write containerd config: %v", err)
	}
	cmd := exec.Command(ContainerdBin, "--config", cfgPath, "--log-level", "warn")
	cmd.Env = []string{"PATH=" + path}
	cmd.Stdout, cmd.Stderr = c.log, c.log
	if err := cmd.Start(); err != nil {
		t.Fatalf("start containerd: %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(15 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
		// Snapshots may still be mounted if a test failed mid-run.
		exec.Command("umount", "-R", filepath.Join(dir, "root")).Run()
		os.RemoveAll(dir)
		if t.Failed() {
			t.Logf("containerd log:\n%s", c.log.String())
		}
	})

	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case err := <-exited:
			t.Fatalf("containerd exited before serving: %v\n%s", err, c.log.String())
		default:
		}
		if conn, err := net.Dial("unix", c.Address); err == nil {
			conn.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("containerd did not listen on %s within 30s\n%s", c.Address, c.log.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if out, err := c.Ctr(context.Background(), "version"); err != nil {
		t.Fatalf("ctr version: %v\n%s", err, out)
	}
	return c
}

// Command returns a `ctr` command against this containerd in Namespace.
func (c *Containerd) Command(ctx context.Context, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, CtrBin, append([]string{"--address", c.Address, "--namespace", Namespace}, args...)...)
	cmd.Env = []string{"PATH=" + path}
	return cmd
}

// Ctr runs `ctr` with args and returns its combined output.
func (c *Containerd) Ctr(ctx context.Context, args ...string) (string, error) {
	out, err := c.Command(ctx, args...).CombinedOutput()
	return string(out), err
}

// Import imports an image archive with `ctr images import` and fails the test
// when ctr does.
func (c *Containerd) Import(file string) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if out, err := c.Ctr(ctx, "images", "import", file); err != nil {
		c.t.Fatalf("ctr images import %s: %v\n%s", file, err, out)
	}
}

// ImageNames lists the images' names, as `ctr images ls -q` prints them.
func (c *Containerd) ImageNames() []string {
	c.t.Helper()
	out, err := c.Ctr(context.Background(), "images", "ls", "-q")
	if err != nil {
		c.t.Fatalf("ctr images ls: %v\n%s", err, out)
	}
	return strings.Fields(out)
}

// Run runs a container of image to completion with `ctr run --rm` and returns
// its output. ctrArgs go before the image (e.g. --net-host, --privileged); args,
// when given, replace the image's Entrypoint and Cmd, as ctr does.
func (c *Containerd) Run(ctx context.Context, ctrArgs []string, image, id string, args ...string) (string, error) {
	full := append([]string{"run", "--rm"}, ctrArgs...)
	full = append(full, image, id)
	return c.Ctr(ctx, append(full, args...)...)
}

// WaitTask polls until the task id is in the given status (e.g. RUNNING).
func (c *Containerd) WaitTask(id, status string, within time.Duration) error {
	deadline := time.Now().Add(within)
	for {
		out, err := c.Ctr(context.Background(), "tasks", "ls")
		if err == nil {
			for _, line := range strings.Split(out, "\n") {
				f := strings.Fields(line)
				if len(f) >= 3 && f[0] == id && f[2] == status {
					return nil
				}
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("task %s not %s within %s; tasks:\n%s", id, status, within, out)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
