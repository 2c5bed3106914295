//go:build e2e

package etcdbackup

import (
	"context"
	"crypto/tls"
	"errors"
	"os"
	"path"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/nodeagent/nodeagent/awsemu"
	"github.com/nodeagent/nodeagent/etcd"
	"github.com/nodeagent/nodeagent/pki"
)

// TestEtcdNeverLosesData drives three real etcd v3.5 members through the
// package's own code: a blank-volume replacement joins as a new member, backups
// go to the S3 state store (and bad ones are refused), and after losing two of
// three members a restore brings the backup's data back.
func TestEtcdNeverLosesData(t *testing.T) {
	l := newLab(t)
	a, b, c := l.members[0], l.members[1], l.members[2]
	const token = "etcd-cluster-main-lab"

	// Three masters boot one after the other on blank volumes. While no peer
	// answers (the cluster has no backups either) a member starts "new" from
	// the tag list; the last finds the first two serving, itself listed and
	// never started, and starts "existing" as the voter it already is.
	for i, m := range l.members {
		p := l.plan(m, false)
		want := etcd.StateNew
		if i == 2 {
			want = etcd.StateExisting
		}
		if p.State != want || len(p.InitialCluster) != 3 || p.Learner || len(p.Removed) > 0 {
			t.Fatalf("first boot of %s: plan %+v, want %s with 3 members", m.name, p, want)
		}
		l.start(m, p, token)
		if i == 1 {
			l.healthy(a, 60*time.Second)
		}
	}
	for _, m := range l.members {
		l.healthy(m, 60*time.Second)
	}
	all := l.client(a)
	fill(t, all, "/before-backup/", 1000, 100)

	ctx := context.Background()
	leader := l.leader(all)
	taker := &Taker{Store: l.store, Cluster: "main", Member: leader.name, Endpoint: leader.clientURL(), Scratch: t.TempDir(), Tool: l.tool}

	t.Run("the leader takes a verified backup; the others do not", func(t *testing.T) {
		for _, m := range l.members {
			if m == leader {
				continue
			}
			tk := *taker
			tk.Member, tk.Endpoint = m.name, m.clientURL()
			res, err := tk.Tick(ctx, l.client(m, m), time.Now())
			if err != nil || res.Taken != nil || res.Skipped != "not the leader" {
				t.Fatalf("follower %s: %+v %v", m.name, res, err)
			}
		}
		res, err := taker.Tick(ctx, l.client(leader, leader), time.Now())
		if err != nil || res.Taken == nil {
			t.Fatalf("leader: %+v %v", res, err)
		}
		got := res.Taken
		if got.Revision == 0 || got.Keys < 1000 || got.EtcdVersion != "3.5.35" || len(got.SHA256) != 64 || got.Size == 0 {
			t.Errorf("backup info %+v", got.Info)
		}
		if !strings.HasPrefix(got.Dir, labCluster+"/backups/etcd/main/") || got.Name() != got.Time.Format(time.RFC3339) {
			t.Errorf("backup dir %s", got.Dir)
		}
		again, err := taker.Tick(ctx, l.client(leader, leader), time.Now())
		if err != nil || again.Taken != nil || !strings.HasPrefix(again.Skipped, "the last backup is") {
			t.Errorf("second tick within the hour: %+v %v", again, err)
		}
	})
	fill(t, all, "/after-backup/", 100, 10)

	t.Run("a blank volume's member rejoins as a new member without quorum loss", func(t *testing.T) {
		stop := l.watchMembers(l.client(a, a, b))
		l.stop(c)
		if err := os.RemoveAll(c.volume); err != nil {
			t.Fatal(err)
		}
		if err := os.Mkdir(c.volume, 0o700); err != nil { // the replacement's blank volume
			t.Fatal(err)
		}
		start := time.Now()
		p := l.plan(c, true)
		if p.State != etcd.StateExisting || !p.Learner || len(p.Removed) != 1 || !strings.HasPrefix(p.Removed[0], "c=") || len(p.InitialCluster) != 3 {
			t.Fatalf("replacement plan %+v", p)
		}
		l.start(c, p, token)
		// The etcd-health phase, as the replacement runs it, promotes the
		// learner once it has caught up and is done when it is a healthy voter.
		tlsCfg, err := pki.ClientTLS(c.root, "main")
		if err != nil {
			t.Fatal(err)
		}
		health := etcd.NewHealthPhase(etcd.HealthOptions{Timeout: 90 * time.Second,
			TLS: func(string) (*tls.Config, error) { return tlsCfg, nil },
			Clusters: []etcd.Member{{Cluster: "main", Name: "c", ClientURL: c.clientURL(), PeerURL: c.peerURL(),
				PeerClientURLs: []string{a.clientURL(), b.clientURL()}}}})
		if err := health.Act(ctx); err != nil {
			t.Fatalf("etcd-health of the replacement: %v", err)
		}
		if err := health.Verify(ctx); err != nil {
			t.Fatal(err)
		}
		if r := health.Results(); len(r) != 1 || r[0].Health.IsLearner || len(r[0].Health.Members) != 3 {
			t.Fatalf("replacement after etcd-health: %+v", r)
		}
		l.healthy(c, 30*time.Second)
		caughtUp := time.Since(start)
		cOnly := l.client(c, c)
		if n := count(t, cOnly, "/before-backup/", true); n != 1000 {
			t.Errorf("c serves %d of 1000 keys", n)
		}
		if n := count(t, cOnly, "/after-backup/", true); n != 100 {
			t.Errorf("c serves %d of 100 later keys", n)
		}
		maxMembers, failed := stop()
		if maxMembers > 3 || failed > 0 {
			t.Errorf("during the replacement: up to %d members, %d failed writes", maxMembers, failed)
		}
		ml, err := all.MemberList(ctx)
		if err != nil || len(ml.Members) != 3 {
			t.Fatalf("members after: %v %v", ml, err)
		}
		t.Logf("FIGURE etcd blank replacement caught up and promoted: %s", caughtUp.Round(100*time.Millisecond))
	})

	t.Run("corrupt backups are refused and the next one is offered", func(t *testing.T) {
		good, err := l.store.List(ctx, "main")
		if err != nil || len(good) != 1 {
			t.Fatalf("backups %v %v", good, err)
		}
		// Two newer backups whose snapshots went bad in the store.
		for i, corrupt := range []func([]byte) []byte{
			func(b []byte) []byte { b[len(b)/2] ^= 0xff; return b }, // hash mismatch
			func(b []byte) []byte { return b[:len(b)/3] },           // truncated object
		} {
			res, err := taker.Tick(ctx, l.client(l.leader(all)), time.Now().Add(time.Duration(i+1)*2*time.Hour))
			if err != nil || res.Taken == nil {
				t.Fatalf("backup %d: %+v %v", i, res, err)
			}
			key := path.Join(res.Taken.Dir, SnapshotName)
			obj, _ := l.emu.E.Object(bucket, key)
			l.emu.E.PutObject(bucket, key, corrupt(obj))
		}
		dst := filepath.Join(t.TempDir(), "s")
		got, refused, err := l.store.Select(ctx, "main", "latest", dst)
		if err != nil || got.Name() != good[0].Name() || len(refused) != 2 {
			t.Fatalf("latest: %v (refused %v), %v; want %s", got.Name(), refused, err, good[0].Name())
		}
		for _, r := range refused {
			if !errors.Is(r, ErrCorrupt) || !strings.Contains(r.Error(), "its info file says") {
				t.Errorf("refusal %q is not a clear corruption error", r)
			}
		}
		all, _ := l.store.List(ctx, "main")
		if _, _, err := l.store.Select(ctx, "main", all[0].Name(), dst); !errors.Is(err, ErrCorrupt) {
			t.Errorf("named corrupt backup: %v, want refused", err)
		}
		// Clean up so that "latest" is the good one for the restore below.
		for _, b := range all[:2] {
			for _, n := range []string{InfoName, SnapshotName} {
				deleteObject(t, l, path.Join(b.Dir, n))
			}
		}
	})

	t.Run("a failing S3 delays a backup but never stores a partial one", func(t *testing.T) {
		fill(t, all, "/bulk/", 200, 64<<10) // ~13 MB: a multipart upload of 3 parts
		l.emu.E.SetFaults(awsemu.ServiceS3, awsemu.Faults{ErrorRate: 1})
		when := time.Now().Add(10 * time.Hour)
		tctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		_, err := taker.Tick(tctx, l.client(l.leader(all)), when)
		cancel()
		if err == nil {
			t.Fatal("backup succeeded while every S3 call failed")
		}
		l.emu.E.SetFaults(awsemu.ServiceS3, awsemu.Faults{ThrottleRate: 0.3})
		bs, _ := l.store.List(ctx, "main")
		for _, b := range bs {
			if b.Time.Equal(when.UTC().Truncate(time.Second)) {
				t.Fatalf("a failed backup is listed: %+v", b)
			}
		}
		// With 30% of calls throttled the SDK's retryer gets it through.
		res, err := taker.Tick(ctx, l.client(l.leader(all)), when.Add(time.Minute))
		l.emu.E.SetFaults(awsemu.ServiceS3, awsemu.Faults{})
		if err != nil || res.Taken == nil {
			t.Fatalf("throttled backup: %+v %v", res, err)
		}
		if res.Taken.Size < 12<<20 {
			t.Errorf("backup of %d bytes, want a multipart-sized one", res.Taken.Size)
		}
		if n := l.emu.E.Calls(awsemu.ServiceS3, "UploadPart"); n < 3 {
			t.Errorf("%d UploadPart calls, want a multipart upload", n)
		}
		dst := filepath.Join(t.TempDir(), "s")
		if err := l.store.Download(ctx, *res.Taken, dst); err != nil {
			t.Fatalf("the throttled backup does not verify: %v", err)
		}
		// Remove it again: the restore below wants the small backup.
		for _, n := range []string{InfoName, SnapshotName} {
			deleteObject(t, l, path.Join(res.Taken.Dir, n))
		}
		if p := l.emu.E.PendingUploads(); len(p) > 0 {
			t.Logf("multipart uploads left by the failed attempt (their abort failed too; no object exists): %v", p)
		}
	})

	t.Run("after losing two of three members a restore serves the backup's keys", func(t *testing.T) {
		l.stop(b)
		l.stop(c)
		cmd, refused, err := l.store.RequestRestore(ctx, l.tool, "main", "latest", "a", t.TempDir(), time.Now())
		if err != nil || len(refused) != 0 {
			t.Fatalf("request: %v (refused %v)", err, refused)
		}
		start := time.Now()
		// Every master learns of the command from the state store.
		for _, m := range l.members {
			pc, err := l.store.Pending(ctx, "main", m.volume)
			if err != nil || pc == nil || pc.ID != cmd.ID {
				t.Fatalf("%s: pending %v %v", m.name, pc, err)
			}
		}
		step := func(m *member) Step {
			return Step{Store: l.store, Command: cmd, Member: m.name, PeerURL: m.peerURL(), Volume: m.volume, Scratch: t.TempDir(), Tool: l.tool}
		}
		// b cannot go ahead before a has restored.
		if _, err := step(b).Apply(ctx, time.Now()); err == nil || !strings.Contains(err.Error(), "waiting for member a") {
			t.Fatalf("b before a restored: %v", err)
		}
		l.stop(a)
		keptA, err := step(a).Apply(ctx, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		l.start(a, etcd.JoinPlan{State: etcd.StateNew, InitialCluster: []string{"a=" + a.peerURL()}}, cmd.Token)
		l.healthy(a, 60*time.Second)
		aCli := l.client(a, a)
		ml, err := aCli.MemberList(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := l.store.MarkRestored(ctx, "main", Restored{ID: cmd.ID, Member: "a", ClusterID: ml.Header.ClusterId, At: time.Now()}); err != nil {
			t.Fatal(err)
		}
		restoredAt := time.Since(start)
		for _, m := range []*member{b, c} {
			kept, err := step(m).Apply(ctx, time.Now())
			if err != nil {
				t.Fatal(err)
			}
			if m == b && kept == "" {
				t.Errorf("b's old data dir was not kept")
			}
			self := l.self(m)
			self.ClusterID = ml.Header.ClusterId
			jctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			p, err := etcd.PlanJoin(jctx, l.client(m, a), self, true)
			cancel()
			if err != nil || p.State != etcd.StateExisting {
				t.Fatalf("%s joins the restored cluster: %+v %v", m.name, p, err)
			}
			l.start(m, p, cmd.Token)
			l.eventually(m.name+" promoted", 90*time.Second, func() error {
				ok, err := etcd.Promote(ctx, aCli, m.peerURL())
				if err != nil {
					return err
				}
				_ = ok
				ml, err := aCli.MemberList(ctx)
				if err != nil {
					return err
				}
				for _, x := range ml.Members {
					if x.Name == m.name && !x.IsLearner {
						return nil
					}
				}
				return errors.New("still a learner")
			})
		}
		t.Logf("FIGURE etcd restore (request → restored member serving): %s; all three voting: %s",
			restoredAt.Round(100*time.Millisecond), time.Since(start).Round(100*time.Millisecond))
		cli := l.client(a)
		if n := count(t, cli, "/before-backup/", false); n != 1000 {
			t.Errorf("restored cluster serves %d of the backup's 1000 keys", n)
		}
		if n := count(t, cli, "/after-backup/", false); n != 0 {
			t.Errorf("restored cluster serves %d keys written after the backup", n)
		}
		ml, err = cli.MemberList(ctx)
		if err != nil || len(ml.Members) != 3 {
			t.Fatalf("members after restore: %v %v", ml, err)
		}
		// The old data directories are still on disk.
		for _, dir := range []string{keptA} {
			if _, err := os.Stat(filepath.Join(dir, "member", "snap", "db")); err != nil {
				t.Errorf("old data dir %s: %v", dir, err)
			}
		}
		olds, _ := filepath.Glob(filepath.Join(b.volume, "data.before-restore-*"))
		if len(olds) != 1 {
			t.Errorf("b's kept data dirs: %v", olds)
		}
		// The command is done everywhere: nothing pending.
		for _, m := range l.members {
			if pc, err := l.store.Pending(ctx, "main", m.volume); err != nil || pc != nil {
				t.Errorf("%s: still pending %v %v", m.name, pc, err)
			}
		}
	})
}

// leader is the member that leads now.
func (l *lab) leader(cli *clientv3.Client) *member {
	l.t.Helper()
	for _, m := range l.members {
		if m.cmd == nil {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		st, err := cli.Status(ctx, m.clientURL())
		cancel()
		if err == nil && st.Header != nil && st.Leader == st.Header.MemberId {
			return m
		}
	}
	l.t.Fatal("no member leads")
	return nil
}

func deleteObject(t *testing.T, l *lab, key string) {
	t.Helper()
	if _, err := l.store.S3.DeleteObject(context.Background(), &s3.DeleteObjectInput{Bucket: aws.String(bucket), Key: aws.String(key)}); err != nil {
		t.Fatal(err)
	}
}
