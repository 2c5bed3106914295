//go:build e2e

package etcdbackup

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/nodeagent/nodeagent/awsemu"
	"github.com/nodeagent/nodeagent/cloud"
	"github.com/nodeagent/nodeagent/config"
	"github.com/nodeagent/nodeagent/etcd"
	"github.com/nodeagent/nodeagent/internal/fsutil"
	"github.com/nodeagent/nodeagent/pki"
)

var (
	etcdBin    = flag.String("etcd", "/var/cache/nodeagent-e2e/etcd-v3.5.35", "real etcd server binary (hack/build-etcd.sh)")
	etcdutlBin = flag.String("etcdutl", "/var/cache/nodeagent-e2e/etcdutl-v3.5.35", "etcdutl of the same etcd version (ETCD_PROGRAM=etcdutl hack/build-etcd.sh)")
)

const (
	labCluster = "lab.k8s.local"
	bucket     = "state"
)

// member is one real etcd process of the lab: its own loopback address (so every
// member listens on the standard ports), certificates the pki phase issued for
// it, and a data directory standing in for its volume.
type member struct {
	name    string
	ip      string
	root    fsutil.Root
	volume  string // the "mounted volume"; etcd's data is in volume/data
	cmd     *exec.Cmd
	exited  chan struct{}
	logFile string
}

func (m *member) dataDir() string   { return filepath.Join(m.volume, "data") }
func (m *member) peerURL() string   { return "https://" + m.ip + ":2380" }
func (m *member) clientURL() string { return "https://" + m.ip + ":2379" }

// lab is three members of etcd cluster main and the S3 emulator holding the
// state store.
type lab struct {
	t       testing.TB
	members []*member
	emu     *awsemu.Running
	store   *Store
	tool    SnapshotTool // etcd's own etcdutl, run as a program
}

