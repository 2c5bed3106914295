package kubelet

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"path"
	"slices"
	"strings"
	"testing"

	"github.com/nodeagent/nodeagent/config"
	"github.com/nodeagent/nodeagent/internal/fsutil"
	"github.com/nodeagent/nodeagent/systemd"
)

const testToken = "abcdef.0123456789abcdef"

func testOptions(t *testing.T, mode KubeconfigMode) Options {
	spec := testSpec(t, `{maxPods: 50}`)
	spec.Kubelet.NodeLabels = map[string]string{"example.com/pool": "nodes", "zone": "a"}
	spec.Kubelet.BootstrapToken = testToken
	return Options{
		Root:       fsutil.Root(t.TempDir()),
		Config:     &config.NodeConfig{APIVersion: config.APIVersion, Kind: config.Kind, Spec: spec},
		NodeName:   "ip-10-0-1-23.ec2.internal",
		NodeIP:     "10.0.1.23",
		Labels:     map[string]string{"zone": "b", "topology.kubernetes.io/zone": "eu-west-1a", "node.kubernetes.io/instance-type": "m6i.large"},
		Kubeconfig: mode,
	}
}

func TestRenderGolden(t *testing.T) {
	tests := []struct {
		mode      KubeconfigMode
		prefix    string
		wantFiles []string
	}{
		{Standalone{}, "standalone", []string{ConfigPath, "/etc/systemd/system/kubelet.service", DropInPath}},
		{Bootstrap{}, "bootstrap", []string{ConfigPath, BootstrapKubeconfig, "/etc/systemd/system/kubelet.service", DropInPath}},
		{ClientCert{}, "clientcert", []string{ConfigPath, KubeconfigPath, "/etc/systemd/system/kubelet.service", DropInPath}},
	}
	for _, tc := range tests {
		t.Run(tc.prefix, func(t *testing.T) {
			r, err := Render(testOptions(t, tc.mode))
			if err != nil {
				t.Fatal(err)
			}
			if len(r.Warnings) != 0 {
				t.Errorf("warnings: %q", r.Warnings)
			}
			var paths []string
			for _, f := range r.Files {
				paths = append(paths, f.Path)
				golden(t, tc.prefix+"-"+path.Base(f.Path), f.Content)
				wantMode := 0o644
				if strings.Contains(f.Path, "kubeconfig") {
					wantMode = 0o600
				}
				if int(f.Mode) != wantMode {
					t.Errorf("%s mode %o, want %o", f.Path, f.Mode, wantMode)
				}
				// The token is a secret: it may appear in the bootstrap kubeconfig only.
				if has := bytes.Contains(f.Content, []byte(testToken)); has != (f.Path == BootstrapKubeconfig) {
					t.Errorf("%s: token present = %v", f.Path, has)
				}
				if f.OwnerUnit() != Unit {
					t.Errorf("%s does not restart kubelet when it changes (owner %q)", f.Path, f.OwnerUnit())
				}
			}
			if !slices.Equal(paths, tc.wantFiles) {
				t.Errorf("files %q, want %q", paths, tc.wantFiles)
			}
		})
	}
}

func TestRenderDockerUnit(t *testing.T) {
	o := testOptions(t, Standalone{})
	o.Config.Spec.ContainerRuntime = config.RuntimeDocker
	r, err := Render(o)
	if err != nil {
		t.Fatal(err)
	}
	files := r.Files
	golden(t, "docker-kubelet.service", files[1].Content)
	if !strings.Contains(string(files[0].Content), "containerRuntimeEndpoint: unix:///run/cri-dockerd.sock") {
		t.Errorf("docker node's kubelet does not talk to cri-dockerd:\n%s", files[0].Content)
	}
}

