package etcdbackup

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
)

// Status is what etcd's own check of a snapshot file reports
// (`etcdutl snapshot status --write-out json`).
type Status struct {
	Hash      uint32 `json:"hash"`
	Revision  int64  `json:"revision"`
	TotalKey  int    `json:"totalKey"`
	TotalSize int64  `json:"totalSize"`
	// Version is the storage version etcd 3.6 and later record; 3.5 leaves it out.
	Version string `json:"version,omitempty"`
}

// RestoreConfig is one member's restore of a snapshot into a new data directory.
type RestoreConfig struct {
	Snapshot       string
	Name           string
	DataDir        string
	PeerURL        string
	InitialCluster string // name=peerURL,...
	Token          string // --initial-cluster-token
}

// SnapshotTool is etcd's own code for snapshot files: the check a restore makes
// of a database, and the restore itself.
type SnapshotTool interface {
	Status(ctx context.Context, snapshot string) (Status, error)
	Restore(ctx context.Context, r RestoreConfig) error
}

// Locator finds the etcdutl program to run.
type Locator interface {
	EtcdutlPath(ctx context.Context) (string, error)
}

// Path is an etcdutl program at a fixed path.
type Path string

// EtcdutlPath returns p once it is an executable file.
func (p Path) EtcdutlPath(context.Context) (string, error) {
	fi, err := os.Stat(string(p))
	if err != nil {
		return "", fmt.Errorf("etcdutl: %w", err)
	}
	if !fi.Mode().IsRegular() || fi.Mode().Perm()&0o111 == 0 {
		return "", fmt.Errorf("etcdutl: %s is not an executable file", p)
	}
	return string(p), nil
}

// Etcdutl runs etcd's offline tool as a program of its own: a snapshot is
// checked and restored by the etcd version that wrote it (the member's image
// ships it), and the agent links none of etcd's server packages.
type Etcdutl struct {
	Bin Locator
}

var _ SnapshotTool = Etcdutl{}

// Status runs `etcdutl snapshot status`: etcd opens the database read-only,
// walks every bucket and reports the revision and the number of keys. A file
// that is not an etcd database is refused.
func (e Etcdutl) Status(ctx context.Context, snapshot string) (Status, error) {
	out, err := e.run(ctx, "snapshot", "status", snapshot, "--write-out", "json")
	if err != nil {
		return Status{}, err
	}
	var st Status
	if err := json.Unmarshal(bytes.TrimSpace(out), &st); err != nil {
		return Status{}, fmt.Errorf("etcdutl snapshot status %s: unexpected output %q: %w", snapshot, clip(out), err)
	}
	return st, nil
}

// Restore runs `etcdutl snapshot restore` into r.DataDir, which must not exist.
// etcdutl checks the SHA-256 the snapshot stream ends with before it writes.
func (e Etcdutl) Restore(ctx context.Context, r RestoreConfig) error {
	if r.Snapshot == "" || r.Name == "" || r.DataDir == "" || r.PeerURL == "" || r.InitialCluster == "" {
		return fmt.Errorf("etcdutl snapshot restore: incomplete request %+v", r)
	}
	args := []string{"snapshot", "restore", r.Snapshot, "--name", r.Name, "--data-dir", r.DataDir,
		"--initial-advertise-peer-urls", r.PeerURL, "--initial-cluster", r.InitialCluster}
	if r.Token != "" {
		args = append(args, "--initial-cluster-token", r.Token)
	}
	_, err := e.run(ctx, args...)
	return err
}

func (e Etcdutl) run(ctx context.Context, args ...string) ([]byte, error) {
	if e.Bin == nil {
		return nil, errors.New("etcdutl: no program to run")
	}
	bin, err := e.Bin.EtcdutlPath(ctx)
	if err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, bin, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("etcdutl %s: %w: %s", strings.Join(args[:2], " "), err, lastLines(stderr.String(), 3))
	}
	return stdout.Bytes(), nil
}

// lastLines is the end of a program's diagnostics, for an error message.
func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return clip([]byte(strings.Join(lines, "; ")))
}

func clip(b []byte) string {
	const max = 600
	if len(b) > max {
		return string(b[:max]) + "…"
	}
	return string(b)
}
