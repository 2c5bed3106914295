// Package etcdbackup keeps etcd's backups in the cluster's S3 state store and
// restores from them: snapshots taken over etcd client/v3, verified, uploaded
// (multipart, retried by the SDK) under backups/etcd/<cluster>/<RFC3339 time>/,
// pruned by retention; restore requests as command objects every master follows;
// a verified snapshot restored into a fresh data directory beside the old one.
//
// A backup is complete only when its info file exists: the snapshot is uploaded
// first and the info file last, so a failed or half-finished upload is never
// listed, and a snapshot that does not match its info (size, SHA-256) is refused.
package etcdbackup

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"slices"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/feature/s3/transfermanager"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
)

// Object names inside one backup's directory.
const (
	SnapshotName = "etcd.snapshot"
	InfoName     = "info.json"
	commandsDir  = "commands"
)

// TimeFormat names a backup's directory (RFC 3339, UTC, seconds).
const TimeFormat = time.RFC3339

// S3 is what the store calls: the transfer manager's client and deletes.
type S3 interface {
	transfermanager.S3APIClient
	DeleteObject(context.Context, *s3.DeleteObjectInput, ...func(*s3.Options)) (*s3.DeleteObjectOutput, error)
}

// Store is the backups of a cluster's etcd clusters in s3://Bucket/Prefix.
type Store struct {
	S3     S3
	Bucket string
	Prefix string // the cluster's state-store prefix
	// PartSize is the multipart part size (default 16 MiB; S3's minimum is 5 MiB).
	PartSize int64
}

// Info is a backup's info file.
type Info struct {
	Cluster     string    `json:"cluster"` // etcd cluster: main, events
	Time        time.Time `json:"time"`
	SHA256      string    `json:"sha256"` // of the snapshot object
	Size        int64     `json:"size"`
	EtcdVersion string    `json:"etcdVersion"`
	Revision    int64     `json:"revision"`
	Keys        int       `json:"keys"`
	TakenBy     string    `json:"takenBy,omitempty"` // member name
}

// Backup is one complete backup in the store.
type Backup struct {
	Info
	Dir string `json:"dir"` // key of its directory, without a trailing slash
}

// Name is the backup's RFC 3339 time, its name on the command line.
func (b Backup) Name() string { return b.Time.UTC().Format(TimeFormat) }

func (s *Store) clusterDir(cluster string) string {
	return path.Join(s.Prefix, "backups", "etcd", cluster)
}

// Upload stores the snapshot at snapshotPath as a new backup. The snapshot goes
// first (multipart for large ones; a failed multipart upload is aborted by the
// transfer manager, and nothing is listed without an info file), the info file
// last. info.SHA256 and info.Size must describe the file; they are checked
// against it before anything is sent.
func (s *Store) Upload(ctx context.Context, snapshotPath string, info Info) (Backup, error) {
	sum, size, err := fileSHA256(snapshotPath)
	if err != nil {
		return Backup{}, err
	}
	if sum != info.SHA256 || size != info.Size {
		return Backup{}, fmt.Errorf("upload %s: the file (sha256 %s, %d bytes) is not the one described (sha256 %s, %d bytes)",
			snapshotPath, sum, size, info.SHA256, info.Size)
	}
	b := Backup{Info: info, Dir: path.Join(s.clusterDir(info.Cluster), info.Time.UTC().Format(TimeFormat))}
	f, err := os.Open(snapshotPath)
	if err != nil {
		return Backup{}, err
	}
	defer f.Close()
	part := s.PartSize
	if part <= 0 {
		part = 16 << 20
	}
	tm := transfermanager.New(s.S3, func(o *transfermanager.Options) {
		o.PartSizeBytes = part
		o.MultipartUploadThreshold = part
		o.Concurrency = 4
	})
	key := path.Join(b.Dir, SnapshotName)
	if _, err := tm.UploadObject(ctx, &transfermanager.UploadObjectInput{
		Bucket: aws.String(s.Bucket), Key: aws.String(key), Body: f,
	}); err != nil {
		return Backup{}, fmt.Errorf("upload s3://%s/%s: %w", s.Bucket, key, err)
	}
	head, err := s.S3.HeadObject(ctx, &s3.HeadObjectInput{Bucket: aws.String(s.Bucket), Key: aws.String(key)})
	if err != nil {
		return Backup{}, fmt.Errorf("check s3://%s/%s after upload: %w", s.Bucket, key, err)
	}
	if got := aws.ToInt64(head.ContentLength); got != size {
		return Backup{}, fmt.Errorf("s3://%s/%s holds %d bytes after upload, want %d; no info file written", s.Bucket, key, got, size)
	}
	js, err := json.MarshalIndent(info, "", "  ")
	if err != nil {
		return Backup{}, err
	}
	ikey := path.Join(b.Dir, InfoName)
	if _, err := s.S3.PutObject(ctx, &s3.PutObjectInput{
		Bucket: aws.String(s.Bucket), Key: aws.String(ikey), Body: bytes.NewReader(js), ContentType: aws.String("application/json"),
	}); err != nil {
		return Backup{}, fmt.Errorf("write s3://%s/%s: %w", s.Bucket, ikey, err)
	}
	return b, nil
}

