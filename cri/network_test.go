package cri

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"text/template"
	"time"

	"github.com/nodeagent/nodeagent/config"
	"github.com/nodeagent/nodeagent/internal/containerdtest"
	"github.com/nodeagent/nodeagent/internal/fsutil"
	"github.com/nodeagent/nodeagent/systemd"
)

func fileByPath(pl Plan, p string) (systemd.File, bool) {
	i := slices.IndexFunc(pl.Files, func(f systemd.File) bool { return f.Path == p })
	if i < 0 {
		return systemd.File{}, false
	}
	return pl.Files[i], true
}

func TestRegistryMirrorsBecomeHostsFiles(t *testing.T) {
	pl, err := Render(Options{Root: fsutil.Root(t.TempDir()), RegistryMirrors: map[string][]string{
		"registry.k8s.io": {"https://mirror.example", "http://10.0.0.5:5000"},
		"docker.io":       {"https://hub-cache.example"},
	}})
	if err != nil {
		t.Fatal(err)
	}
	for host, g := range map[string]string{"registry.k8s.io": "hosts-registry.k8s.io.toml", "docker.io": "hosts-docker.io.toml"} {
		f, ok := fileByPath(pl, "/etc/containerd/certs.d/"+host+"/hosts.toml")
		if !ok {
			t.Errorf("no hosts.toml for %s", host)
			continue
		}
		if f.OwnerUnit() != "" {
			t.Errorf("%s restarts %s; containerd reads hosts files at each pull", f.Path, f.OwnerUnit())
		}
		golden(t, g, f.Content)
	}
}

