package gossip

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"time"

	"github.com/nodeagent/nodeagent/cloud"
)

// Key rotation without a split. The ring's keys live in one state store
// document (cloud.GossipKeyringKey), which every node follows with memberlist's
// live keyring (AddKey, UseKey, RemoveKey: no restart). A rotation is three
// steps, as `serf keys -install / -use / -remove`, each taken only when every
// alive member says (in its gossip metadata) that it has taken the previous
// one, so that no member ever sends with a key another cannot read:
//
//  1. install: the new key joins the document as "installed"; nodes accept it
//     but still send with the old one.
//  2. use: once every alive member holds the new key, it becomes "primary" and
//     the old one "retiring"; nodes send with the new key, still accept the old.
//  3. remove: once every alive member sends with the new key, the old one
//     leaves the document and every keyring.
//
// `nodeagent gossip rotate-key` writes step 1; the driver (the alive
// control-plane member with the lowest name) takes steps 2 and 3. A node that
// boots reads the document and installs every key in it, so a node that was
// down during a rotation comes back with the new key.

// Key states in the keyring document.
const (
	KeyInstalled = "installed"
	KeyPrimary   = "primary"
	KeyRetiring  = "retiring"
)

// KeyringDoc is the state store's keyring document.
type KeyringDoc struct {
	// Generation is the primary key's generation: what `nodeagent status` shows.
	Generation uint64 `json:"generation"`
	// Keys holds the primary and at most one other key.
	Keys []KeyringKey `json:"keys"`
	// Updated is when the document last changed, for people.
	Updated time.Time `json:"updated,omitzero"`
}

// KeyringKey is one key of the document; Key is base64 in JSON.
type KeyringKey struct {
	Generation uint64 `json:"generation"`
	Key        []byte `json:"key"`
	State      string `json:"state"`
}

// ErrNoKeyring means the state store holds no keyring document: the cluster
// runs on its single key object (cloud.GossipKeyKey).
var ErrNoKeyring = errors.New("no gossip keyring document")

// DecodeKeyring parses and checks a keyring document: strict JSON, exactly one
// primary key whose generation is the document's, at most one other key
// (installed: newer; retiring: older), every key 16, 24 or 32 bytes and distinct.
func DecodeKeyring(b []byte) (KeyringDoc, error) {
	var d KeyringDoc
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&d); err != nil {
		return KeyringDoc{}, fmt.Errorf("gossip keyring document: %w", err)
	}
	if err := d.Validate(); err != nil {
		return KeyringDoc{}, err
	}
	return d, nil
}

// Validate checks the rules DecodeKeyring states.
func (d KeyringDoc) Validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("gossip keyring document: "+format, args...)
	}
	if len(d.Keys) == 0 || len(d.Keys) > 2 {
		return bad("%d keys, want the primary and at most one other", len(d.Keys))
	}
	primaries := 0
	for i, k := range d.Keys {
		if k.Generation == 0 {
			return bad("key %d: generation 0 (generations start at 1)", i)
		}
		if err := ValidateKey(k.Key); err != nil {
			return bad("key generation %d: %v", k.Generation, err)
		}
		for _, o := range d.Keys[:i] {
			if o.Generation == k.Generation {
				return bad("generation %d listed twice", k.Generation)
			}
			if bytes.Equal(o.Key, k.Key) {
				return bad("generations %d and %d hold the same key", o.Generation, k.Generation)
			}
		}
		switch k.State {
		case KeyPrimary:
			primaries++
			if k.Generation != d.Generation {
				return bad("primary key has generation %d, the document says %d", k.Generation, d.Generation)
			}
		case KeyInstalled:
			if k.Generation <= d.Generation {
				return bad("installed key generation %d is not newer than the primary's %d", k.Generation, d.Generation)
			}
		case KeyRetiring:
			if k.Generation >= d.Generation {
				return bad("retiring key generation %d is not older than the primary's %d", k.Generation, d.Generation)
			}
		default:
			return bad("key generation %d: state %q, want %s, %s or %s", k.Generation, k.State, KeyInstalled, KeyPrimary, KeyRetiring)
		}
	}
	if primaries != 1 {
		return bad("%d primary keys, want exactly one", primaries)
	}
	return nil
}

// Encode renders the document as stored.
func (d KeyringDoc) Encode() []byte {
	b, _ := json.MarshalIndent(d, "", "  ") // plain fields cannot fail
	return append(b, '\n')
}

// Primary is the primary key.
func (d KeyringDoc) Primary() KeyringKey {
	for _, k := range d.Keys {
		if k.State == KeyPrimary {
			return k
		}
	}
	return KeyringKey{}
}

