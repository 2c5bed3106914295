package config

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"mime"
	"mime/multipart"
	"net/mail"
	"reflect"
	"slices"
	"strconv"
	"strings"

	"sigs.k8s.io/yaml"
)

// UserDataContentType marks the MIME part of user-data that holds the NodeConfig.
const UserDataContentType = "application/nodeagent.io+yaml"

// Parse decodes, defaults and validates a NodeConfig. Unknown fields and duplicate
// keys are errors. The error lists every problem with its field path.
func Parse(data []byte) (*NodeConfig, error) {
	return Merge(nil, data)
}

// Merge decodes a node's document over a cluster-level one (from the state store):
// fields the node sets win, maps are merged key by key, lists are replaced. Either
// may be nil. The result is defaulted and validated.
func Merge(cluster, node []byte) (*NodeConfig, error) {
	base, err := decodeGeneric(cluster, "cluster config")
	if err != nil {
		return nil, err
	}
	over, err := decodeGeneric(node, "node config")
	if err != nil {
		return nil, err
	}
	merged := mergeMaps(base, over)
	if len(merged) == 0 {
		return nil, errors.New("config is empty: expected a NodeConfig document")
	}
	var errs ValidationError
	unknownFields(merged, reflect.TypeOf(NodeConfig{}), "", &errs)
	// Values of the wrong type (kubernetesVersion: 1.31, a YAML number) are
	// reported and dropped, so that the rest of the document is still decoded
	// and every other problem reported with them.
	typeErrors := len(errs)
	wrongTypes(merged, reflect.TypeOf(NodeConfig{}), "", &errs)
	typed := map[string]bool{}
	for _, e := range errs[typeErrors:] {
		typed[e.Path] = true
	}

	raw, err := json.Marshal(merged)
	if err != nil {
		return nil, fmt.Errorf("re-encode config: %w", err)
	}
	var cfg NodeConfig
	if err := json.Unmarshal(raw, &cfg); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			return nil, ValidationError{{Path: te.Field, Message: fmt.Sprintf("expected %s, got %s", te.Type, te.Value)}}
		}
		return nil, fmt.Errorf("decode NodeConfig: %w", err)
	}
	cfg.SetDefaults()
	if verr := cfg.Validate(); verr != nil {
		for _, e := range verr.(ValidationError) {
			if !typed[e.Path] { // said once, as a type error
				errs = append(errs, e)
			}
		}
	}
	if len(errs) > 0 {
		return nil, errs
	}
	return &cfg, nil
}

func decodeGeneric(data []byte, what string) (map[string]any, error) {
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, nil
	}
	js, err := yaml.YAMLToJSONStrict(data)
	if err != nil {
		return nil, fmt.Errorf("%s is not valid YAML: %w", what, err)
	}
	var m map[string]any
	if err := json.Unmarshal(js, &m); err != nil {
		return nil, fmt.Errorf("%s is not a YAML mapping: %w", what, err)
	}
	return m, nil
}

func mergeMaps(base, over map[string]any) map[string]any {
	if base == nil {
		return over
	}
	out := make(map[string]any, len(base)+len(over))
	for k, v := range base {
		out[k] = v
	}
	for k, v := range over {
		bm, bok := out[k].(map[string]any)
		om, ook := v.(map[string]any)
		if bok && ook {
			out[k] = mergeMaps(bm, om)
			continue
		}
		out[k] = v
	}
	return out
}

// unknownFields walks a decoded document alongside the Go type it decodes into and
// reports each key the type does not have, with its full path.
func unknownFields(v any, t reflect.Type, path string, errs *ValidationError) {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.Struct:
		m, ok := v.(map[string]any)
		if !ok {
			return // a type error; json.Unmarshal reports it
		}
		fields := jsonFields(t)
		for _, k := range slices.Sorted(maps.Keys(m)) {
			p := joinPath(path, k)
			ft, ok := fields[k]
			if !ok {
				*errs = append(*errs, FieldError{Path: p, Message: "unknown field"})
				continue
			}
			unknownFields(m[k], ft, p, errs)
		}
	case reflect.Slice:
		list, ok := v.([]any)
		if !ok {
			return
		}
		for i, item := range list {
			unknownFields(item, t.Elem(), fmt.Sprintf("%s[%d]", path, i), errs)
		}
	}
}

// wrongTypes walks a decoded document alongside the Go type it decodes into,
// reports each value of the wrong kind with its path, and removes it from the
// document (so decoding goes on). A number or boolean where a string belongs
// gets the hint to quote it: YAML reads 1.31 as a number.
func wrongTypes(v any, t reflect.Type, path string, errs *ValidationError) {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.Struct:
		m, ok := v.(map[string]any)
		if !ok {
			return
		}
		fields := jsonFields(t)
		for _, k := range slices.Sorted(maps.Keys(m)) {
			ft, ok := fields[k]
			if !ok {
				continue // unknownFields reports it
			}
			p := joinPath(path, k)
			if msg := kindMismatch(m[k], ft); msg != "" {
				*errs = append(*errs, FieldError{Path: p, Message: msg})
				delete(m, k)
				continue
			}
			wrongTypes(m[k], ft, p, errs)
		}
	case reflect.Slice:
		list, ok := v.([]any)
		if !ok {
			return
		}
		for i := 0; i < len(list); i++ {
			p := fmt.Sprintf("%s[%d]", path, i)
			if msg := kindMismatch(list[i], t.Elem()); msg != "" {
				*errs = append(*errs, FieldError{Path: p, Message: msg})
				list[i] = nil
				continue
			}
			wrongTypes(list[i], t.Elem(), p, errs)
		}
	case reflect.Map:
		m, ok := v.(map[string]any)
		if !ok {
			return
		}
		for _, k := range slices.Sorted(maps.Keys(m)) {
			p := path + "[" + k + "]"
			if msg := kindMismatch(m[k], t.Elem()); msg != "" {
				*errs = append(*errs, FieldError{Path: p, Message: msg})
				delete(m, k)
				continue
			}
			wrongTypes(m[k], t.Elem(), p, errs)
		}
	}
}

