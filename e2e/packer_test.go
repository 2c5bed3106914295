//go:build e2e

package e2e

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"k8s.io/apimachinery/pkg/util/wait"
	"sigs.k8s.io/yaml"

	"github.com/nodeagent/nodeagent/awsemu"
	"github.com/nodeagent/nodeagent/bootstrap"
	"github.com/nodeagent/nodeagent/config"
	"github.com/nodeagent/nodeagent/iam"
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
// the shell step running `nodeagent bake` with the control-plane images of the
// image_archives variable), through a null source with SSH into a running
// machine in place of amazon-ebs — then boots the image that produced as new
// instances in network namespaces whose only reachable address is the emulated
// AWS (IMDS, EC2, S3): the image's own nodeagent-bootstrap.service turns one
// into a ready worker and another into a ready control plane (etcd on its claimed
// volumes, the API server, controller-manager and scheduler from the baked
// image archives), and not one asset or image is downloaded.
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
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()

	// The build: assets and image archives from a mirror on the host's loopback,
	// as an image build fetches them from the internet.
	images := loadImages(t)
	buildEnv := startBuildEnv(t, images)
	baked := bakeImage(ctx, t, packer, buildEnv, images)

	t.Run("worker", func(t *testing.T) { bootBakedWorker(ctx, t, baked, buildEnv) })
	t.Run("control plane", func(t *testing.T) { bootBakedControlPlane(ctx, t, baked, buildEnv) })
}

// startBuildEnv serves the worker's assets and every image archive to the build.
func startBuildEnv(t *testing.T, images []imageEntry) *testenv.Env {
	t.Helper()
	bins, archives := workerAssets(t, images...)
	env, err := testenv.Start(testenv.Options{Binaries: bins, Archives: archives,
		Log: slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))}, &awsemu.World{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = env.Close() })
	return env
}

// bakedURLs gives each of assets the build's mirror URL (which no booted
// instance reaches) first and its own S3 URL second, where a download would
// show in the emulator's count of the assets bucket's reads. It fails when an
// asset differs from the one baked.
func bakedURLs(t *testing.T, buildEnv *testenv.Env, assets []config.Asset) []config.Asset {
	t.Helper()
	out := make([]config.Asset, len(assets))
	for i, a := range assets {
		out[i] = a
		out[i].URLs = []string{buildMirrorURL(t, buildEnv, a.SHA256, a.Name), a.URLs[1]}
	}
	return out
}

// buildMirrorURL is where the build fetched the file with this SHA-256.
func buildMirrorURL(t *testing.T, buildEnv *testenv.Env, sha256, what string) string {
	t.Helper()
	for _, b := range buildEnv.Assets {
		if b.SHA256 == sha256 {
			return b.URLs[0]
		}
	}
	t.Fatalf("%s (%s) was not baked", what, sha256)
	return ""
}

// bootBakedWorker boots the image as a worker in a namespace that reaches only
// the emulator.
func bootBakedWorker(ctx context.Context, t *testing.T, baked string, buildEnv *testenv.Env) {
	lab := netns.New(t, "pk", "10.121.0", 1)
	bins, archives := workerAssets(t)
	bootEnv, err := testenv.Start(testenv.Options{Binaries: bins, Archives: archives,
		Listen: func() (net.Listener, error) { return netns.ListenIn(lab.Bridge, "tcp", lab.Router.String()+":0") }}, &awsemu.World{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = bootEnv.Close() })
	// The user-data names the build's mirror (not reachable from the namespace)
	// and the emulated S3 (reachable): a download would show in S3's call count.
	ud, err := testenv.UserData(testenv.NodeSpec{Cluster: cluster, Role: config.RoleNode, Runtime: config.RuntimeContainerd,
		Assets: bakedURLs(t, buildEnv, bootEnv.Assets), Kubelet: testenv.ContainerKubeletConfig()})
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
	n := bootImage(ctx, t, baked, nspawn.Options{Name: inst.ID, Env: env, NetworkNamespace: lab.Nodes[0].NS})
	st := waitBakedReady(ctx, t, n, 4*time.Minute)
	took := time.Since(start)
	t.Logf("FIGURE baked image boot → ready worker (machine boot + nodeagent-bootstrap.service): %s", took.Round(100*time.Millisecond))
	checkBakedBoot(ctx, t, n, st)
	if got := bootEnv.Emu.Calls(awsemu.ServiceS3, "GetObject"); got != 0 {
		t.Errorf("S3 GetObject called %d times during the boot, want 0 (no downloads)", got)
	}
	if got := bootEnv.MirrorRequests(); got != 0 {
		t.Errorf("the boot's mirror answered %d requests, want 0", got)
	}
	if err := n.Close(); err != nil { // its cores for the control plane
		t.Errorf("close node: %v", err)
	}
}