func TestRenderRefuses(t *testing.T) {
	tests := []struct {
		name    string
		mutate  func(o *Options)
		wantErr string
	}{
		{"no config", func(o *Options) { o.Config = nil }, "no node configuration"},
		{"bootstrap without token", func(o *Options) {
			o.Kubeconfig = Bootstrap{}
			o.Config.Spec.Kubelet.BootstrapToken = ""
		}, "needs spec.kubelet.bootstrapToken"},
		{"bad node IP", func(o *Options) { o.NodeIP = "10.0.1" }, `node IP "10.0.1"`},
		{"bad node name", func(o *Options) { o.NodeName = "Bad Name" }, `node name "Bad Name"`},
		{"label value with a space", func(o *Options) { o.Labels = map[string]string{"team": "a b"} }, `node label team has an invalid value "a b"`},
		{"label key with a quote", func(o *Options) { o.Labels = map[string]string{`x"y`: "1"} }, `node label key "x\"y"`},
		{"typo in kubelet config", func(o *Options) { o.Config.Spec.Kubelet.Config = map[string]any{"maxPod": 3} }, `unknown field "maxPod"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			o := testOptions(t, Standalone{})
			tc.mutate(&o)
			_, err := Render(o)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("got %v, want an error containing %q", err, tc.wantErr)
			}
			if strings.Contains(err.Error(), testToken) {
				t.Fatalf("error leaks the token: %v", err)
			}
		})
	}
}

// A standalone node references the client CA only once the file is there.
func TestStandaloneClientCA(t *testing.T) {
	o := testOptions(t, Standalone{})
	r, err := Render(o)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(r.Files[0].Content), "clientCAFile") {
		t.Fatalf("clientCAFile set without a CA:\n%s", r.Files[0].Content)
	}
	if err := fsutil.WriteFileAtomic(o.Root.Path(CACertPath), []byte("pem"), 0o644); err != nil {
		t.Fatal(err)
	}
	r, err = Render(o)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(r.Files[0].Content), "clientCAFile: /etc/kubernetes/pki/ca.crt") {
		t.Fatalf("clientCAFile not set with a CA present:\n%s", r.Files[0].Content)
	}
}

func TestPhasePlansWithoutDBus(t *testing.T) {
	o := testOptions(t, Bootstrap{})
	o.Systemd = func(context.Context) (*systemd.Manager, error) { return nil, errors.New("no bus") }
	p := NewPhase(o)
	if p.Name() != "kubelet" {
		t.Fatalf("name %q", p.Name())
	}
	changes, err := p.Check(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, c := range changes {
		got = append(got, c.String())
	}
	want := []string{
		"create file /var/lib/kubelet/config.yaml",
		"create file /var/lib/kubelet/bootstrap-kubeconfig",
		"create file /etc/systemd/system/kubelet.service",
		"create file /etc/systemd/system/kubelet.service.d/10-nodeagent.conf",
		"start unit kubelet.service (unit kubelet.service: state unknown (no D-Bus: no bus))",
	}
	if !slices.Equal(got, want) {
		t.Fatalf("got %q\nwant %q", got, want)
	}
	if strings.Contains(strings.Join(got, "\n"), testToken) {
		t.Fatal("plan shows the token")
	}
}

func TestHealthz(t *testing.T) {
	tests := []struct {
		name    string
		status  int
		body    string
		wantErr string
	}{
		{"healthy", 200, "ok", ""},
		{"unhealthy", 500, "[-]syncloop failed", `500 Internal Server Error: "[-]syncloop failed"`},
		{"200 but not ok", 200, "starting", `"starting"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path != "/healthz" {
					http.NotFound(w, r)
					return
				}
				w.WriteHeader(tc.status)
				w.Write([]byte(tc.body))
			}))
			defer srv.Close()
			err := healthz(context.Background(), srv.URL+"/healthz")
			if tc.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("got %v, want %q", err, tc.wantErr)
			}
		})
	}
	if HealthzURL != "http://127.0.0.1:10248/healthz" {
		t.Fatalf("HealthzURL %s", HealthzURL)
	}
	// Nothing listens: a clear error, not a hang.
	srv := httptest.NewServer(http.NotFoundHandler())
	url := srv.URL
	srv.Close()
	if err := healthz(context.Background(), url+"/healthz"); err == nil || !strings.Contains(err.Error(), "kubelet healthz") {
		t.Fatalf("closed port: %v", err)
	}
}