// Step names where a rotation stands: "install" (a new key waits to be held
// everywhere), "use" (the old key waits to be dropped by every sender), or ""
// (no rotation under way).
func (d KeyringDoc) Step() string {
	for _, k := range d.Keys {
		switch k.State {
		case KeyInstalled:
			return "install"
		case KeyRetiring:
			return "use"
		}
	}
	return ""
}

// KeyHolding is what a member advertises: the generation it sends with, and
// every generation it accepts (its primary included). A zero Primary means the
// member follows no keyring document (a single-key cluster, or an older agent).
type KeyHolding struct {
	Primary uint64
	Held    []uint64
}

// NextKeyringStep is the document after the rotation step that is due, given
// what every alive member holds; ok is false when nothing is due (no rotation,
// or some member has not caught up).
func NextKeyringStep(d KeyringDoc, members map[string]KeyHolding, now time.Time) (next KeyringDoc, ok bool) {
	switch d.Step() {
	case "install":
		var newGen uint64
		for _, k := range d.Keys {
			if k.State == KeyInstalled {
				newGen = k.Generation
			}
		}
		for _, h := range members {
			if !slices.Contains(h.Held, newGen) {
				return d, false
			}
		}
		next = KeyringDoc{Generation: newGen, Updated: now.UTC()}
		for _, k := range d.Keys {
			switch k.State {
			case KeyInstalled:
				k.State = KeyPrimary
			case KeyPrimary:
				k.State = KeyRetiring
			}
			next.Keys = append(next.Keys, k)
		}
		return next, true
	case "use":
		for _, h := range members {
			if h.Primary != d.Generation {
				return d, false
			}
		}
		return KeyringDoc{Generation: d.Generation, Keys: []KeyringKey{d.Primary()}, Updated: now.UTC()}, true
	}
	return d, false
}

// KeyringReadWriter reads and conditionally writes state store objects;
// *cloud.StateStore does all three. Every write of the keyring document is
// conditional on the version read (PutIfMatch: an etag from GetVersioned, ""
// for a document that did not exist), so of two writers deciding from one
// version exactly one wins; the other gets cloud.ErrChanged, reads again and
// decides again.
type KeyringReadWriter interface {
	ObjectReader
	GetVersioned(ctx context.Context, key string) (data []byte, etag string, err error)
	PutIfMatch(ctx context.Context, key string, data []byte, etag string) error
}

// keyringWriteTries bounds how often a writer that lost a race reads the
// keyring document again and re-decides: each loss means another writer moved
// the document on, and a rotation has only three steps.
const keyringWriteTries = 4

// loadKeyringVersion is LoadKeyring with the version read (etag "" and
// ErrNoKeyring when there is no document).
func loadKeyringVersion(ctx context.Context, store KeyringReadWriter, key string) (KeyringDoc, string, error) {
	b, etag, err := store.GetVersioned(ctx, key)
	if errors.Is(err, cloud.ErrNotFound) {
		return KeyringDoc{}, "", ErrNoKeyring
	}
	if err != nil {
		return KeyringDoc{}, "", fmt.Errorf("read the gossip keyring: %w", err)
	}
	d, err := DecodeKeyring(b)
	return d, etag, err
}

// LoadKeyring reads the keyring document; ErrNoKeyring when there is none.
func LoadKeyring(ctx context.Context, store ObjectReader, key string) (KeyringDoc, error) {
	b, err := store.Get(ctx, key)
	if errors.Is(err, cloud.ErrNotFound) {
		return KeyringDoc{}, ErrNoKeyring
	}
	if err != nil {
		return KeyringDoc{}, fmt.Errorf("read the gossip keyring: %w", err)
	}
	return DecodeKeyring(b)
}

// RequestRotation starts a rotation: the document (made from the single key
// legacyKey returns, as generation 1, when there is none yet) gets newKey as
// the installed next generation. A new random 32-byte key is made when newKey
// is nil. It refuses while another rotation is under way. The masters' daemons
// take it from there. The write is conditional on the document read; when
// another writer got there first, it reads again and decides again.
func RequestRotation(ctx context.Context, store KeyringReadWriter, key string, legacyKey func(context.Context) ([]byte, error), newKey []byte, now time.Time) (KeyringDoc, error) {
	if newKey == nil {
		newKey = make([]byte, 32)
		if _, err := rand.Read(newKey); err != nil {
			return KeyringDoc{}, fmt.Errorf("new gossip key: %w", err)
		}
	}
	for try := 1; ; try++ {
		d, etag, err := loadKeyringVersion(ctx, store, key)
		if err != nil && !errors.Is(err, ErrNoKeyring) {
			return KeyringDoc{}, err
		}
		d, err = requestedRotation(ctx, d, errors.Is(err, ErrNoKeyring), legacyKey, newKey, now)
		if err != nil {
			return d, err
		}
		err = store.PutIfMatch(ctx, key, d.Encode(), etag)
		if errors.Is(err, cloud.ErrChanged) && try < keyringWriteTries {
			continue
		}
		if err != nil {
			return KeyringDoc{}, fmt.Errorf("write the gossip keyring: %w", err)
		}
		return d, nil
	}
}

