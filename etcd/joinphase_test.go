package etcd

import (
	"context"
	"crypto/tls"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/nodeagent/nodeagent/bootstrap"
	"github.com/nodeagent/nodeagent/config"
	"github.com/nodeagent/nodeagent/internal/fsutil"
)

// TestJoinPhase: a member with data needs no decision; one on a blank volume
// whose peers do not answer starts a new cluster from the tags, unless the
// cluster is known to exist (it has backups): then it waits and starts nothing.
// The decision is a fact, kept for the volume.
func TestJoinPhase(t *testing.T) {
	root := fsutil.Root(t.TempDir())
	facts := bootstrap.Facts{EtcdMembers: []bootstrap.EtcdMemberFact{
		{Cluster: "main", Member: "a", Members: []string{"a", "b", "c"}, VolumeID: "vol-1", MountPoint: "/mnt/master-vol-1"},
		{Cluster: "events", Member: "a", Members: []string{"a", "b", "c"}, VolumeID: "vol-2", MountPoint: "/mnt/master-vol-2"},
	}}
	// events has data already.
	if err := os.MkdirAll(root.Path("/mnt/master-vol-2/data/member/snap"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(root.Path("/mnt/master-vol-1/data"), 0o700); err != nil {
		t.Fatal(err)
	}
	existed := false
	newPhase := func() *JoinPhase {
		return NewJoinPhase(JoinOptions{
			Root: root, ClusterName: "join.invalid",
			Clusters: []config.EtcdCluster{{Name: "main", ClientPort: 2379, PeerPort: 2380}, {Name: "events", ClientPort: 4002, PeerPort: 2381}},
			TLS:      func(string) (*tls.Config, error) { return &tls.Config{}, nil },
			Existed:  func(context.Context, string) (bool, error) { return existed, nil },
			Timeout:  3 * time.Second,
		})
	}
	ctx := context.Background()

	p := newPhase()
	p.UseFacts(facts)
	changes, err := p.Check(ctx)
	if err != nil || len(changes) != 1 || changes[0].Target != "main" || changes[0].Action != "join" {
		t.Fatalf("check: %v %v, want one join of main", changes, err)
	}

	existed = true
	if err := p.Act(ctx); !bootstrap.IsWaiting(err) {
		t.Fatalf("blank member of a cluster with backups, no peer answering: %v, want waiting", err)
	}

	existed = false
	if err := p.Act(ctx); err != nil {
		t.Fatal(err)
	}
	if err := p.Verify(ctx); err != nil {
		t.Fatal(err)
	}
	p.LearnFacts(&facts)
	main, _ := facts.EtcdMember("main")
	want := []string{"a=https://etcd-a.internal.join.invalid:2380", "b=https://etcd-b.internal.join.invalid:2380", "c=https://etcd-c.internal.join.invalid:2380"}
	if main.ClusterState != StateNew || !slices.Equal(main.InitialCluster, want) {
		t.Fatalf("main fact %+v, want new with %v", main, want)
	}
	if ev, _ := facts.EtcdMember("events"); ev.ClusterState != "" {
		t.Errorf("events has data and needs no decision: %+v", ev)
	}

	// A later run (a new process) starts from the recorded decision.
	again := newPhase()
	again.UseFacts(facts)
	if changes, err := again.Check(ctx); err != nil || len(changes) != 0 {
		t.Fatalf("re-run: %v %v, want nothing to do", changes, err)
	}
}
