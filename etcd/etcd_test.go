package etcd

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/url"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"

	"github.com/nodeagent/nodeagent/bootstrap"
	"github.com/nodeagent/nodeagent/config"
	"github.com/nodeagent/nodeagent/internal/fsutil"
	"github.com/nodeagent/nodeagent/pki"
)

// cluster is one real etcd member started from the certificates the pki phase
// issued into root.
type cluster struct {
	root      fsutil.Root
	name      string // etcd cluster
	member    string
	clientURL string
	peerURL   string
	etcd      *embed.Etcd
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// issue runs the pki phase for a control-plane node holding member of etcd
// cluster name, with a fresh CA, into a new root.
func issue(t *testing.T, name, member string, clientPort, peerPort int) fsutil.Root {
	t.Helper()
	caCert, caKey, err := pki.GenerateCA("etcd-test-ca", 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	root := fsutil.Root(t.TempDir())
	ph := pki.NewPhase(pki.Options{
		Root: root, CA: staticCA{caCert, caKey}, ClusterName: "test.example.com", NodeName: "cp-1",
		NodeIP: net.ParseIP("192.0.2.10"), Role: config.RoleControlPlane,
		EtcdClusters: []config.EtcdCluster{{Name: name, ClientPort: clientPort, PeerPort: peerPort}},
		EtcdMember:   map[string]string{name: member},
	})
	ctx := context.Background()
	if _, err := ph.Check(ctx); err != nil {
		t.Fatal(err)
	}
	if err := ph.Act(ctx); err != nil {
		t.Fatal(err)
	}
	if err := ph.Verify(ctx); err != nil {
		t.Fatal(err)
	}
	return root
}

type staticCA struct{ cert, key []byte }

func (s staticCA) Load(context.Context) ([]byte, []byte, error) { return s.cert, s.key, nil }

// newCluster issues certificates; start runs etcd on them.
func newCluster(t *testing.T, name, member string) *cluster {
	t.Helper()
	cp, pp := freePort(t), freePort(t)
	return &cluster{
		root: issue(t, name, member, cp, pp), name: name, member: member,
		clientURL: fmt.Sprintf("https://127.0.0.1:%d", cp), peerURL: fmt.Sprintf("https://127.0.0.1:%d", pp),
	}
}

func (c *cluster) start(t *testing.T) { c.startWith(t, nil, true) }

// startWith starts the member with absentPeers in its initial cluster too (names
// → peer URLs nobody listens on); wait says whether to wait until it serves.
func (c *cluster) startWith(t *testing.T, absentPeers map[string]string, wait bool) {
	t.Helper()
	p := pki.DefaultPaths()
	tlsInfo := func(cert, key string) transport.TLSInfo {
		return transport.TLSInfo{
			CertFile: c.root.Path(cert), KeyFile: c.root.Path(key),
			TrustedCAFile: c.root.Path(p.CACert), ClientCertAuth: true,
		}
	}
	cu, _ := url.Parse(c.clientURL)
	pu, _ := url.Parse(c.peerURL)
	cfg := embed.NewConfig()
	cfg.Name = c.member
	cfg.Dir = filepath.Join(t.TempDir(), "data")
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{*cu}, []url.URL{*cu}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{*pu}, []url.URL{*pu}
	cfg.InitialCluster = c.member + "=" + c.peerURL
	for name, u := range absentPeers {
		cfg.InitialCluster += "," + name + "=" + u
	}
	cfg.ClientTLSInfo = tlsInfo(p.EtcdServerCert(c.name), p.EtcdServerKey(c.name))
	cfg.PeerTLSInfo = tlsInfo(p.EtcdPeerCert(c.name), p.EtcdPeerKey(c.name))
	cfg.ClientAutoTLS, cfg.PeerAutoTLS = false, false
	cfg.LogLevel = "error"
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		t.Fatalf("start etcd: %v", err)
	}
	c.etcd = e
	if !wait {
		// embed's Close waits for client servers that a member which never
		// became ready never started; stopping the server first lets them go.
		t.Cleanup(func() { e.Server.HardStop(); e.Close() })
		return
	}
	t.Cleanup(e.Close)
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		t.Fatalf("etcd failed: %v", err)
	case <-time.After(60 * time.Second):
		t.Fatal("etcd not ready after 60s")
	}
}

