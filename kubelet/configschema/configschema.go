// Package configschema is the JSON shape of kubelet's KubeletConfiguration
// (kubelet.config.k8s.io/v1beta1): which fields exist at each level and what
// kind of value each holds. The shape is generated from k8s.io/kubelet's own
// Go types (FromType, run by `go generate ./kubelet`) and checked against them
// by the kubelet package's tests, so the agent refuses exactly what a strict
// decode into those types refuses without linking them: their packages pull in
// component-base's metrics registry and feature gates, whose package init every
// nodeagent command would pay for.
package configschema

import (
	"encoding/json"
	"fmt"
	"math"
	"reflect"
	"sort"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/api/resource"
)

// Kinds of value.
const (
	KindObject   = "object"   // a struct: Fields, nothing else
	KindMap      = "map"      // string keys, Elem values
	KindArray    = "array"    // Elem items
	KindString   = "string"   //
	KindBool     = "bool"     //
	KindInt      = "int"      // a whole number within Min..Max
	KindFloat    = "float"    //
	KindDuration = "duration" // metav1.Duration: a string time.ParseDuration reads
	KindTime     = "time"     // metav1.Time: an RFC 3339 string
	// KindDurationOrNanos is a duration string or a whole number of nanoseconds
	// (component-base's TimeOrMetaDuration).
	KindDurationOrNanos = "durationOrNanos"
	// KindQuantity is a resource quantity: a string resource.ParseQuantity
	// reads, or a number.
	KindQuantity = "quantity"
	KindAny      = "any" // raw JSON (options handed on as they are)
)

// Node is the shape of one value.
type Node struct {
	Kind   string           `json:"kind"`
	GoType string           `json:"goType,omitempty"` // named in errors, as encoding/json does
	Fields map[string]*Node `json:"fields,omitempty"`
	Elem   *Node            `json:"elem,omitempty"`
	Min    *float64         `json:"min,omitempty"`
	Max    *float64         `json:"max,omitempty"`
}

// Parse reads a generated schema.
func Parse(b []byte) (*Node, error) {
	var n Node
	if err := json.Unmarshal(b, &n); err != nil {
		return nil, fmt.Errorf("kubelet config schema: %w", err)
	}
	return &n, nil
}

// Check returns every place where v (decoded JSON: map[string]any, []any,
// string, float64, bool, nil) does not fit n, sorted, as strict decoding names
// them: unknown field "a.b", or a value that does not fit a field's type. A
// null fits anywhere (decoding leaves the field as it was).
func (n *Node) Check(v any) []string {
	var errs []string
	n.check("", v, &errs)
	sort.Strings(errs)
	return errs
}

func join(path, k string) string {
	if path == "" {
		return k
	}
	return path + "." + k
}

func (n *Node) mismatch(path string, v any, errs *[]string) {
	*errs = append(*errs, fmt.Sprintf("cannot decode %s into field %s of type %s", jsonKind(v), path, n.GoType))
}

func jsonKind(v any) string {
	switch v := v.(type) {
	case map[string]any:
		return "an object"
	case []any:
		return "an array"
	case string:
		return fmt.Sprintf("the string %q", v)
	case float64:
		return "the number " + fmt.Sprint(v)
	case bool:
		return fmt.Sprintf("the boolean %v", v)
	}
	return fmt.Sprintf("%T", v)
}

func (n *Node) check(path string, v any, errs *[]string) {
	if v == nil || n.Kind == KindAny {
		return
	}
	switch n.Kind {
	case KindObject:
		m, ok := v.(map[string]any)
		if !ok {
			n.mismatch(path, v, errs)
			return
		}
		for k, fv := range m {
			f, ok := n.Fields[k]
			if !ok {
				*errs = append(*errs, fmt.Sprintf("unknown field %q", join(path, k)))
				continue
			}
			f.check(join(path, k), fv, errs)
		}
	case KindMap:
		m, ok := v.(map[string]any)
		if !ok {
			n.mismatch(path, v, errs)
			return
		}
		for k, ev := range m {
			n.Elem.check(join(path, k), ev, errs)
		}
	case KindArray:
		a, ok := v.([]any)
		if !ok {
			n.mismatch(path, v, errs)
			return
		}
		for i, ev := range a {
			n.Elem.check(fmt.Sprintf("%s[%d]", path, i), ev, errs)
		}
	case KindString:
		if _, ok := v.(string); !ok {
			n.mismatch(path, v, errs)
		}
	case KindBool:
		if _, ok := v.(bool); !ok {
			n.mismatch(path, v, errs)
		}
	case KindFloat:
		if _, ok := v.(float64); !ok {
			n.mismatch(path, v, errs)
		}
	case KindInt:
		f, ok := v.(float64)
		if !ok || f != math.Trunc(f) || (n.Min != nil && f < *n.Min) || (n.Max != nil && f > *n.Max) {
			n.mismatch(path, v, errs)
		}
	case KindDuration:
		s, ok := v.(string)
		if !ok {
			n.mismatch(path, v, errs)
			return
		}
		if _, err := time.ParseDuration(s); err != nil {
			*errs = append(*errs, fmt.Sprintf("field %s of type %s: %v", path, n.GoType, err))
		}
	case KindDurationOrNanos:
		if f, ok := v.(float64); ok {
			if f != math.Trunc(f) || f < math.MinInt64 || f > math.MaxInt64 {
				n.mismatch(path, v, errs)
			}
			return
		}
		(&Node{Kind: KindDuration, GoType: n.GoType}).check(path, v, errs)
	case KindQuantity:
		switch q := v.(type) {
		case float64:
		case string:
			if _, err := resource.ParseQuantity(q); err != nil {
				*errs = append(*errs, fmt.Sprintf("field %s of type %s: %v", path, n.GoType, err))
			}
		default:
			n.mismatch(path, v, errs)
		}
	case KindTime:
		s, ok := v.(string)
		if !ok {
			n.mismatch(path, v, errs)
			return
		}
		if _, err := time.Parse(time.RFC3339, s); err != nil {
			*errs = append(*errs, fmt.Sprintf("field %s of type %s: %v", path, n.GoType, err))
		}
	default:
		*errs = append(*errs, fmt.Sprintf("field %s: schema kind %q unknown", path, n.Kind))
	}
}

