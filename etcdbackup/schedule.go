package etcdbackup

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// DefaultSchedule is how often a backup is taken.
const DefaultSchedule = time.Hour

// Taker takes one etcd cluster's scheduled backups. Every master runs one for
// each of its local members; only the member that is the raft leader at the
// time takes the backup, so the cluster has one taker without any further
// election (a leader change between two ticks at most brings a backup forward).
type Taker struct {
	Store     *Store
	Cluster   string // etcd cluster: main, events
	Member    string // this node's member name
	Endpoint  string // the local member's client URL
	Schedule  time.Duration
	Retention Retention
	// Scratch is a directory for the snapshot file while it is uploaded.
	Scratch string
	// Tool checks each snapshot before it is stored (etcd's own etcdutl).
	Tool SnapshotTool
	Log  *slog.Logger
}

// Result says what one tick did.
type Result struct {
	Taken   *Backup  // the backup taken, if any
	Skipped string   // why none was taken: not the leader, the last one is recent
	Pruned  []string // names of the backups retention deleted
	Latest  *Backup  // the newest complete backup after the tick
}

// Tick takes a backup when this member leads and the newest complete backup is
// at least Schedule old (or there is none), then applies retention.
func (t *Taker) Tick(ctx context.Context, cli *clientv3.Client, now time.Time) (Result, error) {
	sched := t.Schedule
	if sched <= 0 {
		sched = DefaultSchedule
	}
	ret := t.Retention
	if ret.Hourly <= 0 {
		ret.Hourly = DefaultRetention.Hourly
	}
	if ret.Daily <= 0 {
		ret.Daily = DefaultRetention.Daily
	}
	var res Result
	st, err := cli.Status(ctx, t.Endpoint)
	if err != nil {
		return res, fmt.Errorf("etcd %s: status of %s: %w", t.Cluster, t.Endpoint, err)
	}
	res.Latest, err = t.Store.Latest(ctx, t.Cluster)
	if err != nil {
		return res, fmt.Errorf("etcd %s: %w", t.Cluster, err)
	}
	switch {
	case st.Header == nil || st.Leader != st.Header.MemberId:
		res.Skipped = "not the leader"
		return res, nil
	case res.Latest != nil && now.Sub(res.Latest.Time) < sched:
		res.Skipped = fmt.Sprintf("the last backup is %s old", now.Sub(res.Latest.Time).Round(time.Second))
		return res, nil
	}
	start := time.Now()
	p, info, err := Take(ctx, t.Tool, cli, t.Endpoint, t.Scratch, t.Cluster, t.Member, now)
	if err != nil {
		return res, fmt.Errorf("etcd %s: %w", t.Cluster, err)
	}
	defer os.Remove(p)
	b, err := t.Store.Upload(ctx, p, info)
	if err != nil {
		return res, fmt.Errorf("etcd %s: backup not stored: %w", t.Cluster, err)
	}
	res.Taken, res.Latest = &b, &b
	if t.Log != nil {
		t.Log.Info("etcd backup taken", "cluster", t.Cluster, "backup", b.Name(), "size", b.Size, "revision", b.Revision,
			"sha256", b.SHA256, "took", time.Since(start).Round(time.Millisecond))
	}
	res.Pruned, err = t.Store.Prune(ctx, t.Cluster, ret, now)
	if err != nil {
		return res, fmt.Errorf("etcd %s: retention: %w", t.Cluster, err)
	}
	return res, nil
}
