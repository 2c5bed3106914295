//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/nodeagent/nodeagent/awsemu"
	"github.com/nodeagent/nodeagent/bootstrap"
	"github.com/nodeagent/nodeagent/config"
	"github.com/nodeagent/nodeagent/cri"
	"github.com/nodeagent/nodeagent/internal/nspawn"
	"github.com/nodeagent/nodeagent/internal/testenv"
	"github.com/nodeagent/nodeagent/systemd"
)

// dockerHelloImage is the archive the Docker node loads and runs a container of.
const dockerHelloImage = "nodeagent.test/hello:1"

// TestDockerNode boots a worker with containerRuntime docker: Debian's Docker
// Engine (dockerd, the docker CLI) comes in as verified assets next to the
// containerd and runc it runs on; the agent writes daemon.json and the units,
// starts them over D-Bus and verifies through the Engine API that the engine
// runs with the systemd cgroup driver; the image archive is loaded with docker
// load and a container of it runs. kubelet cannot run here: its CRI endpoint
// is cri-dockerd's, which neither Debian nor the Go module proxy serves, so the
// node is honestly not ready, for that reason. A re-run changes nothing; a
// drifted daemon.json is repaired with one restart of the engine; switching the
// runtime to containerd is refused as needs-replacement.
func TestDockerNode(t *testing.T) {
	bins, err := testenv.WorkerBinaries("")
	if err != nil {
		t.Fatal(err)
	}
	dockerBins, err := testenv.DockerBinaries("")
	if err != nil {
		t.Fatal(err)
	}
	bins = append(bins, dockerBins...)
	// The engine runs on the worker's containerd, which comes as its release tarball.
	archives, err := testenv.WorkerArchives()
	if err != nil {
		t.Fatal(err)
	}
	var hello imageEntry
	for _, im := range loadImages(t) {
		if im.Name == dockerHelloImage {
			hello = im
		}
	}
	if hello.File == "" {
		t.Fatalf("%s is not among the image archives in %s (go run ./hack/images)", dockerHelloImage, imagesDir())
	}
	bins = append(bins, testenv.Binary{Name: imageAssetName(hello), Path: filepath.Join(imagesDir(), hello.File)})
	env, err := testenv.Start(testenv.Options{Binaries: bins, Archives: archives, Log: slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))}, &awsemu.World{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = env.Close() })

	spec := testenv.NodeSpec{
		Cluster: cluster, Role: config.RoleNode, Runtime: config.RuntimeDocker,
		Assets: env.Assets, Kubelet: testenv.ContainerKubeletConfig(),
		Extra: func(c *config.NodeConfig) {
			var assets []config.Asset
			for _, a := range c.Spec.Assets {
				if a.Name == imageAssetName(hello) {
					c.Spec.Images.Archives = append(c.Spec.Images.Archives, config.ImageArchive{Name: hello.Name, URLs: a.URLs, SHA256: a.SHA256})
					continue
				}
				assets = append(assets, a)
			}
			c.Spec.Assets = assets
		},
	}
	ud, err := testenv.UserData(spec)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	n := bootDockerNode(t, ctx, env, workerInstance(t, "i-0e2e0docker00001", ud))

	start := time.Now()
	_, code := agent(t, n, "bootstrap")
	t.Logf("first bootstrap: %s", time.Since(start))
	if code == 0 {
		t.Fatal("bootstrap exit 0 on a Docker node without cri-dockerd; want not ready")
	}
	st, code := status(t, n)
	if code != 1 {
		t.Errorf("status exit %d, want 1 (not ready)", code)
	}
	for _, name := range []string{"host-prep", "assets", cri.PhaseName, "images"} {
		p := st.Phase(name)
		if p == nil || p.State != bootstrap.PhaseDone {
			t.Fatalf("phase %s: %+v, want done\n%s", name, p, n.Journal(ctx, "docker.service"))
		}
	}
	if p := st.Phase("kubelet"); p == nil || p.State != bootstrap.PhaseFailed ||
		!strings.Contains(p.Error, "cri-dockerd") || !strings.Contains(p.Error, cri.CRIEndpoint(config.RuntimeDocker)) {
		t.Errorf("kubelet phase %+v, want failed naming cri-dockerd and its endpoint", p)
	}
	if !strings.Contains(st.Error, "cri-dockerd is not installed") {
		t.Errorf("status error %q does not say why the node is not ready", st.Error)
	}

	t.Run("engine units active over D-Bus", func(t *testing.T) {
		t.Setenv("DBUS_SYSTEM_BUS_ADDRESS", n.M.BusAddress())
		m, err := systemd.Connect(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close()
		for _, u := range []string{"containerd.service", "docker.socket", "docker.service"} {
			us, err := m.UnitState(ctx, u)
			if err != nil {
				t.Fatal(err)
			}
			if us.ActiveState != "active" || us.UnitFileState != "enabled" {
				t.Errorf("%s: active=%s/%s file=%s", u, us.ActiveState, us.SubState, us.UnitFileState)
			}
		}
		// kubelet was never started, not left restarting for ever.
		if us, err := m.UnitState(ctx, "kubelet.service"); err != nil || us.ActiveState == "active" || us.ActiveState == "activating" {
			t.Errorf("kubelet.service: %+v (%v), want never started", us, err)
		}
	})

	t.Run("engine API: systemd cgroup driver, data root, drivers", func(t *testing.T) {
		info, err := cri.ReadDockerInfo(ctx, dockerSocket(n))
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("docker engine %s: cgroup driver %s, cgroup v%s, root %s, storage %s, logs %s",
			info.ServerVersion, info.CgroupDriver, info.CgroupVersion, info.DockerRootDir, info.Driver, info.LoggingDriver)
		if err := cri.CheckDockerInfo(info); err != nil {
			t.Error(err)
		}
		if !strings.HasPrefix(info.ServerVersion, "20.10.") {
			t.Errorf("engine version %q, want Debian's 20.10", info.ServerVersion)
		}
	})

	t.Run("a container of the loaded archive runs in a systemd scope", func(t *testing.T) {
		id := strings.TrimSpace(dockerCLI(t, ctx, n, "run", "-d", "--network", "none", "--name", "hello", dockerHelloImage))
		out := dockerCLI(t, ctx, n, "inspect", "--format", "{{.State.Running}} {{.State.Pid}} {{json .HostConfig.LogConfig}}", id)
		f := strings.SplitN(strings.TrimSpace(out), " ", 3)
		if len(f) != 3 || f[0] != "true" {
			t.Fatalf("container state %q, want running", out)
		}
		if want := `{"Type":"json-file","Config":{"max-file":"5","max-size":"10m"}}`; f[2] != want {
			t.Errorf("container log config %s, want %s (daemon.json's rotation)", f[2], want)
		}
		cg, _, err := n.M.Exec(ctx, nil, "cat", "/proc/"+f[1]+"/cgroup")
		if err != nil {
			t.Fatal(err)
		}
		if want := "/system.slice/docker-" + id + ".scope"; !strings.Contains(string(cg), want) {
			t.Errorf("container cgroup %q, want the systemd scope %s", cg, want)
		}
		// The hello server answers inside the container's own network namespace.
		var body []byte
		eventually(t, 30*time.Second, "hello answers in its container", func() (bool, string) {
			out, errOut, err := n.M.Exec(ctx, nil, "nsenter", "-t", f[1], "-n", "bash", "-c",
				`exec 3<>/dev/tcp/127.0.0.1/8080 && printf 'GET / HTTP/1.0\r\n\r\n' >&3 && cat <&3`)
			body = out
			return err == nil && bytes.HasSuffix(out, []byte("\n127.0.0.1\n")), fmt.Sprintf("%v: %s%s", err, out, errOut)
		})
		t.Logf("hello answered:\n%s", body)
	})

	t.Run("a re-run is a no-op", func(t *testing.T) {
		pidBefore := mainPID(t, ctx, n, "docker.service")
		agent(t, n, "bootstrap")
		st, _ := status(t, n)
		for _, name := range []string{"assets", cri.PhaseName, "images"} {
			if p := st.Phase(name); p == nil || p.State != bootstrap.PhaseDone || p.Changed || len(p.Changes) > 0 {
				t.Errorf("phase %s on a re-run: %+v, want done without changes", name, p)
			}
		}
		if pid := mainPID(t, ctx, n, "docker.service"); pid != pidBefore {
			t.Errorf("dockerd restarted by a no-op re-run (pid %d → %d)", pidBefore, pid)
		}
	})

	t.Run("a drifted daemon.json is repaired and the engine restarted once", func(t *testing.T) {
		want, err := os.ReadFile(n.M.Path(cri.DockerDaemonJSONPath))
		if err != nil {
			t.Fatal(err)
		}
		drifted := bytes.Replace(want, []byte("native.cgroupdriver=systemd"), []byte("native.cgroupdriver=cgroupfs"), 1)
		if err := n.M.WriteFile(ctx, cri.DockerDaemonJSONPath, bytes.NewReader(drifted), 0o644); err != nil {
			t.Fatal(err)
		}
		dockerPID, containerdPID := mainPID(t, ctx, n, "docker.service"), mainPID(t, ctx, n, "containerd.service")
		agent(t, n, "bootstrap")
		st, _ := status(t, n)
		p := st.Phase(cri.PhaseName)
		if p == nil || p.State != bootstrap.PhaseDone {
			t.Fatalf("container-runtime after drift: %+v", p)
		}
		var got []string
		for _, c := range p.Changes {
			got = append(got, c.Action+" "+c.Target)
		}
		if wantChanges := []string{"update " + cri.DockerDaemonJSONPath, "restart docker.service"}; strings.Join(got, ", ") != strings.Join(wantChanges, ", ") {
			t.Errorf("changes %q, want %q", got, wantChanges)
		}
		if b, _ := os.ReadFile(n.M.Path(cri.DockerDaemonJSONPath)); !bytes.Equal(b, want) {
			t.Errorf("daemon.json not repaired:\n%s", b)
		}
		if pid := mainPID(t, ctx, n, "docker.service"); pid == dockerPID {
			t.Errorf("dockerd not restarted (pid %d)", pid)
		}
		if pid := mainPID(t, ctx, n, "containerd.service"); pid != containerdPID {
			t.Errorf("containerd restarted (pid %d → %d); only the engine's file changed", containerdPID, pid)
		}
		if n := journalCount(t, ctx, n, "docker.service", "Started docker.service"); n != 2 {
			t.Errorf("docker.service started %d times in all, want 2 (the boot and the one repair)", n)
		}
		info, err := cri.ReadDockerInfo(ctx, dockerSocket(n))
		if err != nil {
			t.Fatal(err)
		}
		if info.CgroupDriver != "systemd" {
			t.Errorf("engine cgroup driver %q after the repair, want systemd", info.CgroupDriver)
		}
	})

	t.Run("switching to containerd needs a new instance", func(t *testing.T) {
		sw := spec
		sw.Runtime = config.RuntimeContainerd
		b, err := testenv.UserData(sw)
		if err != nil {
			t.Fatal(err)
		}
		if err := n.M.WriteFile(ctx, "/root/containerd.yaml", bytes.NewReader(b), 0o600); err != nil {
			t.Fatal(err)
		}
		before, _ := os.ReadFile(n.M.Path(cri.DockerDaemonJSONPath))
		pid := mainPID(t, ctx, n, "docker.service")
		_, errOut, code, err := n.Agent(ctx, "bootstrap", "--config", "/root/containerd.yaml")
		if err != nil {
			t.Fatal(err)
		}
		if code == 0 || !strings.Contains(string(errOut), "needs-replacement") || !strings.Contains(string(errOut), "spec.containerRuntime") {
			t.Errorf("bootstrap with containerd: exit %d, want refused as needs-replacement of spec.containerRuntime:\n%s", code, errOut)
		}
		if after, _ := os.ReadFile(n.M.Path(cri.DockerDaemonJSONPath)); !bytes.Equal(after, before) {
			t.Error("daemon.json changed by a refused runtime switch")
		}
		if p := mainPID(t, ctx, n, "docker.service"); p != pid {
			t.Errorf("dockerd restarted by a refused runtime switch (pid %d → %d)", pid, p)
		}
		var cfg config.NodeConfig
		b, err = os.ReadFile(n.M.Path("/var/lib/nodeagent/config.yaml"))
		if err == nil {
			err = yaml.Unmarshal(b, &cfg)
		}
		if err != nil {
			t.Fatalf("the effective config: %v", err)
		}
		if cfg.Spec.ContainerRuntime != config.RuntimeDocker {
			t.Errorf("effective config's runtime is %q after a refused switch, want docker", cfg.Spec.ContainerRuntime)
		}
	})
}

