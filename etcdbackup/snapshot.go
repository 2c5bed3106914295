package etcdbackup

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Take streams a snapshot from the member at endpoint (client/v3 Snapshot) into
// a file in dir and verifies it (etcd's own integrity check of the database, by
// tool). The file's info is returned for Upload.
func Take(ctx context.Context, tool SnapshotTool, cli *clientv3.Client, endpoint, dir, cluster, member string, now time.Time) (string, Info, error) {
	st, err := cli.Status(ctx, endpoint)
	if err != nil {
		return "", Info{}, fmt.Errorf("status of %s: %w", endpoint, err)
	}
	rc, err := cli.Snapshot(ctx)
	if err != nil {
		return "", Info{}, fmt.Errorf("snapshot of %s: %w", endpoint, err)
	}
	defer rc.Close()
	f, err := os.CreateTemp(dir, "etcd-"+cluster+"-*.snapshot")
	if err != nil {
		return "", Info{}, err
	}
	p := f.Name()
	_, err = io.Copy(f, rc)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(p)
		return "", Info{}, fmt.Errorf("snapshot of %s: %w", endpoint, err)
	}
	ds, err := Verify(ctx, tool, p)
	if err != nil {
		os.Remove(p)
		return "", Info{}, err
	}
	sum, size, err := fileSHA256(p)
	if err != nil {
		os.Remove(p)
		return "", Info{}, err
	}
	return p, Info{
		Cluster: cluster, Time: now.UTC().Truncate(time.Second), SHA256: sum, Size: size,
		EtcdVersion: st.Version, Revision: ds.Revision, Keys: ds.TotalKey, TakenBy: member,
	}, nil
}

// Verify checks a snapshot file as etcd's restore would read it: the database's
// own integrity check, and its revision and key count.
func Verify(ctx context.Context, tool SnapshotTool, p string) (Status, error) {
	ds, err := tool.Status(ctx, p)
	if err != nil {
		return ds, fmt.Errorf("snapshot %s fails verification: %w", p, err)
	}
	return ds, nil
}

// RestoreDataDir restores the verified snapshot at snapshotPath into dataDir
// for member name of a cluster whose members are initialCluster (name=peerURL).
// What dataDir held is kept: renamed to <dataDir>.before-restore-<time>, never
// deleted. The restore is written beside it first and renamed into place, so a
// failure leaves the old data where it was.
func RestoreDataDir(ctx context.Context, tool SnapshotTool, snapshotPath, dataDir, name string, initialCluster []string, token string, now time.Time) (kept string, err error) {
	peerURL := ""
	for _, m := range initialCluster {
		if n, u, ok := strings.Cut(m, "="); ok && n == name {
			peerURL = u
		}
	}
	if peerURL == "" {
		return "", fmt.Errorf("restore: member %s is not in the initial cluster %v", name, initialCluster)
	}
	stamp := now.UTC().Format("20060102T150405Z")
	fresh := dataDir + ".restore-" + stamp
	if err := os.RemoveAll(fresh); err != nil { // a partial restore of ours from an earlier attempt
		return "", err
	}
	if err := tool.Restore(ctx, RestoreConfig{
		Snapshot: snapshotPath, Name: name, DataDir: fresh, PeerURL: peerURL,
		InitialCluster: strings.Join(initialCluster, ","), Token: token,
	}); err != nil {
		os.RemoveAll(fresh)
		return "", fmt.Errorf("restore %s into %s: %w", snapshotPath, fresh, err)
	}
	if _, err := os.Stat(dataDir); err == nil {
		kept = dataDir + ".before-restore-" + stamp
		if err := os.Rename(dataDir, kept); err != nil {
			return "", fmt.Errorf("keep the old data dir: %w", err)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return "", err
	}
	if err := os.Rename(fresh, dataDir); err != nil {
		return kept, fmt.Errorf("move the restored data into %s: %w", dataDir, err)
	}
	// etcd wants its data directory private.
	return kept, os.Chmod(dataDir, 0o700)
}

// RestoreCommand asks every master to restore one etcd cluster from a backup.
type RestoreCommand struct {
	ID      string `json:"id"`
	Cluster string `json:"cluster"`
	Backup  string `json:"backup"` // the backup's RFC 3339 name, resolved at request time
	SHA256  string `json:"sha256"`
	// Member restores the backup as a one-member cluster; the others join it.
	Member    string    `json:"member"`
	Requested time.Time `json:"requested"`
	// Token is the new cluster's --initial-cluster-token, fresh per restore so
	// that no member of the lost cluster can talk to the restored one.
	Token string `json:"token"`
}

// RequestRestore resolves which ("latest" or a time) to a complete backup that
// verifies, and writes the command object every master follows.
func (s *Store) RequestRestore(ctx context.Context, tool SnapshotTool, cluster, which, member, scratch string, now time.Time) (RestoreCommand, []error, error) {
	if member == "" {
		return RestoreCommand{}, nil, errors.New("restore: no member named to restore the backup")
	}
	dst := filepath.Join(scratch, "verify.snapshot")
	b, refused, err := s.Select(ctx, cluster, which, dst)
	if err != nil {
		return RestoreCommand{}, refused, err
	}
	defer os.Remove(dst)
	if _, err := Verify(ctx, tool, dst); err != nil {
		return RestoreCommand{}, refused, fmt.Errorf("backup %s: %w", b.Name(), err)
	}
	id := now.UTC().Format("20060102T150405Z")
	cmd := RestoreCommand{ID: id, Cluster: cluster, Backup: b.Name(), SHA256: b.SHA256, Member: member, Requested: now.UTC(),
		Token: "etcd-cluster-" + cluster + "-restore-" + id}
	js, err := json.MarshalIndent(cmd, "", "  ")
	if err != nil {
		return RestoreCommand{}, refused, err
	}
	key := path.Join(s.clusterDir(cluster), commandsDir, "restore-"+id+".json")
	if _, err := s.S3.PutObject(ctx, &s3.PutObjectInput{Bucket: aws.String(s.Bucket), Key: aws.String(key),
		Body: bytes.NewReader(js), ContentType: aws.String("application/json")}); err != nil {
		return RestoreCommand{}, refused, fmt.Errorf("write s3://%s/%s: %w", s.Bucket, key, err)
	}
	return cmd, refused, nil
}

// Commands lists an etcd cluster's restore commands, oldest first.
func (s *Store) Commands(ctx context.Context, cluster string) ([]RestoreCommand, error) {
	keys, err := s.list(ctx, path.Join(s.clusterDir(cluster), commandsDir))
	if err != nil {
		return nil, err
	}
	var out []RestoreCommand
	var errs []error
	for _, k := range keys {
		if !strings.HasSuffix(k, ".json") || !strings.HasPrefix(path.Base(k), "restore-") {
			continue
		}
		b, err := s.get(ctx, k, 1<<20)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		var c RestoreCommand
		if err := json.Unmarshal(b, &c); err != nil {
			errs = append(errs, fmt.Errorf("s3://%s/%s: %w", s.Bucket, k, err))
			continue
		}
		out = append(out, c)
	}
	slices.SortFunc(out, func(a, b RestoreCommand) int { return a.Requested.Compare(b.Requested) })
	return out, errors.Join(errs...)
}

// Backup returns the complete backup a command names.
func (s *Store) Backup(ctx context.Context, cluster, name string) (Backup, error) {
	all, err := s.List(ctx, cluster)
	for _, b := range all {
		if b.Name() == name {
			return b, nil
		}
	}
	if err != nil {
		return Backup{}, err
	}
	return Backup{}, fmt.Errorf("etcd %s has no complete backup named %s", cluster, name)
}
