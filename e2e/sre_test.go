//go:build e2e

package e2e

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nodeagent/nodeagent/awsemu"
	"github.com/nodeagent/nodeagent/config"
	"github.com/nodeagent/nodeagent/doctor"
	"github.com/nodeagent/nodeagent/internal/fsutil"
	"github.com/nodeagent/nodeagent/internal/sntptest"
	"github.com/nodeagent/nodeagent/internal/testenv"
	"github.com/nodeagent/nodeagent/pki"
)

// TestSRE is the SRE's story on one worker: `status -w` from a second session
// follows the real boot to ready; then faults are injected one after another
// and `nodeagent doctor` inside the machine names each with its cause: the
// IMDS PUT hop limit, credentials denied for a call the config needs, a clock
// that is off (against an SNTP server the test runs), swap on (a real swap
// file), an expired kubelet certificate; the boot's timeline is in /metrics;
// the support archive holds what it should and no secret.
func TestSRE(t *testing.T) {
	// A launch lifecycle hook: the node's role must be allowed the Auto Scaling
	// calls that complete it.
	env := startEnv(t, &awsemu.World{LifecycleHooks: []awsemu.LifecycleHook{{AutoScalingGroup: "nodes", Name: "nodeagent-ready"}}})
	ud := workerUserData(t, env, func(c *config.NodeConfig) { c.Spec.Readiness.LifecycleHook = "nodeagent-ready" })
	inst := workerInstance(t, "i-0e2e0sre00000001", ud)
	inst.AutoScalingGroup = "nodes"
	n := bootNode(t, env, inst)

	t.Run("status -w follows the boot", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		var watch lockedBuffer
		cmd := n.M.Command(ctx, n.Env, testenv.AgentPath, "status", "-w")
		cmd.Stdout, cmd.Stderr = &watch, &watch
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		waitOutput(t, &watch, "waiting for a boot to start", 30*time.Second)
		if _, code := agent(t, n, "bootstrap"); code != 0 {
			t.Fatalf("bootstrap exit %d\n%s", code, n.Journal(context.Background(), "nodeagent.service"))
		}
		err := cmd.Wait()
		t.Logf("nodeagent status -w (a second session during the boot):\n%s", watch.String())
		if err != nil {
			t.Fatalf("status -w: %v", err)
		}
		out := watch.String()
		for _, want := range []string{"run started: node", "host-prep done in", "assets done in", "container-runtime done in",
			"kubelet done in", "readiness done in", "ready: every phase done in"} {
			if !strings.Contains(out, want) {
				t.Errorf("status -w output lacks %q", want)
			}
		}
	})
	waitDaemon(t, n)

	t.Run("boot timeline in metrics", func(t *testing.T) {
		metrics := daemonGet(t, n, "/metrics")
		for _, want := range []string{`nodeagent_boot_phase_duration_seconds{phase="kubelet",state="done"}`,
			`nodeagent_boot_phase_start_seconds{phase="readiness"}`, `nodeagent_boot_duration_seconds{result="done"}`,
			"nodeagent_boot_start_timestamp_seconds"} {
			if !strings.Contains(metrics, want) {
				t.Errorf("/metrics lacks %s", want)
			}
		}
	})

	ntp, err := sntptest.Start("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ntp.Close()
	doc := func(t *testing.T) doctor.Report {
		t.Helper()
		out, code := agent(t, n, "doctor", "-o", "json", "--ntp-server", "127.0.0.1:"+strconv.Itoa(ntp.Port()), "--check-timeout", "4s")
		var rep doctor.Report
		if err := json.Unmarshal(out, &rep); err != nil {
			t.Fatalf("doctor -o json: %v\n%s", err, out)
		}
		if code != rep.ExitCode() {
			t.Errorf("doctor exit %d, report says %d", code, rep.ExitCode())
		}
		for _, f := range rep.Findings {
			t.Logf("%-15s %-4s %s", f.Check, f.Result, f.Message)
		}
		return rep
	}
	named := func(t *testing.T, rep doctor.Report, check string, r doctor.Result, phrases ...string) {
		t.Helper()
		for _, f := range rep.Find(check) {
			all := f.Result == r && f.Fix != ""
			for _, p := range phrases {
				all = all && strings.Contains(f.Message, p)
			}
			if all {
				return
			}
		}
		t.Errorf("doctor did not name it: no %s %s finding with %q: %+v", check, r, phrases, rep.Find(check))
	}

	t.Run("doctor on the healthy node", func(t *testing.T) {
		rep := doc(t)
		for _, check := range []string{"imds", "identity", "aws-permissions", "swap", "disk", "certificates"} {
			for _, f := range rep.Find(check) {
				if f.Result == doctor.Fail {
					t.Errorf("%s fails on a healthy node: %s", check, f.Message)
				}
			}
		}
		if fs := rep.Find("clock"); len(fs) == 0 || fs[0].Result != doctor.OK {
			t.Errorf("clock against the test's time source: %+v", fs)
		}
	})

	t.Run("IMDS hop limit too low", func(t *testing.T) {
		env.Emu.SetFaults(awsemu.ServiceIMDS, awsemu.Faults{PutHopLimitExceeded: true})
		defer env.Emu.SetFaults(awsemu.ServiceIMDS, awsemu.Faults{})
		named(t, doc(t), "imds", doctor.Fail, "never answered the token PUT", "hop limit")
	})

	t.Run("credentials denied for a needed call", func(t *testing.T) {
		env.Emu.SetFaults(awsemu.ServiceAutoScaling, awsemu.Faults{Deny: []string{"DescribeAutoScalingInstances"}})
		defer env.Emu.SetFaults(awsemu.ServiceAutoScaling, awsemu.Faults{})
		named(t, doc(t), "aws-permissions", doctor.Fail, "credentials denied for autoscaling:DescribeAutoScalingInstances", "AccessDenied")
	})

	t.Run("clock offset", func(t *testing.T) {
		ntp.SetOffset(90 * time.Second)
		defer ntp.SetOffset(0)
		named(t, doc(t), "clock", doctor.Fail, "clock is 1m30", "behind")
	})

	t.Run("swap on", func(t *testing.T) {
		// The machine shares the host's kernel, and with it the host's swap: a
		// real swap file, on the host, for as long as this check takes.
		swap := filepath.Join("/var/tmp", fmt.Sprintf("nodeagent-e2e-swap-%d", os.Getpid()))
		for _, c := range [][]string{{"dd", "if=/dev/zero", "of=" + swap, "bs=1M", "count=16", "status=none"}, {"chmod", "600", swap}, {"mkswap", "-q", swap}, {"swapon", swap}} {
			if out, err := exec.Command(c[0], c[1:]...).CombinedOutput(); err != nil {
				os.Remove(swap)
				t.Fatalf("%v: %v\n%s", c, err, out)
			}
		}
		defer func() {
			if out, err := exec.Command("swapoff", swap).CombinedOutput(); err != nil {
				t.Errorf("swapoff %s: %v\n%s", swap, err, out)
			}
			os.Remove(swap)
		}()
		// The machines' kubelet runs with failSwapOn: false (they share the
		// host's swap), so doctor warns rather than fails.
		named(t, doc(t), "swap", doctor.Warn, "swap is on ("+swap+")")
	})

	t.Run("expired kubelet certificate", func(t *testing.T) {
		crt := expiredKubeletCert(t)
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := n.M.CopyIn(ctx, crt, "/var/lib/kubelet/pki/kubelet-client.crt", 0o644); err != nil {
			t.Fatal(err)
		}
		named(t, doc(t), "certificates", doctor.Fail, "/var/lib/kubelet/pki/kubelet-client.crt", "expired on")
	})

	t.Run("support archive", func(t *testing.T) {
		if _, code := agent(t, n, "support", "-f", "/root/support.tar.gz", "--ntp-server", "127.0.0.1:"+strconv.Itoa(ntp.Port()), "--check-timeout", "4s"); code != 0 {
			t.Fatalf("support exit %d", code)
		}
		files := readArchive(t, n.M.Path("/root/support.tar.gz"))
		for _, want := range []string{"state.json", "status.txt", "doctor.json", "config.yaml", "journal.txt", "kubelet/config.yaml",
			"containerd/config.toml", "mounts.txt", "hosts-managed-block.txt", "README.txt"} {
			if _, ok := files[want]; !ok {
				t.Errorf("archive lacks %s\n%s", want, files["README.txt"])
			}
		}
		t.Logf("README.txt:\n%s", files["README.txt"])
		if !strings.Contains(files["journal.txt"], "nodeagent") || !strings.Contains(files["status.txt"], "Ready:     yes") {
			t.Errorf("journal or status incomplete:\n%.2000s\n%s", files["journal.txt"], files["status.txt"])
		}
		var secrets []string
		for _, kv := range n.Env {
			if k, v, _ := strings.Cut(kv, "="); k == "AWS_SECRET_ACCESS_KEY" || k == "AWS_ACCESS_KEY_ID" {
				secrets = append(secrets, v)
			}
		}
		if key, err := os.ReadFile(n.M.Path("/var/lib/kubelet/pki/kubelet.key")); err == nil {
			secrets = append(secrets, strings.Split(string(key), "\n")[1])
		}
		if len(secrets) < 2 {
			t.Fatalf("the test found too few secrets to look for: %d", len(secrets))
		}
		for name, content := range files {
			for _, s := range secrets {
				if strings.Contains(content, s) {
					t.Errorf("%s holds a secret (%.6s...)", name, s)
				}
			}
		}
	})
}