// bootDockerNode is bootNode with the engine's data root on a host directory
// bound into the machine: overlay2, like containerd's overlayfs snapshotter,
// cannot put its upper directories on the machine's own overlayfs root (an
// instance's disk has no such limit).
func bootDockerNode(t *testing.T, ctx context.Context, env *testenv.Env, inst awsemu.Instance) *testenv.Node {
	t.Helper()
	dataRoot := t.TempDir() // removed after the machine, which is closed first
	awsEnv, err := env.AWSEnv(inst.ID)
	if err != nil {
		t.Fatal(err)
	}
	var console io.Writer
	if *verbose {
		console = testWriter{t}
	}
	m, err := nspawn.Boot(ctx, nspawn.Options{Name: inst.ID, Log: console, Env: awsEnv, Binds: []string{dataRoot + ":" + cri.DockerDataRoot}})
	if err != nil {
		t.Fatal(err)
	}
	n := &testenv.Node{M: m, InstanceID: inst.ID, Env: awsEnv}
	t.Cleanup(func() {
		if err := n.Close(); err != nil {
			t.Errorf("close node: %v", err)
		}
	})
	env.Emu.AddInstance(inst)
	if err := m.CopyIn(ctx, builtAgent, testenv.AgentPath, 0o755); err != nil {
		t.Fatal(err)
	}
	return n
}