// bakedMasterAZ is a zone of its own for the control plane from the image: its
// etcd volumes are members of one-member clusters, so the master alone has quorum.
const bakedMasterAZ = "us-east-1d"

// bootBakedControlPlane boots the image as a lone control plane in the HA lab
// (its network reaches only the emulator; EBS volumes are loop devices), on
// volumes of one-member etcd clusters.
func bootBakedControlPlane(ctx context.Context, t *testing.T, baked string, buildEnv *testenv.Env) {
	var vols []awsemu.Volume
	for _, ec := range []string{"main", "events"} {
		v := haVolume(ec, "a", "a", bakedMasterAZ)
		v.ID = "vol-0baked" + ec
		vols = append(vols, v)
	}
	h := newHALab(t, vols...)
	h.extra = func(c *config.NodeConfig) {
		c.Spec.Assets = bakedURLs(t, buildEnv, c.Spec.Assets)
		for i, a := range c.Spec.Images.Archives {
			c.Spec.Images.Archives[i].URLs = []string{buildMirrorURL(t, buildEnv, a.SHA256, a.Name), a.URLs[1]}
		}
		c.Spec.Readiness.LifecycleHook = "" // a lone instance, not in a group with hooks
	}
	slot := h.net.Nodes[0]
	h.slot++
	inst := awsemu.Instance{ID: "i-0e2e0baked00000m", Type: "m5.large", AvailabilityZone: bakedMasterAZ,
		PrivateIP: slot.IP.String(), State: "running", UserData: string(h.userData(config.RoleControlPlane)),
		Tags:            map[string]string{"KubernetesCluster": haCluster, "kubernetes.io/cluster/" + haCluster: "owned"},
		InstanceProfile: iam.Masters}
	h.env.Emu.AddInstance(inst)
	env, err := h.env.AWSEnv(inst.ID)
	if err != nil {
		t.Fatal(err)
	}
	// Its own instance-profile credentials from IMDS, under the masters' policy.
	env = slices.DeleteFunc(env, func(kv string) bool {
		return strings.HasPrefix(kv, "AWS_ACCESS_KEY_ID=") || strings.HasPrefix(kv, "AWS_SECRET_ACCESS_KEY=")
	})
	start := time.Now()
	// The image's boot claims the volumes: the machine is shown attached volumes
	// from its start on, and its systemd finishes booting only with bootstrap.
	n := bootImage(ctx, t, baked, nspawn.Options{Name: inst.ID, Env: env, NetworkNamespace: slot.NS, BootTimeout: 8 * time.Minute,
		Started: func(m *nspawn.Machine) { h.linker.add(inst.ID, m) }})
	master := &haNode{Node: n, Inst: inst, IP: slot.IP.String(), Role: config.RoleControlPlane}
	st := waitBakedReady(ctx, t, n, 6*time.Minute)
	took := time.Since(start)
	t.Logf("FIGURE baked image boot → ready control plane (machine boot + nodeagent-bootstrap.service: volumes, etcd, API server, Node Ready): %s", took.Round(100*time.Millisecond))
	checkBakedBoot(ctx, t, n, st)
	for _, v := range vols {
		if vs, _ := h.env.Emu.VolumeStatus(v.ID); vs.InstanceID != inst.ID {
			t.Errorf("%s attached to %q, want %s", v.ID, vs.InstanceID, inst.ID)
		}
	}
	if code, err := apiGet(ctx, h.apiClient(master, master.IP), "/readyz", nil); err != nil || code != 200 {
		t.Errorf("API server /readyz: %d %v", code, err)
	}
	// Every control-plane image came from the image's cache: nothing was read
	// from the assets bucket, the lab's mirror answered nothing, and the
	// registry the manifests name is not even resolvable here.
	if got := h.env.Emu.ObjectReads(testenv.AssetsBucket); got != 0 {
		t.Errorf("%d objects read from the assets bucket during the boot, want 0 (no downloads)", got)
	}
	if got := h.env.MirrorRequests(); got != 0 {
		t.Errorf("the lab's mirror answered %d requests, want 0", got)
	}
}