// expiredKubeletCert is a kubelet client certificate the pki phase issued a
// year and a day ago, valid for a year.
func expiredKubeletCert(t *testing.T) string {
	t.Helper()
	root := fsutil.Root(t.TempDir())
	caCert, caKey, err := pki.GenerateCA("kubernetes", 10*365*24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	for p, b := range map[string][]byte{"/ca/ca.crt": caCert, "/ca/ca.key": caKey} {
		if err := os.MkdirAll(filepath.Dir(root.Path(p)), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(root.Path(p), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	ph := pki.NewPhase(pki.Options{
		Root: root, CA: pki.FileCA{Root: root, CertFile: "/ca/ca.crt", KeyFile: "/ca/ca.key"}, ClusterName: cluster,
		NodeName: "ip-10-0-1-7.ec2.internal", NodeIP: net.ParseIP("10.0.1.7"), Role: config.RoleNode,
		Now: func() time.Time { return time.Now().Add(-366 * 24 * time.Hour) }, Validity: 365 * 24 * time.Hour,
	})
	if _, err := ph.Check(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := ph.Act(context.Background()); err != nil {
		t.Fatal(err)
	}
	return root.Path(pki.DefaultPaths().KubeletClientCert)
}

func readArchive(t *testing.T, path string) map[string]string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	gz, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	files := map[string]string{}
	tr := tar.NewReader(gz)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return files
		}
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(tr)
		files[h.Name] = string(b)
	}
}

// daemonGet asks the node's daemon over its root-only socket.
func daemonGet(t testing.TB, n *testenv.Node, path string) string {
	t.Helper()
	client := daemonClient(n)
	resp, err := client.Get("http://nodeagent" + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// lockedBuffer is a bytes.Buffer safe for a writer and a poller.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}
func (l *lockedBuffer) String() string { l.mu.Lock(); defer l.mu.Unlock(); return l.b.String() }

func waitOutput(t *testing.T, b *lockedBuffer, want string, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !strings.Contains(b.String(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("no %q within %s; output:\n%s", want, within, b.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}
