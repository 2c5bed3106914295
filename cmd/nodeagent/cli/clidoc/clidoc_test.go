package clidoc

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"testing"
)

var update = flag.Bool("update", false, "rewrite docs/cli/ from the command tree")

// TestReferenceIsUpToDate fails when docs/cli/ differs from what the command
// tree generates.
func TestReferenceIsUpToDate(t *testing.T) {
	dir := "../../../../docs/cli"
	if *update {
		if err := WriteDocs(dir); err != nil {
			t.Fatal(err)
		}
	}
	want, err := Docs()
	if err != nil {
		t.Fatal(err)
	}
	have, _ := filepath.Glob(filepath.Join(dir, "*.md"))
	var names []string
	for _, p := range have {
		names = append(names, filepath.Base(p))
	}
	var wantNames []string
	for n := range want {
		wantNames = append(wantNames, n)
	}
	sort.Strings(wantNames)
	stale := !reflect.DeepEqual(names, wantNames)
	if stale {
		t.Errorf("docs/cli/ has %q, the command tree makes %q", names, wantNames)
	}
	for _, n := range wantNames {
		b, err := os.ReadFile(filepath.Join(dir, n))
		if err != nil || !bytes.Equal(b, want[n]) {
			t.Errorf("docs/cli/%s is stale", n)
			stale = true
		}
	}
	if stale {
		t.Fatal("docs/cli/ is not what the command tree generates: run `go run ./hack/gendocs` (or `go test ./cmd/nodeagent/cli -update`) and commit docs/cli/")
	}
}
