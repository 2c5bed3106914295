package etcdbackup

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"

	"github.com/nodeagent/nodeagent/bootstrap"
)

// markerName is the file, on the member's volume beside its data directory,
// that records the last restore command the member carried out.
const markerName = "nodeagent-restore"

// Restored is what the restoring member writes once its one-member cluster
// from the backup serves: the others wait for it before they join.
type Restored struct {
	ID        string    `json:"id"`
	Member    string    `json:"member"`
	ClusterID uint64    `json:"clusterID"`
	At        time.Time `json:"at"`
}

func (s *Store) restoredKey(cluster, id string) string {
	return path.Join(s.clusterDir(cluster), commandsDir, "restore-"+id+".done")
}

// MarkRestored records that the restoring member's cluster is up.
func (s *Store) MarkRestored(ctx context.Context, cluster string, r Restored) error {
	js, err := json.Marshal(r)
	if err != nil {
		return err
	}
	key := s.restoredKey(cluster, r.ID)
	if _, err := s.S3.PutObject(ctx, &s3.PutObjectInput{Bucket: aws.String(s.Bucket), Key: aws.String(key), Body: bytes.NewReader(js)}); err != nil {
		return fmt.Errorf("write s3://%s/%s: %w", s.Bucket, key, err)
	}
	return nil
}

// RestoredBy returns the restoring member's record, or ok=false while there is none.
func (s *Store) RestoredBy(ctx context.Context, cluster, id string) (Restored, bool, error) {
	key := s.restoredKey(cluster, id)
	b, err := s.get(ctx, key, 1<<16)
	if err != nil {
		var nsk *types.NoSuchKey
		if errors.As(err, &nsk) {
			return Restored{}, false, nil
		}
		return Restored{}, false, err
	}
	var r Restored
	if err := json.Unmarshal(b, &r); err != nil {
		return Restored{}, false, fmt.Errorf("s3://%s/%s: %w", s.Bucket, key, err)
	}
	return r, true, nil
}

// Pending returns the newest restore command of cluster that the member whose
// volume is at volume has not carried out, or nil.
func (s *Store) Pending(ctx context.Context, cluster, volume string) (*RestoreCommand, error) {
	cmds, err := s.Commands(ctx, cluster)
	if err != nil || len(cmds) == 0 {
		return nil, err
	}
	last := cmds[len(cmds)-1]
	done, err := os.ReadFile(filepath.Join(volume, markerName))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	if strings.TrimSpace(string(done)) == last.ID {
		return nil, nil
	}
	return &last, nil
}

// Step is one member's part of a restore.
type Step struct {
	Store   *Store
	Command RestoreCommand
	Member  string // this node's member name
	PeerURL string // this member's peer URL
	Volume  string // the mounted volume; etcd's data is in Volume/data
	Scratch string // where the snapshot is downloaded
	Tool    SnapshotTool
}

// Apply carries out this member's part of a restore, after the caller stopped
// its etcd. The old data directory is kept, renamed beside the new one.
//   - The member the command names restores the verified snapshot as a
//     one-member cluster with the command's fresh token; the caller starts it
//     and then calls MarkRestored.
//   - Every other member moves its data aside and starts blank once the
//     restored member is up: etcd.PlanJoin then adds it as a learner of the
//     restored cluster.
//
// It returns the kept directory. Once it returns nil the marker on the volume
// says the command is done, so a second call does nothing.
func (st Step) Apply(ctx context.Context, now time.Time) (kept string, err error) {
	c := st.Command
	dataDir := filepath.Join(st.Volume, "data")
	if st.Member == c.Member {
		b, err := st.Store.Backup(ctx, c.Cluster, c.Backup)
		if err != nil {
			return "", err
		}
		if b.SHA256 != c.SHA256 {
			return "", fmt.Errorf("backup %s has sha256 %s now, the restore command was made for %s: %w", b.Name(), b.SHA256, c.SHA256, ErrCorrupt)
		}
		snap := filepath.Join(st.Scratch, "restore-"+c.ID+".snapshot")
		if err := st.Store.Download(ctx, b, snap); err != nil {
			return "", err
		}
		defer os.Remove(snap)
		if _, err := Verify(ctx, st.Tool, snap); err != nil {
			return "", err
		}
		kept, err = RestoreDataDir(ctx, st.Tool, snap, dataDir, st.Member, []string{st.Member + "=" + st.PeerURL}, c.Token, now)
		if err != nil {
			return kept, err
		}
	} else {
		if _, ok, err := st.Store.RestoredBy(ctx, c.Cluster, c.ID); err != nil {
			return "", err
		} else if !ok {
			return "", bootstrap.Waiting("etcd %s: waiting for member %s to restore backup %s", c.Cluster, c.Member, c.Backup)
		}
		if _, err := os.Stat(dataDir); err == nil {
			kept = dataDir + ".before-restore-" + now.UTC().Format("20060102T150405Z")
			if err := os.Rename(dataDir, kept); err != nil {
				return "", fmt.Errorf("keep the old data dir: %w", err)
			}
		}
		if err := os.Mkdir(dataDir, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
			return kept, err
		}
	}
	return kept, os.WriteFile(filepath.Join(st.Volume, markerName), []byte(c.ID+"\n"), 0o600)
}