// writeFile puts a file on the host as an earlier run (or someone else) left it.
func writeFile(t *testing.T, root fsutil.Root, p, content string) {
	t.Helper()
	if err := fsutil.WriteFileAtomic(root.Path(p), []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func exists(root fsutil.Root, p string) bool {
	_, err := os.Stat(root.Path(p))
	return err == nil
}

func TestOnlyManagedHostsFilesOfUnconfiguredRegistriesAreRemoved(t *testing.T) {
	root := fsutil.Root(t.TempDir())
	writeFile(t, root, "/etc/containerd/certs.d/old.example/hosts.toml", string(hostsTOML("old.example", []string{"https://m.example"})))
	writeFile(t, root, "/etc/containerd/certs.d/theirs.example/hosts.toml", "server = \"https://theirs.example\"\n")
	writeFile(t, root, "/etc/containerd/certs.d/registry.k8s.io/hosts.toml", string(hostsTOML("registry.k8s.io", []string{"https://old-mirror.example"})))
	o := Options{Root: root, RegistryMirrors: map[string][]string{"registry.k8s.io": {"https://mirror.example"}},
		Systemd: func(context.Context) (*systemd.Manager, error) { return nil, errors.New("no bus") }}

	pl, err := Render(o)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"/etc/containerd/certs.d/old.example/hosts.toml"}; !slices.Equal(pl.Remove, want) {
		t.Fatalf("remove %q, want %q", pl.Remove, want)
	}

	p := NewPhase(o)
	changes, err := p.Check(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, c := range changes {
		if c.Kind == "file" {
			got = append(got, c.String())
		}
	}
	for _, want := range []string{
		"update file /etc/containerd/certs.d/registry.k8s.io/hosts.toml",
		"delete file /etc/containerd/certs.d/old.example/hosts.toml (no longer configured)",
	} {
		if !slices.Contains(got, want) {
			t.Errorf("plan lacks %q: %q", want, got)
		}
	}
	// Act removes before it needs systemd, which this test does not have.
	if err := p.Act(context.Background()); err == nil || !strings.Contains(err.Error(), "no bus") {
		t.Fatalf("Act: %v, want the missing bus", err)
	}
	if exists(root, "/etc/containerd/certs.d/old.example") {
		t.Error("the managed hosts file of a registry no longer configured (and its directory) is still there")
	}
	if !exists(root, "/etc/containerd/certs.d/theirs.example/hosts.toml") {
		t.Error("a hosts file without our header was removed")
	}
}

func TestCNIModeLeavesTheCNIConfigurationToOthers(t *testing.T) {
	root := fsutil.Root(t.TempDir())
	writeFile(t, root, CNITemplatePath, string(kubenetTemplate()))
	pl, err := Render(Options{Root: root, Networking: config.NetworkCNI})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := fileByPath(pl, CNITemplatePath); ok {
		t.Error("cni mode writes the kubenet template")
	}
	if cfg, _ := fileByPath(pl, ContainerdConfigPath); strings.Contains(string(cfg.Content), "conf_template") {
		t.Errorf("cni mode sets conf_template:\n%s", cfg.Content)
	}
	if !slices.Equal(pl.Remove, []string{CNITemplatePath}) {
		t.Errorf("remove %q, want the template we wrote in kubenet mode", pl.Remove)
	}

	writeFile(t, root, CNITemplatePath, "{}\n") // someone else's
	if pl, err = Render(Options{Root: root, Networking: config.NetworkCNI}); err != nil || len(pl.Remove) != 0 {
		t.Errorf("remove %q (%v): a template without our header must stay", pl.Remove, err)
	}
}

func TestDockerNetworkPluginFollowsTheMode(t *testing.T) {
	for mode, want := range map[config.NetworkMode]string{
		config.NetworkKubenet: "--network-plugin=kubenet --cni-bin-dir=/opt/cni/bin",
		config.NetworkCNI:     "--network-plugin=cni --cni-bin-dir=/opt/cni/bin --cni-conf-dir=/etc/cni/net.d",
	} {
		root := fsutil.Root(t.TempDir())
		installBins(t, root, "cri-dockerd")
		pl, err := Render(Options{Root: root, Runtime: config.RuntimeDocker, Networking: mode})
		if err != nil {
			t.Fatal(err)
		}
		f, _ := fileByPath(pl, systemd.UnitDir+"/cri-docker.service")
		if !strings.Contains(string(f.Content), want+"\n") {
			t.Errorf("%s: cri-docker.service lacks %q:\n%s", mode, want, f.Content)
		}
	}
}

// templateData is what containerd's CRI plugin gives the template
// (cniConfigTemplate in its update_runtime_config.go).
type templateData struct {
	PodCIDR       string
	PodCIDRRanges []string
	Routes        []string
}

// renderKubenet renders the kubenet template as containerd's CRI plugin does:
// template.ParseFiles on the file, executed with data.
func renderKubenet(t *testing.T, data templateData) []byte {
	t.Helper()
	path := filepath.Join(t.TempDir(), "cni-kubenet.conflist.tmpl")
	if err := os.WriteFile(path, kubenetTemplate(), 0o644); err != nil {
		t.Fatal(err)
	}
	tmpl, err := template.ParseFiles(path)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := tmpl.Execute(&out, data); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

// conflist is the part of a CNI network configuration list we rely on.
type conflist struct {
	CNIVersion string `json:"cniVersion"`
	Name       string `json:"name"`
	Plugins    []struct {
		Type         string          `json:"type"`
		Bridge       string          `json:"bridge"`
		IsGateway    bool            `json:"isGateway"`
		IPMasq       bool            `json:"ipMasq"`
		HairpinMode  bool            `json:"hairpinMode"`
		Capabilities map[string]bool `json:"capabilities"`
		IPAM         *struct {
			Type   string `json:"type"`
			Ranges [][]struct {
				Subnet string `json:"subnet"`
			} `json:"ranges"`
			Routes []struct {
				Dst string `json:"dst"`
			} `json:"routes"`
		} `json:"ipam"`
	} `json:"plugins"`
}

// parseConflist decodes strictly: a CNI loader reads JSON, and a field we
// misspelled would be ignored by it.
func parseConflist(t *testing.T, b []byte) conflist {
	t.Helper()
	var generic map[string]any
	if err := json.Unmarshal(b, &generic); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, b)
	}
	var c conflist
	if err := json.Unmarshal(b, &c); err != nil {
		t.Fatalf("not a conflist: %v\n%s", err, b)
	}
	return c
}

func TestKubenetTemplateRendersAsContainerdDoes(t *testing.T) {
	tests := []struct {
		name       string
		data       templateData
		wantRanges []string
		wantRoutes []string
	}{
		{"one IPv4 range", templateData{PodCIDR: "100.96.3.0/24", PodCIDRRanges: []string{"100.96.3.0/24"}, Routes: []string{"0.0.0.0/0"}},
			[]string{"100.96.3.0/24"}, []string{"0.0.0.0/0"}},
		{"dual stack", templateData{PodCIDR: "100.96.3.0/24", PodCIDRRanges: []string{"100.96.3.0/24", "fd00:100:96:3::/64"}, Routes: []string{"0.0.0.0/0", "::/0"}},
			[]string{"100.96.3.0/24", "fd00:100:96:3::/64"}, []string{"0.0.0.0/0", "::/0"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out := renderKubenet(t, tt.data)
			if strings.Contains(string(out), "Managed by") || !strings.HasPrefix(string(out), "{") {
				t.Errorf("the header comment must vanish when rendered:\n%s", out)
			}
			checkKubenetConflist(t, out, tt.wantRanges, tt.wantRoutes)
		})
	}
	golden(t, "cni-kubenet.conflist.tmpl", kubenetTemplate())
}

func checkKubenetConflist(t *testing.T, b []byte, wantRanges, wantRoutes []string) {
	t.Helper()
	c := parseConflist(t, b)
	if c.CNIVersion != "0.4.0" || c.Name != "kubenet" || len(c.Plugins) != 2 {
		t.Fatalf("conflist %+v", c)
	}
	br, pm := c.Plugins[0], c.Plugins[1]
	if br.Type != "bridge" || br.Bridge != "cbr0" || !br.IsGateway || !br.IPMasq || !br.HairpinMode || br.IPAM == nil || br.IPAM.Type != "host-local" {
		t.Errorf("bridge plugin %+v", br)
	}
	if br.IPAM != nil {
		var ranges, routes []string
		for _, set := range br.IPAM.Ranges {
			for _, r := range set {
				ranges = append(ranges, r.Subnet)
			}
		}
		for _, r := range br.IPAM.Routes {
			routes = append(routes, r.Dst)
		}
		if !slices.Equal(ranges, wantRanges) || !slices.Equal(routes, wantRoutes) {
			t.Errorf("ipam ranges %q routes %q, want %q %q", ranges, routes, wantRanges, wantRoutes)
		}
	}
	if pm.Type != "portmap" || !pm.Capabilities["portMappings"] {
		t.Errorf("portmap plugin %+v", pm)
	}
}

// The real containerd, given the rendered config.toml and template, writes the
// node's CNI configuration when told the pod CIDR the way kubelet tells it.
func TestContainerdRendersTheKubenetTemplate(t *testing.T) {
	d := containerdtest.Paths(t)
	root := fsutil.Root(t.TempDir())
	pl, err := Render(Options{Root: root})
	if err != nil {
		t.Fatal(err)
	}
	cfg, _ := fileByPath(pl, ContainerdConfigPath)
	tmpl, _ := fileByPath(pl, CNITemplatePath)
	tmplPath := filepath.Join(d.Dir, "cni-kubenet.conflist.tmpl")
	if err := os.WriteFile(tmplPath, tmpl.Content, 0o644); err != nil {
		t.Fatal(err)
	}
	// The rendered file, its host paths moved into the test's directory.
	conf := strings.NewReplacer(
		`"/var/lib/containerd"`, `"`+d.Root+`"`,
		`"/run/containerd"`, `"`+d.State+`"`,
		`"`+ContainerdSocket+`"`, `"`+d.Address+`"`,
		`"`+CNIBinDir+`"`, `"`+d.CNIBinDir+`"`,
		`"`+CNIConfDir+`"`, `"`+d.CNIConfDir+`"`,
		`"`+CNITemplatePath+`"`, `"`+tmplPath+`"`,
		`"`+RegistryHostsDir+`"`, `"`+filepath.Join(d.Dir, "certs.d")+`"`,
	).Replace(string(cfg.Content))
	for _, host := range []string{"/var/lib/containerd", "/run/containerd", "/etc/"} {
		if strings.Contains(conf, `"`+host) {
			t.Fatalf("config still points at the host's %s:\n%s", host, conf)
		}
	}
	d.Start(t, conf)

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := d.UpdatePodCIDR(ctx, "100.96.7.0/24"); err != nil {
		t.Fatalf("UpdateRuntimeConfig: %v", err)
	}
	out := filepath.Join(d.CNIConfDir, "10-containerd-net.conflist")
	b, err := os.ReadFile(out) // containerd writes it before it answers
	if err != nil {
		t.Fatalf("containerd wrote no CNI configuration: %v\n%s", err, d.Log())
	}
	checkKubenetConflist(t, b, []string{"100.96.7.0/24"}, []string{"0.0.0.0/0"})
}

// The real containerd pulls through the mirrors of the hosts.toml we write: a
// CRI pull of a registry.k8s.io image first asks the mirror.
func TestContainerdPullsThroughTheMirror(t *testing.T) {
	var mu sync.Mutex
	var asked []string
	mirror := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		asked = append(asked, r.Method+" "+r.URL.Path)
		mu.Unlock()
		http.NotFound(w, r)
	}))
	defer mirror.Close()

	d := containerdtest.Paths(t)
	pl, err := Render(Options{Root: fsutil.Root(t.TempDir()), RegistryMirrors: map[string][]string{"registry.k8s.io": {mirror.URL}}})
	if err != nil {
		t.Fatal(err)
	}
	certs := filepath.Join(d.Dir, "certs.d")
	for _, f := range pl.Files {
		if rel, ok := strings.CutPrefix(f.Path, RegistryHostsDir+"/"); ok {
			writeFile(t, fsutil.Root(certs), "/"+rel, string(f.Content))
		}
	}
	d.Start(t, d.MinimalConfig()+`
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "`+certs+`"
`)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	err = d.PullImage(ctx, "registry.k8s.io/pause:3.10")
	if err == nil {
		t.Fatal("the pull succeeded, yet the mirror has nothing and there is no network")
	}
	mu.Lock()
	defer mu.Unlock()
	if !slices.Contains(asked, "HEAD /v2/pause/manifests/3.10") && !slices.Contains(asked, "GET /v2/pause/manifests/3.10") {
		t.Fatalf("the mirror was not asked for the manifest; it saw %q (pull error: %v)", asked, err)
	}
}