// kindMismatch says why a decoded JSON value cannot go into a Go type, or "".
func kindMismatch(v any, t reflect.Type) string {
	if v == nil {
		return ""
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	got := func() string {
		switch x := v.(type) {
		case string:
			return fmt.Sprintf("the string %q", x)
		case float64:
			return "the number " + strconv.FormatFloat(x, 'f', -1, 64)
		case bool:
			return fmt.Sprintf("the boolean %t", x)
		case []any:
			return "a list"
		case map[string]any:
			return "a mapping"
		}
		return fmt.Sprintf("%T", v)
	}
	switch t.Kind() {
	case reflect.Interface:
		return ""
	case reflect.String:
		switch x := v.(type) {
		case string:
			return ""
		case float64:
			return fmt.Sprintf("expected a string, got %s: quote it (\"%v\"); YAML reads an unquoted %v as a number, not text", got(), x, x)
		case bool:
			return fmt.Sprintf("expected a string, got %s: quote it (\"%v\"); YAML reads an unquoted %v as a boolean, not text", got(), x, x)
		}
		return "expected a string, got " + got()
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		if f, ok := v.(float64); ok && f == float64(int64(f)) {
			return ""
		}
		return "expected a whole number, got " + got()
	case reflect.Float32, reflect.Float64:
		if _, ok := v.(float64); ok {
			return ""
		}
		return "expected a number, got " + got()
	case reflect.Bool:
		if _, ok := v.(bool); ok {
			return ""
		}
		return "expected true or false, got " + got()
	case reflect.Struct, reflect.Map:
		if _, ok := v.(map[string]any); ok {
			return ""
		}
		return "expected a mapping, got " + got()
	case reflect.Slice:
		if _, ok := v.([]any); ok {
			return ""
		}
		return "expected a list, got " + got()
	}
	return ""
}

func joinPath(path, k string) string {
	if path == "" {
		return k
	}
	return path + "." + k
}

// ExtractUserData returns the NodeConfig document held in EC2 user-data: the data
// itself when it is plain YAML, or the application/nodeagent.io+yaml part of a MIME
// multi-part document (other parts, such as shell scripts, are ignored). Gzipped
// user-data is unpacked first.
func ExtractUserData(data []byte) ([]byte, error) {
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, errors.New("user-data is empty")
	}
	if bytes.HasPrefix(data, []byte{0x1f, 0x8b}) {
		zr, err := gzip.NewReader(bytes.NewReader(data))
		if err != nil {
			return nil, fmt.Errorf("user-data: gzip: %w", err)
		}
		unpacked, err := io.ReadAll(io.LimitReader(zr, 16<<20))
		if err != nil {
			return nil, fmt.Errorf("user-data: gzip: %w", err)
		}
		data = unpacked
	}
	if !looksLikeMIME(data) {
		if bytes.HasPrefix(data, []byte("#!")) {
			return nil, errors.New("user-data is a script, not a NodeConfig (wrap it in a MIME multi-part document with a " + UserDataContentType + " part)")
		}
		return data, nil
	}
	msg, err := mail.ReadMessage(bytes.NewReader(data))
	if err != nil {
		return nil, fmt.Errorf("user-data: MIME: %w", err)
	}
	mediaType, params, err := mime.ParseMediaType(msg.Header.Get("Content-Type"))
	if err != nil {
		return nil, fmt.Errorf("user-data: MIME Content-Type: %w", err)
	}
	if mediaType == UserDataContentType {
		return decodePart(msg.Body, msg.Header.Get("Content-Transfer-Encoding"))
	}
	if !strings.HasPrefix(mediaType, "multipart/") {
		return nil, fmt.Errorf("user-data: MIME type %q holds no NodeConfig", mediaType)
	}
	mr := multipart.NewReader(msg.Body, params["boundary"])
	var found []byte
	for {
		part, err := mr.NextPart()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("user-data: MIME part: %w", err)
		}
		pt, _, _ := mime.ParseMediaType(part.Header.Get("Content-Type"))
		if pt != UserDataContentType {
			continue
		}
		if found != nil {
			return nil, fmt.Errorf("user-data: more than one %s part", UserDataContentType)
		}
		if found, err = decodePart(part, part.Header.Get("Content-Transfer-Encoding")); err != nil {
			return nil, err
		}
	}
	if found == nil {
		return nil, fmt.Errorf("user-data: no part of type %s", UserDataContentType)
	}
	return found, nil
}

func looksLikeMIME(data []byte) bool {
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		line := strings.ToLower(strings.TrimSpace(sc.Text()))
		if line == "" {
			continue
		}
		return strings.HasPrefix(line, "content-type:") || strings.HasPrefix(line, "mime-version:")
	}
	return false
}

func decodePart(r io.Reader, encoding string) ([]byte, error) {
	if strings.EqualFold(strings.TrimSpace(encoding), "base64") {
		r = base64.NewDecoder(base64.StdEncoding, r)
	}
	b, err := io.ReadAll(io.LimitReader(r, 16<<20))
	if err != nil {
		return nil, fmt.Errorf("user-data: read %s part: %w", UserDataContentType, err)
	}
	return b, nil
}

// jsonFields maps the JSON names of a struct type's fields to their types.
func jsonFields(t reflect.Type) map[string]reflect.Type {
	fields := map[string]reflect.Type{}
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name != "" && name != "-" {
			fields[name] = f.Type
		}
	}
	return fields
}
