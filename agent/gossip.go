package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/nodeagent/nodeagent/bootstrap"
	"github.com/nodeagent/nodeagent/cloud"
	"github.com/nodeagent/nodeagent/config"
	"github.com/nodeagent/nodeagent/gossip"
)

// gossipRunner is the daemon's seat in the cluster's gossip ring.
type gossipRunner struct {
	agent   *gossip.Agent
	mu      sync.Mutex
	ready   bool
	names   []string
	podCIDR netip.Prefix
	// left: the node left the ring on its way out; nothing is published after.
	left bool
	// stopped ends the runner's background work (seed list, formation);
	// wg waits for it.
	stopped chan struct{}
	wg      sync.WaitGroup
}

// gossipEnabled: like kops, a cluster whose name ends in .k8s.local has no DNS and
// relies on the ring for names.
func gossipEnabled(cluster string) bool { return config.GossipCluster(cluster) }

func startGossip(ctx context.Context, o Options, n *Node, names []string) (*gossipRunner, error) {
	spec := n.Config.Spec
	if !gossipEnabled(spec.Cluster.Name) {
		return nil, nil
	}
	if n.AWS == nil {
		return nil, errors.New("gossip: seeds come from EC2, but AWS is not configured")
	}
	keyring, key, err := gossipKeys(ctx, o, n)
	if err != nil {
		return nil, err
	}
	var follow *gossip.KeyringFollow
	if n.Store != nil {
		// Every node follows the keyring document; masters drive rotations.
		follow = &gossip.KeyringFollow{Store: n.Store, Key: cloud.GossipKeyringKey, Every: keyringFollowEvery,
			DriverRole: string(config.RoleControlPlane)}
	}
	ip := net.ParseIP(n.Identity.PrivateIP)
	if ip == nil {
		return nil, fmt.Errorf("gossip: no private IP in instance identity")
	}
	g, err := gossip.Start(ctx, gossip.Config{
		ClusterName: spec.Cluster.Name, NodeName: n.Name, BindIP: ip, Port: spec.Gossip.Port, SecretKey: key,
		Keyring: keyring, FollowKeyring: follow,
		Seeds:     gossipSeeds(n, cloud.NewEC2(*n.AWS), n.Store),
		Role:      string(spec.Role),
		Names:     names,
		HostsFile: o.Root.Path("/etc/hosts"),
		Log:       o.log().With("component", "gossip"),
	})
	if err != nil {
		return nil, fmt.Errorf("gossip: %w", err)
	}
	r := &gossipRunner{agent: g, stopped: make(chan struct{})}
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		r.recordKeyring(o)
	}()
	if n.IsControlPlane() && n.Store != nil {
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			r.publishSeeds(ctx, n.Store, o.log().With("component", "gossip"))
		}()
	}
	return r, nil
}

// gossipSeeds is where a node finds the ring (least privilege): only masters
// ask EC2 (every running instance of the cluster), and they add the masters'
// list; a worker with a state store reads the list the masters publish there
// and makes no EC2 call.
func gossipSeeds(n *Node, ec2c gossip.EC2DescribeInstances, store gossip.ObjectReader) gossip.SeedSource {
	spec := n.Config.Spec
	ec2Seeds := &gossip.EC2Seeds{Client: ec2c, ClusterName: spec.Cluster.Name, Self: n.Identity.PrivateIP}
	if n.Store == nil || store == nil {
		return ec2Seeds
	}
	stored := &gossip.StoreSeeds{Store: store, Key: cloud.GossipSeedsKey, Self: n.Identity.PrivateIP}
	if n.IsControlPlane() {
		stored.NoListIsEmpty = true
		return gossip.MultiSeeds{ec2Seeds, stored}
	}
	return stored
}

// seedPublishEvery is how often a master compares the published seed list
// with its view of the alive masters.
const seedPublishEvery = 15 * time.Second

