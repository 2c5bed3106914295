package agent

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/nodeagent/nodeagent/etcdbackup"
	"github.com/nodeagent/nodeagent/images"
	"github.com/nodeagent/nodeagent/manifests"
)

// etcdutlInImage is where etcd's release images keep etcdutl, beside etcd.
const etcdutlInImage = "/usr/local/bin/etcdutl"

// etcdutlFromImage is the etcdutl of the image this master's etcd pods run. It
// is copied once out of the runtime's image store into
// <state dir>/etcdutl/<image digest>/ and run from there: a snapshot is checked
// and restored by the etcd version that runs the cluster, as kops'
// etcd-manager runs the matching version's tools, and the agent links none of
// etcd's server packages.
type etcdutlFromImage struct {
	images images.Options
	ref    string
	dir    string // host path
	log    *slog.Logger
}

// etcdutlFor is the snapshot tool of node n's etcd.
func etcdutlFor(o Options, n *Node) etcdbackup.Etcdutl {
	return etcdbackup.Etcdutl{Bin: &etcdutlFromImage{
		images: images.Options{Root: o.Root, Runtime: n.Config.Spec.ContainerRuntime, StateDir: o.StateDir, Log: o.log()},
		ref:    manifests.EtcdImage(n.Config.Spec),
		dir:    filepath.Join(o.stateDir(), "etcdutl"),
		log:    o.log(),
	}}
}

// EtcdutlPath returns the copy for the image's current digest, copying it out
// of the image the first time.
func (e *etcdutlFromImage) EtcdutlPath(ctx context.Context) (string, error) {
	digest, err := images.Digest(ctx, e.images, e.ref)
	if err != nil {
		return "", fmt.Errorf("etcdutl of %s: %w", e.ref, err)
	}
	_, hex, ok := strings.Cut(digest, ":")
	if !ok || len(hex) < 16 || strings.ContainsAny(hex, "/.") {
		return "", fmt.Errorf("etcdutl of %s: unexpected image digest %q", e.ref, digest)
	}
	bin := filepath.Join(e.dir, hex, "etcdutl")
	if fi, err := os.Stat(bin); err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0 {
		return bin, nil
	}
	if _, err := images.Extract(ctx, e.images, e.ref, etcdutlInImage, bin); err != nil {
		return "", fmt.Errorf("etcdutl of %s (etcd's release images ship it at %s): %w", e.ref, etcdutlInImage, err)
	}
	e.log.Info("copied etcdutl out of the etcd image", "image", e.ref, "digest", digest, "path", bin)
	// Copies of images no longer run (an etcd upgrade) go.
	if old, err := os.ReadDir(e.dir); err == nil {
		for _, d := range old {
			if d.Name() != hex {
				if err := os.RemoveAll(filepath.Join(e.dir, d.Name())); err != nil {
					e.log.Warn("could not remove an old etcdutl copy", "path", filepath.Join(e.dir, d.Name()), "err", err)
				}
			}
		}
	}
	return bin, nil
}
