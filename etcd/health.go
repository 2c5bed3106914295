// Package etcd checks the health of this node's local etcd members and publishes
// the node's readiness into etcd, both through the etcd v3 client over mutual TLS.
package etcd

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/nodeagent/nodeagent/bootstrap"
	"github.com/nodeagent/nodeagent/config"
	"github.com/nodeagent/nodeagent/internal/fsutil"
)

// Defaults for HealthOptions.
const (
	DefaultHealthTimeout = 5 * time.Minute
	probeTimeout         = 5 * time.Second
)

// Member is one local etcd member to check.
type Member struct {
	Cluster   string // etcd cluster name: main, events
	Name      string // this node's member name in that cluster
	ClientURL string // https://127.0.0.1:<clientPort>
	// Peers are the other members' peer addresses (host:port by gossip name),
	// dialled only to say which peers a member without quorum is waiting for.
	Peers map[string]string `json:"peers,omitempty"`
	// PeerURL is this member's own peer URL and PeerClientURLs the other
	// members' client URLs (gossip names): a learner is promoted through them.
	PeerURL        string   `json:"-"`
	PeerClientURLs []string `json:"-"`
}

// HealthOptions configure the etcd-health phase.
type HealthOptions struct {
	Root     fsutil.Root
	Clusters []Member
	// TLS returns the client TLS configuration for one etcd cluster
	// (pki.ClientTLS in the agent).
	TLS func(cluster string) (*tls.Config, error)
	Log *slog.Logger
	// Timeout bounds how long Act waits for the members to become healthy.
	Timeout time.Duration
	// ProbeTimeout bounds one probe of one member (default 5s); it is what Check
	// costs when a member is down.
	ProbeTimeout time.Duration
	// PeerPorts are the etcd clusters' peer ports, by cluster name; with them the
	// phase names the peers a member without quorum waits for.
	PeerPorts map[string]int
	// ClusterName is the Kubernetes cluster's name (for the peers' gossip names).
	ClusterName string
}

// Health is what one member says about itself and its cluster.
type Health struct {
	Endpoint  string       `json:"endpoint"`
	MemberID  string       `json:"memberID"` // hex, as etcdctl prints it
	Name      string       `json:"name"`
	Leader    string       `json:"leader"` // hex member ID of the leader
	IsLeader  bool         `json:"isLeader"`
	IsLearner bool         `json:"isLearner,omitempty"`
	Version   string       `json:"version"`
	RaftTerm  uint64       `json:"raftTerm"`
	RaftIndex uint64       `json:"raftIndex"`
	DBSize    int64        `json:"dbSize"`
	Errors    []string     `json:"errors,omitempty"` // alarms and other errors the member reports
	Members   []MemberInfo `json:"members"`
}

// MemberInfo is one entry of the cluster's member list.
type MemberInfo struct {
	ID         string   `json:"id"`
	Name       string   `json:"name"`
	PeerURLs   []string `json:"peerURLs"`
	ClientURLs []string `json:"clientURLs,omitempty"`
	IsLearner  bool     `json:"isLearner,omitempty"`
}

func hexID(id uint64) string { return strconv.FormatUint(id, 16) }

// Check asks the member at endpoint for its status and the member list. It
// returns an error, with whatever it learnt, when the member does not answer, has
// no leader or reports errors (e.g. a NOSPACE alarm).
func Check(ctx context.Context, cli *clientv3.Client, endpoint string) (Health, error) {
	h := Health{Endpoint: endpoint}
	st, err := cli.Status(ctx, endpoint)
	if err != nil {
		return h, fmt.Errorf("status of %s: %w", endpoint, err)
	}
	if st.Header != nil {
		h.MemberID = hexID(st.Header.MemberId)
		h.IsLeader = st.Header.MemberId == st.Leader
	}
	h.Leader = hexID(st.Leader)
	h.IsLearner = st.IsLearner
	h.Version = st.Version
	h.RaftTerm, h.RaftIndex = st.RaftTerm, st.RaftIndex
	h.DBSize = st.DbSize
	h.Errors = st.Errors

	ml, err := cli.MemberList(ctx)
	if err != nil {
		return h, fmt.Errorf("member list from %s: %w", endpoint, err)
	}
	for _, m := range ml.Members {
		mi := MemberInfo{ID: hexID(m.ID), Name: m.Name, PeerURLs: m.PeerURLs, ClientURLs: m.ClientURLs, IsLearner: m.IsLearner}
		h.Members = append(h.Members, mi)
		if st.Header != nil && m.ID == st.Header.MemberId {
			h.Name = m.Name
		}
	}
	slices.SortFunc(h.Members, func(a, b MemberInfo) int { return strings.Compare(a.Name, b.Name) })

	if st.Leader == 0 {
		return h, fmt.Errorf("%s has no leader", endpoint)
	}
	if len(st.Errors) > 0 {
		return h, fmt.Errorf("%s reports: %s", endpoint, strings.Join(st.Errors, "; "))
	}
	return h, nil
}

