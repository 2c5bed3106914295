package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/nodeagent/nodeagent/awsemu"
	"github.com/nodeagent/nodeagent/bootstrap"
	"github.com/nodeagent/nodeagent/internal/fsutil"
)

const workerConfig = `apiVersion: nodeagent.io/v1alpha1
kind: NodeConfig
spec:
  cluster: {name: unit.example.com}
  role: Node
  kubernetesVersion: v1.34.4
  assets:
  - name: kubelet
    urls: [http://127.0.0.1:1/kubelet]
    sha256: "0a0000000000000000000000000000000000000000000000000000000000000b"
`

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func TestCheckConfig(t *testing.T) {
	tests := []struct {
		name     string
		input    string
		wantCode int
		want     []string
	}{
		{"valid worker", workerConfig, 0, []string{"valid NodeConfig for unit.example.com"}},
		{"every problem named", "apiVersion: nodeagent.io/v1alpha1\nkind: NodeConfig\nspec:\n  cluster: {name: \"\"}\n  role: Boss\n  kubernetesVersion: v1.34.4\n", 1,
			[]string{"spec.cluster.name", "spec.role"}},
		{"unknown field", strings.Replace(workerConfig, "role: Node", "role: Node\n  rol: x", 1), 1, []string{"spec.rol"}},
		{"not yaml", "{{{", 1, []string{"-:"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			code := CheckConfig("-", strings.NewReader(tt.input), &out)
			if code != tt.wantCode {
				t.Errorf("exit %d, want %d\n%s", code, tt.wantCode, out.String())
			}
			for _, w := range tt.want {
				if !strings.Contains(out.String(), w) {
					t.Errorf("output lacks %q:\n%s", w, out.String())
				}
			}
		})
	}
}

func TestStatusExitCodesAndFormats(t *testing.T) {
	root := t.TempDir()
	o := Options{Root: fsutil.Root(root), Log: quietLog()}
	var out bytes.Buffer
	if code, err := Status(o, &out, "table"); err != nil || code != StatusUnknown {
		t.Fatalf("no state: code %d err %v, want %d", code, err, StatusUnknown)
	}
	// A script asking for JSON before the first run still gets JSON it can parse.
	out.Reset()
	var empty bootstrap.State
	if code, err := Status(o, &out, "json"); err != nil || code != StatusUnknown || json.Unmarshal(out.Bytes(), &empty) != nil {
		t.Fatalf("no state, -o json: code %d err %v, output %q", code, err, out.String())
	}
	started := time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC)
	if _, err := o.store().Update(func(st *bootstrap.State) {
		st.Node = bootstrap.NodeInfo{Name: "ip-10-0-1-5.ec2.internal", Cluster: "unit.example.com", Role: "Node", InstanceID: "i-0abc"}
		st.Phases = []bootstrap.PhaseStatus{
			{Name: "host-prep", State: bootstrap.PhaseDone, Started: started, Duration: bootstrap.Duration(120 * time.Millisecond), Changed: true,
				Warnings: []string{"kernel refused module br_netfilter"}},
			{Name: "assets", State: bootstrap.PhaseFailed, Started: started, Duration: bootstrap.Duration(2 * time.Second), Error: "kubelet: sha256 mismatch"},
		}
		st.Readiness = bootstrap.ReadinessStatus{Ready: false, Reason: "phase assets failed"}
	}); err != nil {
		t.Fatal(err)
	}
	for _, format := range []string{"table", "json", "yaml"} {
		t.Run(format, func(t *testing.T) {
			var out bytes.Buffer
			code, err := Status(o, &out, format)
			if err != nil || code != StatusNotReady {
				t.Fatalf("code %d err %v, want %d", code, err, StatusNotReady)
			}
			for _, want := range []string{"host-prep", "assets", "sha256 mismatch", "br_netfilter"} {
				if !strings.Contains(out.String(), want) {
					t.Errorf("%s output lacks %q:\n%s", format, want, out.String())
				}
			}
			if format == "json" {
				var st bootstrap.State
				if err := json.Unmarshal(out.Bytes(), &st); err != nil {
					t.Fatalf("json output is not a State: %v", err)
				}
				if p := st.Phase("assets"); p == nil || time.Duration(p.Duration) != 2*time.Second {
					t.Errorf("assets phase round trip: %+v", p)
				}
			}
		})
	}
	if _, err := Status(o, &out, "xml"); err == nil {
		t.Error("unknown format accepted")
	}
}

