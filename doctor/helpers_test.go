package doctor

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// run runs one check the way Run does and returns its findings.
func run(t *testing.T, c Check) []Finding {
	t.Helper()
	rep := Run(context.Background(), "test-node", []Check{c}, 15*time.Second)
	for _, f := range rep.Findings {
		t.Logf("%s %s: %s (fix: %s)", f.Check, f.Result, f.Message, f.Fix)
	}
	return rep.Findings
}

// want asserts that some finding has the result and mentions every phrase.
func want(t *testing.T, fs []Finding, r Result, phrases ...string) {
	t.Helper()
	for _, f := range fs {
		if f.Result != r {
			continue
		}
		all := true
		for _, p := range phrases {
			all = all && strings.Contains(f.Message, p)
		}
		if all {
			if (r == Warn || r == Fail) && f.Fix == "" {
				t.Errorf("%s finding %q has no fix", r, f.Message)
			}
			return
		}
	}
	t.Errorf("no %s finding mentioning %q among %+v", r, phrases, fs)
}

func writeFile(t *testing.T, root, path, content string) {
	t.Helper()
	p := filepath.Join(root, path)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}