// MemberHealth is the last result for one local member.
type MemberHealth struct {
	Member
	Health Health `json:"health"`
	Err    string `json:"error,omitempty"`
	// local: the failure is this node's own (the member is not running or
	// refuses us), not a missing quorum.
	local bool
}

// HealthPhase is the "etcd-health" phase.
type HealthPhase struct {
	o HealthOptions

	mu   sync.Mutex
	last []MemberHealth
}

// NewHealthPhase returns the phase that is done when every local member is healthy.
func NewHealthPhase(o HealthOptions) *HealthPhase {
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.Timeout <= 0 {
		o.Timeout = DefaultHealthTimeout
	}
	if o.ProbeTimeout <= 0 {
		o.ProbeTimeout = probeTimeout
	}
	return &HealthPhase{o: o}
}

var _ bootstrap.Phase = (*HealthPhase)(nil)

func (p *HealthPhase) Name() string { return "etcd-health" }

var _ bootstrap.FactConsumer = (*HealthPhase)(nil)

// UseFacts takes this node's member names, and their peers, from the run's facts.
func (p *HealthPhase) UseFacts(f bootstrap.Facts) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i := range p.o.Clusters {
		m := &p.o.Clusters[i]
		fact, ok := f.EtcdMember(m.Cluster)
		if !ok {
			continue
		}
		m.Name = fact.Member
		m.Peers, m.PeerClientURLs, m.PeerURL = nil, nil, ""
		if port := p.o.PeerPorts[m.Cluster]; port != 0 && p.o.ClusterName != "" {
			m.Peers = map[string]string{}
			m.PeerURL = "https://" + net.JoinHostPort(config.EtcdMemberHost(m.Cluster, fact.Member, p.o.ClusterName), strconv.Itoa(port))
			clientPort := ""
			if u, err := url.Parse(m.ClientURL); err == nil {
				clientPort = u.Port()
			}
			for _, peer := range fact.Members {
				if peer != fact.Member {
					host := config.EtcdMemberHost(m.Cluster, peer, p.o.ClusterName)
					m.Peers[peer] = net.JoinHostPort(host, strconv.Itoa(port))
					if clientPort != "" {
						m.PeerClientURLs = append(m.PeerClientURLs, "https://"+net.JoinHostPort(host, clientPort))
					}
				}
			}
		}
	}
}

func (p *HealthPhase) members() []Member {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.o.Clusters)
}

// waitingForQuorum reports whether an unhealthy member is waiting for its peers
// rather than broken: its etcd runs but has no leader, or does not serve clients
// yet because it has not joined a quorum. Both are what a master sees until
// enough of its peers are up.
func waitingForQuorum(r MemberHealth) bool { return r.Err != "" && !r.local }

// Results returns the outcome of the last probe of each member.
func (p *HealthPhase) Results() []MemberHealth {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.last)
}

// Check reports a "wait etcd <cluster>" change for every member not healthy now.
func (p *HealthPhase) Check(ctx context.Context) ([]bootstrap.Change, error) {
	var changes []bootstrap.Change
	for _, r := range p.probeAll(ctx) {
		if r.Err != "" {
			changes = append(changes, bootstrap.Change{Kind: "etcd", Target: r.Cluster, Action: "wait", Detail: r.Err})
		}
	}
	return changes, nil
}

