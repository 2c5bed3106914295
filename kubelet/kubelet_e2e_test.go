//go:build e2e

package kubelet

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/nodeagent/nodeagent/bootstrap"
	"github.com/nodeagent/nodeagent/config"
	"github.com/nodeagent/nodeagent/cri"
	"github.com/nodeagent/nodeagent/internal/fsutil"
	"github.com/nodeagent/nodeagent/internal/nspawn"
	"github.com/nodeagent/nodeagent/systemd"
)

// TestE2EStandaloneKubelet runs the container-runtime and kubelet phases, as the
// agent does, against the real systemd of a machine with the Debian containerd
// and a real kubelet, and waits for kubelet's healthz.
func TestE2EStandaloneKubelet(t *testing.T) {
	if err := nspawn.Available(""); err != nil {
		t.Fatalf("nspawn machines: %v", err)
	}
	kubeletBin := os.Getenv("KUBELET_BIN")
	if kubeletBin == "" {
		kubeletBin = "/var/cache/nodeagent-e2e/kubelet-v1.34.4"
	}
	if _, err := os.Stat(kubeletBin); err != nil {
		t.Fatalf("kubelet binary: %v (hack/build-k8s.sh, or set KUBELET_BIN)", err)
	}
	// The machine shares the host network: another kubelet would answer for ours.
	if err := Healthz(context.Background()); err == nil || !strings.Contains(err.Error(), "connection refused") {
		t.Fatalf("something already serves %s (%v); one kubelet machine at a time", HealthzURL, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	var console bytes.Buffer
	m, err := nspawn.Boot(ctx, nspawn.Options{Log: &console})
	if err != nil {
		t.Fatalf("boot: %v\n%s", err, console.String())
	}
	t.Cleanup(func() { m.Close() })
	t.Setenv("DBUS_SYSTEM_BUS_ADDRESS", m.BusAddress())

	for host, inside := range map[string]string{
		"/usr/bin/containerd":              "/usr/local/bin/containerd",
		"/usr/bin/containerd-shim-runc-v2": "/usr/local/bin/containerd-shim-runc-v2",
		"/usr/sbin/runc":                   "/usr/local/bin/runc",
		kubeletBin:                         "/usr/local/bin/kubelet",
	} {
		if err := m.CopyIn(ctx, host, inside, 0o755); err != nil {
			t.Fatal(err)
		}
	}

	nc := &config.NodeConfig{APIVersion: config.APIVersion, Kind: config.Kind, Spec: config.Spec{
		Cluster: config.Cluster{Name: "e2e.k8s.local"}, Role: config.RoleNode, KubernetesVersion: "v1.34.4",
		Kubelet: config.Kubelet{Config: nspawn.KubeletOverrides(), NodeLabels: map[string]string{"nodeagent.io/e2e": "true"}},
	}}
	nc.SetDefaults()
	root := fsutil.Root(m.Dir)
	runtime := cri.NewPhase(cri.Options{Root: root, Systemd: systemd.Connect})
	// The control-plane role label is one kubelet refuses to start with; the
	// phase must leave it out (with a warning) rather than crash-loop kubelet.
	kl := NewPhase(Options{Root: root, Config: nc, NodeName: m.Name, Kubeconfig: Standalone{}, Systemd: systemd.Connect,
		Labels: map[string]string{"node-role.kubernetes.io/control-plane": ""}})
	start := time.Now()
	for _, p := range []bootstrap.Phase{runtime, kl} {
		changes, err := p.Check(ctx)
		if err != nil {
			t.Fatalf("%s check: %v", p.Name(), err)
		}
		t.Logf("%s plan: %d changes", p.Name(), len(changes))
		if err := p.Act(ctx); err != nil {
			t.Fatalf("%s act: %v\n%s", p.Name(), err, journal(ctx, m))
		}
		if err := p.Verify(ctx); err != nil {
			t.Fatalf("%s verify: %v\n%s", p.Name(), err, journal(ctx, m))
		}
	}
	for {
		err := Healthz(ctx)
		if err == nil {
			break
		}
		if ctx.Err() != nil || time.Since(start) > 3*time.Minute {
			t.Fatalf("kubelet healthz: %v\n%s", err, journal(ctx, m))
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Logf("kubelet healthy %v after the phases started", time.Since(start).Round(100*time.Millisecond))
	if w := kl.(bootstrap.Warner).Warnings(); len(w) != 1 {
		t.Errorf("warnings %q, want one about the role label", w)
	}

	// Converged: a second pass changes nothing, and kubelet was not restarted.
	for _, p := range []bootstrap.Phase{runtime, kl} {
		changes, err := p.Check(ctx)
		if err != nil || len(changes) != 0 {
			t.Errorf("%s second check: %v %v, want converged", p.Name(), changes, err)
		}
	}
	out, _, err := m.Exec(ctx, nil, "systemctl", "show", "-P", "NRestarts", "kubelet.service")
	if err != nil || strings.TrimSpace(string(out)) != "0" {
		t.Errorf("kubelet restarted %q times (%v)\n%s", strings.TrimSpace(string(out)), err, journal(ctx, m))
	}
	// kubelet runs with the arguments of the drop-in.
	out, _, err = m.Exec(ctx, nil, "sh", "-c", "tr '\\0' ' ' < /proc/$(systemctl show -P MainPID kubelet.service)/cmdline")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"--config=/var/lib/kubelet/config.yaml", "--hostname-override=" + m.Name, "--node-labels=nodeagent.io/e2e=true"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("kubelet command line %q lacks %s", out, want)
		}
	}
}

func journal(ctx context.Context, m *nspawn.Machine) string {
	out, _, err := m.Exec(context.WithoutCancel(ctx), nil, "journalctl", "--no-pager", "-n", "60", "-u", "containerd", "-u", "kubelet")
	if err != nil {
		return fmt.Sprintf("(journal: %v)", err)
	}
	return string(out)
}