// bootImage boots the baked root as a new instance's machine (o names it and
// gives its environment and network). The image's nodeagent-bootstrap.service
// is part of its boot: Boot returns once it has ended.
func bootImage(ctx context.Context, t *testing.T, baked string, o nspawn.Options) *testenv.Node {
	t.Helper()
	o.Rootfs, o.Log = baked, consoleLog(t)
	m, err := nspawn.Boot(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	n := &testenv.Node{M: m, InstanceID: o.Name, Env: o.Env}
	t.Cleanup(func() {
		if err := n.Close(); err != nil {
			t.Errorf("close node: %v", err)
		}
	})
	return n
}

// waitBakedReady waits until status says ready with every phase done. Nobody
// runs the agent: the image's unit does, at boot, from user-data; the daemon it
// starts re-runs the phases at once, so a ready node may show its run in
// progress for a moment.
func waitBakedReady(ctx context.Context, t *testing.T, n *testenv.Node, timeout time.Duration) *bootstrap.State {
	t.Helper()
	start := time.Now()
	var st *bootstrap.State
	var code int
	err := wait.PollUntilContextTimeout(ctx, time.Second, timeout, true, func(context.Context) (bool, error) {
		st, code = status(t, n)
		return code == 0 && !slices.ContainsFunc(st.Phases, func(p bootstrap.PhaseStatus) bool {
			return p.State == bootstrap.PhasePending || p.State == bootstrap.PhaseRunning
		}), nil
	})
	if err != nil {
		t.Fatalf("baked node not ready after %s (status exit %d, %s)\n%s\n%s", time.Since(start), code, st.Error,
			n.Journal(ctx, "nodeagent-bootstrap.service"), n.Journal(ctx, "nodeagent.service"))
	}
	return st
}

// checkBakedBoot: the image's unit ran to the end, every phase is done, and no
// asset was fetched at boot.
func checkBakedBoot(ctx context.Context, t *testing.T, n *testenv.Node, st *bootstrap.State) {
	t.Helper()
	if out, _, err := n.M.Exec(ctx, nil, "systemctl", "is-active", "nodeagent-bootstrap.service"); err != nil || strings.TrimSpace(string(out)) != "active" {
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
}

// bakeImage runs `packer build` on the template (no plugins file, a null
// source over SSH into a build machine) and returns a copy of the machine's
// root after it powered off: the image.
func bakeImage(ctx context.Context, t *testing.T, packer string, env *testenv.Env, images []imageEntry) string {
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
	// What `nodeagent bake` reads: the worker's assets from the build's mirror,
	// and the image archives as the image_archives variable puts them in.
	bakeCfg := bakeConfig(t, env)
	bakeFile := filepath.Join(dir, "test-bake.yaml")
	if err := os.WriteFile(bakeFile, bakeCfg, 0o644); err != nil {
		t.Fatal(err)
	}
	vars := []string{"nodeagent_binary=" + builtAgent, "bake_config=" + bakeFile}
	var archives []string
	for _, a := range env.Assets {
		if v := map[string]string{"kubelet": "kubelet", "containerd": "containerd", "cni-plugins": "cni_plugins", "runc": "runc"}[a.Name]; v != "" {
			vars = append(vars, v+"_url="+a.URLs[0], v+"_sha256="+a.SHA256)
		}
		for _, im := range images {
			if a.Name == imageAssetName(im) {
				archives = append(archives, fmt.Sprintf("{name = %q, url = %q, sha256 = %q}", im.Name, a.URLs[0], a.SHA256))
			}
		}
	}
	if len(archives) != len(images) {
		t.Fatalf("the build serves %d of %d image archives", len(archives), len(images))
	}
	vars = append(vars, "image_archives=["+strings.Join(archives, ", ")+"]")
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
	for _, a := range env.Assets { // image archives among them
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

// bakeConfig is the test worker's NodeConfig without image assets, with the
// bake.yaml placeholder the image_archives variable fills in.
func bakeConfig(t *testing.T, env *testenv.Env) []byte {
	t.Helper()
	var assets []config.Asset
	for _, a := range env.Assets {
		if !strings.HasPrefix(a.Name, "image-") {
			assets = append(assets, a)
		}
	}
	b, err := testenv.UserData(testenv.NodeSpec{Cluster: "bake.nodeagent.local", Role: config.RoleNode,
		Runtime: config.RuntimeContainerd, Assets: assets})
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := yaml.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	spec, ok := doc["spec"].(map[string]any)
	if !ok {
		t.Fatalf("the worker's NodeConfig has no spec:\n%s", b)
	}
	spec["images"] = map[string]any{"archives": "${image_archives}"}
	if b, err = yaml.Marshal(doc); err != nil {
		t.Fatal(err)
	}
	return b
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
