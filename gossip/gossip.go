// Package gossip gives a cluster without DNS (a `.k8s.local` cluster, as in kops)
// its internal names: every node runs a memberlist agent, publishes a few names in
// its node metadata, and writes every alive member's names into a managed block of
// /etc/hosts.
package gossip

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
)

// DefaultPort is the ring's TCP and UDP port (DESIGN.md: spec.gossip.port).
const DefaultPort = 3999

// DefaultSeedRefresh is how often a node looks for seeds it is not connected to.
const DefaultSeedRefresh = 30 * time.Second

// Config is one node's seat in the ring.
type Config struct {
	ClusterName string
	NodeName    string
	// BindIP is the address the ring listens on and advertises; pick it with NodeIP.
	BindIP net.IP
	// Port defaults to DefaultPort.
	Port int
	// SecretKey encrypts and authenticates every packet: 16, 24 or 32 bytes
	// (AES-128/192/256). Any other length is an error: an unencrypted ring would let
	// anyone on the VPC publish api.internal names.
	SecretKey []byte
	// Keyring, when set, replaces SecretKey: every key of the state store's
	// keyring document is installed at start, its primary used to send
	// (keyring.go). A node that was down during a rotation starts this way
	// with the new key.
	Keyring *KeyringDoc
	// FollowKeyring, when set, keeps the live keyring equal to the state
	// store's document (and, on the driver, advances rotations).
	FollowKeyring *KeyringFollow
	// Seeds lists peers to join; nil means none (a single-node ring).
	Seeds SeedSource
	// SeedRefresh defaults to DefaultSeedRefresh.
	SeedRefresh time.Duration
	// Role is published as is, e.g. "ControlPlane" or "Node".
	Role string
	// Names are extra host names this node publishes besides NodeName, e.g.
	// api.internal.<cluster>, etcd-a.internal.<cluster>.
	Names []string
	// Ready is the initial readiness flag; change it with SetReady.
	Ready bool
	// HostsFile is the /etc/hosts to manage; "" leaves every file alone.
	HostsFile string
	Log       *slog.Logger
	// Tuning overrides the memberlist timings; nil means DefaultTuning().
	Tuning *Tuning
}

// Member is one node as this agent sees it.
type Member struct {
	Name string `json:"name"`
	IP   net.IP `json:"ip"`
	Role string `json:"role"`
	// State is alive, dead or left. memberlist does not tell its users about
	// suspicion, so a suspect member reads alive until it is declared dead.
	// Dead is also a member this agent's memberlist still holds alive that a
	// peer's memberlist declared dead and that did not answer this agent's
	// ping, and one memberlist brought back at the address it died at that has
	// not answered one yet (deathnotice.go).
	State string   `json:"state"`
	Ready bool     `json:"ready"`
	Names []string `json:"names,omitempty"`
	// PodCIDR is the member's published pod CIDR (its Node's spec.podCIDR); the
	// zero Prefix when it published none.
	PodCIDR netip.Prefix `json:"podCIDR,omitzero"`
	// Since is when this agent last heard of a change of the member (join,
	// metadata update, death).
	Since time.Time `json:"since,omitzero"`
	// LastSeen is when this agent's own probe of the member was last answered,
	// and RTT that answer's round trip; zero until this agent has probed it.
	LastSeen time.Time     `json:"lastSeen,omitzero"`
	RTT      time.Duration `json:"rtt,omitempty"`
	// KeyGeneration is the key generation the member sends with, as its
	// metadata says; 0 when it follows no keyring document.
	KeyGeneration uint64 `json:"keyGeneration,omitempty"`
	// Incarnation is the version of the member's record this agent holds:
	// the member counts up from 1 with every change of what it publishes
	// (readiness, names, pod CIDR, keys, leaving), each of which it announces
	// with a new alive message. memberlist keeps its own incarnation numbers
	// to itself, so this is the member's count, carried in its metadata; 0
	// for a member whose agent does not send it.
	Incarnation uint64 `json:"incarnation,omitempty"`
}

// Status is the agent's health for `nodeagent status`.
type Status struct {
	// Joined is true once a join to some seed succeeded (or there was none to join).
	Joined bool `json:"joined"`
	// LastJoinError is the last failed join, "" after a success.
	LastJoinError string `json:"lastJoinError,omitempty"`
	// KeyRejects counts gossip packets and streams refused because they were not
	// encrypted with our key (either direction: a peer we rejected, or a seed that
	// rejected us), or carried another cluster's label.
	KeyRejects uint64 `json:"keyRejects"`
	// LastKeyError reads e.g. "rejected gossip from 10.0.1.7:3999: encryption key mismatch".
	LastKeyError   string    `json:"lastKeyError,omitempty"`
	LastKeyErrorAt time.Time `json:"lastKeyErrorAt,omitzero"`
	// HostsError is the last failure to write the hosts file, "" after a success.
	HostsError string `json:"hostsError,omitempty"`
	// BytesSent and BytesReceived count everything on the ring's sockets.
	BytesSent     uint64 `json:"bytesSent"`
	BytesReceived uint64 `json:"bytesReceived"`
}

