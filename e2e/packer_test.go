//go:build e2e

package e2e

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/nodeagent/nodeagent/awsemu"
	"github.com/nodeagent/nodeagent/bootstrap"
	"github.com/nodeagent/nodeagent/config"
	"github.com/nodeagent/nodeagent/internal/netns"
	"github.com/nodeagent/nodeagent/internal/nspawn"
	"github.com/nodeagent/nodeagent/internal/packertest"
	"github.com/nodeagent/nodeagent/internal/testenv"
)

// packerRootfs is the build machine's root: the e2e rootfs plus sshd and sudo
// (hack/rootfs-packer.sh), as a cloud base image has them.
const packerRootfs = "/var/cache/nodeagent-e2e/rootfs-packer"

// TestPackerImage builds an image with packer/'s template on Debian's packer 1.6 —
// the production variables, locals and provisioners (binary and unit uploaded,
// the shell step running `nodeagent bake`), through a null source with SSH into a
// running machine in place of amazon-ebs — then boots the image that produced as
// a new instance in a network namespace whose only reachable address is the
// emulated AWS (IMDS, EC2, S3): the image's own nodeagent-bootstrap.service
// turns it into a ready worker and not one asset or image is downloaded.
func TestPackerImage(t *testing.T) {
	packer, err := exec.LookPath("packer")
	if err != nil {
		t.Fatalf("packer not installed (hack/deps.sh installs Debian's packer): %v", err)
	}
	if err := nspawn.Available(packerRootfs); err != nil {
		t.Fatalf("%v (hack/rootfs-packer.sh)", err)
	}
	if why := netns.Available(); why != "" {
		t.Fatalf("network namespaces: %s", why)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()

	// The build: assets from a mirror on the host's loopback, as an image build
	// fetches them from the internet.
	buildEnv := startEnv(t, &awsemu.World{})
	baked := bakeImage(ctx, t, packer, buildEnv)

	// The boot: a new instance in a namespace that reaches only the emulator.
	lab := netns.New(t, "pk", "10.121.0", 1)
	bins, err := testenv.WorkerBinaries("")
	if err != nil {
		t.Fatal(err)
	}
	archives, err := testenv.WorkerArchives()
	if err != nil {
		t.Fatal(err)
	}
	bootEnv, err := testenv.Start(testenv.Options{Binaries: bins, Archives: archives,
		Listen: func() (net.Listener, error) { return netns.ListenIn(lab.Bridge, "tcp", lab.Router.String()+":0") }}, &awsemu.World{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = bootEnv.Close() })
	// The user-data names the build's mirror (not reachable from the namespace)
	// and the emulated S3 (reachable): a download would show in S3's call count.
	assets := make([]config.Asset, len(bootEnv.Assets))
	for i, a := range bootEnv.Assets {
		assets[i] = a
		assets[i].URLs = []string{buildEnv.Assets[i].URLs[0], a.URLs[1]}
		if buildEnv.Assets[i].SHA256 != a.SHA256 {
			t.Fatalf("asset %s differs between the build and the boot", a.Name)
		}
	}
	ud, err := testenv.UserData(testenv.NodeSpec{Cluster: cluster, Role: config.RoleNode, Runtime: config.RuntimeContainerd,
		Assets: assets, Kubelet: testenv.ContainerKubeletConfig()})
	if err != nil {
		t.Fatal(err)
	}
	inst := awsemu.Instance{ID: "i-0e2e0baked000001", Type: "m5.large", AvailabilityZone: "us-east-1a",
		PrivateIP: lab.Nodes[0].IP.String(), State: "running", UserData: string(ud),
		Tags: map[string]string{"KubernetesCluster": cluster, "kubernetes.io/cluster/" + cluster: "owned"}}
	bootEnv.Emu.AddInstance(inst)
	env, err := bootEnv.AWSEnv(inst.ID)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	m, err := nspawn.Boot(ctx, nspawn.Options{Name: inst.ID, Rootfs: baked, Env: env, NetworkNamespace: lab.Nodes[0].NS, Log: consoleLog(t)})
	if err != nil {
		t.Fatal(err)
	}
	n := &testenv.Node{M: m, InstanceID: inst.ID, Env: env}
	t.Cleanup(func() {
		if err := n.Close(); err != nil {
			t.Errorf("close node: %v", err)
		}
	})

	// Nobody runs the agent: the image's unit does, at boot, from user-data.
	var st *bootstrap.State
	deadline := time.Now().Add(4 * time.Minute)
	for {
		var code int
		st, code = status(t, n)
		if code == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("baked node not ready after %s (status exit %d, %s)\n%s\n%s", time.Since(start), code, st.Error,
				n.Journal(ctx, "nodeagent-bootstrap.service"), n.Journal(ctx, "nodeagent.service"))
		}
		time.Sleep(2 * time.Second)
	}
	t.Logf("FIGURE baked image boot → ready (machine boot + nodeagent-bootstrap.service): %s", time.Since(start).Round(100*time.Millisecond))
	if out, _, err := m.Exec(ctx, nil, "systemctl", "is-active", "nodeagent-bootstrap.service"); err != nil || strings.TrimSpace(string(out)) != "active" {
		t.Errorf("nodeagent-bootstrap.service: %q %v", out, err)
	}
	for _, p := range st.Phases {
		if p.State != bootstrap.PhaseDone {
			t.Errorf("phase %s is %s (%s)", p.Name, p.State, p.Error)
		}
	}
	for _, a := range st.Assets {
		if a.Source != "" {
			t.Errorf("asset %s (%s) came from %s at boot; the image has it", a.Name, a.Path, a.Source)
		}
	}
	if len(st.Assets) == 0 {
		t.Error("status lists no installed assets")
	}
	if got := bootEnv.Emu.Calls(awsemu.ServiceS3, "GetObject"); got != 0 {
		t.Errorf("S3 GetObject called %d times during the boot, want 0 (no downloads)", got)
	}
	if got := bootEnv.MirrorRequests(); got != 0 {
		t.Errorf("the boot's mirror answered %d requests, want 0", got)
	}
}