// requestedRotation is d (or, when there is none, a document of the single
// key) with newKey installed as the next generation.
func requestedRotation(ctx context.Context, d KeyringDoc, none bool, legacyKey func(context.Context) ([]byte, error), newKey []byte, now time.Time) (KeyringDoc, error) {
	if none {
		old, lerr := legacyKey(ctx)
		if lerr != nil {
			return KeyringDoc{}, fmt.Errorf("no keyring document yet, and the ring's key: %w", lerr)
		}
		d = KeyringDoc{Generation: 1, Keys: []KeyringKey{{Generation: 1, Key: old, State: KeyPrimary}}}
		if err := d.Validate(); err != nil {
			return KeyringDoc{}, fmt.Errorf("the ring's current key: %w", err)
		}
	}
	if step := d.Step(); step != "" {
		return d, fmt.Errorf("a rotation to generation %d is under way (step %q); wait for it to finish", maxGeneration(d), step)
	}
	d.Keys = append(slices.Clone(d.Keys), KeyringKey{Generation: d.Generation + 1, Key: newKey, State: KeyInstalled})
	d.Updated = now.UTC()
	if err := d.Validate(); err != nil {
		return KeyringDoc{}, err
	}
	return d, nil
}

func maxGeneration(d KeyringDoc) uint64 {
	var g uint64
	for _, k := range d.Keys {
		g = max(g, k.Generation)
	}
	return g
}

// KeyringFollow makes an agent follow the state store's keyring document.
type KeyringFollow struct {
	Store KeyringReadWriter
	// Key is the document's key in the store (cloud.GossipKeyringKey).
	Key string
	// Every is how often the document is read; default DefaultKeyringEvery.
	Every time.Duration
	// DriverRole: the alive member with this role and the lowest name advances
	// rotations ("" = this node never drives).
	DriverRole string
}

// DefaultKeyringEvery is how often a node reads the keyring document: a
// rotation's three steps take about three of these. Every node reads it, so
// at N=1000 the cluster makes ~33 GetObject calls a second; rotations are
// rare and need not be faster.
const DefaultKeyringEvery = 30 * time.Second

// KeyringStatus is this node's keyring, for `nodeagent status`.
type KeyringStatus struct {
	// Generation is the key generation this node sends with; 0 when the
	// cluster has no keyring document (its single key object).
	Generation uint64 `json:"keyGeneration"`
	// Generations are every generation this node accepts.
	Generations []uint64 `json:"keyGenerations,omitempty"`
	// Error is the last failure to read or apply the document ("" after a
	// success); the node keeps its keys meanwhile.
	Error string `json:"keyringError,omitempty"`
}

// applyKeyring makes the live keyring equal to d: every key added, the primary
// used, the others removed, in that order (the primary is never removed).
func (a *Agent) applyKeyring(d KeyringDoc) error {
	if err := d.Validate(); err != nil {
		return err
	}
	kr := a.keyring
	for _, k := range d.Keys {
		if err := kr.AddKey(k.Key); err != nil {
			return fmt.Errorf("install gossip key generation %d: %w", k.Generation, err)
		}
	}
	p := d.Primary()
	if err := kr.UseKey(p.Key); err != nil {
		return fmt.Errorf("use gossip key generation %d: %w", p.Generation, err)
	}
	// A copy: memberlist's RemoveKey shifts the slice GetKeys returned in place.
	for _, installed := range slices.Clone(kr.GetKeys()) {
		if !slices.ContainsFunc(d.Keys, func(k KeyringKey) bool { return bytes.Equal(k.Key, installed) }) {
			if err := kr.RemoveKey(installed); err != nil {
				return fmt.Errorf("remove a retired gossip key: %w", err)
			}
		}
	}
	held := make([]uint64, 0, len(d.Keys))
	for _, k := range d.Keys {
		held = append(held, k.Generation)
	}
	sort.Slice(held, func(i, j int) bool { return held[i] < held[j] })
	a.mu.Lock()
	changed := a.keyGen != p.Generation || !slices.Equal(a.keyGens, held)
	a.keyGen, a.keyGens = p.Generation, held
	if changed {
		if err := a.encodeLocked(); err != nil {
			a.mu.Unlock()
			return err
		}
	}
	a.mu.Unlock()
	if changed {
		a.log.Info("gossip keyring applied", "generation", p.Generation, "accepts", held)
		a.signalMeta()
	}
	return nil
}