// Agent is a running ring member.
type Agent struct {
	cfg Config
	log *slog.Logger
	ml  *memberlist.Memberlist
	tr  *transport
	// keyring is memberlist's live keyring, which keyring.go follows.
	keyring *memberlist.Keyring
	lw      *logWriter
	tune    Tuning

	mu      sync.Mutex
	ready   bool
	leaving bool
	role    string
	names   []string
	podCIDR netip.Prefix
	meta    []byte // encoded ready/role/names/pod CIDR, handed to memberlist by NodeMeta
	// incarnation is the version of meta, published in it (Member.Incarnation).
	incarnation uint64
	// keyGen and keyGens are the key generations this node sends with and
	// accepts (keyring.go), published in its metadata; keyringError the last
	// failure to follow the keyring document.
	keyGen       uint64
	keyGens      []uint64
	keyringError string

	// view is the ring as memberlist's events reported it. memberlist's own
	// Members() hands out pointers to nodes it keeps mutating (a data race), and
	// its Node.State is never updated; the events, called under its lock, are the
	// safe place to copy what we need.
	view map[string]*viewMember
	// prunedAt is when departed members were last dropped from view; pruning
	// walks the whole view, so it runs at most once a minute, not per event.
	prunedAt time.Time

	joined        atomic.Bool
	formationOnce sync.Once
	forming       atomic.Bool // while formationSync runs
	statusMu      sync.Mutex
	lastJoinError string
	keyRejects    atomic.Uint64
	lastKeyError  string
	lastKeyAt     time.Time
	hostsError    string
	hostsWrites   atomic.Uint64
	// events counts ring events by kind (join, update, dead, left): the
	// ring's size history for /metrics.
	events [numEventKinds]atomic.Uint64

	// notices are the death notices (deathnotice.go).
	notices noticeState
	// viewSize is len(view), for the notice queue's retransmit count.
	viewSize atomic.Int64

	// aliveFilter, when set before start, is memberlist's alive delegate:
	// an alive message it refuses is, to this node, never received. Tests
	// use it to lose one update on one node; nil on a real node.
	aliveFilter func(*memberlist.Node) error

	metaChanged  chan struct{}
	hostsChanged chan struct{}
	stop         chan struct{}
	stopOnce     sync.Once
	wg           sync.WaitGroup
}

// noticeState is the agent's side of the death notices.
type noticeState struct {
	queue    *memberlist.TransmitLimitedQueue
	mu       sync.Mutex
	closed   bool // set by halt: no new checks
	seen     map[string]seenNotice
	checking map[string]*nodeCheck // the running checks, by node
	slots    chan struct{}         // bounds the pings in flight

	sent, relayed, confirmed, refuted, dropped, selfRefuted atomic.Uint64
}

type seenNotice struct {
	n  notice
	at time.Time
}

// Start validates c, binds the ring's sockets and starts joining seeds in the
// background; it does not wait for a join, so the first node of a cluster starts
// alone and later nodes find it. ctx's values reach the seed source, but the agent
// runs until Shutdown, not until ctx ends.
func Start(ctx context.Context, c Config) (*Agent, error) {
	a, err := newAgent(c)
	if err != nil {
		return nil, err
	}
	if err := a.start(ctx); err != nil {
		return nil, err
	}
	return a, nil
}

// SetReady changes the published readiness flag; peers learn it within a second
// or two (see metadata.go for why it travels in node metadata).
func (a *Agent) SetReady(ready bool) {
	a.mu.Lock()
	changed := a.ready != ready
	if changed {
		a.ready = ready
		err := a.encodeLocked()
		if err != nil { // cannot happen: readiness does not change the size
			a.log.Error("encode gossip metadata", "err", err)
		}
	}
	a.mu.Unlock()
	if changed {
		a.signalMeta()
	}
}

// SetNames replaces the extra names this node publishes. It fails, changing
// nothing, when a name is not a valid host name or the metadata would not fit
// memberlist's 512 bytes.
func (a *Agent) SetNames(names []string) error {
	a.mu.Lock()
	old := a.names
	a.names = normalizeNames(names)
	if err := a.encodeLocked(); err != nil {
		a.names = old
		a.mu.Unlock()
		return err
	}
	a.mu.Unlock()
	a.signalMeta()
	return nil
}