// list returns every key under prefix.
func (s *Store) list(ctx context.Context, prefix string) ([]string, error) {
	var keys []string
	p := s3.NewListObjectsV2Paginator(s.S3, &s3.ListObjectsV2Input{Bucket: aws.String(s.Bucket), Prefix: aws.String(prefix + "/")})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return nil, fmt.Errorf("list s3://%s/%s/: %w", s.Bucket, prefix, err)
		}
		for _, o := range page.Contents {
			keys = append(keys, aws.ToString(o.Key))
		}
	}
	return keys, nil
}

// complete returns the names (RFC 3339 times) of an etcd cluster's complete
// backups, those with an info file, newest first: one listing, no reads.
func (s *Store) complete(ctx context.Context, cluster string) ([]time.Time, error) {
	dir := s.clusterDir(cluster)
	keys, err := s.list(ctx, dir)
	if err != nil {
		return nil, err
	}
	var out []time.Time
	for _, k := range keys {
		name, file, ok := strings.Cut(strings.TrimPrefix(k, dir+"/"), "/")
		if !ok || file != InfoName {
			continue
		}
		if t, err := time.Parse(TimeFormat, name); err == nil {
			out = append(out, t)
		}
	}
	slices.SortFunc(out, func(a, b time.Time) int { return b.Compare(a) })
	return out, nil
}

func (s *Store) info(ctx context.Context, cluster string, t time.Time) (Backup, error) {
	dir := path.Join(s.clusterDir(cluster), t.UTC().Format(TimeFormat))
	key := path.Join(dir, InfoName)
	b, err := s.get(ctx, key, 1<<20)
	if err != nil {
		return Backup{}, err
	}
	var info Info
	if err := json.Unmarshal(b, &info); err != nil {
		return Backup{}, fmt.Errorf("s3://%s/%s: %w", s.Bucket, key, err)
	}
	return Backup{Info: info, Dir: dir}, nil
}

// Latest returns the newest complete backup, or nil when there is none.
func (s *Store) Latest(ctx context.Context, cluster string) (*Backup, error) {
	ts, err := s.complete(ctx, cluster)
	if err != nil || len(ts) == 0 {
		return nil, err
	}
	b, err := s.info(ctx, cluster, ts[0])
	if err != nil {
		return nil, err
	}
	return &b, nil
}

// List returns the complete backups of an etcd cluster (those with an info
// file), newest first. An info file that cannot be read or parsed is an error
// naming it; the others are still returned.
func (s *Store) List(ctx context.Context, cluster string) ([]Backup, error) {
	ts, err := s.complete(ctx, cluster)
	if err != nil {
		return nil, err
	}
	var out []Backup
	var errs []error
	for _, t := range ts {
		b, err := s.info(ctx, cluster, t)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		out = append(out, b)
	}
	return out, errors.Join(errs...)
}

func (s *Store) get(ctx context.Context, key string, limit int64) ([]byte, error) {
	out, err := s.S3.GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String(s.Bucket), Key: aws.String(key)})
	if err != nil {
		return nil, fmt.Errorf("read s3://%s/%s: %w", s.Bucket, key, err)
	}
	defer out.Body.Close()
	b, err := io.ReadAll(io.LimitReader(out.Body, limit))
	if err != nil {
		return nil, fmt.Errorf("read s3://%s/%s: %w", s.Bucket, key, err)
	}
	return b, nil
}

// ErrCorrupt marks a backup whose snapshot does not match its info file.
var ErrCorrupt = errors.New("backup is corrupt")

