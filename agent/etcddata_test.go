package agent

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/nodeagent/nodeagent/etcd"
	"github.com/nodeagent/nodeagent/etcdbackup"
)

// TestBackupWarning: a backup older than twice the schedule, or none at all, is
// a warning in status; a recent one is not.
func TestBackupWarning(t *testing.T) {
	now := time.Date(2026, 11, 30, 14, 0, 0, 0, time.UTC)
	at := func(ago time.Duration) *etcdbackup.Backup {
		return &etcdbackup.Backup{Info: etcdbackup.Info{Time: now.Add(-ago)}}
	}
	for _, tc := range []struct {
		name   string
		latest *etcdbackup.Backup
		want   string
	}{
		{"none yet", nil, "no backup yet"},
		{"within the schedule", at(50 * time.Minute), ""},
		{"late but within twice the schedule", at(119 * time.Minute), ""},
		{"older than twice the schedule", at(3 * time.Hour), "the last backup (2026-11-30T11:00:00Z) is 3h0m0s old, more than twice the schedule (1h0m0s)"},
	} {
		if got := backupWarning(tc.latest, time.Hour, now); got != tc.want {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
	}
}

// TestEtcdTable: status shows each cluster's member table and last backup, and
// the warnings.
func TestEtcdTable(t *testing.T) {
	now := time.Date(2026, 11, 30, 14, 0, 0, 0, time.UTC)
	es := &EtcdStatus{At: now.Add(-20 * time.Second), Clusters: []EtcdClusterStatus{
		{Cluster: "events", Member: "b", Warning: "no backup yet", Error: "status of https://127.0.0.1:4002: context deadline exceeded"},
		{Cluster: "main", Member: "b", Health: &etcd.Health{IsLeader: true, Members: []etcd.MemberInfo{
			{Name: "a"}, {Name: "b"}, {Name: "", IsLearner: true},
		}}, LastBackup: &etcdbackup.Backup{Info: etcdbackup.Info{Time: now.Add(-3 * time.Hour), Size: 3 << 20, Revision: 42}},
			Warning: "the last backup (2026-11-30T11:00:00Z) is 3h0m0s old, more than twice the schedule (1h0m0s)"},
	}}
	var b bytes.Buffer
	if err := WriteEtcdTable(&b, es, now); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"etcd (as of 20s ago):",
		"main     b       leader  a,b,(not started)(learner)  2026-11-30T11:00:00Z  3h0m0s  3.0 MiB  42",
		"events   b       -       -",
		"Warning: etcd main: the last backup (2026-11-30T11:00:00Z) is 3h0m0s old",
		"Warning: etcd events: no backup yet",
		"Error: etcd events: status of https://127.0.0.1:4002",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, b.String())
		}
	}
}
