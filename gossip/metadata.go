package gossip

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"strings"

	"github.com/hashicorp/memberlist"
)

// A node's records travel in memberlist node metadata, not in broadcast user
// state. Metadata is part of the node's alive message, so it lives exactly as long
// as the node does in the ring: when memberlist declares a node dead or left, its
// names vanish with it on every peer, with no tombstones or expiry of our own to get
// wrong. Changes (readiness, names) ride a new alive message with a higher
// incarnation via UpdateNode, which memberlist already gossips and reconciles in
// push/pull. The price is the 512-byte limit (memberlist.MetaMaxSize), which the
// compact encoding below keeps far away: a control-plane node's role, flag and three
// names take about 40 bytes, and a pod CIDR 7 more.

// Member states.
const (
	StateAlive   = "alive"
	StateSuspect = "suspect"
	StateDead    = "dead"
	StateLeft    = "left"
)

const metaVersion = 1

const (
	flagReady   = 1 << 0
	flagLeaving = 1 << 1 // set just before a graceful leave
)

// Name suffix kinds: most published names end in the cluster name, so the
// cluster is written once in the agent's config rather than in every name.
const (
	kindLiteral  = 0 // the name as is
	kindCluster  = 1 // name + "." + cluster
	kindInternal = 2 // name + ".internal." + cluster
)

// Optional fields follow the names as (uvarint tag, uvarint length, bytes). A
// decoder skips tags it does not know, so a field added later does not make older
// readers of this layout drop the whole record; a record without them is the
// original layout, which every version reads.
const (
	fieldPodCIDR = 1 // netip.Prefix binary form: 4 or 16 address bytes, then the bit count
	fieldKeys    = 2 // uvarint primary key generation, then uvarints of every accepted one (keyring.go)
	fieldVersion = 3 // uvarint: the record's version (metadata.Incarnation)
)

// metadata is what one node publishes.
type metadata struct {
	Ready   bool
	Leaving bool
	Role    string
	Names   []string
	// PodCIDR is the node's spec.podCIDR; the zero Prefix when it has none yet.
	PodCIDR netip.Prefix
	// KeyGen is the key generation the node sends with and KeyGens every one
	// it accepts; zero and nil when it follows no keyring document.
	KeyGen  uint64
	KeyGens []uint64
	// Incarnation is the record's version: the member bumps it on every
	// change of what it publishes, the change that makes memberlist bump its
	// own (unexported) incarnation through UpdateNode, so peers can tell
	// which version of a member they hold. 0 from a member that does not send
	// it (agents before this field).
	Incarnation uint64
}

// ErrMetaTooLarge is returned when the names do not fit in node metadata.
var ErrMetaTooLarge = errors.New("gossip metadata larger than memberlist's 512-byte limit")

// encodeMeta lays out: version byte, flags byte, uvarint-prefixed role, uvarint
// name count, then per name a uvarint of len<<2|kind and the name's bytes, then
// the optional fields that are set.
func encodeMeta(m metadata, cluster string) ([]byte, error) {
	b := []byte{metaVersion, 0}
	if m.Ready {
		b[1] |= flagReady
	}
	if m.Leaving {
		b[1] |= flagLeaving
	}
	b = binary.AppendUvarint(b, uint64(len(m.Role)))
	b = append(b, m.Role...)
	b = binary.AppendUvarint(b, uint64(len(m.Names)))
	for _, n := range m.Names {
		if !validHostName(n) {
			return nil, fmt.Errorf("gossip name %q: not a valid host name", n)
		}
		short, kind := n, kindLiteral
		if s, ok := strings.CutSuffix(n, ".internal."+cluster); ok && cluster != "" && s != "" {
			short, kind = s, kindInternal
		} else if s, ok := strings.CutSuffix(n, "."+cluster); ok && cluster != "" && s != "" {
			short, kind = s, kindCluster
		}
		b = binary.AppendUvarint(b, uint64(len(short))<<2|uint64(kind))
		b = append(b, short...)
	}
	if m.PodCIDR.IsValid() {
		if m.PodCIDR != m.PodCIDR.Masked() {
			return nil, fmt.Errorf("pod CIDR %s has host bits set", m.PodCIDR)
		}
		v, err := m.PodCIDR.MarshalBinary()
		if err != nil {
			return nil, fmt.Errorf("pod CIDR %s: %w", m.PodCIDR, err)
		}
		b = binary.AppendUvarint(b, fieldPodCIDR)
		b = binary.AppendUvarint(b, uint64(len(v)))
		b = append(b, v...)
	}
	if m.KeyGen != 0 {
		v := encodeKeys(m.KeyGen, m.KeyGens)
		b = binary.AppendUvarint(b, fieldKeys)
		b = binary.AppendUvarint(b, uint64(len(v)))
		b = append(b, v...)
	}
	if m.Incarnation != 0 {
		v := binary.AppendUvarint(nil, m.Incarnation)
		b = binary.AppendUvarint(b, fieldVersion)
		b = binary.AppendUvarint(b, uint64(len(v)))
		b = append(b, v...)
	}
	if len(b) > memberlist.MetaMaxSize {
		return nil, fmt.Errorf("%w: %d bytes for %d names", ErrMetaTooLarge, len(b), len(m.Names))
	}
	return b, nil
}

