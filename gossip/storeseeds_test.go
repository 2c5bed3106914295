package gossip

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"
)

// objects is an in-memory state store: the same Get a *cloud.StateStore has.
type objects struct {
	mu sync.Mutex
	m  map[string][]byte
}

var errNoObject = errors.New("not found in state store")

func (o *objects) Get(_ context.Context, key string) ([]byte, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	b, ok := o.m[key]
	if !ok {
		return nil, errNoObject
	}
	return b, nil
}

func (o *objects) put(key string, b []byte) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.m[key] = b
}

// A worker needs no EC2 permission: it joins the ring through the seed list
// the masters publish in the state store, and gets the masters' names.
func TestWorkerJoinsThroughMastersSeedList(t *testing.T) {
	key := []byte("0123456789abcdef")
	m0 := newTestNode(t, 0, key, "ControlPlane", "api.internal."+testCluster)
	m1 := newTestNode(t, 1, key, "ControlPlane", "api.internal."+testCluster)
	w := newTestNode(t, 2, key, "Node")
	m0.start(t, nil)
	m1.start(t, []string{m0.addr()})

	store := &objects{m: map[string][]byte{}}
	w.cfg.Seeds = &StoreSeeds{Store: store, Key: "nodeagent/gossip-seeds.json", Self: w.cfg.BindIP.String()}
	// The worker starts before any master has published: it keeps retrying.
	a, err := Start(t.Context(), w.cfg)
	if err != nil {
		t.Fatal(err)
	}
	w.agent = a
	t.Cleanup(func() { a.halt() })
	waitFor(t, 5*time.Second, "the worker reports the missing seed list", func() error {
		if st := a.Status(); !strings.Contains(st.LastJoinError, "seed list") {
			return fmt.Errorf("last join error %q", st.LastJoinError)
		}
		return nil
	})

	var list SeedList
	waitFor(t, 10*time.Second, "a master lists both masters", func() error {
		l, ok := m1.agent.MasterSeeds("ControlPlane")
		if want := sortIPs([]string{m0.cfg.BindIP.String(), m1.cfg.BindIP.String()}); !ok || !reflect.DeepEqual(l.Masters, want) {
			return fmt.Errorf("seed list %v (ok %v), want %v", l.Masters, ok, want)
		}
		list = l
		return nil
	})
	// The in-process ring runs on random ports, not the default one: the
	// published entries carry them.
	for i, ip := range list.Masters {
		for _, m := range []*testNode{m0, m1} {
			if m.cfg.BindIP.String() == ip {
				list.Masters[i] = m.addr()
			}
		}
	}
	store.put("nodeagent/gossip-seeds.json", list.Encode())
	if seeds, err := w.cfg.Seeds.Seeds(t.Context()); err != nil || !reflect.DeepEqual(seeds, list.Masters) {
		t.Fatalf("worker's seeds %v, %v; want %v", seeds, err, list.Masters)
	}
	waitFor(t, 15*time.Second, "the worker has the masters' names", func() error {
		h := readHostsBlock(t, w.hosts)
		if got := len(h["api.internal."+testCluster]); got != 2 {
			return fmt.Errorf("api.internal resolves to %d masters: %v", got, h)
		}
		return nil
	})
	if l, ok := w.agent.MasterSeeds("ControlPlane"); !ok || len(l.Masters) != 2 {
		t.Errorf("the worker's view of the masters %v, want the two masters", l.Masters)
	}
}

func TestDecodeSeedListRefusesNonAddresses(t *testing.T) {
	for _, bad := range []string{`{"masters":["10.0.0.1","evil.example.com"]}`, `{"masters":"10.0.0.1"}`, `{"seeds":[]}`, `not json`} {
		if _, err := DecodeSeedList([]byte(bad)); err == nil {
			t.Errorf("DecodeSeedList(%s) accepted it", bad)
		}
	}
	l, err := DecodeSeedList(SeedList{Masters: []string{"10.0.1.5", "10.0.2.7"}}.Encode())
	if err != nil || !reflect.DeepEqual(l.Masters, []string{"10.0.1.5", "10.0.2.7"}) {
		t.Fatalf("round trip: %v, %v", l, err)
	}
}

func TestMultiSeedsFailsOnlyWhenAllFail(t *testing.T) {
	failing := &StoreSeeds{Store: &objects{m: map[string][]byte{}}, Key: "k"}
	got, err := MultiSeeds{failing, StaticSeeds{"10.0.0.1", "10.0.0.2"}, StaticSeeds{"10.0.0.2"}}.Seeds(t.Context())
	if err != nil || !reflect.DeepEqual(got, []string{"10.0.0.1", "10.0.0.2"}) {
		t.Fatalf("union = %v, %v", got, err)
	}
	if _, err := (MultiSeeds{failing}).Seeds(t.Context()); err == nil {
		t.Fatal("all sources failing: no error")
	}
}

// Time dilation stretches every timer of the agent, memberlist's and its own,
// by the same factor; without it nothing changes.
func TestDilationStretchesEveryTimer(t *testing.T) {
	d := DefaultTuning()
	k4 := Tuning{Dilation: 4}.withDefaults()
	if got := k4.dilate(d.ProbeInterval); got != 4*d.ProbeInterval {
		t.Errorf("probe interval ×4 = %v, want %v", got, 4*d.ProbeInterval)
	}
	if got := DefaultTuning().withDefaults().dilate(hostsDebounce); got != hostsDebounce {
		t.Errorf("undilated debounce = %v, want %v", got, hostsDebounce)
	}
	key := []byte("0123456789abcdef")
	n := newTestNode(t, 3, key, "Node")
	n.cfg.Tuning = &Tuning{Dilation: 4}
	a, err := newAgent(n.cfg)
	if err != nil {
		t.Fatal(err)
	}
	if a.cfg.SeedRefresh != 4*time.Second {
		t.Errorf("seed refresh of a ring dilated ×4 = %v, want 4s", a.cfg.SeedRefresh)
	}
}
