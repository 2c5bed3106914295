// Package containerdtest runs Debian's real containerd as a child process of a
// test, with its own root, state, socket and CNI directories, so that a test can
// import images into it, run containers in it with Debian's `ctr`, or talk CRI to
// it without touching the host's containerd. The CRI calls tests need
// (ImageStatus, PullImage, UpdateRuntimeConfig) go over the real gRPC socket,
// with the few protobuf fields encoded by hand rather than pulling in the CRI
// API module.
//
// Tests that use it need root and `apt-get install -y containerd runc`; without
// them they fail saying so, never skip.
package containerdtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/encoding/protowire"
)

// Namespace is the containerd namespace ctr commands use: the CRI plugin's,
// where kubelet finds images.
const Namespace = "k8s.io"

// searchPath is where the binaries are looked for, and the PATH containerd (so
// its shim and runc, which Debian puts in /usr/sbin) and ctr run with.
const searchPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// Daemon is one containerd, its paths picked by Paths and run by Start.
type Daemon struct {
	Dir     string // holds everything below and containerd's log
	Root    string // --root
	State   string // --state
	Address string // the gRPC socket
	// CNIConfDir and CNIBinDir are the CRI plugin's conf_dir and bin_dir.
	CNIConfDir, CNIBinDir string

	ctr  string // the ctr binary
	cmd  *exec.Cmd
	done chan struct{}
}