// publishSeeds keeps the state store's seed list equal to this master's view
// of the alive masters, writing only when it differs.
func (g *gossipRunner) publishSeeds(ctx context.Context, store *cloud.StateStore, log *slog.Logger) {
	var published []byte
	for first := true; ; first = false {
		if !first {
			// Until the first publish (the ring not joined yet), look again soon.
			wait := seedPublishEvery
			if published == nil {
				wait = time.Second
			}
			t := time.NewTimer(wait)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-g.stopped:
				t.Stop()
				return
			case <-t.C:
			}
		}
		l, ok := g.agent.MasterSeeds(string(config.RoleControlPlane))
		if !ok {
			continue
		}
		want := l.Encode()
		if bytes.Equal(want, published) {
			continue
		}
		cur, err := store.Get(ctx, cloud.GossipSeedsKey)
		if err == nil && bytes.Equal(cur, want) {
			published = want
			continue
		}
		if err := store.Put(ctx, cloud.GossipSeedsKey, want); err != nil {
			log.Warn("publish the masters' gossip seed list", "err", err)
			continue
		}
		published = want
		log.Info("published the masters' gossip seed list", "masters", l.Masters)
	}
}

// gossipKeys is the ring's keys at start: the state store's keyring document
// when there is one (every key in it; after a rotation the single key object
// is stale), else the single key. A malformed or unreadable document is
// logged and the single key used; the keyring loop keeps reading the document.
func gossipKeys(ctx context.Context, o Options, n *Node) (*gossip.KeyringDoc, []byte, error) {
	if n.Store != nil {
		d, err := gossip.LoadKeyring(ctx, n.Store, cloud.GossipKeyringKey)
		if err == nil {
			return &d, nil, nil
		}
		if !errors.Is(err, gossip.ErrNoKeyring) {
			o.log().Warn("gossip keyring document not used; starting with the single key", "err", err)
		}
	}
	key, err := gossipSingleKey(ctx, o, n)
	return nil, key, err
}

// gossipKey is the key the ring sends with: the keyring document's primary,
// else the single key.
func gossipKey(ctx context.Context, o Options, n *Node) ([]byte, error) {
	d, key, err := gossipKeys(ctx, o, n)
	if d != nil {
		return d.Primary().Key, nil
	}
	return key, err
}

// keyringFollowEvery is how often a node reads the keyring document (a
// variable for the namespace test, which runs a rotation in seconds).
var keyringFollowEvery = gossip.DefaultKeyringEvery

// keyringRecordEvery is how often the daemon copies its keyring status into
// state.json, where `nodeagent status` reads it.
var keyringRecordEvery = 5 * time.Second

