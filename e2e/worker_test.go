//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/nodeagent/nodeagent/awsemu"
	"github.com/nodeagent/nodeagent/bootstrap"
	"github.com/nodeagent/nodeagent/config"
	"github.com/nodeagent/nodeagent/internal/testenv"
	"github.com/nodeagent/nodeagent/pki"
	"github.com/nodeagent/nodeagent/systemd"
)

const cluster = "e2e.example.com"

func workerInstance(t testing.TB, id string, userData []byte) awsemu.Instance {
	t.Helper()
	ip, err := testenv.HostIP()
	if err != nil {
		t.Fatal(err)
	}
	return awsemu.Instance{
		ID: id, Type: "m5.large", AvailabilityZone: "us-east-1a", PrivateIP: ip, State: "running",
		Tags:     map[string]string{"KubernetesCluster": cluster, "kubernetes.io/cluster/" + cluster: "owned"},
		UserData: string(userData),
	}
}

func workerUserData(t testing.TB, env *testenv.Env, extra func(*config.NodeConfig)) []byte {
	t.Helper()
	ud, err := testenv.UserData(testenv.NodeSpec{
		Cluster: cluster, Role: config.RoleNode, Runtime: config.RuntimeContainerd,
		Assets: env.Assets, Kubelet: testenv.ContainerKubeletConfig(), Extra: extra,
	})
	if err != nil {
		t.Fatal(err)
	}
	return ud
}