// bakeImage runs `packer build` on the template (no plugins file, a null
// source over SSH into a build machine) and returns a copy of the machine's
// root after it powered off: the image.
func bakeImage(ctx context.Context, t *testing.T, packer string, env *testenv.Env) string {
	t.Helper()
	m, err := nspawn.Boot(ctx, nspawn.Options{Name: "packer-build", Rootfs: packerRootfs, Log: consoleLog(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Close() })

	// The build machine shares the host's network: sshd on a free loopback
	// port, root with a key made for this run.
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	sshPub, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	block, err := ssh.MarshalPrivateKey(priv, "packer test")
	if err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(t.TempDir(), "id_ed25519")
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(block), 0o600); err != nil {
		t.Fatal(err)
	}
	port := freePort(t)
	for path, body := range map[string]string{
		"/root/.ssh/authorized_keys":              string(ssh.MarshalAuthorizedKey(sshPub)),
		"/etc/ssh/sshd_config.d/packer-test.conf": fmt.Sprintf("Port %d\nListenAddress 127.0.0.1\nPermitRootLogin prohibit-password\n", port),
	} {
		if err := os.MkdirAll(m.Path(filepath.Dir(path)), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(m.Path(path), []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if out, stderr, err := m.Exec(ctx, nil, "systemctl", "start", "ssh.service"); err != nil {
		t.Fatalf("start sshd: %v\n%s%s", err, out, stderr)
	}

	dir := t.TempDir()
	if err := packertest.WithSource("../packer", dir, []byte(fmt.Sprintf(`source "null" "bake" {
  communicator         = "ssh"
  ssh_host             = "127.0.0.1"
  ssh_port             = %d
  ssh_username         = "root"
  ssh_private_key_file = %q
  ssh_timeout          = "1m"
}
`, port, keyFile))); err != nil {
		t.Fatal(err)
	}
	// What `nodeagent bake` reads: the worker's assets from the build's mirror.
	bakeCfg, err := testenv.UserData(testenv.NodeSpec{Cluster: "bake.nodeagent.local", Role: config.RoleNode,
		Runtime: config.RuntimeContainerd, Assets: env.Assets})
	if err != nil {
		t.Fatal(err)
	}
	bakeFile := filepath.Join(dir, "test-bake.yaml")
	if err := os.WriteFile(bakeFile, bakeCfg, 0o644); err != nil {
		t.Fatal(err)
	}
	vars := []string{"nodeagent_binary=" + builtAgent, "bake_config=" + bakeFile}
	for _, a := range env.Assets {
		if v := map[string]string{"kubelet": "kubelet", "containerd": "containerd", "cni-plugins": "cni_plugins", "runc": "runc"}[a.Name]; v != "" {
			vars = append(vars, v+"_url="+a.URLs[0], v+"_sha256="+a.SHA256)
		}
	}
	args := []string{"build", "-color=false"}
	for _, v := range vars {
		args = append(args, "-var", v)
	}
	cmd := exec.CommandContext(ctx, packer, append(args, ".")...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CHECKPOINT_DISABLE=1", "PACKER_CONFIG_DIR="+t.TempDir())
	start := time.Now()
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("packer build: %v\n%s", err, out)
	}
	t.Logf("FIGURE packer build (Debian packer 1.6, null source over SSH, provisioners as in production): %s", time.Since(start).Round(100*time.Millisecond))
	for _, want := range []string{"nodeagent bake --config /tmp/bake.yaml", "Builds finished"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("packer build output lacks %q:\n%s", want, out)
		}
	}

	// What the provisioners left: the agent, the enabled boot unit, every asset
	// installed and cached, a blank machine-id, no state but images/.
	for _, p := range []string{"/usr/local/bin/nodeagent", "/etc/systemd/system/multi-user.target.wants/nodeagent-bootstrap.service",
		"/usr/local/bin/kubelet", "/usr/local/bin/containerd", "/opt/cni/bin/bridge"} {
		if _, err := os.Lstat(m.Path(p)); err != nil {
			t.Errorf("image lacks %s: %v", p, err)
		}
	}
	for _, a := range env.Assets {
		if _, err := os.Stat(m.Path("/var/cache/nodeagent/assets/" + a.SHA256)); err != nil {
			t.Errorf("image cache lacks %s: %v", a.Name, err)
		}
	}
	if b, err := os.ReadFile(m.Path("/etc/machine-id")); err != nil || len(b) != 0 {
		t.Errorf("machine-id %q %v, want empty", b, err)
	}
	if err := m.Poweroff(ctx); err != nil {
		t.Fatal(err)
	}
	image := filepath.Join(t.TempDir(), "image")
	if out, err := exec.CommandContext(ctx, "cp", "-a", m.Dir, image).CombinedOutput(); err != nil {
		t.Fatalf("copy the image: %v: %s", err, out)
	}
	// The build machine's sshd is not part of the image under test.
	os.Remove(filepath.Join(image, "etc/ssh/sshd_config.d/packer-test.conf"))
	os.RemoveAll(filepath.Join(image, "root/.ssh"))
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	return image
}

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	_, p, _ := net.SplitHostPort(ln.Addr().String())
	port, _ := strconv.Atoi(p)
	return port
}

func consoleLog(t *testing.T) io.Writer {
	if *verbose {
		return testWriter{t}
	}
	return nil
}
