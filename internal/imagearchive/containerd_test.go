package imagearchive_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nodeagent/nodeagent/internal/containerdtest"
	"github.com/nodeagent/nodeagent/internal/imagearchive"
)

// helloSource prints what a container sees of its image: arguments (Entrypoint
// then Cmd), environment, working directory and a file from the layer.
const helloSource = `package main

import (
	"fmt"
	"os"
)

func main() {
	wd, _ := os.Getwd()
	greeting, err := os.ReadFile("/etc/greeting")
	if err != nil {
		fmt.Println("no greeting:", err)
		os.Exit(1)
	}
	fmt.Printf("args=%q PATH=%s FOO=%s wd=%s greeting=%s\n", os.Args, os.Getenv("PATH"), os.Getenv("FOO"), wd, greeting)
}
`

// buildStatic builds a Go program from source into a static binary.
func buildStatic(t *testing.T, source string) string {
	t.Helper()
	dir := t.TempDir()
	for name, content := range map[string]string{"go.mod": "module hello\n\ngo 1.22\n", "main.go": source} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("building the test binary needs the go command in PATH: %v", err)
	}
	bin := filepath.Join(dir, "hello")
	cmd := exec.Command(gobin, "build", "-trimpath", "-o", bin, ".")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOWORK=off", "GOFLAGS=")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

func TestContainerdImportsTheArchiveAndRunsTheImage(t *testing.T) {
	ctrd := containerdtest.Paths(t)
	ctrd.Start(t, ctrd.MinimalConfig())
	bin := buildStatic(t, helloSource)
	for _, gz := range []bool{false, true} {
		ref := "nodeagent.test/hello:plain"
		if gz {
			ref = "nodeagent.test/hello:gzip"
		}
		file := filepath.Join(t.TempDir(), "hello.tar")
		if _, err := imagearchive.WriteFile(file, imagearchive.Image{
			Refs: []string{ref, ref + "-alias"},
			Files: []imagearchive.File{
				imagearchive.HostFile(bin, "/usr/local/bin/hello", 0o755),
				imagearchive.Bytes("/etc/greeting", []byte("hi"), 0o644),
				imagearchive.Dir("/srv", 0o755),
			},
			Config: imagearchive.Config{
				Entrypoint: []string{"hello"}, // found through the image's PATH
				Cmd:        []string{"world"},
				Env:        []string{"FOO=bar"},
				WorkingDir: "/srv",
			},
			Gzip: gz,
		}); err != nil {
			t.Fatalf("WriteFile: %v", err)
		}

		ctrd.Import(t, file)
		names := ctrd.ImageNames(t)
		for _, want := range []string{ref, ref + "-alias"} {
			if !slices.Contains(names, want) {
				t.Fatalf("after import, ctr images ls shows %v; want %s among them", names, want)
			}
		}

		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		out, err := ctrd.Run(ctx, nil, ref, "hello-"+strings.TrimPrefix(ref, "nodeagent.test/hello:"))
		cancel()
		if err != nil {
			t.Fatalf("ctr run %s: %v\n%s", ref, err, out)
		}
		want := `args=["hello" "world"] PATH=/usr/local/bin:/usr/bin:/bin FOO=bar wd=/srv greeting=hi`
		if strings.TrimSpace(out) != want {
			t.Errorf("the container of %s printed\n%s\nwant\n%s", ref, out, want)
		}
	}
}