// Custom names the types that decode themselves (their own UnmarshalJSON) by
// the kind of JSON they read: FromType cannot see inside them.
type Custom map[string]string // "pkgpath.Name" → Kind

// FromType derives the shape of t as encoding/json decodes it. A type with its
// own UnmarshalJSON must be named in custom, else it is an error: a new one in
// a newer kubelet must be looked at, not guessed.
func FromType(t reflect.Type, custom Custom) (*Node, error) {
	unmarshaler := reflect.TypeFor[json.Unmarshaler]()
	name := t.PkgPath() + "." + t.Name()
	if k, ok := custom[name]; ok {
		return &Node{Kind: k, GoType: t.String()}, nil
	}
	if t.Kind() == reflect.Pointer {
		return FromType(t.Elem(), custom)
	}
	if t.Implements(unmarshaler) || reflect.PointerTo(t).Implements(unmarshaler) {
		return nil, fmt.Errorf("%s decodes itself (UnmarshalJSON): name its JSON kind in Custom", name)
	}
	n := &Node{GoType: t.String()}
	num := func(lo, hi float64) { n.Kind, n.Min, n.Max = KindInt, &lo, &hi }
	switch t.Kind() {
	case reflect.String:
		n.Kind = KindString
	case reflect.Bool:
		n.Kind = KindBool
	case reflect.Int8:
		num(math.MinInt8, math.MaxInt8)
	case reflect.Int16:
		num(math.MinInt16, math.MaxInt16)
	case reflect.Int32:
		num(math.MinInt32, math.MaxInt32)
	case reflect.Int, reflect.Int64:
		num(math.MinInt64, math.MaxInt64)
	case reflect.Uint8:
		num(0, math.MaxUint8)
	case reflect.Uint16:
		num(0, math.MaxUint16)
	case reflect.Uint32:
		num(0, math.MaxUint32)
	case reflect.Uint, reflect.Uint64:
		num(0, math.MaxUint64)
	case reflect.Float32, reflect.Float64:
		n.Kind = KindFloat
	case reflect.Interface:
		n.Kind = KindAny
	case reflect.Slice, reflect.Array:
		if t.Elem().Kind() == reflect.Uint8 && t.Kind() == reflect.Slice {
			n.Kind = KindString // []byte: base64
			break
		}
		e, err := FromType(t.Elem(), custom)
		if err != nil {
			return nil, err
		}
		n.Kind, n.Elem = KindArray, e
	case reflect.Map:
		if t.Key().Kind() != reflect.String {
			return nil, fmt.Errorf("%s: map key %s is not a string", t, t.Key())
		}
		e, err := FromType(t.Elem(), custom)
		if err != nil {
			return nil, err
		}
		n.Kind, n.Elem = KindMap, e
	case reflect.Struct:
		n.Kind, n.Fields = KindObject, map[string]*Node{}
		if err := addFields(n, t, custom); err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("%s: kind %s has no JSON form", t, t.Kind())
	}
	return n, nil
}

// addFields adds t's JSON fields to n, flattening embedded structs without a
// JSON name as encoding/json does.
func addFields(n *Node, t reflect.Type, custom Custom) error {
	for i := range t.NumField() {
		f := t.Field(i)
		tag, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if tag == "-" || (!f.IsExported() && !f.Anonymous) {
			continue
		}
		ft := f.Type
		if f.Anonymous && tag == "" {
			if ft.Kind() == reflect.Pointer {
				ft = ft.Elem()
			}
			if ft.Kind() == reflect.Struct {
				if err := addFields(n, ft, custom); err != nil {
					return err
				}
				continue
			}
		}
		name := tag
		if name == "" {
			name = f.Name
		}
		fn, err := FromType(ft, custom)
		if err != nil {
			return fmt.Errorf("%s.%s: %w", t, f.Name, err)
		}
		n.Fields[name] = fn
	}
	return nil
}