// Act waits, with backoff, until every member is healthy or the timeout passes.
// Running out of time while a member only lacks quorum is a WaitError (the
// master waits for its peers; the daemon keeps waiting), while a member that
// never came up, or that this node cannot talk to, is a failure.
func (p *HealthPhase) Act(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, p.o.Timeout)
	defer cancel()
	delay := 500 * time.Millisecond
	for {
		res := p.probeAll(ctx)
		var bad []string
		waiting := true
		for _, r := range res {
			if r.Err != "" {
				bad = append(bad, r.Cluster+": "+r.Err)
				waiting = waiting && waitingForQuorum(r)
			}
		}
		if len(bad) == 0 {
			return nil
		}
		p.o.Log.Info("waiting for etcd", "unhealthy", strings.Join(bad, "; "), "retryIn", delay)
		bootstrap.Progress(ctx, "waiting for etcd: "+strings.Join(bad, "; "))
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			if waiting {
				return bootstrap.Waiting("etcd has no quorum yet: %s", strings.Join(bad, "; "))
			}
			return fmt.Errorf("etcd not healthy after %s: %s", p.o.Timeout, strings.Join(bad, "; "))
		case <-t.C:
		}
		delay = min(delay*2, 10*time.Second)
	}
}

// Verify probes once more and logs each cluster's member list.
func (p *HealthPhase) Verify(ctx context.Context) error {
	var errs []error
	for _, r := range p.probeAll(ctx) {
		if r.Err != "" {
			errs = append(errs, fmt.Errorf("etcd %s: %s", r.Cluster, r.Err))
			continue
		}
		names := make([]string, 0, len(r.Health.Members))
		for _, m := range r.Health.Members {
			names = append(names, m.Name+"="+m.ID)
		}
		p.o.Log.Info("etcd member healthy", "cluster", r.Cluster, "member", r.Health.Name, "leader", r.Health.Leader,
			"isLeader", r.Health.IsLeader, "raftIndex", r.Health.RaftIndex, "dbSize", r.Health.DBSize,
			"members", strings.Join(names, ","))
	}
	return errors.Join(errs...)
}

func (p *HealthPhase) probeAll(ctx context.Context) []MemberHealth {
	members := p.members()
	// Side by side: a member without quorum costs a whole probe timeout, and
	// each cluster's wait is its own.
	res := make([]MemberHealth, len(members))
	var wg sync.WaitGroup
	for i, m := range members {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res[i] = p.probeOne(ctx, m)
		}()
	}
	wg.Wait()
	p.mu.Lock()
	p.last = res
	p.mu.Unlock()
	return res
}

// probeOne probes one member, promoting it when it is a learner that caught up.
func (p *HealthPhase) probeOne(ctx context.Context, m Member) MemberHealth {
	h, err := p.probe(ctx, m)
	if h.IsLearner {
		// A learner answers Status but not the member list; it is this
		// node's member joining a live cluster, healthy once promoted.
		err = p.promote(ctx, m)
		if err == nil {
			err = &probeError{err: errors.New("learner promoted to a voting member just now")}
		}
	}
	r := MemberHealth{Member: m, Health: h}
	if err != nil {
		r.Err = err.Error()
		var pe *probeError
		r.local = errors.As(err, &pe) && pe.local
		if !r.local {
			r.Err += p.peerReport(ctx, m)
		}
	}
	return r
}

