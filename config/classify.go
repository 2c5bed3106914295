package config

import (
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"
)

// ChangeClass says how a node takes a config change.
type ChangeClass string

const (
	// InPlace: the agent applies it on the running node (files rewritten, the
	// units that read them restarted, one at a time).
	InPlace ChangeClass = "in-place"
	// NeedsReplacement: the node cannot become what the new config says; a new
	// instance must be launched with it (a rolling update replaces this one).
	NeedsReplacement ChangeClass = "needs-replacement"
)

// FieldChange is one field whose value differs between two configs.
type FieldChange struct {
	Path  string      `json:"path"`
	Old   string      `json:"old,omitempty"`
	New   string      `json:"new,omitempty"`
	Class ChangeClass `json:"class"`
	// Reason says why a change needs a new instance.
	Reason string `json:"reason,omitempty"`
}

func (c FieldChange) String() string {
	s := fmt.Sprintf("%s: %s → %s (%s)", c.Path, orNone(c.Old), orNone(c.New), c.Class)
	if c.Reason != "" {
		s += ": " + c.Reason
	}
	return s
}

func orNone(s string) string {
	if s == "" {
		return "(unset)"
	}
	return s
}

// replacementRules are the fields a running node cannot change: what it is
// (role, cluster), the etcd members it holds on its volumes, and the container
// runtime its pods and images live in. The first matching prefix decides.
var replacementRules = []struct{ prefix, reason string }{
	{"spec.role", "a node's role decides its volumes, certificates and static pods: launch a new instance"},
	{"spec.cluster.name", "a node belongs to one cluster for its life (tags, certificates, gossip ring)"},
	{"spec.etcd.clusters", "the etcd cluster layout is held by the members' volumes and peers; change it by replacing the masters"},
	{"spec.containerRuntime", "switching the container runtime loses every image and container; launch a new instance"},
}

// secretPaths hold secrets: a change is reported, its values never.
var secretPaths = []string{"spec.kubelet.bootstrapToken"}

// Classify lists every field that differs between the config a node runs
// (applied) and a new one, each classified: applied in place, or needing a new
// instance. Nil applied (a node never booted) means no changes.
func Classify(applied, next *NodeConfig) []FieldChange {
	if applied == nil || next == nil {
		return nil
	}
	a, b := flatten(applied), flatten(next)
	keys := map[string]bool{}
	for k := range a {
		keys[k] = true
	}
	for k := range b {
		keys[k] = true
	}
	var out []FieldChange
	for _, k := range slices.Sorted(maps.Keys(keys)) {
		if a[k] == b[k] {
			continue
		}
		c := FieldChange{Path: k, Old: a[k], New: b[k], Class: InPlace}
		for _, r := range replacementRules {
			if k == r.prefix || strings.HasPrefix(k, r.prefix+".") || strings.HasPrefix(k, r.prefix+"[") {
				c.Class, c.Reason = NeedsReplacement, r.reason
				break
			}
		}
		for _, s := range secretPaths {
			if k == s {
				c.Old, c.New = redact(c.Old), redact(c.New)
			}
		}
		out = append(out, c)
	}
	return out
}

// Replacements are the changes among cs that need a new instance.
func Replacements(cs []FieldChange) []FieldChange {
	var out []FieldChange
	for _, c := range cs {
		if c.Class == NeedsReplacement {
			out = append(out, c)
		}
	}
	return out
}

func redact(s string) string {
	if s == "" {
		return ""
	}
	return "(redacted)"
}

// flatten maps each leaf of a config to its value: spec.host.sysctls[net.ipv4.ip_forward]
// → "1". Lists are leaves (their JSON), so a reordered list is one change.
func flatten(c *NodeConfig) map[string]string {
	out := map[string]string{}
	b, err := json.Marshal(c)
	if err != nil {
		return out
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		return out
	}
	flattenInto(out, "", m, false)
	return out
}

func flattenInto(out map[string]string, path string, v any, inMap bool) {
	switch x := v.(type) {
	case map[string]any:
		// Maps of user keys (sysctls, labels, kubelet config) are indexed as
		// validation names them: spec.host.sysctls[key].
		userMap := strings.HasSuffix(path, ".sysctls") || strings.HasSuffix(path, ".nodeLabels") ||
			strings.HasSuffix(path, ".registryMirrors") || inMap
		for k, e := range x {
			p := joinPath(path, k)
			if userMap {
				p = path + "[" + k + "]"
			}
			flattenInto(out, p, e, strings.HasSuffix(p, "kubelet.config"))
		}
	case nil:
	default:
		b, _ := json.Marshal(x)
		s := string(b)
		if str, ok := x.(string); ok {
			s = str
		}
		out[path] = s
	}
}