// recordKeyring keeps state.json's gossip keyring equal to the agent's.
func (g *gossipRunner) recordKeyring(o Options) {
	var last *bootstrap.GossipStatus
	for {
		ks := g.agent.Keyring()
		cur := &bootstrap.GossipStatus{KeyGeneration: ks.Generation, KeyGenerations: ks.Generations, KeyringError: ks.Error}
		if last == nil || last.KeyGeneration != cur.KeyGeneration || !slices.Equal(last.KeyGenerations, cur.KeyGenerations) || last.KeyringError != cur.KeyringError {
			if _, err := o.store().Update(func(st *bootstrap.State) { st.Gossip = cur }); err != nil {
				o.log().Warn("record the gossip keyring in the state file", "err", err)
			} else {
				last = cur
			}
		}
		t := time.NewTimer(keyringRecordEvery)
		select {
		case <-g.stopped:
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// gossipSingleKey reads the ring's single key from the configured file, else
// the state store.
func gossipSingleKey(ctx context.Context, o Options, n *Node) ([]byte, error) {
	if f := n.Config.Spec.Gossip.SecretKeyFile; f != "" {
		b, err := os.ReadFile(o.Root.Path(f))
		if err != nil {
			return nil, fmt.Errorf("gossip key: %w", err)
		}
		return trimKey(b), nil
	}
	if n.Store == nil {
		return nil, errors.New("gossip key: set spec.gossip.secretKeyFile or spec.cluster.stateStore")
	}
	b, err := n.Store.Get(ctx, cloud.GossipKeyKey)
	if err != nil {
		return nil, fmt.Errorf("gossip key: %w", err)
	}
	return trimKey(b), nil
}

// trimKey drops a trailing newline left by editors and `echo`.
func trimKey(b []byte) []byte { return []byte(strings.TrimRight(string(b), "\r\n")) }

func (g *gossipRunner) setReady(ready bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.ready == ready || g.left {
		return
	}
	g.ready = ready
	g.agent.SetReady(ready)
}

// gossipNames are the names this node publishes besides its own: on a control
// plane, the API name and one name per local etcd member (DESIGN.md), from the
// facts the volumes phase recorded.
func gossipNames(n *Node, facts bootstrap.Facts) []string {
	if !n.IsControlPlane() {
		return nil
	}
	c := n.Config.Spec.Cluster.Name
	names := []string{config.APIInternalName(c), config.SignerName(c)}
	for _, m := range facts.EtcdMembers {
		names = append(names, config.EtcdMemberHost(m.Cluster, m.Member, c))
	}
	return names
}

// setNames republishes this node's names (they change once volumes are claimed).
// A failed publish is returned and not remembered, so the next call retries it.
func (g *gossipRunner) setNames(names []string) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if slices.Equal(g.names, names) || g.left {
		return nil
	}
	if err := g.agent.SetNames(names); err != nil {
		return fmt.Errorf("gossip: publish names %v: %w", names, err)
	}
	g.names = names
	return nil
}

func (g *gossipRunner) members() []ClusterMember {
	var out []ClusterMember
	for _, m := range g.agent.Members() {
		cm := ClusterMember{Name: m.Name, IP: m.IP.String(), Role: m.Role, State: m.State, Ready: m.Ready,
			Since: m.Since, LastSeen: m.LastSeen, RTTMillis: float64(m.RTT.Microseconds()) / 1000, KeyGeneration: m.KeyGeneration,
			Incarnation: m.Incarnation}
		cm.Names = append(cm.Names, m.Names...)
		if m.PodCIDR.IsValid() {
			cm.PodCIDR = m.PodCIDR.String()
		}
		out = append(out, cm)
	}
	return out
}

// stop leaves the ring as the daemon stops; a failed leave is a crash to the
// peers, which their failure detection handles.
func (g *gossipRunner) stop() { _, _ = g.leave() }

// leave ends the runner's background work and leaves the ring gracefully
// (peers drop this node's names at once, not after failure detection); the
// first call does it, later ones say so.
func (g *gossipRunner) leave() (string, error) {
	g.mu.Lock()
	if g.left {
		g.mu.Unlock()
		return "already left", nil
	}
	g.left = true
	g.mu.Unlock()
	if g.stopped != nil {
		close(g.stopped)
	}
	g.wg.Wait()
	if err := g.agent.Shutdown(); err != nil {
		return "", err
	}
	return "left the gossip ring", nil
}

// collector exports ring membership by state, and the ring events this node
// has seen (its size history: joins minus departures), on /metrics.
func (g *gossipRunner) collector() prometheus.Collector {
	desc := prometheus.NewDesc("nodeagent_gossip_peers", "Gossip ring members by state.", []string{"state"}, nil)
	events := prometheus.NewDesc("nodeagent_gossip_member_events_total",
		"Gossip ring events seen by this node: join, update (metadata), dead, left.", []string{"event"}, nil)
	notices := prometheus.NewDesc("nodeagent_gossip_death_notices_total",
		"Gossip death notices handled by this node: sent (its memberlist declared a peer dead), relayed, "+
			"confirmed (a peer it held alive did not answer its ping), refuted (it answered), dropped, "+
			"self-refuted (a notice about this node, answered by re-announcing it).", []string{"result"}, nil)
	return collectorFunc{descs: []*prometheus.Desc{desc, events, notices}, collect: func(ch chan<- prometheus.Metric) {
		for i, c := range g.agent.EventCounts() {
			ch <- prometheus.MustNewConstMetric(events, prometheus.CounterValue, float64(c), gossip.EventNames[i])
		}
		n := g.agent.DeathNoticeCounts()
		for result, c := range map[string]uint64{"sent": n.Sent, "relayed": n.Relayed, "confirmed": n.Confirmed,
			"refuted": n.Refuted, "dropped": n.Dropped, "self-refuted": n.SelfRefuted} {
			ch <- prometheus.MustNewConstMetric(notices, prometheus.CounterValue, float64(c), result)
		}
		counts := map[string]int{}
		for _, m := range g.agent.Members() {
			counts[m.State]++
		}
		for state, c := range counts {
			ch <- prometheus.MustNewConstMetric(desc, prometheus.GaugeValue, float64(c), state)
		}
	}}
}

type collectorFunc struct {
	descs   []*prometheus.Desc
	collect func(chan<- prometheus.Metric)
}

func (c collectorFunc) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range c.descs {
		ch <- d
	}
}
func (c collectorFunc) Collect(ch chan<- prometheus.Metric) { c.collect(ch) }