func newLab(t testing.TB) *lab {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("the etcd lab needs root (loopback addresses 127.0.0.11-13 and real etcd processes)")
	}
	if _, err := os.Stat(*etcdBin); err != nil {
		t.Fatalf("real etcd binary missing (make e2e-parts builds it with hack/build-etcd.sh): %v", err)
	}
	if _, err := os.Stat(*etcdutlBin); err != nil {
		t.Fatalf("real etcdutl binary missing (make e2e-parts builds it with ETCD_PROGRAM=etcdutl hack/build-etcd.sh): %v", err)
	}
	caCert, caKey, err := pki.GenerateCA("etcd-lab-ca", 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	l := &lab{t: t, tool: Etcdutl{Bin: Path(*etcdutlBin)}}
	names := []string{"a", "b", "c"}
	for i, n := range names {
		m := &member{name: n, ip: fmt.Sprintf("127.0.0.%d", 11+i), root: fsutil.Root(t.TempDir())}
		ph := pki.NewPhase(pki.Options{
			Root: m.root, CA: staticCA{caCert, caKey}, ClusterName: labCluster, NodeName: "master-" + n,
			NodeIP: net.ParseIP(m.ip), Role: config.RoleControlPlane,
			EtcdClusters: []config.EtcdCluster{{Name: "main", ClientPort: 2379, PeerPort: 2380}},
			EtcdMember:   map[string]string{"main": n},
		})
		ctx := context.Background()
		if _, err := ph.Check(ctx); err != nil {
			t.Fatal(err)
		}
		if err := ph.Act(ctx); err != nil {
			t.Fatal(err)
		}
		m.volume = t.TempDir()
		m.logFile = filepath.Join(t.TempDir(), "etcd.log")
		l.members = append(l.members, m)
	}
	l.emu = awsemu.Start(t, &awsemu.World{Buckets: map[string]map[string]string{bucket: {}}}, awsemu.Options{Seed: 9})
	l.emu.Setenv(t, "")
	cfg, err := cloud.LoadConfig(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	l.store = &Store{S3: cloud.NewS3(cfg), Bucket: bucket, Prefix: labCluster, PartSize: 5 << 20}
	t.Cleanup(func() {
		for _, m := range l.members {
			l.stop(m)
		}
	})
	return l
}

type staticCA struct{ cert, key []byte }

func (s staticCA) Load(context.Context) ([]byte, []byte, error) { return s.cert, s.key, nil }

func (l *lab) self(m *member) etcd.Self {
	return etcd.Self{Cluster: "main", Name: m.name, Members: []string{"a", "b", "c"}, PeerURLOf: func(n string) string {
		for _, o := range l.members {
			if o.name == n {
				return o.peerURL()
			}
		}
		return ""
	}}
}

// client reaches the given members (all when none given) with m's client certificate.
func (l *lab) client(via *member, to ...*member) *clientv3.Client {
	l.t.Helper()
	if len(to) == 0 {
		to = l.members
	}
	tlsCfg, err := pki.ClientTLS(via.root, "main")
	if err != nil {
		l.t.Fatal(err)
	}
	var eps []string
	for _, m := range to {
		eps = append(eps, m.clientURL())
	}
	cli, err := etcd.NewClient(eps, tlsCfg)
	if err != nil {
		l.t.Fatal(err)
	}
	l.t.Cleanup(func() { cli.Close() })
	return cli
}

// plan asks m's live peers how m, whose volume is blank, must start.
func (l *lab) plan(m *member, existed bool) etcd.JoinPlan {
	l.t.Helper()
	var peers []*member
	for _, o := range l.members {
		if o != m {
			peers = append(peers, o)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	p, err := etcd.PlanJoin(ctx, l.client(m, peers...), l.self(m), existed)
	if err != nil {
		l.t.Fatalf("plan for %s: %v", m.name, err)
	}
	return p
}

// start runs m's etcd as its static pod would (the same flags), with the plan's
// initial cluster and state.
func (l *lab) start(m *member, p etcd.JoinPlan, token string) {
	l.t.Helper()
	if err := os.MkdirAll(m.dataDir(), 0o700); err != nil {
		l.t.Fatal(err)
	}
	ps := pki.DefaultPaths()
	r := m.root
	args := []string{
		"--name=" + m.name, "--data-dir=" + m.dataDir(),
		"--listen-client-urls=" + m.clientURL(), "--advertise-client-urls=" + m.clientURL(),
		"--listen-peer-urls=" + m.peerURL(), "--initial-advertise-peer-urls=" + m.peerURL(),
		"--initial-cluster=" + strings.Join(p.InitialCluster, ","), "--initial-cluster-state=" + p.State,
		"--initial-cluster-token=" + token,
		"--cert-file=" + r.Path(ps.EtcdServerCert("main")), "--key-file=" + r.Path(ps.EtcdServerKey("main")),
		"--trusted-ca-file=" + r.Path(ps.CACert), "--client-cert-auth=true",
		"--peer-cert-file=" + r.Path(ps.EtcdPeerCert("main")), "--peer-key-file=" + r.Path(ps.EtcdPeerKey("main")),
		"--peer-trusted-ca-file=" + r.Path(ps.CACert), "--peer-client-cert-auth=true",
		"--quota-backend-bytes=8589934592", "--log-level=warn",
	}
	log, err := os.OpenFile(m.logFile, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		l.t.Fatal(err)
	}
	m.cmd = exec.Command(*etcdBin, args...)
	m.cmd.Stdout, m.cmd.Stderr = log, log
	if err := m.cmd.Start(); err != nil {
		l.t.Fatal(err)
	}
	m.exited = make(chan struct{})
	go func(c *exec.Cmd, done chan struct{}) { c.Wait(); log.Close(); close(done) }(m.cmd, m.exited)
}

// stop kills m's etcd (SIGKILL: a lost machine, not a clean shutdown).
func (l *lab) stop(m *member) {
	if m.cmd == nil {
		return
	}
	m.cmd.Process.Signal(syscall.SIGKILL)
	<-m.exited
	m.cmd = nil
}

// eventually polls cond until it holds or the deadline passes.
func (l *lab) eventually(what string, within time.Duration, cond func() error) {
	l.t.Helper()
	deadline := time.Now().Add(within)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			logs := ""
			for _, m := range l.members {
				b, _ := os.ReadFile(m.logFile)
				if len(b) > 2000 {
					b = b[len(b)-2000:]
				}
				logs += "\n--- " + m.name + "\n" + string(b)
			}
			l.t.Fatalf("%s: not within %s: %v%s", what, within, err, logs)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// healthy waits until m serves a linearizable read.
func (l *lab) healthy(m *member, within time.Duration) {
	l.t.Helper()
	cli := l.client(m, m)
	l.eventually("etcd "+m.name+" healthy", within, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_, err := cli.Get(ctx, "health")
		return err
	})
}

// watchMembers samples the member list until stopped and returns the largest
// count of members and the number of failed writes seen meanwhile.
func (l *lab) watchMembers(cli *clientv3.Client) (stop func() (maxMembers, failedWrites int)) {
	var mu sync.Mutex
	done := make(chan struct{})
	finished := make(chan struct{})
	maxN, failed := 0, 0
	go func() {
		defer close(finished)
		for i := 0; ; i++ {
			select {
			case <-done:
				return
			case <-time.After(100 * time.Millisecond):
			}
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			ml, err := cli.MemberList(ctx)
			_, perr := cli.Put(ctx, "/lab/heartbeat", fmt.Sprint(i))
			cancel()
			mu.Lock()
			if err == nil && len(ml.Members) > maxN {
				maxN = len(ml.Members)
			}
			if perr != nil {
				failed++
			}
			mu.Unlock()
		}
	}()
	return func() (int, int) {
		close(done)
		<-finished
		mu.Lock()
		defer mu.Unlock()
		return maxN, failed
	}
}

// fill writes n keys of size bytes each under prefix, in transactions of at
// most 1 MiB (etcd's request limit is 1.5 MiB).
func fill(t testing.TB, cli *clientv3.Client, prefix string, n, size int) {
	t.Helper()
	val := strings.Repeat("x", size)
	ctx := context.Background()
	batch := max(1, min(64, (1<<20)/max(size, 1)))
	for i := 0; i < n; i += batch {
		var ops []clientv3.Op
		for j := i; j < min(i+batch, n); j++ {
			ops = append(ops, clientv3.OpPut(fmt.Sprintf("%s%06d", prefix, j), val))
		}
		if _, err := cli.Txn(ctx).Then(ops...).Commit(); err != nil {
			t.Fatalf("fill %s: %v", prefix, err)
		}
	}
}

func count(t *testing.T, cli *clientv3.Client, prefix string, serializable bool) int64 {
	t.Helper()
	opts := []clientv3.OpOption{clientv3.WithPrefix(), clientv3.WithCountOnly()}
	if serializable {
		opts = append(opts, clientv3.WithSerializable())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	r, err := cli.Get(ctx, prefix, opts...)
	if err != nil {
		t.Fatalf("count %s: %v", prefix, err)
	}
	return r.Count
}