// SetPodCIDR publishes this node's pod CIDR (the zero Prefix withdraws it), so
// that peers can route to its pods. It fails, changing nothing, for a prefix with
// host bits set. Setting the value already published sends nothing.
func (a *Agent) SetPodCIDR(p netip.Prefix) error {
	a.mu.Lock()
	if p == a.podCIDR {
		a.mu.Unlock()
		return nil
	}
	old := a.podCIDR
	a.podCIDR = p
	if err := a.encodeLocked(); err != nil {
		a.podCIDR = old
		a.mu.Unlock()
		return fmt.Errorf("gossip: %w", err)
	}
	a.mu.Unlock()
	a.signalMeta()
	return nil
}

// Members lists every member this agent knows, itself included, sorted by name:
// alive ones, and dead or left ones until they come back (kept a day).
// memberlist does not expose suspicion to callers, so a suspect member is
// listed as alive until it is declared dead.
func (a *Agent) Members() []Member {
	a.mu.Lock()
	out := make([]Member, 0, len(a.view))
	for _, v := range a.view {
		m := v.Member
		m.Since, m.LastSeen, m.RTT = v.at, v.lastSeen, v.rtt
		m.IP = append(net.IP(nil), v.IP...)
		m.Names = append([]string(nil), v.Names...)
		if v.Name == a.cfg.NodeName {
			m.KeyGeneration, m.Incarnation = a.keyGen, a.incarnation
		}
		out = append(out, m)
	}
	a.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Hosts is the ring's view of names: every alive member's node name and
// published names, each mapped to the sorted IPs that publish it. It is what the
// managed /etc/hosts block holds.
func (a *Agent) Hosts() map[string][]string {
	out := map[string][]string{}
	a.mu.Lock()
	for _, v := range a.view {
		if v.State != StateAlive {
			continue
		}
		ip := v.IP.String()
		for _, name := range append([]string{v.Name}, v.Names...) {
			if !validHostName(name) {
				continue
			}
			out[name] = append(out[name], ip)
		}
	}
	a.mu.Unlock()
	for name, ips := range out {
		out[name] = sortIPs(ips)
	}
	return out
}

// Status reports joins, key mismatches and hosts-file errors.
func (a *Agent) Status() Status {
	a.statusMu.Lock()
	defer a.statusMu.Unlock()
	return Status{
		Joined:         a.joined.Load(),
		LastJoinError:  a.lastJoinError,
		KeyRejects:     a.keyRejects.Load(),
		LastKeyError:   a.lastKeyError,
		LastKeyErrorAt: a.lastKeyAt,
		HostsError:     a.hostsError,
		BytesSent:      a.tr.sent.Load(),
		BytesReceived:  a.tr.received.Load(),
	}
}

// Event kinds counted by EventCounts.
const (
	EventJoin = iota
	EventUpdate
	EventDead
	EventLeft
	numEventKinds
)

// EventNames names the event kinds, by index.
var EventNames = [numEventKinds]string{"join", "update", "dead", "left"}

// EventCounts is how many ring events of each kind (indexed as EventNames)
// this agent has seen since it started: joins minus departures is the ring's
// growth, so a scrape of these counters over time is its size history.
func (a *Agent) EventCounts() [numEventKinds]uint64 {
	var out [numEventKinds]uint64
	for i := range out {
		out[i] = a.events[i].Load()
	}
	return out
}

// Shutdown leaves the ring gracefully, so peers drop this node's names at once
// instead of after the failure timeout, and closes the sockets. The hosts file keeps
// its last content.
func (a *Agent) Shutdown() error {
	var err error
	// memberlist tells peers of a leave only as a node gone; a "leaving" flag
	// in the metadata first lets them report it as left rather than dead.
	a.mu.Lock()
	a.leaving = true
	eerr := a.encodeLocked()
	a.mu.Unlock()
	if eerr == nil {
		if uerr := a.ml.UpdateNode(a.tune.dilate(leaveTimeout / 3)); uerr != nil {
			a.log.Debug("announce leaving", "err", uerr)
		}
	}
	if lerr := a.ml.Leave(a.tune.dilate(leaveTimeout)); lerr != nil {
		err = fmt.Errorf("leave gossip ring: %w", lerr)
	}
	return errors.Join(err, a.halt())
}

// halt stops without a leave message: to peers it is a crash.
func (a *Agent) halt() error {
	var err error
	a.stopOnce.Do(func() {
		a.notices.mu.Lock()
		a.notices.closed = true
		a.notices.mu.Unlock()
		close(a.stop)
		a.lw.stopping.Store(true)
		if serr := a.ml.Shutdown(); serr != nil {
			err = fmt.Errorf("stop gossip: %w", serr)
		}
		a.wg.Wait()
	})
	return err
}

const leaveTimeout = 3 * time.Second
