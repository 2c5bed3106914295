package configschema

import (
	"reflect"
	"strings"
	"testing"
	"time"
)

type inner struct {
	Enabled *bool `json:"enabled"`
}

type embedded struct {
	Kind string `json:"kind"`
}

type sample struct {
	embedded `json:",inline"`
	Name     string            `json:"name"`
	Port     int32             `json:"port"`
	Ratio    float64           `json:"ratio"`
	Tags     []string          `json:"tags"`
	Gates    map[string]bool   `json:"gates"`
	Nested   inner             `json:"nested"`
	Skipped  string            `json:"-"`
	Wait     customDuration    `json:"wait"`
	Extra    map[string]string `json:"extra,omitempty"`
}

type customDuration struct{ time.Duration }

func (d *customDuration) UnmarshalJSON([]byte) error { return nil }

var custom = Custom{"github.com/nodeagent/nodeagent/kubelet/configschema.customDuration": KindDuration}

func sampleSchema(t *testing.T) *Node {
	t.Helper()
	n, err := FromType(reflect.TypeFor[sample](), custom)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func TestFromTypeFollowsEncodingJSON(t *testing.T) {
	n := sampleSchema(t)
	var names []string
	for k := range n.Fields {
		names = append(names, k)
	}
	for _, want := range []string{"kind", "name", "port", "ratio", "tags", "gates", "nested", "wait", "extra"} {
		if n.Fields[want] == nil {
			t.Errorf("field %q missing from %v", want, names)
		}
	}
	if n.Fields["Skipped"] != nil || n.Fields["-"] != nil || len(n.Fields) != 9 {
		t.Errorf("fields %v", names)
	}
	if n.Fields["nested"].Fields["enabled"].Kind != KindBool || n.Fields["wait"].Kind != KindDuration {
		t.Errorf("pointer or custom field: %+v %+v", n.Fields["nested"].Fields["enabled"], n.Fields["wait"])
	}
}

func TestFromTypeRefusesATypeThatDecodesItselfUnnamed(t *testing.T) {
	_, err := FromType(reflect.TypeFor[sample](), nil)
	if err == nil || !strings.Contains(err.Error(), "customDuration decodes itself") {
		t.Fatalf("got %v", err)
	}
}

func TestCheckNamesEveryMisfit(t *testing.T) {
	n := sampleSchema(t)
	errs := n.Check(map[string]any{
		"name":   "a",
		"port":   70000.0 * 70000.0, // beyond int32
		"ratio":  "high",
		"tags":   []any{"x", 1.0},
		"gates":  map[string]any{"A": "yes"},
		"nested": map[string]any{"enabld": true},
		"wait":   "soon",
		"Name":   "b", // names are case-sensitive
		"extra":  nil, // a null leaves the field as it is
	})
	got := strings.Join(errs, "\n")
	for _, w := range []string{
		`unknown field "Name"`,
		`unknown field "nested.enabld"`,
		`field port of type int32`,
		`field ratio of type float64`,
		`field tags[1] of type string`,
		`field gates.A of type bool`,
		`field wait of type configschema.customDuration`,
	} {
		if !strings.Contains(got, w) {
			t.Errorf("missing %q in:\n%s", w, got)
		}
	}
	if len(errs) != 7 {
		t.Errorf("%d problems, want 7:\n%s", len(errs), got)
	}
	if errs := n.Check(map[string]any{"kind": "K", "port": 8080.0, "wait": "1m", "tags": []any{"a"}}); len(errs) != 0 {
		t.Errorf("a fitting value: %v", errs)
	}
}