// Download fetches b's snapshot into dst (written beside, then renamed) and
// verifies its size and SHA-256 against the info file. A mismatch is ErrCorrupt
// and leaves nothing at dst.
func (s *Store) Download(ctx context.Context, b Backup, dst string) error {
	key := path.Join(b.Dir, SnapshotName)
	out, err := s.S3.GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String(s.Bucket), Key: aws.String(key)})
	if err != nil {
		var nsk *types.NoSuchKey
		if errors.As(err, &nsk) {
			return fmt.Errorf("backup %s: snapshot s3://%s/%s is missing: %w", b.Name(), s.Bucket, key, ErrCorrupt)
		}
		return fmt.Errorf("read s3://%s/%s: %w", s.Bucket, key, err)
	}
	defer out.Body.Close()
	tmp := dst + ".part"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(f, h), out.Body)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("download s3://%s/%s: %w", s.Bucket, key, err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); n != b.Size || got != b.SHA256 {
		os.Remove(tmp)
		return fmt.Errorf("backup %s: snapshot has %d bytes with sha256 %s, its info file says %d bytes with sha256 %s: %w",
			b.Name(), n, got, b.Size, b.SHA256, ErrCorrupt)
	}
	return os.Rename(tmp, dst)
}

// Select picks a backup by name ("latest" or an RFC 3339 time) and downloads
// it verified into dst. For "latest", a corrupt backup is skipped, with its
// error in refused, and the next older one is offered; a named one that is
// corrupt is an error.
func (s *Store) Select(ctx context.Context, cluster, which, dst string) (got Backup, refused []error, err error) {
	all, err := s.List(ctx, cluster)
	if err != nil && len(all) == 0 {
		return Backup{}, nil, err
	}
	if which != "latest" {
		t, perr := time.Parse(TimeFormat, which)
		if perr != nil {
			return Backup{}, nil, fmt.Errorf("backup %q: want latest or an RFC 3339 time such as 2026-11-30T13:00:00Z", which)
		}
		all = slices.DeleteFunc(all, func(b Backup) bool { return !b.Time.Equal(t) })
		if len(all) == 0 {
			return Backup{}, nil, fmt.Errorf("etcd %s has no complete backup named %s", cluster, which)
		}
	}
	if len(all) == 0 {
		return Backup{}, nil, fmt.Errorf("etcd %s has no complete backup in s3://%s/%s/", cluster, s.Bucket, s.clusterDir(cluster))
	}
	for _, b := range all {
		err := s.Download(ctx, b, dst)
		if err == nil {
			return b, refused, nil
		}
		if !errors.Is(err, ErrCorrupt) || which != "latest" {
			return Backup{}, refused, err
		}
		refused = append(refused, err)
	}
	return Backup{}, refused, fmt.Errorf("etcd %s: every backup is corrupt: %w", cluster, errors.Join(refused...))
}

// Retention says which backups are kept: every one younger than Hourly, and
// the newest of each UTC day younger than Daily.
type Retention struct {
	Hourly time.Duration // default 7 days
	Daily  time.Duration // default 1 year
}

// DefaultRetention is etcd-manager's: hourly ones for 7 days, one a day for a year.
var DefaultRetention = Retention{Hourly: 7 * 24 * time.Hour, Daily: 365 * 24 * time.Hour}

// Expired returns the backup times (newest first, as listed) that retention
// drops at now.
func (r Retention) Expired(times []time.Time, now time.Time) []time.Time {
	keptDay := map[string]bool{}
	var out []time.Time
	for _, t := range times { // newest first: the first of each day is its newest
		age := now.Sub(t)
		day := t.UTC().Format(time.DateOnly)
		switch {
		case age < r.Hourly:
		case age < r.Daily && !keptDay[day]:
			keptDay[day] = true
		default:
			out = append(out, t)
		}
	}
	return out
}

// Prune deletes what retention drops: the info file first (so the backup stops
// being complete at once), then the snapshot. It returns the names deleted.
func (s *Store) Prune(ctx context.Context, cluster string, r Retention, now time.Time) ([]string, error) {
	ts, err := s.complete(ctx, cluster)
	if err != nil {
		return nil, err
	}
	var done []string
	for _, t := range r.Expired(ts, now) {
		dir := path.Join(s.clusterDir(cluster), t.UTC().Format(TimeFormat))
		for _, name := range []string{InfoName, SnapshotName} {
			key := path.Join(dir, name)
			if _, err := s.S3.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: aws.String(s.Bucket), Key: aws.String(key)}); err != nil {
				return done, fmt.Errorf("delete s3://%s/%s: %w", s.Bucket, key, err)
			}
		}
		done = append(done, t.UTC().Format(TimeFormat))
	}
	return done, nil
}

func fileSHA256(p string) (string, int64, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return "", 0, fmt.Errorf("hash %s: %w", p, err)
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}
