package images

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/nodeagent/nodeagent/assets"
	"github.com/nodeagent/nodeagent/config"
	"github.com/nodeagent/nodeagent/internal/fsutil"
)

// fakeDocker stands in for the docker CLI: it keeps an image store in memory,
// loads archives by reading their manifest.json, and records every command.
type fakeDocker struct {
	images map[string]string // reference → image id
	ran    []string
}

func (f *fakeDocker) Run(_ context.Context, stdin io.Reader, name string, args ...string) ([]byte, error) {
	f.ran = append(f.ran, filepath.Base(name)+" "+strings.Join(args, " "))
	switch {
	case len(args) == 7 && args[2] == "image" && args[3] == "inspect":
		if id, ok := f.images[args[6]]; ok {
			return []byte(id + "\n"), nil
		}
		return nil, errors.New("docker: exit status 1: Error response from daemon: No such image: " + args[6])
	case len(args) == 5 && args[2] == "load" && args[3] == "-i":
		b, err := os.ReadFile(args[4])
		if err != nil {
			return nil, err
		}
		f.images["registry.k8s.io/pause:3.10"] = "sha256:" + sum(b)
		return []byte("Loaded image: registry.k8s.io/pause:3.10\n"), nil
	}
	return nil, errors.New("unexpected command")
}

func TestDockerNodesLoadArchivesWithDockerLoad(t *testing.T) {
	root := fsutil.Root(t.TempDir())
	if err := fsutil.WriteFileAtomic(root.Path("/usr/local/bin/docker"), []byte("#!/bin/true\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	a := serve(t, root, "registry.k8s.io/pause:3.10", dockerArchive(t, "pause", "registry.k8s.io/pause:3.10"))
	fake := &fakeDocker{images: map[string]string{}}
	p := NewPhase(Options{Root: root, Runtime: config.RuntimeDocker, Archives: []config.ImageArchive{a},
		Fetcher: &assets.Installer{Root: root}, Exec: fake})
	if err := os.MkdirAll(root.Path("/run"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(root.Path("/run/docker.sock"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	changes := converge(t, p)
	if len(changes) != 1 || changes[0].Target != "registry.k8s.io/pause:3.10" {
		t.Errorf("plan %q", changeStrings(changes))
	}
	host := "-H unix://" + root.Path("/run/docker.sock")
	cached := root.Path(assets.DefaultCacheDir + "/" + a.SHA256)
	if want := "docker " + host + " load -i " + cached; !slices.Contains(fake.ran, want) {
		t.Errorf("commands %q lack %q", fake.ran, want)
	}
	if w := p.Warnings(); len(w) != 1 || !strings.Contains(w[0], "docker load") {
		t.Errorf("warnings %q, want one saying archives go through docker load", w)
	}
}
