package cri

import (
	"context"
	"errors"
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/nodeagent/nodeagent/config"
	"github.com/nodeagent/nodeagent/internal/fsutil"
	"github.com/nodeagent/nodeagent/systemd"
)

var update = flag.Bool("update", false, "rewrite golden files")

func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	p := filepath.Join("testdata", name+".golden")
	if *update {
		if err := os.WriteFile(p, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(p)
	if err != nil {
		t.Fatalf("%v (run with -update to create)", err)
	}
	if string(got) != string(want) {
		t.Errorf("%s differs from %s (run with -update if intended):\n--- got\n%s\n--- want\n%s", name, p, got, want)
	}
}

// installBins creates the binaries the assets phase would have installed.
func installBins(t *testing.T, root fsutil.Root, names ...string) {
	t.Helper()
	for _, n := range names {
		if err := fsutil.WriteFileAtomic(root.Path("/usr/local/bin/"+n), []byte("#!/bin/true\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
}

func TestRender(t *testing.T) {
	tests := []struct {
		name         string
		runtime      config.Runtime
		bins         []string
		wantFiles    map[string]string // host path → golden name
		wantEnable   []string
		wantStart    []string
		wantWarnings []string
	}{
		{
			name:    "containerd with runc installed",
			runtime: config.RuntimeContainerd,
			bins:    []string{"containerd", "containerd-shim-runc-v2", "runc", "ctr"},
			wantFiles: map[string]string{
				"/etc/containerd/config.toml":            "config.toml",
				"/etc/systemd/system/containerd.service": "containerd.service",
				CNITemplatePath:                          "cni-kubenet.conflist.tmpl",
			},
			wantEnable: []string{"containerd.service"},
			wantStart:  []string{"containerd.service"},
		},
		{
			name:    "containerd without runc in BinDir leaves runc to PATH",
			runtime: "", // default
			bins:    []string{"containerd"},
			wantFiles: map[string]string{
				"/etc/containerd/config.toml":            "config-no-runc.toml",
				"/etc/systemd/system/containerd.service": "containerd.service",
				CNITemplatePath:                          "cni-kubenet.conflist.tmpl",
			},
			wantEnable: []string{"containerd.service"},
			wantStart:  []string{"containerd.service"},
		},
		{
			name:    "docker with cri-dockerd",
			runtime: config.RuntimeDocker,
			bins:    []string{"containerd", "runc", "dockerd", "cri-dockerd"},
			wantFiles: map[string]string{
				"/etc/containerd/config.toml":            "config.toml",
				"/etc/systemd/system/containerd.service": "containerd.service",
				CNITemplatePath:                          "cni-kubenet.conflist.tmpl",
				"/etc/docker/daemon.json":                "daemon.json",
				"/etc/systemd/system/docker.socket":      "docker.socket",
				"/etc/systemd/system/docker.service":     "docker.service",
				"/etc/systemd/system/cri-docker.service": "cri-docker.service",
			},
			wantEnable: []string{"containerd.service", "docker.socket", "docker.service", "cri-docker.service"},
			wantStart:  []string{"containerd.service", "docker.service", "cri-docker.service"},
		},
		{
			name:    "docker without cri-dockerd",
			runtime: config.RuntimeDocker,
			bins:    []string{"containerd", "runc", "dockerd"},
			wantFiles: map[string]string{
				"/etc/containerd/config.toml":            "config.toml",
				"/etc/systemd/system/containerd.service": "containerd.service",
				CNITemplatePath:                          "cni-kubenet.conflist.tmpl",
				"/etc/docker/daemon.json":                "daemon.json",
				"/etc/systemd/system/docker.socket":      "docker.socket",
				"/etc/systemd/system/docker.service":     "docker.service",
			},
			wantEnable:   []string{"containerd.service", "docker.socket", "docker.service"},
			wantStart:    []string{"containerd.service", "docker.service"},
			wantWarnings: []string{"/usr/local/bin/cri-dockerd is not installed: kubelet has no CRI endpoint (unix:///run/cri-dockerd.sock) for Docker until it is; add cri-dockerd to spec.assets"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			root := fsutil.Root(t.TempDir())
			installBins(t, root, tc.bins...)
			pl, err := Render(Options{Root: root, Runtime: tc.runtime})
			if err != nil {
				t.Fatal(err)
			}
			var paths []string
			for _, f := range pl.Files {
				paths = append(paths, f.Path)
				g, ok := tc.wantFiles[f.Path]
				if !ok {
					t.Errorf("unexpected file %s", f.Path)
					continue
				}
				if f.Mode != 0o644 {
					t.Errorf("%s mode %v, want 0644", f.Path, f.Mode)
				}
				golden(t, g, f.Content)
			}
			if len(paths) != len(tc.wantFiles) {
				t.Errorf("files %q, want the %d of %v", paths, len(tc.wantFiles), tc.wantFiles)
			}
			if !slices.Equal(pl.Warnings, tc.wantWarnings) {
				t.Errorf("warnings %q, want %q", pl.Warnings, tc.wantWarnings)
			}
			if !slices.Equal(pl.Enable, tc.wantEnable) || !slices.Equal(pl.Start, tc.wantStart) {
				t.Errorf("enable %q start %q, want %q %q", pl.Enable, pl.Start, tc.wantEnable, tc.wantStart)
			}
		})
	}
}

// A change to config.toml must restart containerd, which owns it.
func TestConfigRestartsItsUnit(t *testing.T) {
	pl, err := Render(Options{Root: fsutil.Root(t.TempDir()), Runtime: config.RuntimeDocker})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		ContainerdConfigPath:                "containerd.service",
		DockerDaemonJSONPath:                "docker.service",
		"/etc/systemd/system/docker.socket": "docker.socket",
	}
	for _, f := range pl.Files {
		if w, ok := want[f.Path]; ok && f.OwnerUnit() != w {
			t.Errorf("%s restarts %q, want %q", f.Path, f.OwnerUnit(), w)
		}
	}
}

func TestRenderRejectsUnknownRuntime(t *testing.T) {
	_, err := Render(Options{Root: fsutil.Root(t.TempDir()), Runtime: "podman"})
	if err == nil || !strings.Contains(err.Error(), `"podman"`) {
		t.Fatalf("got %v, want an error naming the runtime", err)
	}
}

func TestCustomBinDirAndPause(t *testing.T) {
	root := fsutil.Root(t.TempDir())
	if err := fsutil.WriteFileAtomic(root.Path("/opt/k8s/bin/runc"), []byte("x"), 0o755); err != nil {
		t.Fatal(err)
	}
	pl, err := Render(Options{Root: root, BinDir: "/opt/k8s/bin", PauseImage: "mirror.example/pause:3.9"})
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`BinaryName = "/opt/k8s/bin/runc"`, `sandbox_image = "mirror.example/pause:3.9"`} {
		if !strings.Contains(string(pl.Files[0].Content), want) {
			t.Errorf("config.toml lacks %s:\n%s", want, pl.Files[0].Content)
		}
	}
	for _, want := range []string{"Environment=PATH=/opt/k8s/bin:", "ExecStart=/opt/k8s/bin/containerd --config /etc/containerd/config.toml"} {
		if !strings.Contains(string(pl.Files[1].Content), want) {
			t.Errorf("containerd.service lacks %s:\n%s", want, pl.Files[1].Content)
		}
	}
}

func TestCRIEndpoint(t *testing.T) {
	for rt, want := range map[config.Runtime]string{
		config.RuntimeContainerd: "unix:///run/containerd/containerd.sock",
		"":                       "unix:///run/containerd/containerd.sock",
		config.RuntimeDocker:     "unix:///run/cri-dockerd.sock",
	} {
		if got := CRIEndpoint(rt); got != want {
			t.Errorf("CRIEndpoint(%q) = %q, want %q", rt, got, want)
		}
	}
}

// Without D-Bus the phase still plans: files to write, units in an unknown state.
func TestPhasePlansWithoutDBus(t *testing.T) {
	root := fsutil.Root(t.TempDir())
	installBins(t, root, "containerd", "runc")
	p := NewPhase(Options{Root: root, Systemd: func(context.Context) (*systemd.Manager, error) {
		return nil, errors.New("no bus")
	}})
	if p.Name() != "container-runtime" {
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
		"create file /etc/containerd/config.toml",
		"create file /etc/systemd/system/containerd.service",
		"create file /etc/containerd/cni-kubenet.conflist.tmpl",
		"start unit containerd.service (unit containerd.service: state unknown (no D-Bus: no bus))",
	}
	if !slices.Equal(got, want) {
		t.Fatalf("got %q\nwant %q", got, want)
	}
}

// The real containerd (the Debian binary the e2e serves as an asset) must read
// the rendered config.toml and keep every setting we rely on.
func TestContainerdReadsConfig(t *testing.T) {
	bin, err := exec.LookPath("containerd")
	if err != nil {
		t.Fatalf("containerd is part of the test environment (hack/deps.sh installs it): %v", err)
	}
	root := fsutil.Root(t.TempDir())
	installBins(t, root, "runc")
	pl, err := Render(Options{Root: root})
	if err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(t.TempDir(), "config.toml")
	if err := os.WriteFile(cfg, pl.Files[0].Content, 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(bin, "--config", cfg, "config", "dump").CombinedOutput()
	if err != nil {
		t.Fatalf("containerd config dump: %v\n%s", err, out)
	}
	dump := string(out)
	// The runc options table as containerd understood it.
	i := strings.Index(dump, `[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]`)
	if i < 0 {
		t.Fatalf("containerd did not keep the runc runtime options:\n%s", dump)
	}
	opts := dump[i:]
	if j := strings.Index(opts[1:], "\n["); j >= 0 {
		opts = opts[:j+1]
	}
	for _, want := range []string{"SystemdCgroup = true", `BinaryName = "/usr/local/bin/runc"`} {
		if !strings.Contains(opts, want) {
			t.Errorf("runc options lack %s:\n%s", want, opts)
		}
	}
	for _, want := range []string{
		`sandbox_image = "registry.k8s.io/pause:3.10"`,
		`runtime_type = "io.containerd.runc.v2"`,
		`root = "/var/lib/containerd"`,
		`state = "/run/containerd"`,
		`address = "/run/containerd/containerd.sock"`,
		`config_path = "/etc/containerd/certs.d"`,
		`conf_template = "/etc/containerd/cni-kubenet.conflist.tmpl"`,
		`conf_dir = "/etc/cni/net.d"`,
		`bin_dir = "/opt/cni/bin"`,
	} {
		if !strings.Contains(dump, want) {
			t.Errorf("containerd's view of the config lacks %s", want)
		}
	}
}

// TestRestrictOOMScoreAdj: a node whose root may not lower oom_score_adj tells
// containerd not to try, or no pod sandbox could start; an instance's does not.
func TestRestrictOOMScoreAdj(t *testing.T) {
	for _, restrict := range []bool{true, false} {
		p, err := Render(Options{Root: fsutil.Root(t.TempDir()), RestrictOOMScoreAdj: restrict})
		if err != nil {
			t.Fatal(err)
		}
		got := strings.Contains(string(p.Files[0].Content), "restrict_oom_score_adj = true")
		if got != restrict {
			t.Errorf("RestrictOOMScoreAdj=%v: config.toml says restrict_oom_score_adj %v:\n%s", restrict, got, p.Files[0].Content)
		}
	}
}
