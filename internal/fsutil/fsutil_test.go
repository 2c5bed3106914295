package fsutil

import (
	"os"
	"path/filepath"
	"testing"
)

func TestRootPath(t *testing.T) {
	tests := []struct {
		root Root
		in   string
		want string
	}{
		{"", "/etc/hosts", "/etc/hosts"},
		{"/", "/etc/hosts", "/etc/hosts"},
		{"/tmp/r", "/etc/hosts", "/tmp/r/etc/hosts"},
		{"/tmp/r", "etc/hosts", "/tmp/r/etc/hosts"},
		{"/tmp/r", "/../../etc/hosts", "/tmp/r/etc/hosts"}, // never escapes the root
	}
	for _, tt := range tests {
		if got := tt.root.Path(tt.in); got != tt.want {
			t.Errorf("Root(%q).Path(%q) = %q, want %q", tt.root, tt.in, got, tt.want)
		}
	}
}

func TestWriteFileIfChanged(t *testing.T) {
	p := filepath.Join(t.TempDir(), "a", "b", "f")
	steps := []struct {
		data        string
		perm        os.FileMode
		wantChanged bool
	}{
		{"one", 0o600, true},  // created, parents too
		{"one", 0o600, false}, // same content and mode: untouched
		{"one", 0o644, true},  // mode differs
		{"two", 0o644, true},  // content differs
	}
	for i, s := range steps {
		changed, err := WriteFileIfChanged(p, []byte(s.data), s.perm)
		if err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
		if changed != s.wantChanged {
			t.Fatalf("step %d: changed = %v, want %v", i, changed, s.wantChanged)
		}
		fi, _ := os.Stat(p)
		if fi.Mode().Perm() != s.perm {
			t.Fatalf("step %d: mode %v, want %v", i, fi.Mode().Perm(), s.perm)
		}
	}
	entries, _ := os.ReadDir(filepath.Dir(p))
	if len(entries) != 1 {
		t.Fatalf("temporary files left behind: %v", entries)
	}
}
