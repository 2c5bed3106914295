// Package packer_test checks the Packer template: every .pkr.hcl is formatted as
// `packer fmt` writes it and parses, and Debian's packer 1.6 (hack/deps.sh installs
// it) validates the template and renders the bake config into a valid NodeConfig.
package packer_test

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hashicorp/hcl/v2/hclparse"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"github.com/hashicorp/hcl/v2/hclwrite"

	"github.com/nodeagent/nodeagent/config"
	"github.com/nodeagent/nodeagent/internal/packertest"
)

func templates(t *testing.T) []string {
	t.Helper()
	files, err := packertest.Templates(".")
	if err != nil || len(files) < 2 {
		t.Fatalf("templates: %v %v", files, err)
	}
	return files
}

func TestTemplatesAreFormatted(t *testing.T) {
	for _, f := range templates(t) {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if got := hclwrite.Format(b); !bytes.Equal(got, b) {
			t.Errorf("%s is not formatted: run `packer fmt packer/`", f)
		}
	}
}

func TestTemplatesParse(t *testing.T) {
	p := hclparse.NewParser()
	blocks := map[string][]*hclsyntax.Block{}
	for _, f := range templates(t) {
		file, diags := p.ParseHCLFile(f)
		if diags.HasErrors() {
			t.Fatalf("%s: %s", f, diags.Error())
		}
		for _, b := range file.Body.(*hclsyntax.Body).Blocks {
			blocks[b.Type] = append(blocks[b.Type], b)
		}
	}
	// The production parts users need and the tests leave out.
	if len(blocks["packer"]) != 1 || len(blocks["packer"][0].Body.Blocks) != 1 || blocks["packer"][0].Body.Blocks[0].Type != "required_plugins" {
		t.Errorf("want one packer block with required_plugins (in %s)", packertest.PluginsFile)
	}
	var sources []string
	for _, s := range blocks["source"] {
		sources = append(sources, strings.Join(s.Labels, "."))
	}
	if len(sources) != 1 || sources[0] != packertest.ProductionSource+".nodeagent" {
		t.Errorf("sources %v, want the one %s source", sources, packertest.ProductionSource)
	}
	if len(blocks["build"]) != 1 {
		t.Fatalf("want one build block, got %d", len(blocks["build"]))
	}
	var provisioners []string
	for _, b := range blocks["build"][0].Body.Blocks {
		provisioners = append(provisioners, strings.Join(b.Labels, ""))
	}
	if got := strings.Join(provisioners, ","); got != "file,file,shell" {
		t.Errorf("provisioners %s, want the binary and the unit uploaded, then one shell step", got)
	}
}

// packerBin is Debian's packer; the template tests need it (hack/deps.sh installs it).
func packerBin(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("packer")
	if err != nil {
		t.Fatalf("packer is not installed (hack/deps.sh installs Debian's packer): %v", err)
	}
	return p
}

// testTemplate is packer/ as Debian's packer runs it: no plugins file, a null
// source in place of amazon-ebs, the same variables, locals and provisioners.
func testTemplate(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if err := packertest.WithSource(".", dir, []byte(`source "null" "bake" {
  communicator = "ssh"
  ssh_host     = "192.0.2.1"
  ssh_username = "root"
  ssh_password = "never-used"
}
`)); err != nil {
		t.Fatal(err)
	}
	return dir
}

var hashes = map[string]string{
	"kubelet_sha256":     strings.Repeat("a", 64),
	"containerd_sha256":  strings.Repeat("B", 64),
	"cni_plugins_sha256": strings.Repeat("c", 64),
	"runc_sha256":        strings.Repeat("0", 64),
}

