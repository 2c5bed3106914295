package ringflags

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestReadKeyTakesHexAndRefusesAnythingElse(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good")
	if err := os.WriteFile(good, []byte("70726f63732d62656e63682d6b657930\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if key, err := ReadKey(good); err != nil || !bytes.Equal(key, []byte("procs-bench-key0")) {
		t.Errorf("ReadKey = %q, %v; want procs-bench-key0", key, err)
	}
	bad := filepath.Join(dir, "bad")
	if err := os.WriteFile(bad, []byte("not hex"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadKey(bad); err == nil || !strings.Contains(err.Error(), bad) {
		t.Errorf("ReadKey of a file that is not hex: %v, want an error naming the file", err)
	}
	if _, err := ReadKey(filepath.Join(dir, "missing")); err == nil {
		t.Error("ReadKey of a missing file: no error")
	}
}

func TestLoggerKnowsTheLevelsByName(t *testing.T) {
	for _, l := range []string{"debug", "info", "warn", "error"} {
		if _, err := Logger(l); err != nil {
			t.Errorf("Logger(%q): %v", l, err)
		}
	}
	if _, err := Logger("loud"); err == nil || !strings.Contains(err.Error(), "-log-level") {
		t.Errorf("Logger(loud): %v, want an error naming -log-level", err)
	}
}
