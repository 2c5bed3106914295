// Package containerdtest runs Debian's real containerd as a child process of a
// test, with its own root, state, socket and CNI directories, so a test can
// import images into it or talk CRI to it without touching the host's
// containerd. It also speaks the two CRI calls tests need (ImageStatus,
// UpdateRuntimeConfig) over the real gRPC socket, encoding the few protobuf
// fields by hand rather than pulling in the CRI API module.
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
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/encoding/protowire"
)

// Daemon is one running containerd.
type Daemon struct {
	Dir     string // holds everything below and containerd's log
	Root    string // --root
	State   string // --state
	Address string // the gRPC socket
	// CNIConfDir and CNIBinDir are the CRI plugin's conf_dir and bin_dir.
	CNIConfDir, CNIBinDir string

	cmd  *exec.Cmd
	log  *syncBuffer
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

// MinimalConfig is a config.toml for d: its own root, state and socket, and a
// CRI plugin whose CNI directories are d's.
func (d *Daemon) MinimalConfig() string {
	return fmt.Sprintf(`version = 2
root = %q
state = %q

[grpc]
  address = %q

[plugins]
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = %q
    conf_dir = %q
`, d.Root, d.State, d.Address, d.CNIBinDir, d.CNIConfDir)
}

// Binary returns the path of a containerd tool, failing the test with what to
// install when it is missing or the test is not root.
func Binary(t testing.TB, name string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatalf("this test runs a real containerd and needs root")
	}
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s is needed by this test: apt-get install -y containerd runc (%v)", name, err)
	}
	return p
}

// Start runs containerd with config (a config.toml that uses d's paths) and
// returns once its socket accepts connections. The daemon is stopped at cleanup.
func (d *Daemon) Start(t testing.TB, config string) {
	t.Helper()
	bin := Binary(t, "containerd")
	cfg := filepath.Join(d.Dir, "config.toml")
	if err := os.WriteFile(cfg, []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	d.log = &syncBuffer{}
	d.cmd = exec.Command(bin, "--config", cfg, "--log-level", "info")
	d.cmd.Stdout, d.cmd.Stderr = d.log, d.log
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
			return
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
}

func (d *Daemon) stop(t testing.TB) {
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

// Log is what containerd has written so far.
func (d *Daemon) Log() string { return d.log.String() }

// Ctr runs ctr against d and returns its combined output.
func (d *Daemon) Ctr(ctx context.Context, t testing.TB, args ...string) (string, error) {
	t.Helper()
	out, err := exec.CommandContext(ctx, Binary(t, "ctr"), append([]string{"--address", d.Address}, args...)...).CombinedOutput()
	return string(out), err
}

// CRIImage is what CRI's ImageStatus says of an image kubelet asks for.
type CRIImage struct {
	ID       string
	RepoTags []string
}

// ImageStatus asks the CRI plugin about ref, as kubelet does before it runs a
// pod; found is false when CRI does not know the image.
func (d *Daemon) ImageStatus(ctx context.Context, ref string) (img CRIImage, found bool, err error) {
	// ImageStatusRequest{image: ImageSpec{image: ref}}
	spec := protowire.AppendTag(nil, 1, protowire.BytesType)
	spec = protowire.AppendString(spec, ref)
	req := protowire.AppendTag(nil, 1, protowire.BytesType)
	req = protowire.AppendBytes(req, spec)
	resp, err := d.invoke(ctx, "/runtime.v1.ImageService/ImageStatus", req)
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
	// PullImageRequest{image: ImageSpec{image: ref}}
	spec := protowire.AppendTag(nil, 1, protowire.BytesType)
	spec = protowire.AppendString(spec, ref)
	req := protowire.AppendTag(nil, 1, protowire.BytesType)
	req = protowire.AppendBytes(req, spec)
	_, err := d.invoke(ctx, "/runtime.v1.ImageService/PullImage", req)
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

// syncBuffer is a bytes.Buffer safe for containerd's output and a test reading it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return strings.Clone(s.b.String())
}
