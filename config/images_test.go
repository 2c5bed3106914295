package config

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

func TestPauseImageFollowsTheRegistry(t *testing.T) {
	tests := []struct {
		name, images, want string
	}{
		{"default registry", "", "registry.k8s.io/pause:3.10"},
		{"configured registry", "  images: {registry: mirror.example:5000/k8s}\n", "mirror.example:5000/k8s/pause:3.10"},
		{"trailing slash dropped", "  images: {registry: mirror.example/}\n", "mirror.example/pause:3.10"},
		{"pauseImage wins", "  images: {registry: mirror.example, pauseImage: other.example/pause:3.9}\n", "other.example/pause:3.9"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := Parse([]byte(minimal("Node") + tt.images))
			if err != nil {
				t.Fatal(err)
			}
			if got := cfg.Spec.Images.PauseImage; got != tt.want {
				t.Errorf("pause image %q, want %q", got, tt.want)
			}
		})
	}
}

func TestImagesAndMirrorsAreDecoded(t *testing.T) {
	sum := strings.Repeat("AB", 32)
	cfg, err := Parse([]byte(minimal("ControlPlane") + `  images:
    archives:
    - name: registry.k8s.io/kube-apiserver:v1.34.4
      urls: [s3://bucket/images/kube-apiserver.tar, https://mirror.example/kube-apiserver.tar]
      sha256: ` + sum + `
  containerd:
    registryMirrors:
      registry.k8s.io: [https://mirror.example, "http://10.0.0.5:5000/v2/k8s"]
      docker.io: [https://dockerhub-cache.example]
  networking: {mode: cni}
`))
	if err != nil {
		t.Fatal(err)
	}
	s := cfg.Spec
	wantArchives := []ImageArchive{{
		Name:   "registry.k8s.io/kube-apiserver:v1.34.4",
		URLs:   []string{"s3://bucket/images/kube-apiserver.tar", "https://mirror.example/kube-apiserver.tar"},
		SHA256: strings.ToLower(sum),
	}}
	if !reflect.DeepEqual(s.Images.Archives, wantArchives) {
		t.Errorf("archives %+v, want %+v (sha256 lower-cased)", s.Images.Archives, wantArchives)
	}
	wantMirrors := map[string][]string{
		"registry.k8s.io": {"https://mirror.example", "http://10.0.0.5:5000/v2/k8s"},
		"docker.io":       {"https://dockerhub-cache.example"},
	}
	if !reflect.DeepEqual(s.Containerd.RegistryMirrors, wantMirrors) {
		t.Errorf("mirrors %v, want %v", s.Containerd.RegistryMirrors, wantMirrors)
	}
	if s.Networking.Mode != NetworkCNI {
		t.Errorf("networking mode %q, want cni", s.Networking.Mode)
	}
}

func TestNetworkModeDefaultsToKubenet(t *testing.T) {
	cfg, err := Parse([]byte(minimal("Node")))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Spec.Networking.Mode != NetworkKubenet {
		t.Errorf("mode %q, want kubenet", cfg.Spec.Networking.Mode)
	}
}

func TestIsImageReference(t *testing.T) {
	for ref, want := range map[string]bool{
		"registry.k8s.io/kube-apiserver:v1.34.4":     true,
		"mirror.example:5000/k8s/etcd:3.5.16-0":      true,
		"busybox:1.36":                               true,
		"docker.io/library/busybox:latest":           true,
		"localhost:5000/a_b/c__d/e-f:t":              true,
		"registry.k8s.io/kube-apiserver":             false, // no tag: an archive is found by its tag
		"registry.k8s.io/pause@sha256:" + hex64('a'): false,
		"Registry.k8s.io/Kube-apiserver:v1":          false, // repository names are lower case
		"registry.k8s.io/kube-apiserver:":            false,
		"registry.k8s.io//kube-apiserver:v1":         false,
		":v1":                                        false,
		"":                                           false,
		"a:" + strings.Repeat("t", 129):              false,
	} {
		if got := IsImageReference(ref); got != want {
			t.Errorf("IsImageReference(%q) = %v, want %v", ref, got, want)
		}
	}
}

func hex64(c byte) string { return strings.Repeat(string(c), 64) }

// TestImagesRejects lists bad image, mirror and networking settings and the field
// paths their errors must name.
func TestImagesRejects(t *testing.T) {
	good := hex64('a')
	tests := []struct {
		name      string
		doc       string
		wantPaths []string
	}{
		{"archive without a tag", "  images: {archives: [{name: registry.k8s.io/kube-apiserver, urls: [https://x/a.tar], sha256: " + good + "}]}\n",
			[]string{"spec.images.archives[0].name"}},
		{"archive with every field wrong", "  images: {archives: [{name: '', urls: [], sha256: abc}]}\n",
			[]string{"spec.images.archives[0].name", "spec.images.archives[0].urls", "spec.images.archives[0].sha256"}},
		{"archive URL scheme", "  images: {archives: [{name: a/b:1, urls: [ftp://x/a.tar], sha256: " + good + "}]}\n",
			[]string{"spec.images.archives[0].urls[0]"}},
		{"archive listed twice", "  images: {archives: [{name: a/b:1, urls: [https://x/1], sha256: " + good + "}, {name: a/b:1, urls: [https://x/2], sha256: " + good + "}]}\n",
			[]string{"spec.images.archives[1].name"}},
		{"unknown archive field", "  images: {archives: [{name: a/b:1, urls: [https://x/1], sha256: " + good + ", path: /tmp/x}]}\n",
			[]string{"spec.images.archives[0].path"}},
		{"bad registry", "  images: {registry: 'https://registry.k8s.io'}\n",
			[]string{"spec.images.registry"}},
		{"bad pause image", "  images: {pauseImage: pause}\n",
			[]string{"spec.images.pauseImage"}},
		{"mirror key is a URL", "  containerd: {registryMirrors: {'https://registry.k8s.io': [https://m.example]}}\n",
			[]string{"spec.containerd.registryMirrors[https://registry.k8s.io]"}},
		{"mirror list empty", "  containerd: {registryMirrors: {registry.k8s.io: []}}\n",
			[]string{"spec.containerd.registryMirrors[registry.k8s.io]"}},
		{"mirror URLs", "  containerd: {registryMirrors: {registry.k8s.io: [m.example, 'https://u:p@m.example', s3://b/k]}}\n",
			[]string{"spec.containerd.registryMirrors[registry.k8s.io][0]", "spec.containerd.registryMirrors[registry.k8s.io][1]", "spec.containerd.registryMirrors[registry.k8s.io][2]"}},
		{"mirrors with docker", "  containerRuntime: docker\n  containerd: {registryMirrors: {registry.k8s.io: [https://m.example]}}\n",
			[]string{"spec.containerd.registryMirrors"}},
		{"unknown containerd field", "  containerd: {mirrors: {}}\n",
			[]string{"spec.containerd.mirrors"}},
		{"network mode", "  networking: {mode: calico}\n",
			[]string{"spec.networking.mode"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := Parse([]byte(minimal("Node") + tt.doc))
			if err == nil {
				t.Fatalf("Parse accepted it: %+v", cfg.Spec)
			}
			var verr ValidationError
			if !errors.As(err, &verr) {
				t.Fatalf("error is %T (%v), want ValidationError", err, err)
			}
			var got []string
			for _, fe := range verr {
				got = append(got, fe.Path)
			}
			if !reflect.DeepEqual(got, tt.wantPaths) {
				t.Errorf("problems at %q, want %q: %v", got, tt.wantPaths, err)
			}
		})
	}
}