// TestWorkerBoot is the whole worker story: user-data over IMDSv2 → every phase
// done → containerd and kubelet active under the node's systemd → kubelet
// healthy; then a re-run changes nothing, and a corrupt asset is refused.
func TestWorkerBoot(t *testing.T) {
	env := startEnv(t, &awsemu.World{})
	n := bootNode(t, env, workerInstance(t, "i-0e2e0worker00001", workerUserData(t, env, nil)))

	start := time.Now()
	if _, code := agent(t, n, "bootstrap"); code != 0 {
		st, _ := status(t, n)
		t.Fatalf("bootstrap exit %d; state error: %s\n%s", code, st.Error, n.Journal(context.Background(), "nodeagent.service"))
	}
	t.Logf("first bootstrap: %s", time.Since(start))
	waitDaemon(t, n)

	st, code := status(t, n)
	if code != 0 {
		t.Errorf("status exit %d, want 0 (ready); reason %q", code, st.Readiness.Reason)
	}
	for _, p := range st.Phases {
		if p.State != bootstrap.PhaseDone {
			t.Errorf("phase %s is %s (%s)", p.Name, p.State, p.Error)
		}
	}
	for _, want := range []string{"host-prep", "assets", "container-runtime", "kubelet", "nodeagent-service", "readiness"} {
		if st.Phase(want) == nil {
			t.Errorf("phase %s missing from status", want)
		}
	}
	if st.Node.InstanceID != n.InstanceID || st.Node.Role != string(config.RoleNode) {
		t.Errorf("status node = %+v", st.Node)
	}

	t.Run("units active over D-Bus", func(t *testing.T) {
		t.Setenv("DBUS_SYSTEM_BUS_ADDRESS", n.M.BusAddress())
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		m, err := systemd.Connect(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close()
		for _, u := range []string{"containerd.service", "kubelet.service", "nodeagent.service"} {
			us, err := m.UnitState(ctx, u)
			if err != nil {
				t.Fatal(err)
			}
			if us.ActiveState != "active" || us.UnitFileState != "enabled" {
				t.Errorf("%s: active=%s/%s file=%s", u, us.ActiveState, us.SubState, us.UnitFileState)
			}
		}
	})

	t.Run("kubelet healthz", func(t *testing.T) {
		if err := kubeletHealthy(); err != nil {
			t.Error(err)
		}
	})

	t.Run("files and modes", func(t *testing.T) {
		for _, f := range []struct {
			path string
			mode os.FileMode
		}{
			{"/var/lib/nodeagent/state.json", 0o644},
			{"/usr/local/bin/kubelet", 0o755},
			{"/usr/local/bin/containerd", 0o755},
			{"/usr/local/bin/containerd-shim-runc-v2", 0o755}, // members of containerd's tarball
			{"/usr/local/bin/ctr", 0o755},
			{"/opt/cni/bin/bridge", 0o755}, // every plugin of the CNI tarball
			{"/opt/cni/bin/loopback", 0o755},
			{"/etc/sysctl.d/99-nodeagent.conf", 0o644},
			{"/etc/modules-load.d/nodeagent.conf", 0o644},
			{"/etc/containerd/config.toml", 0o644},
			{"/var/lib/kubelet/config.yaml", 0o644},
			{"/etc/systemd/system/kubelet.service", 0o644},
			{"/etc/systemd/system/containerd.service", 0o644},
			{"/etc/systemd/system/nodeagent.service", 0o644},
		} {
			fi, err := os.Stat(n.M.Path(f.path))
			if err != nil {
				t.Error(err)
				continue
			}
			if fi.Mode().Perm() != f.mode {
				t.Errorf("%s: mode %o, want %o", f.path, fi.Mode().Perm(), f.mode)
			}
		}
		for _, a := range env.Assets {
			if _, err := os.Stat(n.M.Path("/var/cache/nodeagent/assets/" + a.SHA256)); err != nil {
				t.Errorf("asset %s not cached by hash: %v", a.Name, err)
			}
		}
		// Only the listed members are unpacked.
		for _, p := range []string{"/usr/local/bin/containerd-shim", "/usr/local/bin/containerd-shim-runc-v1", "/opt/cni/bin/LICENSE", "/opt/cni/bin/README.md", "/usr/local/bin/bin"} {
			if _, err := os.Lstat(n.M.Path(p)); err == nil {
				t.Errorf("%s unpacked though no member asks for it", p)
			}
		}
		cfg, _ := os.ReadFile(n.M.Path("/etc/containerd/config.toml"))
		if !strings.Contains(string(cfg), "SystemdCgroup = true") {
			t.Errorf("containerd config lacks SystemdCgroup = true")
		}
		kc, _ := os.ReadFile(n.M.Path("/var/lib/kubelet/config.yaml"))
		for _, want := range []string{"cgroupDriver: systemd", "staticPodPath: /etc/kubernetes/manifests", "failSwapOn: false"} {
			if !strings.Contains(string(kc), want) {
				t.Errorf("kubelet config lacks %q", want)
			}
		}
	})

	t.Run("second run is a no-op", func(t *testing.T) {
		kubeletBefore, _ := os.Stat(n.M.Path("/usr/local/bin/kubelet"))
		s3Before := env.Emu.Calls(awsemu.ServiceS3, "GetObject")
		start := time.Now()
		if _, code := agent(t, n, "bootstrap"); code != 0 {
			t.Fatalf("second bootstrap exit %d", code)
		}
		t.Logf("no-op bootstrap: %s", time.Since(start))
		st, _ := status(t, n)
		for _, p := range st.Phases {
			if p.Changed && p.Name != "readiness" {
				t.Errorf("phase %s changed on a re-run: %v", p.Name, p.Changes)
			}
		}
		kubeletAfter, _ := os.Stat(n.M.Path("/usr/local/bin/kubelet"))
		if !kubeletAfter.ModTime().Equal(kubeletBefore.ModTime()) {
			t.Errorf("kubelet binary rewritten on a no-op run")
		}
		if got := env.Emu.Calls(awsemu.ServiceS3, "GetObject") - s3Before; got != 0 {
			t.Errorf("no-op run fetched %d objects from S3", got)
		}
	})

	t.Run("drift is repaired", func(t *testing.T) {
		// An operator edits a managed file and stops kubelet; the next run (the
		// daemon runs the same phases every minute) puts both back.
		ctx := context.Background()
		cfgPath := n.M.Path("/etc/containerd/config.toml")
		want, _ := os.ReadFile(cfgPath)
		if err := os.WriteFile(cfgPath, []byte("version = 2\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, _, err := n.M.Exec(ctx, nil, "systemctl", "stop", "kubelet.service"); err != nil {
			t.Fatal(err)
		}
		out, code := agent(t, n, "plan")
		if code != 0 || !strings.Contains(string(out), "/etc/containerd/config.toml") || !strings.Contains(string(out), "kubelet.service") {
			t.Errorf("plan does not show the drift:\n%s", out)
		}
		if _, code := agent(t, n, "bootstrap"); code != 0 {
			t.Fatalf("repair run exit %d", code)
		}
		got, _ := os.ReadFile(cfgPath)
		if string(got) != string(want) {
			t.Errorf("containerd config not restored")
		}
		st, _ := status(t, n)
		for _, name := range []string{"container-runtime", "kubelet"} {
			if p := st.Phase(name); p == nil || !p.Changed {
				t.Errorf("phase %s did not record the repair: %+v", name, p)
			}
		}
		if err := kubeletHealthy(); err != nil {
			t.Error(err)
		}
	})

	t.Run("a binary overwritten with its size and mtime kept is replaced", func(t *testing.T) {
		// The converged runs trust recorded hashes while a file's identity is
		// unchanged; an overwrite moves its ctime, which touch -d cannot put back.
		ctx := context.Background()
		const runc = "/usr/local/bin/runc" // not running: a running binary cannot be written
		want, err := os.ReadFile(n.M.Path(runc))
		if err != nil {
			t.Fatal(err)
		}
		if _, stderr, err := n.M.Exec(ctx, nil, "sh", "-c", `m=$(stat -c %y `+runc+`) &&
			s=$(stat -c %s `+runc+`) && head -c "$s" /dev/zero | dd of=`+runc+` conv=notrunc status=none && touch -d "$m" `+runc); err != nil {
			t.Fatalf("tamper: %v %s", err, stderr)
		}
		if _, code := agent(t, n, "bootstrap"); code != 0 {
			t.Fatalf("bootstrap exit %d", code)
		}
		if got, _ := os.ReadFile(n.M.Path(runc)); string(got) != string(want) {
			t.Error("the tampered runc was not replaced")
		}
		st, _ := status(t, n)
		if p := st.Phase("assets"); p == nil || !p.Changed {
			t.Errorf("assets phase did not record the repair: %+v", p)
		}
	})

	t.Run("plan on a converged node", func(t *testing.T) {
		out, code := agent(t, n, "plan")
		if code != 0 {
			t.Fatalf("plan exit %d", code)
		}
		if !strings.Contains(string(out), "No changes") {
			t.Errorf("plan on a converged node:\n%s", out)
		}
	})

	t.Run("a changed member list is installed from the cached archive", func(t *testing.T) {
		s3Before, mirrorBefore := env.Emu.Calls(awsemu.ServiceS3, "GetObject"), env.MirrorRequests()
		more := workerUserData(t, env, func(c *config.NodeConfig) {
			for i := range c.Spec.Assets {
				if a := &c.Spec.Assets[i]; a.Name == "containerd" {
					a.Archive.Members = append(a.Archive.Members, config.ArchiveMember{Name: "bin/containerd-shim-runc-v1", Path: "/usr/local/bin/", Mode: "0750"})
				}
			}
		})
		if err := os.WriteFile(n.M.Path("/root/more.yaml"), more, 0o600); err != nil {
			t.Fatal(err)
		}
		out, code := agent(t, n, "plan", "--config", "/root/more.yaml")
		if code != 0 || !strings.Contains(string(out), "/usr/local/bin/containerd-shim-runc-v1") || !strings.Contains(string(out), "containerd bin/containerd-shim-runc-v1 sha256:") {
			t.Errorf("plan does not show the new member:\n%s", out)
		}
		if _, code := agent(t, n, "bootstrap", "--config", "/root/more.yaml"); code != 0 {
			t.Fatalf("bootstrap with one more member: exit %d", code)
		}
		fi, err := os.Stat(n.M.Path("/usr/local/bin/containerd-shim-runc-v1"))
		if err != nil || fi.Mode().Perm() != 0o750 {
			t.Errorf("new member: %v %v", err, fi)
		}
		if s3, m := env.Emu.Calls(awsemu.ServiceS3, "GetObject")-s3Before, env.MirrorRequests()-mirrorBefore; s3 != 0 || m != 0 {
			t.Errorf("the cached archive was downloaded again (%d S3, %d mirror requests)", s3, m)
		}
	})

	t.Run("hash mismatch refused, binary kept", func(t *testing.T) {
		before, err := os.ReadFile(n.M.Path("/usr/local/bin/kubelet"))
		if err != nil {
			t.Fatal(err)
		}
		containerdBefore, err := os.Stat(n.M.Path("/usr/local/bin/containerd"))
		if err != nil {
			t.Fatal(err)
		}
		bad := workerUserData(t, env, func(c *config.NodeConfig) {
			for i := range c.Spec.Assets {
				if c.Spec.Assets[i].Name == "kubelet" || c.Spec.Assets[i].Name == "containerd" {
					// A different, valid-looking hash: the mirrors serve a file (the
					// kubelet binary, containerd's tarball) that no longer matches.
					c.Spec.Assets[i].SHA256 = strings.Repeat("ab", 32)
				}
			}
		})
		if err := os.WriteFile(n.M.Path("/root/bad.yaml"), bad, 0o600); err != nil {
			t.Fatal(err)
		}
		_, code := agent(t, n, "bootstrap", "--config", "/root/bad.yaml")
		if code == 0 {
			t.Fatal("bootstrap with a mismatching hash succeeded")
		}
		st, code := status(t, n)
		if code != 1 || st.Readiness.Ready {
			t.Errorf("status after a failed run: exit %d ready=%v, want exit 1, not ready", code, st.Readiness.Ready)
		}
		if p := st.Phase("assets"); p == nil || p.State != bootstrap.PhaseFailed || !strings.Contains(p.Error, "sha256") {
			t.Errorf("assets phase after a mismatch: %+v", p)
		}
		after, _ := os.ReadFile(n.M.Path("/usr/local/bin/kubelet"))
		if string(after) != string(before) {
			t.Errorf("installed kubelet changed after a refused asset")
		}
		if p := st.Phase("assets"); p == nil || !strings.Contains(p.Error, "asset containerd") {
			t.Errorf("the tampered containerd archive is not named: %+v", p)
		}
		if ca, err := os.Stat(n.M.Path("/usr/local/bin/containerd")); err != nil || !ca.ModTime().Equal(containerdBefore.ModTime()) {
			t.Errorf("installed containerd touched after its archive was refused: %v", err)
		}
	})
}

// TestBadUserData: invalid user-data is refused with every problem named, before
// anything on the host changes.
func TestBadUserData(t *testing.T) {
	env := startEnv(t, &awsemu.World{})
	ud := []byte("apiVersion: nodeagent.io/v1alpha1\nkind: NodeConfig\nspec:\n  cluster: {name: Bad_Name}\n  role: Worker\n  kubernetesVersion: v1.34.4\n  containerRuntime: podman\n  assets: [{name: kubelet, urls: [ftp://x/kubelet], sha256: nothex}]\n")
	n := bootNode(t, env, workerInstance(t, "i-0e2e0baduserdata", ud))
	_, code := agent(t, n, "bootstrap")
	if code == 0 {
		t.Fatal("bootstrap accepted bad user-data")
	}
	_, errOut, _, _ := n.Agent(context.Background(), "bootstrap")
	for _, want := range []string{"spec.cluster.name", "spec.role", "spec.containerRuntime", "spec.assets[0].sha256", "spec.assets[0].urls[0]"} {
		if !strings.Contains(string(errOut), want) {
			t.Errorf("error does not name %s:\n%s", want, errOut)
		}
	}
	for _, p := range []string{"/etc/sysctl.d/99-nodeagent.conf", "/etc/modules-load.d/nodeagent.conf", "/usr/local/bin/kubelet", "/etc/systemd/system/kubelet.service", "/var/cache/nodeagent/assets"} {
		if _, err := os.Stat(n.M.Path(p)); err == nil {
			t.Errorf("%s exists after refused user-data: the host was touched", p)
		}
	}
}

// TestThrottledS3 boots a worker whose only asset source and cluster config are in
// an S3 that throttles 30% of requests: the SDK's retries carry it through. The
// worker has the cluster CA, so it has an API server to ask about its Node, and
// none runs here: every phase before readiness is done, and it is not ready
// for exactly that reason (the HA test has the API server).
func TestThrottledS3(t *testing.T) {
	caCert, caKey, err := pki.GenerateCA("kubernetes-ca", 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	env := startEnv(t, &awsemu.World{
		Buckets: map[string]map[string]string{"state": {
			cluster + "/nodeagent/cluster.yaml": "apiVersion: nodeagent.io/v1alpha1\nkind: NodeConfig\nspec:\n  kubelet:\n    nodeLabels: {from-state-store: \"yes\"}\n",
		}},
	})
	env.Emu.SetFaults(awsemu.ServiceS3, awsemu.Faults{ThrottleRate: 0.3})
	ud := workerUserData(t, env, func(c *config.NodeConfig) {
		c.Spec.Cluster.StateStore = "s3://state/" + cluster
		for i := range c.Spec.Assets {
			var s3only []string
			for _, u := range c.Spec.Assets[i].URLs {
				if strings.HasPrefix(u, "s3://") {
					s3only = append(s3only, u)
				}
			}
			c.Spec.Assets[i].URLs = s3only
		}
		c.Spec.Readiness.Timeout = "15s"
		useFileCA(c)
	})
	n := bootNode(t, env, workerInstance(t, "i-0e2e0throttled01", ud))
	installCA(t, n, caCert, caKey)
	if _, code := agent(t, n, "bootstrap"); code == 0 {
		t.Error("bootstrap exit 0 with no API server to say the Node is Ready")
	}
	// The daemon bootstrap started re-runs the phases at once; judge its run.
	eventually(t, 2*time.Minute, "every phase but readiness done, not ready because of the Node", func() (bool, string) {
		st, _ := status(t, n)
		for _, p := range st.Phases {
			if p.Name != "readiness" && p.State != bootstrap.PhaseDone {
				return false, fmt.Sprintf("phase %s is %s: %s", p.Name, p.State, p.Error)
			}
		}
		if st.Readiness.Ready || !strings.Contains(st.Readiness.Reason, "node:") {
			return false, fmt.Sprintf("readiness %+v", st.Readiness)
		}
		return true, ""
	})
	// At least the four assets and cluster.yaml, throttled answers counted too.
	if got := env.Emu.Calls(awsemu.ServiceS3, "GetObject"); got < 5 {
		t.Errorf("only %d S3 GetObject calls: were the assets fetched from S3?", got)
	}
	// With the cluster CA (as files) the worker issues its kubelet client
	// certificate and kube-proxy's kubeconfig, and the key never leaves 0600.
	for path, mode := range map[string]os.FileMode{
		"/etc/kubernetes/pki/ca.crt":                0o644,
		"/var/lib/kubelet/pki/kubelet-client.key":   0o600,
		"/etc/kubernetes/kube-proxy.conf":           0o600,
		"/etc/kubernetes/manifests/kube-proxy.yaml": 0o600,
	} {
		fi, err := os.Stat(n.M.Path(path))
		if err != nil {
			t.Error(err)
		} else if fi.Mode().Perm() != mode {
			t.Errorf("%s: mode %o, want %o", path, fi.Mode().Perm(), mode)
		}
	}
	dropin, _ := os.ReadFile(n.M.Path("/etc/systemd/system/kubelet.service.d/10-nodeagent.conf"))
	if !strings.Contains(string(dropin), "from-state-store=yes") {
		t.Errorf("cluster config from the state store not merged: kubelet drop-in:\n%s", dropin)
	}
}

// kubeletHealthy asks kubelet's healthz (nodes share the host's network).
func kubeletHealthy() error {
	resp, err := http.Get("http://127.0.0.1:10248/healthz")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || strings.TrimSpace(string(body)) != "ok" {
		return fmt.Errorf("kubelet healthz: %d %q", resp.StatusCode, body)
	}
	return nil
}

// waitDaemon waits until nodeagent.service (the daemon bootstrap started) answers
// on its root-only unix socket: /readyz 200, and /metrics showing its first
// reconcile, which waits for bootstrap's run to end (one run at a time).
func waitDaemon(t testing.TB, n *testenv.Node) {
	t.Helper()
	client := daemonClient(n)
	var body string
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := client.Get("http://nodeagent/readyz")
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			body = string(b)
			if resp.StatusCode == 200 {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("daemon /readyz never answered 200: %v %q", err, body)
		}
		time.Sleep(500 * time.Millisecond)
	}
	// The daemon's first reconcile waits for bootstrap's run to end (one run at
	// a time), so its metrics appear shortly after.
	want := []string{"nodeagent_ready 1", "nodeagent_reconcile_runs_total{result=\"ok\"}", "nodeagent_build_info"}
	var metrics string
	for {
		resp, err := client.Get("http://nodeagent/metrics")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		metrics = string(b)
		missing := ""
		for _, w := range want {
			if !strings.Contains(metrics, w) {
				missing = w
			}
		}
		if missing == "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("/metrics lacks %q:\n%s", missing, metrics)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// daemonClient talks to the node's daemon (nodeagent.service) over its
// root-only unix socket, reached through the machine's root as seen from the
// host; any host name in a URL will do.
func daemonClient(n *testenv.Node) *http.Client {
	socket := fmt.Sprintf("/proc/%d/root/run/nodeagent/nodeagent.sock", n.M.Leader)
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
	}}
}
