// Package addons makes a cluster usable, not just up: the bootstrap add-ons the
// masters apply through the API server (CoreDNS at the cluster DNS IP, the RBAC
// the node components need, the default storage class), embedded in the release
// with a version each, plus the users' own add-ons from the state store.
//
// An add-on is a set of objects with a version and a hash of what is applied.
// The applier (Applier) applies them with server-side apply under one field
// manager and records version and hash per add-on in a ConfigMap, as kops'
// channels do, so that only what changed is applied again and fields it does not
// set are never touched.
package addons

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/validation"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"

	"github.com/nodeagent/nodeagent/internal/lazyre"
)

//go:embed builtin/*.yaml
var builtinFS embed.FS

// CoreDNSTag is the CoreDNS image tag the built-in add-on runs.
const CoreDNSTag = "v1.15.0"

// builtins are the add-ons of this release, in the order they are applied. A
// version changes whenever the add-on's manifest does, so that a cluster's
// record says which release's add-on it runs.
var builtins = []struct{ name, version, file string }{
	{"rbac", "1.1.0", "builtin/rbac.yaml"},
	{"coredns", CoreDNSTag + "-nodeagent.1", "builtin/coredns.yaml"},
	{"storage-class", "1.0.0", "builtin/storage-class.yaml"},
}

// BuiltinNames lists the built-in add-ons, for spec.addons.disable.
func BuiltinNames() []string {
	var out []string
	for _, b := range builtins {
		out = append(out, b.name)
	}
	return out
}

// Vars are the cluster values the built-in manifests take. ClusterDNS must be
// the very value kubelets get as clusterDNS.
type Vars struct {
	ClusterDNS    string // the CoreDNS Service's IP
	ClusterDomain string // cluster.local
	Registry      string // prefix of the CoreDNS image (spec.images.registry)
}

func (v Vars) values() (map[string]string, error) {
	m := map[string]string{
		"CLUSTER_DNS":    v.ClusterDNS,
		"CLUSTER_DOMAIN": v.ClusterDomain,
		"REGISTRY":       strings.TrimSuffix(v.Registry, "/"),
		"COREDNS_TAG":    CoreDNSTag,
	}
	var missing []string
	for k, val := range m {
		if val == "" {
			missing = append(missing, k)
		}
	}
	if len(missing) > 0 {
		sort.Strings(missing)
		return nil, fmt.Errorf("add-on variables not set: %s", strings.Join(missing, ", "))
	}
	return m, nil
}

// Addon is one versioned set of objects.
type Addon struct {
	Name    string
	Version string
	// Source says where it comes from: "builtin" or the state store object.
	Source string
	// Hash is the SHA-256 of the rendered manifest: what the record compares.
	Hash    string
	Objects []*unstructured.Unstructured
}

var varRef = lazyre.New(`\$\{([A-Z_]+)\}`)

// Builtin renders the built-in add-ons with the cluster's values, leaving out
// the disabled ones. Disabling an add-on that does not exist is an error.
func Builtin(v Vars, disable []string) ([]Addon, error) {
	known := BuiltinNames()
	for _, d := range disable {
		if !slices.Contains(known, d) {
			return nil, fmt.Errorf("spec.addons.disable: no built-in add-on %q (built-in: %s)", d, strings.Join(known, ", "))
		}
	}
	vals, err := v.values()
	if err != nil {
		return nil, err
	}
	var out []Addon
	for _, b := range builtins {
		if slices.Contains(disable, b.name) {
			continue
		}
		raw, err := builtinFS.ReadFile(b.file)
		if err != nil {
			return nil, fmt.Errorf("add-on %s: %w", b.name, err)
		}
		var unknown []string
		rendered := varRef().ReplaceAllStringFunc(string(raw), func(ref string) string {
			name := varRef().FindStringSubmatch(ref)[1]
			val, ok := vals[name]
			if !ok {
				unknown = append(unknown, name)
			}
			return val
		})
		if len(unknown) > 0 {
			return nil, fmt.Errorf("add-on %s: unknown variables %v", b.name, unknown)
		}
		a, err := Parse(b.name, b.version, "builtin", []byte(rendered))
		if err != nil {
			return nil, err
		}
		out = append(out, a)
	}
	return out, nil
}

// Parse reads an add-on from a multi-document YAML (or JSON) manifest. Every
// document must be a whole object (apiVersion, kind, metadata.name); empty
// documents are skipped. An empty version becomes the hash's first 12 hex digits.
func Parse(name, version, source string, manifest []byte) (Addon, error) {
	if errs := validation.IsDNS1123Label(name); len(errs) > 0 {
		return Addon{}, fmt.Errorf("add-on name %q: %s", name, strings.Join(errs, "; "))
	}
	sum := sha256.Sum256(manifest)
	a := Addon{Name: name, Version: version, Source: source, Hash: hex.EncodeToString(sum[:])}
	if a.Version == "" {
		a.Version = a.Hash[:12]
	}
	dec := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(manifest)))
	for i := 1; ; i++ {
		doc, err := dec.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return Addon{}, fmt.Errorf("add-on %s (%s): document %d: %w", name, source, i, err)
		}
		j, err := yaml.YAMLToJSON(doc)
		if err != nil {
			return Addon{}, fmt.Errorf("add-on %s (%s): document %d: %w", name, source, i, err)
		}
		if t := bytes.TrimSpace(j); len(t) == 0 || string(t) == "null" {
			continue
		}
		u := &unstructured.Unstructured{}
		if err := u.UnmarshalJSON(j); err != nil {
			return Addon{}, fmt.Errorf("add-on %s (%s): document %d: %w", name, source, i, err)
		}
		if u.GetAPIVersion() == "" || u.GetKind() == "" || u.GetName() == "" {
			return Addon{}, fmt.Errorf("add-on %s (%s): document %d: apiVersion, kind and metadata.name are required", name, source, i)
		}
		if strings.HasSuffix(u.GetKind(), "List") {
			return Addon{}, fmt.Errorf("add-on %s (%s): document %d: lists are not applied; write one object per document", name, source, i)
		}
		a.Objects = append(a.Objects, u)
	}
	if len(a.Objects) == 0 {
		return Addon{}, fmt.Errorf("add-on %s (%s): no objects", name, source)
	}
	sortForApply(a.Objects)
	return a, nil
}

// kindOrder puts what other objects need first: namespaces and definitions,
// then identities and permissions, then configuration, then workloads.
var kindOrder = map[string]int{
	"Namespace": 0, "CustomResourceDefinition": 1, "PriorityClass": 2, "StorageClass": 3,
	"ServiceAccount": 4, "ClusterRole": 5, "ClusterRoleBinding": 6, "Role": 7, "RoleBinding": 8,
	"ConfigMap": 9, "Secret": 10, "Service": 11,
}

func sortForApply(objs []*unstructured.Unstructured) {
	rank := func(u *unstructured.Unstructured) int {
		if r, ok := kindOrder[u.GetKind()]; ok {
			return r
		}
		return len(kindOrder)
	}
	sort.SliceStable(objs, func(i, j int) bool { return rank(objs[i]) < rank(objs[j]) })
}
