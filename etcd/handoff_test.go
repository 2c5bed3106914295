package etcd

import (
	"context"
	"fmt"
	"net/url"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
)

// A master leaving hands raft leadership to another voting member, without
// touching the member list; a member that does not lead, or leads alone,
// changes nothing and says so.
func TestHandOffMovesLeadershipAndKeepsTheMembers(t *testing.T) {
	urls := startPlainCluster(t, "a", "b", "c")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	all, err := clientv3.New(clientv3.Config{Endpoints: urls, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer all.Close()
	leaderURL := func() string {
		t.Helper()
		for _, u := range urls {
			st, err := all.Status(ctx, u)
			if err == nil && st.Leader == st.Header.MemberId {
				return u
			}
		}
		t.Fatal("no leader")
		return ""
	}
	before := leaderURL()
	for _, u := range urls {
		if u == before {
			continue
		}
		if got, err := HandOff(ctx, all, u); err != nil || got != "not the leader" {
			t.Errorf("hand-off on a follower: %q, %v", got, err)
		}
		break
	}
	leader, err := clientv3.New(clientv3.Config{Endpoints: []string{before}, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer leader.Close()
	got, err := HandOff(ctx, leader, before)
	if err != nil || !strings.HasPrefix(got, "leadership moved to ") {
		t.Fatalf("hand-off on the leader: %q, %v", got, err)
	}
	if after := leaderURL(); after == before {
		t.Errorf("%s still leads after the hand-off", before)
	}
	ml, err := all.MemberList(ctx)
	if err != nil || len(ml.Members) != 3 {
		t.Errorf("members after the hand-off: %v, %v; want the same 3", ml, err)
	}

	alone := startPlainCluster(t, "z")
	one, err := clientv3.New(clientv3.Config{Endpoints: alone, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer one.Close()
	if got, err := HandOff(ctx, one, alone[0]); err != nil || !strings.Contains(got, "only voting member") {
		t.Errorf("hand-off alone: %q, %v", got, err)
	}
}

// startPlainCluster runs one embedded etcd member per name (plain HTTP on the
// loopback) as one cluster and returns their client URLs.
func startPlainCluster(t *testing.T, names ...string) []string {
	t.Helper()
	var initial []string
	peers, clients := map[string]url.URL{}, map[string]url.URL{}
	for _, n := range names {
		peers[n] = url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", freePort(t))}
		clients[n] = url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", freePort(t))}
		p := peers[n]
		initial = append(initial, n+"="+p.String())
	}
	var (
		wg   sync.WaitGroup
		urls []string
	)
	dir := t.TempDir()
	for _, n := range names {
		cfg := embed.NewConfig()
		cfg.Name = n
		cfg.Dir = filepath.Join(dir, n)
		cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{clients[n]}, []url.URL{clients[n]}
		cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{peers[n]}, []url.URL{peers[n]}
		cfg.InitialCluster = strings.Join(initial, ",")
		cfg.InitialClusterToken = "handoff-" + names[0]
		cfg.LogLevel = "error"
		e, err := embed.StartEtcd(cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(e.Close)
		c := clients[n]
		urls = append(urls, c.String())
		wg.Add(1)
		go func() {
			defer wg.Done()
			select {
			case <-e.Server.ReadyNotify():
			case <-time.After(time.Minute):
				t.Errorf("etcd %s not ready after a minute", n)
			}
		}()
	}
	wg.Wait()
	return urls
}