// Keyring reports the key generations in use.
func (a *Agent) Keyring() KeyringStatus {
	a.mu.Lock()
	defer a.mu.Unlock()
	return KeyringStatus{Generation: a.keyGen, Generations: slices.Clone(a.keyGens), Error: a.keyringError}
}

func (a *Agent) setKeyringError(err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.keyringError = ""
	if err != nil {
		a.keyringError = err.Error()
	}
}

// keyringLoop reads the document every f.Every, applies it, and (on the
// driver) advances a rotation whose step every alive member has taken. A
// malformed or unreadable document changes nothing: the error is logged and
// shown in status, and the node keeps its keys.
func (a *Agent) keyringLoop(ctx context.Context, f KeyringFollow) {
	defer a.wg.Done()
	every := f.Every
	if every <= 0 {
		every = DefaultKeyringEvery
	}
	every = a.tune.dilate(every)
	for {
		a.followKeyringOnce(ctx, f)
		t := time.NewTimer(jitter(every))
		select {
		case <-a.stop:
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// followKeyringOnce reads and applies the document and, on the driver,
// writes the step that is due, conditional on the version read: a master that
// also believes it drives (two views of the ring for a moment) and wrote first
// makes this write fail with cloud.ErrChanged, and this node reads the
// document again and decides again instead of writing the same step twice.
func (a *Agent) followKeyringOnce(ctx context.Context, f KeyringFollow) {
	rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for try := 1; ; try++ {
		d, etag, err := loadKeyringVersion(rctx, f.Store, f.Key)
		if errors.Is(err, ErrNoKeyring) {
			a.setKeyringError(nil)
			return
		}
		if err == nil {
			err = a.applyKeyring(d)
		}
		if err != nil {
			a.setKeyringError(err)
			a.log.Warn("gossip keyring not applied; keeping the current keys", "err", err)
			return
		}
		a.setKeyringError(nil)
		if f.DriverRole == "" || d.Step() == "" || !a.isDriver(f.DriverRole) {
			return
		}
		next, ok := NextKeyringStep(d, a.aliveKeyHoldings(), time.Now())
		if !ok {
			return
		}
		err = f.Store.PutIfMatch(rctx, f.Key, next.Encode(), etag)
		if errors.Is(err, cloud.ErrChanged) && try < keyringWriteTries {
			a.log.Info("the gossip keyring changed since it was read (another master wrote it); reading it again", "step", d.Step())
			continue
		}
		if err != nil {
			a.log.Warn("advance the gossip key rotation", "err", err)
			return
		}
		a.log.Info("gossip key rotation advanced", "from", d.Step(), "generation", next.Generation, "keys", len(next.Keys))
		if err := a.applyKeyring(next); err != nil {
			a.setKeyringError(err)
		}
		return
	}
}

// isDriver: this node is the alive member of role with the lowest name.
func (a *Agent) isDriver(role string) bool {
	if !a.joined.Load() {
		return false
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.role != role {
		return false
	}
	for name, v := range a.view {
		if v.State == StateAlive && v.Role == role && name < a.cfg.NodeName {
			return false
		}
	}
	return true
}

// aliveKeyHoldings is what every alive member (this node included) holds.
func (a *Agent) aliveKeyHoldings() map[string]KeyHolding {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := map[string]KeyHolding{a.cfg.NodeName: {Primary: a.keyGen, Held: slices.Clone(a.keyGens)}}
	for name, v := range a.view {
		if v.State == StateAlive && name != a.cfg.NodeName {
			out[name] = KeyHolding{Primary: v.KeyGeneration, Held: slices.Clone(v.keyGens)}
		}
	}
	return out
}

// encodeKeys lays out the metadata's key field: uvarint primary generation,
// then every accepted generation as uvarints.
func encodeKeys(primary uint64, held []uint64) []byte {
	b := binary.AppendUvarint(nil, primary)
	for _, g := range held {
		b = binary.AppendUvarint(b, g)
	}
	return b
}

func decodeKeys(v []byte) (primary uint64, held []uint64, err error) {
	r := reader{b: v}
	primary = r.uvarint()
	for r.err == nil && len(r.b) > 0 && len(held) < 8 {
		held = append(held, r.uvarint())
	}
	if r.err != nil || len(r.b) > 0 {
		return 0, nil, errors.New("gossip metadata: malformed key generations")
	}
	return primary, held, nil
}
