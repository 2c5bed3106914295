package gossip

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/nodeagent/nodeagent/cloud"
)

// Least privilege: only masters may call ec2:DescribeInstances. Workers find
// the ring through a seed list the masters keep in the state store, which
// workers already read (their config and the ring's key live beside it). Every
// master rewrites the list with the alive control-plane members of its view
// when it differs, so a replaced master's new address is listed within a
// refresh and a dead one's dropped.

// SeedList is the state store object masters publish (cloud.GossipSeedsKey).
type SeedList struct {
	// Masters are the private IPs of the alive control-plane members, sorted
	// (an "ip:port" entry names a ring on another port than the node's own).
	Masters []string `json:"masters"`
}

// ObjectReader reads one state store object; *cloud.StateStore has it.
type ObjectReader interface {
	Get(ctx context.Context, key string) ([]byte, error)
}

// StoreSeeds reads the masters' seed list from the state store: a worker's
// seed source, which needs no EC2 permission.
type StoreSeeds struct {
	Store ObjectReader
	Key   string
	// Self is this node's private IP, left out of the list.
	Self string
	// NoListIsEmpty makes a list not published yet an empty one rather than
	// an error: for a master, which may be the first, and publishes itself.
	NoListIsEmpty bool
}

// Seeds returns the listed masters' IPs. A missing or unreadable list is an
// error (the seed loop retries with backoff): no master has published yet.
func (s *StoreSeeds) Seeds(ctx context.Context) ([]string, error) {
	b, err := s.Store.Get(ctx, s.Key)
	if err != nil && s.NoListIsEmpty && errors.Is(err, cloud.ErrNotFound) {
		return []string{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("masters' gossip seed list: %w", err)
	}
	l, err := DecodeSeedList(b)
	if err != nil {
		return nil, err
	}
	out := make([]string, 0, len(l.Masters))
	for _, ip := range l.Masters {
		if ip != s.Self {
			out = append(out, ip)
		}
	}
	return out, nil
}

// DecodeSeedList parses and checks a published seed list: every entry must be
// an IP address (or IP:port), so nothing but addresses reaches a join.
func DecodeSeedList(b []byte) (SeedList, error) {
	var l SeedList
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&l); err != nil {
		return SeedList{}, fmt.Errorf("masters' gossip seed list: %w", err)
	}
	for _, ip := range l.Masters {
		if _, err := netip.ParseAddrPort(ip); net.ParseIP(ip) == nil && err != nil {
			return SeedList{}, fmt.Errorf("masters' gossip seed list: %q is not an IP address", ip)
		}
	}
	return l, nil
}

// MasterSeeds is the seed list this agent would publish: the alive members
// with role, itself included, or ok=false while it has not joined a ring yet (a
// master alone at start would otherwise drop the others from the list).
func (a *Agent) MasterSeeds(role string) (l SeedList, ok bool) {
	if !a.joined.Load() {
		return SeedList{}, false
	}
	a.mu.Lock()
	for _, v := range a.view {
		if v.State == StateAlive && v.Role == role {
			l.Masters = append(l.Masters, v.IP.String())
		}
	}
	a.mu.Unlock()
	if a.role == role && !slices.Contains(l.Masters, a.cfg.BindIP.String()) {
		l.Masters = append(l.Masters, a.cfg.BindIP.String())
	}
	l.Masters = sortIPs(l.Masters)
	return l, len(l.Masters) > 0
}

// Encode renders the list as published.
func (l SeedList) Encode() []byte {
	b, _ := json.Marshal(l) // a struct of strings cannot fail
	return append(b, '\n')
}

// MultiSeeds lists the union of several sources; it fails only when all fail.
type MultiSeeds []SeedSource

// Seeds returns every source's seeds, without repeats.
func (m MultiSeeds) Seeds(ctx context.Context) ([]string, error) {
	var out []string
	var firstErr error
	ok := false
	for _, s := range m {
		ips, err := s.Seeds(ctx)
		if err != nil {
			if firstErr == nil {
				firstErr = err
			}
			continue
		}
		ok = true
		for _, ip := range ips {
			if !slices.Contains(out, ip) {
				out = append(out, ip)
			}
		}
	}
	if !ok && firstErr != nil {
		return nil, firstErr
	}
	return out, nil
}
