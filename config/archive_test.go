package config

import (
	"errors"
	"os"
	"regexp"
	"strings"
	"testing"
)

var sum64 = strings.Repeat("a", 64)

// An archive asset is the tarball upstream publishes: its members say where each
// file goes; the asset itself has no path and gets none by default.
func TestArchiveAssetParses(t *testing.T) {
	doc := minimal("Node") + `  assets:
  - name: containerd
    urls: [https://github.com/containerd/containerd/releases/download/v2.1.4/containerd-2.1.4-linux-amd64.tar.gz]
    sha256: ` + sum64 + `
    archive:
      members:
      - {name: bin/containerd, path: /usr/local/bin/containerd}
      - {name: bin/ctr, path: /usr/local/bin/, mode: "0750"}
  - name: cni-plugins
    urls: [https://github.com/containernetworking/plugins/releases/download/v1.8.0/cni-plugins-linux-amd64-v1.8.0.tgz]
    sha256: ` + sum64 + `
    archive: {format: tgz, members: [{name: "*", exclude: [LICENSE, README.md], path: /opt/cni/bin/}]}
`
	cfg, err := Parse([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	a := cfg.Spec.Assets[0]
	if a.Path != "" || len(a.Archive.Members) != 2 {
		t.Errorf("archive asset after defaults: %+v", a)
	}
	m := a.Archive.Members[1]
	if mode, _ := m.FileMode(); mode != 0o750 || m.Dest("bin/ctr") != "/usr/local/bin/ctr" {
		t.Errorf("member %+v: mode %v dest %s", m, mode, m.Dest("bin/ctr"))
	}
	cni := cfg.Spec.Assets[1].Archive.Members[0]
	for name, want := range map[string]bool{"bridge": true, "host-local": true, "LICENSE": false, "README.md": false, "sub/bridge": false} {
		if got := cni.Selects(name); got != want {
			t.Errorf("%q selects %q = %v, want %v", cni.Name, name, got, want)
		}
	}
}

func TestArchiveAssetRejects(t *testing.T) {
	asset := func(archive string) string {
		return minimal("Node") + "  assets:\n  - {name: c, urls: [https://x/c.tgz], sha256: " + sum64 + ", " + archive + "}\n"
	}
	for _, tt := range []struct{ name, doc, path string }{
		{"no members", asset("archive: {members: []}"), "spec.assets[0].archive.members"},
		{"a path beside the archive", asset("path: /usr/bin/c, archive: {members: [{name: c, path: /usr/bin/c}]}"), "spec.assets[0].path"},
		{"unknown format", asset("archive: {format: rar, members: [{name: c, path: /usr/bin/c}]}"), "spec.assets[0].archive.format"},
		{"an absolute member", asset("archive: {members: [{name: /bin/c, path: /usr/bin/c}]}"), "spec.assets[0].archive.members[0].name"},
		{"a ../ member", asset("archive: {members: [{name: ../c, path: /usr/bin/c}]}"), "spec.assets[0].archive.members[0].name"},
		{"a ./ member", asset("archive: {members: [{name: ./c, path: /usr/bin/c}]}"), "spec.assets[0].archive.members[0].name"},
		{"a bad pattern", asset("archive: {members: [{name: \"[\", path: /usr/bin/}]}"), "spec.assets[0].archive.members[0].name"},
		{"a pattern into a file", asset("archive: {members: [{name: \"*\", path: /usr/bin/c}]}"), "spec.assets[0].archive.members[0].path"},
		{"a relative path", asset("archive: {members: [{name: c, path: usr/bin/c}]}"), "spec.assets[0].archive.members[0].path"},
		{"a path with ..", asset("archive: {members: [{name: c, path: /usr/../etc/c}]}"), "spec.assets[0].archive.members[0].path"},
		{"a bad mode", asset("archive: {members: [{name: c, path: /usr/bin/c, mode: \"0999\"}]}"), "spec.assets[0].archive.members[0].mode"},
		{"exclude without a pattern", asset("archive: {members: [{name: c, exclude: [x], path: /usr/bin/c}]}"), "spec.assets[0].archive.members[0].exclude"},
		{"two members to one file", asset("archive: {members: [{name: c, path: /usr/bin/c}, {name: d, path: /usr/bin/c}]}"), "spec.assets[0].archive.members[1].path"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse([]byte(tt.doc))
			var ve ValidationError
			if !errors.As(err, &ve) || !strings.Contains(err.Error(), tt.path) {
				t.Errorf("err = %v, want one naming %s", err, tt.path)
			}
		})
	}
}

// packer/bake.yaml, rendered as the Packer template does with the upstream
// artifacts, is a valid NodeConfig taking containerd's and the CNI plugins'
// tarballs as they are.
func TestPackerBakeTemplate(t *testing.T) {
	tmpl, err := os.ReadFile("../packer/bake.yaml")
	if err != nil {
		t.Fatal(err)
	}
	vars := map[string]string{
		"role": "Node", "kubernetes_version": "v1.34.4",
		"kubelet_url": "https://dl.k8s.io/release/v1.34.4/bin/linux/amd64/kubelet", "kubelet_sha256": sum64,
		"containerd_url": "https://github.com/containerd/containerd/releases/download/v2.1.4/containerd-2.1.4-linux-amd64.tar.gz", "containerd_sha256": sum64,
		"cni_plugins_url": "https://github.com/containernetworking/plugins/releases/download/v1.8.0/cni-plugins-linux-amd64-v1.8.0.tgz", "cni_plugins_sha256": sum64,
		"runc_url": "https://github.com/opencontainers/runc/releases/download/v1.3.3/runc.amd64", "runc_sha256": sum64,
		"image_archives": "[]", // the variable's default: no image baked
	}
	hcl, err := os.ReadFile("../packer/nodeagent.pkr.hcl")
	if err != nil {
		t.Fatal(err)
	}
	// The template replaces each "$${name}" of the bake config with its value.
	provided := map[string]bool{}
	for _, m := range regexp.MustCompile(`"\$\$\{(\w+)\}", `).FindAllSubmatch(hcl, -1) {
		provided[string(m[1])] = true
	}
	if len(provided) == 0 {
		t.Fatal(`nodeagent.pkr.hcl replaces no "$${name}" placeholder of the bake config`)
	}
	doc := regexp.MustCompile(`\$\{(\w+)\}`).ReplaceAllStringFunc(string(tmpl), func(v string) string {
		k := v[2 : len(v)-1]
		if !provided[k] {
			t.Errorf("bake.yaml uses %s, which nodeagent.pkr.hcl does not provide", v)
		}
		if _, ok := vars[k]; !ok {
			t.Errorf("bake.yaml uses %s, which the test does not provide", v)
		}
		return vars[k]
	})
	cfg, err := Parse([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]Asset{}
	for _, a := range cfg.Spec.Assets {
		byName[a.Name] = a
	}
	if a := byName["containerd"]; a.Archive == nil || a.Archive.Members[0].Name != "bin/containerd" {
		t.Errorf("containerd is not taken from its tarball: %+v", a)
	}
	if a := byName["cni-plugins"]; a.Archive == nil || a.Archive.Members[0].Path != "/opt/cni/bin/" {
		t.Errorf("the CNI plugins are not taken from their tarball: %+v", a)
	}
	if a := byName["kubelet"]; a.Archive != nil || a.Path != "/usr/local/bin/kubelet" {
		t.Errorf("kubelet is not a plain binary: %+v", a)
	}
}
