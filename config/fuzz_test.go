package config

import (
	"bytes"
	"compress/gzip"
	"encoding/base64"
	"errors"
	"strings"
	"testing"
)

const fuzzDoc = "apiVersion: nodeagent.io/v1alpha1\nkind: NodeConfig\nspec:\n  cluster: {name: c.example.com}\n  role: Node\n  kubernetesVersion: v1.31.2\n"

func gz(b []byte) []byte {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	zw.Write(b)
	zw.Close()
	return buf.Bytes()
}

func mimeDoc(part string, b64 bool) []byte {
	enc := ""
	if b64 {
		enc = "Content-Transfer-Encoding: base64\r\n"
		part = base64.StdEncoding.EncodeToString([]byte(part))
	}
	return []byte("Content-Type: multipart/mixed; boundary=\"XX\"\r\nMIME-Version: 1.0\r\n\r\n--XX\r\nContent-Type: text/x-shellscript\r\n\r\n#!/bin/sh\necho hi\r\n--XX\r\nContent-Type: " +
		UserDataContentType + "\r\n" + enc + "\r\n" + part + "\r\n--XX--\r\n")
}

// FuzzUserData: whatever EC2 user-data holds (plain, CRLF, gzip, MIME with other
// parts, base64 parts), decoding it and validating the result returns a config
// or an error; it never panics, and an accepted config is valid.
func FuzzUserData(f *testing.F) {
	f.Add([]byte(fuzzDoc))
	f.Add([]byte(strings.ReplaceAll(fuzzDoc, "\n", "\r\n")))
	f.Add(gz([]byte(fuzzDoc)))
	f.Add(mimeDoc(fuzzDoc, false))
	f.Add(mimeDoc(fuzzDoc, true))
	f.Add(gz(mimeDoc(fuzzDoc, true)))
	f.Add([]byte("#!/bin/sh\necho not a config\n"))
	f.Add([]byte("spec: {kubernetesVersion: 1.31, role: Worker}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		doc, err := ExtractUserData(data)
		if err != nil {
			return
		}
		cfg, err := Parse(doc)
		if err != nil {
			var verr ValidationError
			if errors.As(err, &verr) && len(verr) == 0 {
				t.Fatal("a ValidationError with no problems")
			}
			return
		}
		if err := cfg.Validate(); err != nil {
			t.Fatalf("Parse accepted a config Validate refuses: %v", err)
		}
	})
}

// FuzzMerge: any node document over any cluster document merges, defaults and
// validates without panicking; merging is deterministic.
func FuzzMerge(f *testing.F) {
	f.Add([]byte("spec: {kubelet: {config: {maxPods: 42}}, host: {sysctls: {a.b: \"1\"}}}\n"), []byte(fuzzDoc))
	f.Add([]byte(""), []byte(fuzzDoc+"  etcd: {clusters: [{name: main, clientPort: 1, peerPort: 2}]}\n"))
	f.Add([]byte("spec: []\n"), []byte("spec: {role: 7, assets: [1, {name: 2}]}\n"))
	f.Fuzz(func(t *testing.T, cluster, node []byte) {
		a, errA := Merge(cluster, node)
		b, errB := Merge(cluster, node)
		if (errA == nil) != (errB == nil) {
			t.Fatalf("merge not deterministic: %v / %v", errA, errB)
		}
		if errA == nil && len(Classify(a, b)) != 0 {
			t.Fatalf("the same inputs gave different configs: %v", Classify(a, b))
		}
	})
}