// kubelet exits at start when --node-labels holds a kubernetes.io or k8s.io label
// it may not set itself; such labels are left out with a warning.
func TestLabelsKubeletRefuses(t *testing.T) {
	tests := []struct {
		labels   map[string]string
		wantArg  string
		wantDrop []string
	}{
		{map[string]string{"example.com/team": "a", "plain": "x"}, "example.com/team=a,plain=x", nil},
		{map[string]string{"topology.kubernetes.io/zone": "z", "kubernetes.io/hostname": "h", "node.kubernetes.io/instance-type": "t"},
			"kubernetes.io/hostname=h,node.kubernetes.io/instance-type=t,topology.kubernetes.io/zone=z", nil},
		{map[string]string{"kubelet.kubernetes.io/x": "1", "foo.node.kubernetes.io/y": "2"}, "foo.node.kubernetes.io/y=2,kubelet.kubernetes.io/x=1", nil},
		{map[string]string{"node-role.kubernetes.io/control-plane": "", "kops.k8s.io/instancegroup": "nodes", "k8s.io/x": "1", "team": "a"},
			"team=a", []string{"k8s.io/x", "kops.k8s.io/instancegroup", "node-role.kubernetes.io/control-plane"}},
	}
	for _, tc := range tests {
		arg, warnings, err := labelArg(tc.labels, nil)
		if err != nil {
			t.Fatal(err)
		}
		if arg != tc.wantArg {
			t.Errorf("labels %v: --node-labels=%s, want %s", tc.labels, arg, tc.wantArg)
		}
		if len(warnings) != len(tc.wantDrop) {
			t.Fatalf("warnings %q, want one for each of %q", warnings, tc.wantDrop)
		}
		for i, w := range warnings {
			if !strings.HasPrefix(w, "node label "+tc.wantDrop[i]+" is not passed to kubelet") {
				t.Errorf("warning %q does not name %s", w, tc.wantDrop[i])
			}
		}
	}
}

func TestPhaseWarnsAboutDroppedLabels(t *testing.T) {
	o := testOptions(t, ClientCert{})
	o.Labels["node-role.kubernetes.io/control-plane"] = ""
	o.Systemd = func(context.Context) (*systemd.Manager, error) { return nil, errors.New("no bus") }
	p := NewPhase(o)
	if _, err := p.Check(context.Background()); err != nil {
		t.Fatal(err)
	}
	w := p.(interface{ Warnings() []string }).Warnings()
	if len(w) != 1 || !strings.Contains(w[0], "node-role.kubernetes.io/control-plane") {
		t.Fatalf("warnings %q", w)
	}
}

// A Docker node without cri-dockerd has no CRI endpoint: the phase says so and
// neither writes kubelet's files nor asks systemd for anything.
func TestDockerNodeWithoutCRIDockerdDoesNotStartKubelet(t *testing.T) {
	o := testOptions(t, Standalone{})
	o.Config.Spec.ContainerRuntime = config.RuntimeDocker
	o.Systemd = func(context.Context) (*systemd.Manager, error) {
		t.Error("systemd was asked to start a kubelet that cannot reach its runtime")
		return nil, errors.New("no systemd in this test")
	}
	err := NewPhase(o).Act(context.Background())
	for _, want := range []string{"cri-dockerd", "unix:///run/cri-dockerd.sock", "/usr/local/bin/cri-dockerd is not installed", "spec.assets"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Act: %v, want an error naming %q", err, want)
		}
	}
	for _, f := range []string{ConfigPath, "/etc/systemd/system/kubelet.service", DropInPath} {
		if _, err := os.Stat(o.Root.Path(f)); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s was written (stat: %v)", f, err)
		}
	}
}
