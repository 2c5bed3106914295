package gossip

import (
	"bytes"
	"context"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nodeagent/nodeagent/cloud"
)

// keyObjects is an in-memory state store with S3's conditional writes,
// answering a missing object and a lost race as *cloud.StateStore does. Each
// write gives the object a new version (its "ETag") and is kept in written.
type keyObjects struct {
	mu      sync.Mutex
	m       map[string][]byte
	version map[string]int
	written [][]byte
	// gate, when set, holds the first gate.n GetVersioned calls until all of
	// them have read: that many writers then decide from one version, as two
	// masters can.
	gate *readGate
}

type readGate struct {
	n, arrived int
	open       chan struct{}
}

func newKeyObjects() *keyObjects {
	return &keyObjects{m: map[string][]byte{}, version: map[string]int{}}
}

func (o *keyObjects) Get(_ context.Context, key string) ([]byte, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	b, ok := o.m[key]
	if !ok {
		return nil, fmt.Errorf("%s: %w", key, cloud.ErrNotFound)
	}
	return bytes.Clone(b), nil
}

func (o *keyObjects) GetVersioned(ctx context.Context, key string) ([]byte, string, error) {
	o.mu.Lock()
	b, ok := bytes.Clone(o.m[key]), o.m[key] != nil
	etag := fmt.Sprintf(`"v%d"`, o.version[key])
	var open chan struct{}
	if g := o.gate; g != nil {
		if g.arrived++; g.arrived == g.n {
			close(g.open)
		}
		open = g.open
	}
	o.mu.Unlock()
	if open != nil {
		select {
		case <-open:
		case <-ctx.Done():
			return nil, "", ctx.Err()
		}
	}
	if !ok {
		return nil, "", fmt.Errorf("%s: %w", key, cloud.ErrNotFound)
	}
	return b, etag, nil
}

func (o *keyObjects) PutIfMatch(_ context.Context, key string, b []byte, etag string) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	_, exists := o.m[key]
	if (etag == "" && exists) || (etag != "" && etag != fmt.Sprintf(`"v%d"`, o.version[key])) {
		return fmt.Errorf("%s: %w", key, cloud.ErrChanged)
	}
	o.put(key, b)
	return nil
}

// put writes unconditionally (a test setting the document up); o.mu held.
func (o *keyObjects) put(key string, b []byte) {
	o.m[key] = bytes.Clone(b)
	o.version[key]++
	o.written = append(o.written, bytes.Clone(b))
}

var (
	key1 = []byte("0123456789abcdef")
	key2 = []byte("fedcba9876543210fedcba9876543210")
)

func TestKeyringDocumentRules(t *testing.T) {
	doc := func(gen uint64, keys ...KeyringKey) string {
		return string(KeyringDoc{Generation: gen, Keys: keys}.Encode())
	}
	for _, tc := range []struct {
		name, doc, err string
	}{
		{"one primary key", doc(1, KeyringKey{1, key1, KeyPrimary}), ""},
		{"a key being installed", doc(1, KeyringKey{1, key1, KeyPrimary}, KeyringKey{2, key2, KeyInstalled}), ""},
		{"a key retiring", doc(2, KeyringKey{1, key1, KeyRetiring}, KeyringKey{2, key2, KeyPrimary}), ""},
		{"not JSON", "{", "unexpected EOF"},
		{"unknown field", `{"generation":1,"keys":[],"extra":1}`, `unknown field "extra"`},
		{"no keys", doc(1), "0 keys"},
		{"no primary", doc(1, KeyringKey{2, key2, KeyInstalled}), "0 primary keys"},
		{"short key", doc(1, KeyringKey{1, []byte("short"), KeyPrimary}), "5 bytes, want 16, 24 or 32"},
		{"same key twice", doc(1, KeyringKey{1, key1, KeyPrimary}, KeyringKey{2, key1, KeyInstalled}), "hold the same key"},
		{"primary is not the document's generation", doc(3, KeyringKey{1, key1, KeyPrimary}), "document says 3"},
		{"installed key older than the primary", doc(2, KeyringKey{2, key1, KeyPrimary}, KeyringKey{1, key2, KeyInstalled}), "not newer"},
		{"unknown state", doc(1, KeyringKey{1, key1, KeyPrimary}, KeyringKey{2, key2, "used"}), `state "used"`},
		{"generation zero", doc(0, KeyringKey{0, key1, KeyPrimary}), "generation 0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := DecodeKeyring([]byte(tc.doc))
			if tc.err == "" {
				if err != nil {
					t.Fatalf("valid document refused: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("error %v, want one containing %q", err, tc.err)
			}
			if !strings.HasPrefix(err.Error(), "gossip keyring document: ") {
				t.Errorf("error %q does not say what was wrong", err)
			}
		})
	}
}

// A rotation advances only when every alive member has taken the step before.
func TestRotationAdvancesOnlyWhenEveryMemberCaughtUp(t *testing.T) {
	now := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	installing := KeyringDoc{Generation: 1, Keys: []KeyringKey{{1, key1, KeyPrimary}, {2, key2, KeyInstalled}}}
	using := KeyringDoc{Generation: 2, Keys: []KeyringKey{{1, key1, KeyRetiring}, {2, key2, KeyPrimary}}, Updated: now}
	done := KeyringDoc{Generation: 2, Keys: []KeyringKey{{2, key2, KeyPrimary}}, Updated: now}
	for _, tc := range []struct {
		name    string
		doc     KeyringDoc
		members map[string]KeyHolding
		want    *KeyringDoc
	}{
		{"install: one member lacks the new key", installing, map[string]KeyHolding{
			"a": {1, []uint64{1, 2}}, "b": {1, []uint64{1}}}, nil},
		{"install: an old agent advertises nothing", installing, map[string]KeyHolding{
			"a": {1, []uint64{1, 2}}, "b": {}}, nil},
		{"install: every member holds it", installing, map[string]KeyHolding{
			"a": {1, []uint64{1, 2}}, "b": {1, []uint64{1, 2}}}, &using},
		{"use: one member still sends with the old key", using, map[string]KeyHolding{
			"a": {2, []uint64{1, 2}}, "b": {1, []uint64{1, 2}}}, nil},
		{"use: every member sends with the new key", using, map[string]KeyHolding{
			"a": {2, []uint64{1, 2}}, "b": {2, []uint64{1, 2}}}, &done},
		{"no rotation under way", done, map[string]KeyHolding{"a": {2, []uint64{2}}}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := NextKeyringStep(tc.doc, tc.members, now)
			if tc.want == nil {
				if ok {
					t.Fatalf("advanced to %+v; must wait", got)
				}
				return
			}
			if !ok || !bytes.Equal(got.Encode(), tc.want.Encode()) {
				t.Fatalf("got %s (ok=%v), want %s", got.Encode(), ok, tc.want.Encode())
			}
		})
	}
}