// Paths picks the directories and socket of a daemon under a fresh directory
// (short: a unix socket path must fit in 108 bytes) removed at cleanup.
func Paths(t testing.TB) *Daemon {
	t.Helper()
	dir, err := os.MkdirTemp("", "ctrd-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	d := &Daemon{
		Dir: dir, Root: filepath.Join(dir, "root"), State: filepath.Join(dir, "state"),
		Address: filepath.Join(dir, "c.sock"), CNIConfDir: filepath.Join(dir, "net.d"), CNIBinDir: filepath.Join(dir, "cni-bin"),
	}
	for _, p := range []string{d.CNIConfDir, d.CNIBinDir} {
		if err := os.MkdirAll(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return d
}

// MinimalConfig is a config.toml for d: its own root, state, socket and opt
// directory, the snapshotters that cannot work in a test's directory disabled,
// and a CRI plugin whose CNI directories are d's.
func (d *Daemon) MinimalConfig() string {
	return fmt.Sprintf(`version = 2
root = %q
state = %q
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = %q

[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = %q
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = %q
    conf_dir = %q
`, d.Root, d.State, d.Address, filepath.Join(d.Dir, "opt"), d.CNIBinDir, d.CNIConfDir)
}

// binaries checks that the test may run containerd and returns the paths of
// containerd and ctr, failing the test with what to install otherwise.
func binaries(t testing.TB) (containerd, ctr string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatalf("this test runs a real containerd and needs root")
	}
	found := map[string]string{}
	for _, name := range []string{"containerd", "ctr", "containerd-shim-runc-v2", "runc"} {
		for _, dir := range filepath.SplitList(searchPath) {
			p := filepath.Join(dir, name)
			if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0 {
				found[name] = p
				break
			}
		}
		if found[name] == "" {
			t.Fatalf("%s is needed by this test and is not in %s: apt-get install -y containerd runc", name, searchPath)
		}
	}
	return found["containerd"], found["ctr"]
}

// Start runs containerd with config (a config.toml that uses d's paths) and
// returns once it serves ctr on its socket. At cleanup the tasks a test left
// behind are removed and the daemon is stopped; a failed test gets its log.
func (d *Daemon) Start(t testing.TB, config string) {
	t.Helper()
	bin, ctr := binaries(t)
	d.ctr = ctr
	cfg := filepath.Join(d.Dir, "config.toml")
	if err := os.WriteFile(cfg, []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	// A file, not a buffer: the child writes it directly and Log reads it at any
	// time, with no copying goroutine to race with.
	log, err := os.Create(d.logPath())
	if err != nil {
		t.Fatal(err)
	}
	defer log.Close()
	d.cmd = exec.Command(bin, "--config", cfg, "--log-level", "info")
	d.cmd.Env = []string{"PATH=" + searchPath}
	d.cmd.Stdout, d.cmd.Stderr = log, log
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := d.cmd.Start(); err != nil {
		t.Fatalf("start containerd: %v", err)
	}
	d.done = make(chan struct{})
	go func() { _ = d.cmd.Wait(); close(d.done) }()
	t.Cleanup(func() { d.stop(t) })

	deadline := time.Now().Add(60 * time.Second)
	for {
		c, err := net.DialTimeout("unix", d.Address, time.Second)
		if err == nil {
			c.Close()
			break
		}
		select {
		case <-d.done:
			t.Fatalf("containerd exited before serving %s: %v\n%s", d.Address, d.cmd.ProcessState, d.Log())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("containerd did not serve %s within 60s (last: %v)\n%s", d.Address, err, d.Log())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if out, err := d.Ctr(context.Background(), "version"); err != nil {
		t.Fatalf("ctr version: %v\n%s\n%s", err, out, d.Log())
	}
}

func (d *Daemon) stop(t testing.TB) {
	d.removeTasks()
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.done:
	case <-time.After(20 * time.Second):
		t.Logf("containerd ignored SIGTERM for 20s; killing it")
		_ = d.cmd.Process.Kill()
		<-d.done
	}
	if t.Failed() {
		t.Logf("containerd log:\n%s", d.Log())
	}
}

// removeTasks kills and deletes the tasks a failed test left running, so that
// no shim or container outlives the daemon and no rootfs stays mounted in Dir.
func (d *Daemon) removeTasks() {
	select {
	case <-d.done:
		return // ctr would wait for a daemon that is gone
	default:
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := d.Ctr(ctx, "tasks", "ls", "-q")
	if err != nil {
		return
	}
	for _, id := range strings.Fields(out) {
		_, _ = d.Ctr(ctx, "tasks", "rm", "-f", id)
	}
}

func (d *Daemon) logPath() string { return filepath.Join(d.Dir, "containerd.log") }

// Log is what containerd has written so far.
func (d *Daemon) Log() string {
	b, err := os.ReadFile(d.logPath())
	if err != nil {
		return fmt.Sprintf("(no containerd log: %v)", err)
	}
	return string(b)
}

func (d *Daemon) command(ctx context.Context, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, d.ctr, append([]string{"--address", d.Address, "--namespace", Namespace}, args...)...)
	cmd.Env = []string{"PATH=" + searchPath}
	return cmd
}

// Ctr runs `ctr` against d in Namespace and returns its combined output.
func (d *Daemon) Ctr(ctx context.Context, args ...string) (string, error) {
	out, err := d.command(ctx, args...).CombinedOutput()
	return string(out), err
}

// Import imports an image archive with `ctr images import`, failing the test
// when ctr does.
func (d *Daemon) Import(t testing.TB, file string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if out, err := d.Ctr(ctx, "images", "import", file); err != nil {
		t.Fatalf("ctr images import %s: %v\n%s", file, err, out)
	}
}

// ImageNames lists the images' names, as `ctr images ls -q` prints them.
func (d *Daemon) ImageNames(t testing.TB) []string {
	t.Helper()
	out, err := d.Ctr(context.Background(), "images", "ls", "-q")
	if err != nil {
		t.Fatalf("ctr images ls: %v\n%s", err, out)
	}
	return strings.Fields(out)
}

// RunCommand is `ctr run --rm` of a container of image named id, for a test
// that starts the process and handles it itself (e.g. signals the container).
// ctrArgs go before the image (e.g. --net-host, --privileged); args, when
// given, replace the image's Entrypoint and Cmd, as ctr does.
func (d *Daemon) RunCommand(ctx context.Context, ctrArgs []string, image, id string, args ...string) *exec.Cmd {
	full := append([]string{"run", "--rm"}, ctrArgs...)
	full = append(full, image, id)
	return d.command(ctx, append(full, args...)...)
}

// Run runs the container of RunCommand to completion and returns its output.
func (d *Daemon) Run(ctx context.Context, ctrArgs []string, image, id string, args ...string) (string, error) {
	out, err := d.RunCommand(ctx, ctrArgs, image, id, args...).CombinedOutput()
	return string(out), err
}

// WaitTask polls until the task id is in the given status (e.g. RUNNING).
func (d *Daemon) WaitTask(id, status string, within time.Duration) error {
	deadline := time.Now().Add(within)
	for {
		out, err := d.Ctr(context.Background(), "tasks", "ls")
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

// CRIImage is what CRI's ImageStatus says of an image kubelet asks for.
type CRIImage struct {
	ID       string
	RepoTags []string
}

// imageRequest is the request message of ImageStatus and PullImage:
// {image: ImageSpec{image: ref}}.
func imageRequest(ref string) []byte {
	spec := protowire.AppendTag(nil, 1, protowire.BytesType)
	spec = protowire.AppendString(spec, ref)
	req := protowire.AppendTag(nil, 1, protowire.BytesType)
	return protowire.AppendBytes(req, spec)
}

// ImageStatus asks the CRI plugin about ref, as kubelet does before it runs a
// pod; found is false when CRI does not know the image.
func (d *Daemon) ImageStatus(ctx context.Context, ref string) (img CRIImage, found bool, err error) {
	resp, err := d.invoke(ctx, "/runtime.v1.ImageService/ImageStatus", imageRequest(ref))
	if err != nil {
		return CRIImage{}, false, err
	}
	// ImageStatusResponse{image: Image{id: 1, repo_tags: 2, ...}}
	raw, ok, err := field(resp, 1)
	if err != nil || !ok {
		return CRIImage{}, false, err
	}
	for len(raw) > 0 {
		num, typ, n := protowire.ConsumeTag(raw)
		if n < 0 {
			return CRIImage{}, false, protowire.ParseError(n)
		}
		raw = raw[n:]
		if typ == protowire.BytesType && (num == 1 || num == 2) {
			v, m := protowire.ConsumeString(raw)
			if m < 0 {
				return CRIImage{}, false, protowire.ParseError(m)
			}
			if num == 1 {
				img.ID = v
			} else {
				img.RepoTags = append(img.RepoTags, v)
			}
			raw = raw[m:]
			continue
		}
		m := protowire.ConsumeFieldValue(num, typ, raw)
		if m < 0 {
			return CRIImage{}, false, protowire.ParseError(m)
		}
		raw = raw[m:]
	}
	return img, img.ID != "", nil
}

// PullImage asks the CRI plugin to pull ref, as kubelet does for a pod's image.
func (d *Daemon) PullImage(ctx context.Context, ref string) error {
	_, err := d.invoke(ctx, "/runtime.v1.ImageService/PullImage", imageRequest(ref))
	return err
}

// UpdatePodCIDR makes the call kubelet makes once the node has a pod CIDR:
// UpdateRuntimeConfig{runtime_config: {network_config: {pod_cidr}}}.
func (d *Daemon) UpdatePodCIDR(ctx context.Context, cidr string) error {
	nc := protowire.AppendTag(nil, 1, protowire.BytesType)
	nc = protowire.AppendString(nc, cidr)
	rc := protowire.AppendTag(nil, 1, protowire.BytesType)
	rc = protowire.AppendBytes(rc, nc)
	req := protowire.AppendTag(nil, 1, protowire.BytesType)
	req = protowire.AppendBytes(req, rc)
	_, err := d.invoke(ctx, "/runtime.v1.RuntimeService/UpdateRuntimeConfig", req)
	return err
}

// field returns the bytes of the first length-delimited field num of msg.
func field(msg []byte, num protowire.Number) ([]byte, bool, error) {
	for len(msg) > 0 {
		n, typ, l := protowire.ConsumeTag(msg)
		if l < 0 {
			return nil, false, protowire.ParseError(l)
		}
		msg = msg[l:]
		if n == num && typ == protowire.BytesType {
			v, m := protowire.ConsumeBytes(msg)
			if m < 0 {
				return nil, false, protowire.ParseError(m)
			}
			return v, true, nil
		}
		m := protowire.ConsumeFieldValue(n, typ, msg)
		if m < 0 {
			return nil, false, protowire.ParseError(m)
		}
		msg = msg[m:]
	}
	return nil, false, nil
}

func (d *Daemon) invoke(ctx context.Context, method string, req []byte) ([]byte, error) {
	conn, err := grpc.NewClient("unix://"+d.Address, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	var resp []byte
	if err := conn.Invoke(ctx, method, req, &resp, grpc.ForceCodec(rawCodec{})); err != nil {
		return nil, fmt.Errorf("%s: %w", method, err)
	}
	return resp, nil
}

// rawCodec passes hand-encoded protobuf bytes through. It is named "proto" so
// the request carries the content type containerd's server expects.
type rawCodec struct{}

func (rawCodec) Name() string { return "proto" }

func (rawCodec) Marshal(v any) ([]byte, error) {
	b, ok := v.([]byte)
	if !ok {
		return nil, fmt.Errorf("raw codec: cannot marshal %T", v)
	}
	return b, nil
}

func (rawCodec) Unmarshal(data []byte, v any) error {
	p, ok := v.(*[]byte)
	if !ok {
		return errors.New("raw codec: can only unmarshal into *[]byte")
	}
	*p = bytes.Clone(data)
	return nil
}