// decodeMeta reads what encodeMeta wrote. Metadata comes from the network, so
// every length is checked and every name validated before it can reach /etc/hosts.
func decodeMeta(b []byte, cluster string) (metadata, error) {
	var m metadata
	if len(b) == 0 {
		return m, errors.New("empty gossip metadata")
	}
	if b[0] != metaVersion {
		return m, fmt.Errorf("gossip metadata version %d, want %d", b[0], metaVersion)
	}
	if len(b) < 2 {
		return m, errors.New("gossip metadata truncated")
	}
	m.Ready = b[1]&flagReady != 0
	m.Leaving = b[1]&flagLeaving != 0
	r := reader{b: b[2:]}
	role, err := r.bytes(r.uvarint())
	if err != nil {
		return m, fmt.Errorf("gossip metadata role: %w", err)
	}
	m.Role = string(role)
	count := r.uvarint()
	if r.err == nil && count > uint64(len(r.b)) { // each name takes at least a byte
		return m, fmt.Errorf("gossip metadata: %d names in %d bytes", count, len(r.b))
	}
	for i := uint64(0); i < count && r.err == nil; i++ {
		v := r.uvarint()
		short, err := r.bytes(v >> 2)
		if err != nil {
			return m, fmt.Errorf("gossip metadata name %d: %w", i, err)
		}
		var name string
		switch v & 3 {
		case kindLiteral:
			name = string(short)
		case kindCluster:
			name = string(short) + "." + cluster
		case kindInternal:
			name = string(short) + ".internal." + cluster
		default:
			return m, fmt.Errorf("gossip metadata name %d: unknown kind %d", i, v&3)
		}
		if !validHostName(name) {
			return m, fmt.Errorf("gossip metadata name %q: not a valid host name", name)
		}
		m.Names = append(m.Names, name)
	}
	for r.err == nil && len(r.b) > 0 {
		tag := r.uvarint()
		v, err := r.bytes(r.uvarint())
		if err != nil {
			return m, fmt.Errorf("gossip metadata field %d: %w", tag, err)
		}
		switch tag {
		case fieldPodCIDR:
			var p netip.Prefix
			if err := p.UnmarshalBinary(v); err != nil || !p.IsValid() || p != p.Masked() {
				return m, fmt.Errorf("gossip metadata: pod CIDR %x is not a network prefix", v)
			}
			m.PodCIDR = p
		case fieldKeys:
			if m.KeyGen, m.KeyGens, err = decodeKeys(v); err != nil {
				return m, err
			}
		case fieldVersion:
			n, used := binary.Uvarint(v)
			if used <= 0 || used != len(v) {
				return m, fmt.Errorf("gossip metadata: record version %x is not one uvarint", v)
			}
			m.Incarnation = n
		default:
			// A field of a newer agent: skipped, the rest still counts.
		}
	}
	if r.err != nil {
		return m, fmt.Errorf("gossip metadata: %w", r.err)
	}
	return m, nil
}

type reader struct {
	b   []byte
	err error
}

func (r *reader) uvarint() uint64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.err = errors.New("bad varint")
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *reader) bytes(n uint64) ([]byte, error) {
	if r.err != nil {
		return nil, r.err
	}
	if n > uint64(len(r.b)) {
		r.err = fmt.Errorf("length %d beyond the %d bytes left", n, len(r.b))
		return nil, r.err
	}
	out := r.b[:n]
	r.b = r.b[n:]
	return out, nil
}

// validHostName accepts RFC 1123 host names (letters, digits, hyphens, dots, up to
// 253 bytes, labels up to 63). Anything else, whitespace and '#' in particular,
// could corrupt /etc/hosts.
func validHostName(s string) bool {
	if s == "" || len(s) > 253 {
		return false
	}
	for _, label := range strings.Split(s, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			switch {
			case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '-':
			default:
				return false
			}
		}
	}
	return true
}

// normalizeNames sorts and de-duplicates, so that the same set of names always
// encodes to the same bytes and an unchanged set causes no update.
func normalizeNames(names []string) []string {
	out := append([]string(nil), names...)
	sort.Strings(out)
	j := 0
	for i, n := range out {
		if i > 0 && n == out[j-1] {
			continue
		}
		out[j] = n
		j++
	}
	return out[:j]
}

// sortIPs orders addresses numerically (10.0.0.9 before 10.0.0.10) and drops
// duplicates.
func sortIPs(ips []string) []string {
	sort.Slice(ips, func(i, j int) bool {
		a, aerr := netip.ParseAddr(ips[i])
		b, berr := netip.ParseAddr(ips[j])
		if aerr != nil || berr != nil {
			return ips[i] < ips[j]
		}
		return a.Less(b)
	})
	j := 0
	for i, ip := range ips {
		if i > 0 && ip == ips[j-1] {
			continue
		}
		ips[j] = ip
		j++
	}
	return ips[:j]
}