// dockerSocket is the host path of the engine's socket inside the node's mount
// namespace (its /run is the machine's own tmpfs).
func dockerSocket(n *testenv.Node) string {
	return filepath.Join("/proc", strconv.Itoa(n.M.Leader), "root", strings.TrimPrefix(cri.DockerSocket, "/"))
}

// dockerCLI runs the docker CLI the node installed as an asset.
func dockerCLI(t *testing.T, ctx context.Context, n *testenv.Node, args ...string) string {
	t.Helper()
	out, errOut, err := n.M.Exec(ctx, nil, append([]string{"/usr/local/bin/docker"}, args...)...)
	if err != nil {
		t.Fatalf("docker %v: %v\n%s%s", args, err, errOut, n.Journal(ctx, "docker.service"))
	}
	return string(out)
}

// mainPID is a unit's main process as systemd in the node sees it.
func mainPID(t *testing.T, ctx context.Context, n *testenv.Node, unit string) int {
	t.Helper()
	out, errOut, err := n.M.Exec(ctx, nil, "systemctl", "show", "-p", "MainPID", "--value", unit)
	if err != nil {
		t.Fatalf("systemctl show %s: %v\n%s", unit, err, errOut)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(out)))
	if err != nil || pid == 0 {
		t.Fatalf("%s has no main process (%q)", unit, out)
	}
	return pid
}

// journalCount counts the lines of unit's journal since the boot holding s.
func journalCount(t *testing.T, ctx context.Context, n *testenv.Node, unit, s string) int {
	t.Helper()
	out, errOut, err := n.M.Exec(ctx, nil, "journalctl", "--no-pager", "-b", "-o", "cat", "-u", unit)
	if err != nil {
		t.Fatalf("journalctl -u %s: %v\n%s", unit, err, errOut)
	}
	return strings.Count(string(out), s)
}