func TestStatusAPI(t *testing.T) {
	dir := t.TempDir()
	store := bootstrap.StateStore{Dir: dir}
	if _, err := store.Update(func(st *bootstrap.State) {
		st.Readiness = bootstrap.ReadinessStatus{Ready: false, Reason: "kubelet: not healthy"}
	}); err != nil {
		t.Fatal(err)
	}
	m := newMetrics()
	m.observePhase(bootstrap.PhaseStatus{Name: "assets", State: bootstrap.PhaseFailed, Duration: bootstrap.Duration(time.Second)})
	api := &statusAPI{store: store, metrics: m, log: quietLog()}
	socket := serveStatusAPI(t, api)
	fi, _ := os.Stat(socket)
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("socket mode %o, want 0600 (root only)", fi.Mode().Perm())
	}
	client := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", socket)
	}}}
	get := func(path string) (int, string) {
		resp, err := client.Get("http://nodeagent" + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	tests := []struct {
		path     string
		wantCode int
		want     string
	}{
		{"/healthz", 200, "ok"},
		{"/readyz", 503, "kubelet: not healthy"},
		{"/status", 200, `"reason": "kubelet: not healthy"`},
		{"/cluster", 404, "gossip is not running"},
		{"/metrics", 200, `nodeagent_phase_failures_total{phase="assets"} 1`},
	}
	for _, tt := range tests {
		code, body := get(tt.path)
		if code != tt.wantCode || !strings.Contains(body, tt.want) {
			t.Errorf("GET %s = %d %q, want %d containing %q", tt.path, code, body, tt.wantCode, tt.want)
		}
	}
	if _, err := store.Update(func(st *bootstrap.State) { st.Readiness = bootstrap.ReadinessStatus{Ready: true} }); err != nil {
		t.Fatal(err)
	}
	if code, _ := get("/readyz"); code != 200 {
		t.Errorf("/readyz after ready = %d", code)
	}
	var st bootstrap.State
	if err := queryAPI(context.Background(), socket, "/status", &st); err != nil || !st.Readiness.Ready {
		t.Errorf("queryAPI /status: %v %+v", err, st.Readiness)
	}
}

// TestPlanTouchesNothing runs plan for a worker against the wire-level emulator's
// IMDS: it must list the changes bootstrap would make and leave the root as it was.
func TestPlanTouchesNothing(t *testing.T) {
	emu := awsemu.Start(t, &awsemu.World{Instances: []awsemu.Instance{{
		ID: "i-0plan", Type: "m5.large", AvailabilityZone: "us-east-1a", PrivateIP: "10.0.1.5", State: "running",
	}}}, awsemu.Options{})
	emu.Setenv(t, "i-0plan")
	root := t.TempDir()
	cfg := filepath.Join(t.TempDir(), "node.yaml")
	if err := os.WriteFile(cfg, []byte(workerConfig), 0o600); err != nil {
		t.Fatal(err)
	}
	// A DBUS address nobody listens on: plan must still work without systemd.
	t.Setenv("DBUS_SYSTEM_BUS_ADDRESS", "unix:path="+filepath.Join(root, "no-bus"))
	before := snapshot(t, root)
	var out bytes.Buffer
	o := Options{Root: fsutil.Root(root), ConfigFile: cfg, Log: quietLog()}
	if err := Plan(context.Background(), o, &out, "table"); err != nil {
		t.Fatalf("plan: %v\n%s", err, out.String())
	}
	for _, want := range []string{"host-prep", "/etc/sysctl.d/99-nodeagent.conf", "assets", "kubelet", "ip-10-0-1-5"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("plan lacks %q:\n%s", want, out.String())
		}
	}
	if after := snapshot(t, root); after != before {
		t.Errorf("plan changed the root:\nbefore:\n%s\nafter:\n%s", before, after)
	}
}

func snapshot(t *testing.T, root string) string {
	t.Helper()
	var b strings.Builder
	_ = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		b.WriteString(p + "\n")
		return nil
	})
	return b.String()
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	waitUntil(t, 5*time.Second, "the condition", cond)
}

// waitUntil polls cond every 10 ms until it holds, failing the test after
// timeout.
func waitUntil(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	pollEvery(t, 10*time.Millisecond, timeout, what, func() error {
		if cond() {
			return nil
		}
		return errors.New("not yet")
	})
}

// pollUntil polls cond every 100 ms until it returns nil, failing the test at
// the deadline with cond's last error.
func pollUntil(t *testing.T, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	pollEvery(t, 100*time.Millisecond, timeout, what, cond)
}

func pollEvery(t *testing.T, interval, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	var last error
	if err := wait.PollUntilContextTimeout(context.Background(), interval, timeout, true,
		func(context.Context) (bool, error) { last = cond(); return last == nil, nil }); err != nil {
		t.Fatalf("%s: not within %v: %v", what, timeout, last)
	}
}