func TestKeyGenerationsTravelInMetadata(t *testing.T) {
	in := metadata{Role: "Node", Names: []string{"a." + testCluster}, KeyGen: 7, KeyGens: []uint64{6, 7}}
	b, err := encodeMeta(in, testCluster)
	if err != nil {
		t.Fatal(err)
	}
	out, err := decodeMeta(b, testCluster)
	if err != nil {
		t.Fatal(err)
	}
	if out.KeyGen != 7 || fmt.Sprint(out.KeyGens) != "[6 7]" {
		t.Fatalf("decoded key generations %d %v, want 7 [6 7]", out.KeyGen, out.KeyGens)
	}
}

// The whole rotation in one process: a request, then the driver (the master)
// advances it step by step while no member ever leaves; a malformed document
// changes nothing.
func TestKeyRotationInProcess(t *testing.T) {
	store := newKeyObjects()
	const docKey = "nodeagent/gossip-keyring.json"
	var nodes []*testNode
	for i := range 3 {
		role := "Node"
		if i == 0 {
			role = "ControlPlane"
		}
		n := newTestNode(t, 40+i, key1, role)
		n.cfg.FollowKeyring = &KeyringFollow{Store: store, Key: docKey, Every: 200 * time.Millisecond, DriverRole: "ControlPlane"}
		nodes = append(nodes, n)
	}
	for i, n := range nodes {
		var seeds []string
		if i > 0 {
			seeds = []string{nodes[0].addr()}
		}
		n.start(t, seeds)
	}
	waitFor(t, 10*time.Second, "ring formed", func() error {
		for _, n := range nodes {
			if got := len(n.agent.Hosts()); got != 3 {
				return fmt.Errorf("%s knows %d names", n.cfg.NodeName, got)
			}
		}
		return nil
	})

	legacy := func(context.Context) ([]byte, error) { return key1, nil }
	d, err := RequestRotation(t.Context(), store, docKey, legacy, key2, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if d.Step() != "install" || d.Generation != 1 {
		t.Fatalf("request wrote %s", d.Encode())
	}
	if _, err := RequestRotation(t.Context(), store, docKey, legacy, nil, time.Now()); err == nil || !strings.Contains(err.Error(), "under way") {
		t.Fatalf("a second request during a rotation: %v, want a refusal", err)
	}
	waitFor(t, 20*time.Second, "rotation finished", func() error {
		d, err := LoadKeyring(t.Context(), store, docKey)
		if err != nil {
			return err
		}
		if d.Step() != "" || d.Generation != 2 {
			return fmt.Errorf("document at generation %d, step %q", d.Generation, d.Step())
		}
		for _, n := range nodes {
			if ks := n.agent.Keyring(); ks.Generation != 2 || fmt.Sprint(ks.Generations) != "[2]" {
				return fmt.Errorf("%s keyring %+v", n.cfg.NodeName, ks)
			}
		}
		return nil
	})
	for _, n := range nodes {
		if ev := n.agent.EventCounts(); ev[EventDead]+ev[EventLeft] != 0 {
			t.Errorf("%s saw %d deaths and %d leaves during the rotation", n.cfg.NodeName, ev[EventDead], ev[EventLeft])
		}
		if got := len(n.agent.Hosts()); got != 3 {
			t.Errorf("%s knows %d names after the rotation, want 3", n.cfg.NodeName, got)
		}
	}

	// A malformed document: every node keeps generation 2 and says why.
	store.mu.Lock()
	store.put(docKey, []byte(`{"generation":3,"keys":[{"generation":3,"key":"c2hvcnQ=","state":"primary"}]}`))
	store.mu.Unlock()
	waitFor(t, 5*time.Second, "the malformed document reported", func() error {
		for _, n := range nodes {
			ks := n.agent.Keyring()
			if !strings.Contains(ks.Error, "5 bytes") {
				return fmt.Errorf("%s keyring error %q", n.cfg.NodeName, ks.Error)
			}
			if ks.Generation != 2 {
				t.Fatalf("%s dropped its keys for a malformed document: %+v", n.cfg.NodeName, ks)
			}
		}
		return nil
	})
}

// Two masters that both believe they drive (each alone in its view of the
// ring) read the document at the same version and both find the install step
// due: exactly one write of it wins. The other's conditional write fails, it
// reads the document again, and takes the step after it instead of writing
// the same step a second time.
func TestKeyringStepRaceHasOneWinner(t *testing.T) {
	const docKey = "nodeagent/gossip-keyring.json"
	store := newKeyObjects()
	store.put(docKey, KeyringDoc{Generation: 1, Keys: []KeyringKey{{1, key1, KeyPrimary}, {2, key2, KeyInstalled}}}.Encode())
	store.gate = &readGate{n: 2, open: make(chan struct{})}
	var masters []*testNode
	for i := range 2 {
		n := newTestNode(t, 50+i, key1, "ControlPlane")
		n.start(t, nil)
		masters = append(masters, n)
	}
	waitFor(t, 5*time.Second, "both masters joined (alone)", func() error {
		for _, n := range masters {
			if !n.agent.Status().Joined || !n.agent.isDriver("ControlPlane") {
				return fmt.Errorf("%s does not drive yet", n.cfg.NodeName)
			}
		}
		return nil
	})
	follow := KeyringFollow{Store: store, Key: docKey, DriverRole: "ControlPlane"}
	var wg sync.WaitGroup
	for _, n := range masters {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n.agent.followKeyringOnce(t.Context(), follow)
		}()
	}
	wg.Wait()

	store.mu.Lock()
	written := store.written[1:] // after the set-up
	store.mu.Unlock()
	steps := map[string]int{}
	for _, b := range written {
		d, err := DecodeKeyring(b)
		if err != nil {
			t.Fatalf("a malformed document was written: %v\n%s", err, b)
		}
		steps[fmt.Sprintf("generation %d, step %q, %d keys", d.Generation, d.Step(), len(d.Keys))]++
	}
	want := map[string]int{
		`generation 2, step "use", 2 keys`: 1, // install -> use, by the winner
		`generation 2, step "", 1 keys`:    1, // use -> done, by the loser after reading again
	}
	if !reflect.DeepEqual(steps, want) {
		t.Fatalf("writes by step: %v, want each step written once: %v", steps, want)
	}
}

// Two rotation requests from one version of the store (here: no document
// yet): one is written, the other reads again and is refused.
func TestRotationRequestRaceHasOneWinner(t *testing.T) {
	const docKey = "nodeagent/gossip-keyring.json"
	store := newKeyObjects()
	store.gate = &readGate{n: 2, open: make(chan struct{})}
	legacy := func(context.Context) ([]byte, error) { return key1, nil }
	errs := make(chan error, 2)
	for range 2 {
		go func() {
			_, err := RequestRotation(t.Context(), store, docKey, legacy, nil, time.Now())
			errs <- err
		}()
	}
	var refused int
	for range 2 {
		if err := <-errs; err != nil {
			if !strings.Contains(err.Error(), "under way") {
				t.Fatalf("the losing request: %v, want a refusal for the rotation under way", err)
			}
			refused++
		}
	}
	store.mu.Lock()
	defer store.mu.Unlock()
	if refused != 1 || len(store.written) != 1 {
		t.Fatalf("%d requests refused and %d documents written, want 1 and 1", refused, len(store.written))
	}
}