func (p *HealthPhase) probe(ctx context.Context, m Member) (Health, error) {
	if p.o.TLS == nil {
		return Health{}, errors.New("no client TLS configured")
	}
	tlsCfg, err := p.o.TLS(m.Cluster)
	if err != nil {
		return Health{}, err
	}
	cli, err := newClient([]string{m.ClientURL}, tlsCfg)
	if err != nil {
		return Health{}, err
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(ctx, p.o.ProbeTimeout)
	defer cancel()
	h, err := Check(ctx, cli, m.ClientURL)
	if err != nil {
		if h.MemberID != "" {
			// It answered: no leader, or alarms. No leader is a missing quorum;
			// alarms (NOSPACE, CORRUPT) are this member's own.
			return h, &probeError{err: err, local: len(h.Errors) > 0}
		}
		// The client retries until the deadline and then says only that; a
		// single handshake tells the operator why (refused, untrusted, rejected).
		// A member that accepts connections but does not answer has not joined a
		// quorum yet (etcd serves clients only once it has); one that refuses
		// them, or rejects our certificate, is broken here.
		why := diagnose(m.ClientURL, tlsCfg, p.o.ProbeTimeout)
		if why != "" {
			err = fmt.Errorf("%w (%s)", err, why)
			return h, &probeError{err: err, local: true}
		}
		return h, &probeError{err: fmt.Errorf("%w (it accepts connections but does not answer: not serving clients until it has joined a quorum)", err)}
	}
	// A member answering under another name means the ports or data dirs are mixed
	// up between clusters; that is not the member we are waiting for.
	if m.Name != "" && h.Name != m.Name {
		return h, &probeError{err: fmt.Errorf("%s answers as member %q, want %q", m.ClientURL, h.Name, m.Name), local: true}
	}
	return h, nil
}

// promote makes this node's learner (a member that joined a live cluster with
// a blank data dir) a voter once it has caught up. Until then the member is
// waiting, not failed.
func (p *HealthPhase) promote(ctx context.Context, m Member) error {
	if len(m.PeerClientURLs) == 0 || m.PeerURL == "" {
		return &probeError{err: errors.New("member is a learner and its peers are unknown, so it cannot be promoted")}
	}
	tlsCfg, err := p.o.TLS(m.Cluster)
	if err != nil {
		return err
	}
	cli, err := newClient(m.PeerClientURLs, tlsCfg)
	if err != nil {
		return err
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(ctx, p.o.ProbeTimeout)
	defer cancel()
	promoted, err := Promote(ctx, cli, m.PeerURL)
	if err != nil {
		return &probeError{err: fmt.Errorf("learner not promoted yet: %w", err)}
	}
	if promoted {
		p.o.Log.Info("etcd learner promoted to a voting member", "cluster", m.Cluster, "member", m.Name)
	}
	return nil
}

// probeError says whether a probe failed for a reason of this node's own.
type probeError struct {
	err   error
	local bool
}

func (e *probeError) Error() string { return e.err.Error() }
func (e *probeError) Unwrap() error { return e.err }

// peerReport says which of a member's peers answer on their peer port, for the
// status of a master waiting for quorum: "; peers: b reachable, c unreachable
// (dial tcp: lookup etcd-c.internal.x: no such host)".
func (p *HealthPhase) peerReport(ctx context.Context, m Member) string {
	if len(m.Peers) == 0 {
		return ""
	}
	var parts []string
	for _, name := range slices.Sorted(maps.Keys(m.Peers)) {
		d := net.Dialer{Timeout: time.Second}
		c, err := d.DialContext(ctx, "tcp", m.Peers[name])
		if err != nil {
			parts = append(parts, name+" unreachable ("+err.Error()+")")
			continue
		}
		_ = c.Close() // a probe connection: nothing was sent, nothing to lose
		parts = append(parts, name+" reachable")
	}
	return "; peers: " + strings.Join(parts, ", ")
}

// diagnose dials endpoint once with TLS and returns what went wrong, or "" when
// the connection looks fine. A server that rejects the client certificate says so
// only after the handshake (TLS 1.3), hence the short read.
func diagnose(endpoint string, tlsCfg *tls.Config, timeout time.Duration) string {
	u, err := url.Parse(endpoint)
	if err != nil {
		return err.Error()
	}
	if u.Scheme != "https" {
		return ""
	}
	d := &net.Dialer{Timeout: min(timeout, 2*time.Second)}
	conn, err := tls.DialWithDialer(d, "tcp", u.Host, tlsCfg)
	if err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			// Connected, but the handshake went unanswered: the listener is
			// open and nobody serves it yet. Not a fault of this node.
			return ""
		}
		return err.Error()
	}
	defer conn.Close()
	_ = conn.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
	if _, err := conn.Read(make([]byte, 1)); err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return ""
		}
		return err.Error()
	}
	return ""
}

// newClient connects lazily; the client's own retry logging is silenced because
// the callers report failures themselves.
func newClient(endpoints []string, tlsCfg *tls.Config) (*clientv3.Client, error) {
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   endpoints,
		TLS:         tlsCfg,
		DialTimeout: probeTimeout,
		Logger:      zap.NewNop(),
	})
	if err != nil {
		return nil, fmt.Errorf("etcd client for %s: %w", strings.Join(endpoints, ","), err)
	}
	return cli, nil
}
