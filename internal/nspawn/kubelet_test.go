//go:build e2e

package nspawn

import (
	"context"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/yaml"
)

// The hand-made node setup below is what the agent automates; this test pins
// down that the machine Boot makes can run it at all: containerd with the
// systemd cgroup driver, runc, and a kubelet that stays healthy.

const kubeletHealthz = "http://127.0.0.1:10248/healthz"

const testContainerdConfig = `version = 2
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
  SystemdCgroup = true
`

const testContainerdUnit = `[Unit]
Description=containerd
After=network.target
[Service]
ExecStart=/usr/local/bin/containerd
Type=notify
Delegate=yes
KillMode=process
Restart=always
LimitNOFILE=infinity
[Install]
WantedBy=multi-user.target
`

// testKubeletConfig is a standalone kubelet (no API server); kubeletConfig
// adds KubeletOverrides.
const testKubeletConfig = `apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: systemd
containerRuntimeEndpoint: unix:///run/containerd/containerd.sock
staticPodPath: /etc/kubernetes/manifests
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
authorization:
  mode: AlwaysAllow
`

const testKubeletUnit = `[Unit]
Description=kubelet
After=containerd.service
Wants=containerd.service
[Service]
ExecStart=/usr/local/bin/kubelet --config=/var/lib/kubelet/config.yaml
Restart=always
RestartSec=2
[Install]
WantedBy=multi-user.target
`

func kubeletBinary(t *testing.T) string {
	p := os.Getenv("KUBELET_BIN")
	if p == "" {
		p = "/var/cache/nodeagent-e2e/kubelet-v1.34.4"
	}
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("kubelet binary: %v (build it with hack/build-k8s.sh or set KUBELET_BIN)", err)
	}
	return p
}

func TestContainerdAndKubeletRunInside(t *testing.T) {
	kubelet := kubeletBinary(t)
	if resp, err := http.Get(kubeletHealthz); err == nil {
		resp.Body.Close()
		t.Fatalf("something on the host already answers %s; the machine shares the host network", kubeletHealthz)
	}
	m := bootForTest(t, Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	start := time.Now()

	files := []struct {
		host, inside string
	}{
		{"/usr/bin/containerd", "/usr/local/bin/containerd"},
		{"/usr/bin/containerd-shim-runc-v2", "/usr/local/bin/containerd-shim-runc-v2"},
		{"/usr/sbin/runc", "/usr/local/sbin/runc"},
		{kubelet, "/usr/local/bin/kubelet"},
	}
	for _, f := range files {
		if err := m.CopyIn(ctx, f.host, f.inside, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	configs := []struct {
		path, content string
	}{
		{"/etc/containerd/config.toml", testContainerdConfig},
		{"/etc/systemd/system/containerd.service", testContainerdUnit},
		{"/var/lib/kubelet/config.yaml", kubeletConfig(t)},
		{"/etc/systemd/system/kubelet.service", testKubeletUnit},
	}
	for _, c := range configs {
		if err := m.WriteFile(ctx, c.path, strings.NewReader(c.content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := m.WriteFile(ctx, "/etc/kubernetes/manifests/.keep", strings.NewReader(""), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, argv := range [][]string{
		{"systemctl", "daemon-reload"},
		{"systemctl", "enable", "--now", "containerd.service", "kubelet.service"},
	} {
		if _, _, err := m.Exec(ctx, nil, argv...); err != nil {
			t.Fatal(err)
		}
	}

	journal := func() string {
		out, _, _ := m.Exec(ctx, nil, "journalctl", "--no-pager", "-n", "60", "-u", "containerd", "-u", "kubelet")
		return string(out)
	}
	deadline := time.Now().Add(3 * time.Minute)
	for {
		body, err := get(ctx, kubeletHealthz)
		if err == nil && body == "ok" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("kubelet healthz not ok after %s (last: %q, %v)\n%s", time.Since(start).Round(time.Second), body, err, journal())
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Logf("kubelet healthz ok %s after the machine was up (boot took %s)",
		time.Since(start).Round(100*time.Millisecond), m.BootDuration.Round(100*time.Millisecond))

	// The answer must come from this machine's kubelet, and it must stay up:
	// a kubelet whose container manager fails exits after a few seconds.
	out, _, err := m.Exec(ctx, nil, "ss", "-Htlnp", "sport = :10248")
	if err != nil || !strings.Contains(string(out), "kubelet") {
		t.Fatalf("10248 not served by the machine's kubelet: %q (%v)", out, err)
	}
	time.Sleep(20 * time.Second)
	for _, unit := range []string{"containerd", "kubelet"} {
		out, _, err := m.Exec(ctx, nil, "systemctl", "show", "-P", "NRestarts", unit)
		if err != nil || strings.TrimSpace(string(out)) != "0" {
			t.Errorf("%s restarted %q times (%v)\n%s", unit, strings.TrimSpace(string(out)), err, journal())
		}
	}
	if body, err := get(ctx, kubeletHealthz); err != nil || body != "ok" {
		t.Errorf("kubelet healthz after 20s = %q, %v\n%s", body, err, journal())
	}
	// kubelet created its QoS cgroups through systemd in the real controllers.
	if _, _, err := m.Exec(ctx, nil, "test", "-d", "/sys/fs/cgroup/memory/kubepods.slice"); err != nil {
		if _, _, err2 := m.Exec(ctx, nil, "test", "-d", "/sys/fs/cgroup/kubepods.slice"); err2 != nil {
			t.Errorf("no kubepods.slice cgroup: %v\n%s", err, journal())
		}
	}
}

func kubeletConfig(t *testing.T) string {
	var cfg map[string]any
	if err := yaml.Unmarshal([]byte(testKubeletConfig), &cfg); err != nil {
		t.Fatal(err)
	}
	for k, v := range KubeletOverrides() {
		cfg[k] = v
	}
	b, err := yaml.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func get(ctx context.Context, url string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 4096))
	return strings.TrimSpace(string(b)), err
}

// TestRuncRunsContainerWithSystemdCgroups runs an OCI container with runc's
// systemd cgroup driver inside a machine: the scope must land in the real
// controllers, which nspawn alone would leave read-only.
func TestRuncRunsContainerWithSystemdCgroups(t *testing.T) {
	m := bootForTest(t, Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := m.CopyIn(ctx, "/usr/sbin/runc", "/usr/local/sbin/runc", 0o755); err != nil {
		t.Fatal(err)
	}
	// The bundle's root is the machine's own root, read-only: no image needed.
	script := `set -e
mkdir -p /run/bundle/rootfs
mount --bind -o ro / /run/bundle/rootfs
cd /run/bundle
runc spec
sed -i 's/"terminal": true/"terminal": false/; s/"sh"$/"sh", "-c", "cat \/proc\/self\/cgroup; echo hello from runc"/' config.json
runc --systemd-cgroup run --bundle /run/bundle nspawn-test`
	out, stderr, err := m.Exec(ctx, nil, "sh", "-c", script)
	if err != nil {
		t.Fatalf("runc run: %v\nstdout: %s\nstderr: %s", err, out, stderr)
	}
	for _, want := range []string{
		"hello from runc",
		"memory:/system.slice/runc-nspawn-test.scope",
		"pids:/system.slice/runc-nspawn-test.scope",
		"cpu:/system.slice/runc-nspawn-test.scope",
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("container output lacks %q:\n%s", want, out)
		}
	}
}
