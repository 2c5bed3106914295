package images

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
)

// containerd is containerd's k8s.io namespace, through ctr.
type containerd struct {
	exec    Exec
	ctr     string
	address string
}

func (c *containerd) run(ctx context.Context, stdin io.Reader, args ...string) ([]byte, error) {
	return c.exec.Run(ctx, stdin, c.ctr, append([]string{"--address", c.address, "--namespace", Namespace}, args...)...)
}

// digests reads `ctr images ls`, a table whose first three columns are REF,
// TYPE and DIGEST (none of them holds spaces).
func (c *containerd) digests(ctx context.Context, refs []string) (map[string]string, error) {
	out, err := c.run(ctx, nil, "images", "ls")
	if err != nil {
		return nil, fmt.Errorf("list images: %w", err)
	}
	return parseCtrList(out, refs)
}

func parseCtrList(out []byte, refs []string) (map[string]string, error) {
	want := map[string]bool{}
	for _, r := range refs {
		want[r] = true
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if h := strings.Fields(lines[0]); len(h) < 3 || h[0] != "REF" || h[2] != "DIGEST" {
		return nil, fmt.Errorf("list images: unexpected ctr output %q", lines[0])
	}
	got := map[string]string{}
	for _, line := range lines[1:] {
		f := strings.Fields(line)
		if len(f) < 3 || !strings.HasPrefix(f[2], "sha256:") {
			return nil, fmt.Errorf("list images: unexpected ctr output %q", line)
		}
		if want[f[0]] {
			got[f[0]] = f[2]
		}
	}
	return got, nil
}

// load imports with the default flags: the current platform, unpacked into the
// default snapshotter (overlayfs, the CRI plugin's too).
func (c *containerd) load(ctx context.Context, r io.Reader, _ string) error {
	_, err := c.run(ctx, r, "images", "import", "-")
	return err
}

// docker is Docker Engine's image store, through the docker CLI.
type docker struct {
	exec   Exec
	docker string
	host   string
}

func (d *docker) digests(ctx context.Context, refs []string) (map[string]string, error) {
	got := map[string]string{}
	for _, ref := range refs {
		out, err := d.exec.Run(ctx, nil, d.docker, "-H", d.host, "image", "inspect", "--format", "{{.Id}}", ref)
		if err != nil {
			if strings.Contains(err.Error(), "No such image") {
				continue
			}
			return nil, fmt.Errorf("inspect image %s: %w", ref, err)
		}
		got[ref] = strings.TrimSpace(string(out))
	}
	return got, nil
}

// load runs docker load on the archive file (docker reads gzip itself). An OCI
// layout archive is streamed through stdin with the manifest.json docker load
// needs appended (dockersave.go).
func (d *docker) load(ctx context.Context, _ io.Reader, file string) error {
	manifest, err := dockerSaveManifest(file)
	if err != nil {
		return err
	}
	if manifest == nil {
		_, err := d.exec.Run(ctx, nil, d.docker, "-H", d.host, "load", "-i", file)
		return err
	}
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(writeWithManifest(pw, file, manifest)) }()
	_, err = d.exec.Run(ctx, pr, d.docker, "-H", d.host, "load")
	// Unblocks the writer when docker stopped reading early.
	pr.CloseWithError(errors.New("docker load ended"))
	return err
}
