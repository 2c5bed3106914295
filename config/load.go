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
	"mime"
	"mime/multipart"
	"net/mail"
	"reflect"
	"sort"
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
		errs = append(errs, verr.(ValidationError)...)
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
		fields := map[string]reflect.Type{}
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
			if name != "" && name != "-" {
				fields[name] = f.Type
			}
		}
		keys := make([]string, 0, len(m))
		for k := range m {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
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