func (c *cluster) tls(cluster string) (*tls.Config, error) { return pki.ClientTLS(c.root, cluster) }

func (c *cluster) client(t *testing.T) *clientv3.Client {
	t.Helper()
	cfg, err := c.tls(c.name)
	if err != nil {
		t.Fatal(err)
	}
	cli, err := newClient([]string{c.clientURL}, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

func (c *cluster) members() []Member {
	return []Member{{Cluster: c.name, Name: c.member, ClientURL: c.clientURL}}
}

func TestHealthAgainstRealEtcd(t *testing.T) {
	c := newCluster(t, "main", "a")
	c.start(t)
	ctx := context.Background()

	t.Run("Check reads status and member list", func(t *testing.T) {
		h, err := Check(ctx, c.client(t), c.clientURL)
		if err != nil {
			t.Fatal(err)
		}
		if h.Name != "a" || !h.IsLeader || h.Leader != h.MemberID || h.RaftIndex == 0 || h.DBSize == 0 || h.Version == "" {
			t.Errorf("health %+v", h)
		}
		if len(h.Members) != 1 || h.Members[0].Name != "a" || h.Members[0].ID != h.MemberID ||
			len(h.Members[0].PeerURLs) != 1 || h.Members[0].PeerURLs[0] != c.peerURL {
			t.Errorf("members %+v", h.Members)
		}
	})

	t.Run("phase is converged and verifies", func(t *testing.T) {
		ph := NewHealthPhase(HealthOptions{Root: c.root, Clusters: c.members(), TLS: c.tls})
		changes, err := ph.Check(ctx)
		if err != nil || len(changes) != 0 {
			t.Fatalf("check: %v %v", changes, err)
		}
		if err := ph.Verify(ctx); err != nil {
			t.Fatal(err)
		}
		res := ph.Results()
		if len(res) != 1 || res[0].Err != "" || res[0].Health.Name != "a" || len(res[0].Health.Members) != 1 {
			t.Errorf("results %+v", res)
		}
	})

	t.Run("wrong member name is not healthy", func(t *testing.T) {
		ph := NewHealthPhase(HealthOptions{Clusters: []Member{{Cluster: "main", Name: "b", ClientURL: c.clientURL}}, TLS: c.tls})
		changes, err := ph.Check(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(changes) != 1 || changes[0].String() != `wait etcd main (`+c.clientURL+` answers as member "a", want "b")` {
			t.Errorf("changes %v", changes)
		}
	})

	// TLS is mutual: etcd must refuse a client it cannot verify, and the client
	// must refuse a server it cannot verify.
	other := issue(t, "main", "a", 1, 2)
	good, err := c.tls("main")
	if err != nil {
		t.Fatal(err)
	}
	otherCfg, err := pki.ClientTLS(other, "main")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		cfg  *tls.Config
		why  string // the refusal, as the probe reports it
	}{
		{"client certificate from another CA", &tls.Config{Certificates: otherCfg.Certificates, RootCAs: good.RootCAs},
			"(remote error: tls: unknown certificate authority)"},
		{"no client certificate", &tls.Config{RootCAs: good.RootCAs}, "(remote error: tls: certificate required)"},
		{"server signed by an untrusted CA", &tls.Config{Certificates: good.Certificates, RootCAs: otherCfg.RootCAs},
			"x509: certificate signed by unknown authority"},
		{"empty trust store", &tls.Config{Certificates: good.Certificates, RootCAs: x509.NewCertPool()},
			"x509: certificate signed by unknown authority"},
	} {
		t.Run("rejects "+tc.name, func(t *testing.T) {
			ph := NewHealthPhase(HealthOptions{Clusters: c.members(), ProbeTimeout: 2 * time.Second,
				TLS: func(string) (*tls.Config, error) { return tc.cfg, nil }})
			changes, err := ph.Check(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if len(changes) != 1 || changes[0].Action != "wait" || changes[0].Target != "main" {
				t.Fatalf("changes %v, want wait etcd main", changes)
			}
			if !strings.Contains(changes[0].Detail, tc.why) {
				t.Errorf("refusal %q, want it to say %q", changes[0].Detail, tc.why)
			}
			if err := ph.Verify(ctx); err == nil {
				t.Fatal("verify passed with bad TLS")
			}
		})
	}
}

func TestHealthPhaseWaitsForEtcd(t *testing.T) {
	c := newCluster(t, "events", "b")
	ctx := context.Background()

	t.Run("bounded wait gives up", func(t *testing.T) {
		ph := NewHealthPhase(HealthOptions{Clusters: c.members(), TLS: c.tls, Timeout: 1500 * time.Millisecond, ProbeTimeout: time.Second})
		changes, err := ph.Check(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(changes) != 1 || !strings.HasPrefix(changes[0].String(), "wait etcd events (") ||
			!strings.Contains(changes[0].Detail, "connection refused") {
			t.Fatalf("changes %v", changes)
		}
		start := time.Now()
		err = ph.Act(ctx)
		if err == nil || !strings.Contains(err.Error(), "etcd not healthy after 1.5s") {
			t.Fatalf("act: %v", err)
		}
		// Nothing listens: the member is this node's problem, not a quorum's.
		if bootstrap.IsWaiting(err) {
			t.Errorf("a member that never started counts as waiting for peers: %v", err)
		}
		// One probe may still be in flight at the deadline; it is bounded too.
		if d := time.Since(start); d > 8*time.Second {
			t.Errorf("gave up after %s", d)
		}
	})

	t.Run("healthy once etcd is up", func(t *testing.T) {
		ph := NewHealthPhase(HealthOptions{Clusters: c.members(), TLS: c.tls, Timeout: time.Minute})
		done := make(chan error, 1)
		go func() { done <- ph.Act(ctx) }()
		time.Sleep(time.Second)
		c.start(t)
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(time.Minute):
			t.Fatal("Act did not return")
		}
		if err := ph.Verify(ctx); err != nil {
			t.Fatal(err)
		}
	})
}

func TestPublisher(t *testing.T) {
	c := newCluster(t, "main", "a")
	c.start(t)
	ctx := context.Background()
	watcher := c.client(t)
	cfg, err := c.tls("main")
	if err != nil {
		t.Fatal(err)
	}
	get := func(t *testing.T, key string) (value string, lease clientv3.LeaseID, modRev int64, ok bool) {
		t.Helper()
		r, err := watcher.Get(ctx, key)
		if err != nil {
			t.Fatal(err)
		}
		if len(r.Kvs) == 0 {
			return "", 0, 0, false
		}
		kv := r.Kvs[0]
		return string(kv.Value), clientv3.LeaseID(kv.Lease), kv.ModRevision, true
	}
	waitGone := func(t *testing.T, key string, within time.Duration) time.Duration {
		t.Helper()
		start := time.Now()
		for time.Since(start) < within {
			if _, _, _, ok := get(t, key); !ok {
				return time.Since(start)
			}
			time.Sleep(100 * time.Millisecond)
		}
		t.Fatalf("%s still present after %s", key, within)
		return 0
	}

	t.Run("put under a kept-alive lease, deleted on close", func(t *testing.T) {
		p, err := NewPublisher([]string{c.clientURL}, cfg, "node-1", 2*time.Second, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := p.Publish(ctx, []byte(`{"ready":false}`)); err != nil {
			t.Fatal(err)
		}
		v, lease, rev1, ok := get(t, "/nodeagent/nodes/node-1")
		if !ok || v != `{"ready":false}` || lease == 0 {
			t.Fatalf("key: %q lease %x present %v", v, lease, ok)
		}
		ttl, err := watcher.TimeToLive(ctx, lease)
		if err != nil || ttl.TTL <= 0 || ttl.GrantedTTL != 2 {
			t.Fatalf("lease ttl %+v %v", ttl, err)
		}
		// Outlive the TTL twice: the keep-alive holds the key.
		time.Sleep(4 * time.Second)
		if _, _, _, ok := get(t, "/nodeagent/nodes/node-1"); !ok {
			t.Fatal("key expired although the lease is kept alive")
		}
		if err := p.Publish(ctx, []byte(`{"ready":false}`)); err != nil {
			t.Fatal(err)
		}
		if _, _, rev, _ := get(t, "/nodeagent/nodes/node-1"); rev != rev1 {
			t.Errorf("unchanged status was put again (rev %d → %d)", rev1, rev)
		}
		if err := p.Publish(ctx, []byte(`{"ready":true}`)); err != nil {
			t.Fatal(err)
		}
		if v, l, _, _ := get(t, "/nodeagent/nodes/node-1"); v != `{"ready":true}` || l != lease {
			t.Errorf("after change: %q lease %x, want same lease %x", v, l, lease)
		}
		if err := p.Close(); err != nil {
			t.Fatal(err)
		}
		if _, _, _, ok := get(t, "/nodeagent/nodes/node-1"); ok {
			t.Error("key still present after Close")
		}
		if err := p.Publish(ctx, []byte(`{}`)); err == nil {
			t.Error("publish after close succeeded")
		}
	})

	t.Run("key expires with the lease when the agent dies", func(t *testing.T) {
		p, err := NewPublisher([]string{c.clientURL}, cfg, "node-2", 2*time.Second, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := p.Publish(ctx, []byte(`{"ready":true}`)); err != nil {
			t.Fatal(err)
		}
		// A crash: the keep-alive stops and nothing revokes the lease.
		p.mu.Lock()
		p.stopKA()
		p.mu.Unlock()
		p.cli.Close()
		d := waitGone(t, "/nodeagent/nodes/node-2", 10*time.Second)
		t.Logf("key gone %s after the keep-alive stopped (TTL 2s)", d.Round(100*time.Millisecond))
	})

	t.Run("lost lease is replaced on the next publish", func(t *testing.T) {
		p, err := NewPublisher([]string{c.clientURL}, cfg, "node-3", 2*time.Second, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { p.Close() })
		if err := p.Publish(ctx, []byte(`{"n":1}`)); err != nil {
			t.Fatal(err)
		}
		_, lease, _, _ := get(t, "/nodeagent/nodes/node-3")
		if _, err := watcher.Revoke(ctx, lease); err != nil {
			t.Fatal(err)
		}
		waitGone(t, "/nodeagent/nodes/node-3", 5*time.Second)
		if err := p.Publish(ctx, []byte(`{"n":2}`)); err != nil {
			t.Fatal(err)
		}
		v, l, _, ok := get(t, "/nodeagent/nodes/node-3")
		if !ok || v != `{"n":2}` || l == 0 || l == lease {
			t.Errorf("after re-grant: %q lease %x (old %x) present %v", v, l, lease, ok)
		}
	})

	t.Run("bad arguments", func(t *testing.T) {
		for _, tc := range []struct {
			eps  []string
			node string
			ttl  time.Duration
			want string
		}{
			{nil, "n", time.Minute, "no endpoints"},
			{[]string{c.clientURL}, "", time.Minute, "empty node name"},
			{[]string{c.clientURL}, "n", time.Millisecond, "below one second"},
		} {
			if _, err := NewPublisher(tc.eps, cfg, tc.node, tc.ttl, nil); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("NewPublisher(%v, %q, %s): %v, want %q", tc.eps, tc.node, tc.ttl, err, tc.want)
			}
		}
	})
}

// TestHealthPhaseWaitsForPeers: a member that runs but whose peers are not up
// has no quorum; giving up on it is waiting (the master waits for its peers, the
// launch is not abandoned), and the reason names the peers it cannot reach.
func TestHealthPhaseWaitsForPeers(t *testing.T) {
	c := newCluster(t, "main", "a")
	c.startWith(t, map[string]string{"b": fmt.Sprintf("https://127.0.0.1:%d", freePort(t)), "c": fmt.Sprintf("https://127.0.0.1:%d", freePort(t))}, false)
	ph := NewHealthPhase(HealthOptions{Clusters: c.members(), TLS: c.tls, Timeout: 4 * time.Second, ProbeTimeout: time.Second,
		ClusterName: "peers.k8s.local", PeerPorts: map[string]int{"main": 2380}})
	ph.UseFacts(bootstrap.Facts{EtcdMembers: []bootstrap.EtcdMemberFact{{Cluster: "main", Member: "a", Members: []string{"a", "b", "c"}}}})
	err := ph.Act(context.Background())
	if !bootstrap.IsWaiting(err) {
		t.Fatalf("Act = %v, want waiting for quorum", err)
	}
	for _, want := range []string{"no quorum", "peers: b unreachable", "etcd-b.internal.peers.k8s.local", "c unreachable"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("reason %q does not say %q", err, want)
		}
	}
}