func packerCmd(t *testing.T, dir string, vars map[string]string, args ...string) *exec.Cmd {
	if _, ok := vars["nodeagent_binary"]; !ok {
		// The file provisioner's source must exist; any file will do here.
		args = append(args, "-var", "nodeagent_binary="+filepath.Join(dir, "nodeagent.pkr.hcl"))
	}
	for k, v := range vars {
		args = append(args, "-var", k+"="+v)
	}
	cmd := exec.Command(packerBin(t), append(args, ".")...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CHECKPOINT_DISABLE=1", "PACKER_CONFIG_DIR="+t.TempDir())
	return cmd
}

func TestDebianPackerValidatesTheTemplate(t *testing.T) {
	dir := testTemplate(t)
	if out, err := packerCmd(t, dir, hashes, "validate").CombinedOutput(); err != nil {
		t.Fatalf("packer validate: %v\n%s", err, out)
	}

	bad := map[string]string{}
	for k, v := range hashes {
		bad[k] = v
	}
	bad["runc_sha256"] = strings.Repeat("g", 64)
	bad["kubernetes_version"] = "1.34"
	out, err := packerCmd(t, dir, bad, "validate").CombinedOutput()
	if err == nil {
		t.Fatalf("packer validate accepted a non-hex hash and a version without v:\n%s", out)
	}
	for _, want := range []string{"The runc_sha256 must be 64 hex characters.", "The kubernetes_version must look like v1.34.4."} {
		if !bytes.Contains(out, []byte(want)) {
			t.Errorf("packer validate does not say %q:\n%s", want, out)
		}
	}
}

func TestDebianPackerRendersTheBakeConfig(t *testing.T) {
	dir := testTemplate(t)
	vars := map[string]string{"kubelet_url": "s3://assets/kubelet", "role": "ControlPlane",
		"image_archives": `[{name = "registry.k8s.io/etcd:3.5.35-0", url = "s3://assets/etcd.tar", sha256 = "` + strings.Repeat("D", 64) + `"},
 {name = "registry.k8s.io/pause:3.10", url = "https://mirror.example/pause.tar", sha256 = "` + strings.Repeat("e", 64) + `"}]`}
	for k, v := range hashes {
		vars[k] = v
	}
	cmd := packerCmd(t, dir, vars, "console")
	cmd.Stdin = strings.NewReader("local.bake_yaml\n")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("packer console: %v\n%s", err, out)
	}
	cfg, err := config.Parse(out)
	if err != nil {
		t.Fatalf("rendered bake config: %v\n%s", err, out)
	}
	if cfg.Spec.Role != "ControlPlane" || cfg.Spec.KubernetesVersion != "v1.34.4" {
		t.Errorf("role %q, version %q", cfg.Spec.Role, cfg.Spec.KubernetesVersion)
	}
	want := map[string]string{
		"kubelet":     "s3://assets/kubelet " + strings.Repeat("a", 64),
		"containerd":  "https://github.com/containerd/containerd/releases/download/v2.1.4/containerd-2.1.4-linux-amd64.tar.gz " + strings.Repeat("b", 64),
		"cni-plugins": "https://github.com/containernetworking/plugins/releases/download/v1.8.0/cni-plugins-linux-amd64-v1.8.0.tgz " + strings.Repeat("c", 64),
		"runc":        "https://github.com/opencontainers/runc/releases/download/v1.3.3/runc.amd64 " + strings.Repeat("0", 64),
	}
	if len(cfg.Spec.Assets) != len(want) {
		t.Fatalf("assets %+v, want %d", cfg.Spec.Assets, len(want))
	}
	for _, a := range cfg.Spec.Assets {
		if got := strings.Join(a.URLs, ",") + " " + a.SHA256; got != want[a.Name] {
			t.Errorf("asset %s: %s, want %s", a.Name, got, want[a.Name])
		}
	}
	// The image_archives variable: the control-plane images a control plane from
	// the image imports without a registry.
	wantImages := []config.ImageArchive{
		{Name: "registry.k8s.io/etcd:3.5.35-0", URLs: []string{"s3://assets/etcd.tar"}, SHA256: strings.Repeat("d", 64)},
		{Name: "registry.k8s.io/pause:3.10", URLs: []string{"https://mirror.example/pause.tar"}, SHA256: strings.Repeat("e", 64)},
	}
	if got := cfg.Spec.Images.Archives; len(got) != len(wantImages) {
		t.Errorf("image archives %+v, want %+v", got, wantImages)
	} else {
		for i, w := range wantImages {
			if g := got[i]; g.Name != w.Name || strings.Join(g.URLs, ",") != strings.Join(w.URLs, ",") || g.SHA256 != w.SHA256 {
				t.Errorf("image archive %d: %+v, want %+v", i, g, w)
			}
		}
	}
	// None by default.
	delete(vars, "image_archives")
	cmd = packerCmd(t, dir, vars, "console")
	cmd.Stdin = strings.NewReader("local.bake_yaml\n")
	if out, err = cmd.CombinedOutput(); err != nil {
		t.Fatalf("packer console: %v\n%s", err, out)
	}
	if cfg, err = config.Parse(out); err != nil || len(cfg.Spec.Images.Archives) != 0 {
		t.Errorf("bake config without image_archives: %v, archives %+v\n%s", err, cfg, out)
	}
	if _, err := os.Stat(filepath.Join(dir, packertest.PluginsFile)); !os.IsNotExist(err) {
		t.Errorf("the test template must leave %s out (%v)", packertest.PluginsFile, err)
	}
}
