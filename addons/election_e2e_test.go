//go:build e2e

package addons_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"

	"github.com/nodeagent/nodeagent/election"
)

// The add-on applier's election (election/), against the API server of
// TestApplierE2E: timings of the test scaled down from the add-on applier's 15/10/2 s.
const (
	leaseDuration = 3 * time.Second
	renewDeadline = 2 * time.Second
	retryPeriod   = 250 * time.Millisecond
)

// candidate runs one elector in the background and tells who leads.
type candidate struct {
	id      string
	cancel  context.CancelFunc
	done    chan struct{}
	mu      sync.Mutex
	leading bool
	starts  int
	seen    string // the last leader it was told of
}

func campaign(t *testing.T, leases election.Leases, id string) *candidate {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	c := &candidate{id: id, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(c.done)
		err := election.Run(ctx, election.Config{
			Leases: leases, Name: "test-lease", Identity: id,
			LeaseDuration: leaseDuration, RenewDeadline: renewDeadline, RetryPeriod: retryPeriod,
			OnStartedLeading: func(ctx context.Context) {
				c.mu.Lock()
				c.leading, c.starts = true, c.starts+1
				c.mu.Unlock()
				<-ctx.Done()
				c.mu.Lock()
				c.leading = false
				c.mu.Unlock()
			},
			OnNewLeader: func(l string) { c.mu.Lock(); c.seen = l; c.mu.Unlock() },
		})
		if err != nil {
			t.Errorf("%s: %v", id, err)
		}
	}()
	t.Cleanup(func() { cancel(); <-c.done })
	return c
}

func (c *candidate) state() (leading bool, starts int, seen string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.leading, c.starts, c.seen
}

func eventually(t *testing.T, within time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	if err := wait.PollUntilContextTimeout(context.Background(), 50*time.Millisecond, within, true,
		func(context.Context) (bool, error) { return cond(), nil }); err != nil {
		t.Fatalf("not within %s: %s", within, what)
	}
	return time.Since(start)
}

// Against a real kube-apiserver v1.34.4: of two candidates exactly one leads
// and the other knows it; a leader that stops releases the lease and the other
// takes it at once (well before the lease would expire); a leader that dies
// without releasing (its process gone: it neither renews nor releases) is
// replaced once its lease has not been renewed for the lease duration.
func testElection(t *testing.T, cfg *rest.Config) {
	leases := election.LeasesOf(dynamic.NewForConfigOrDie(cfg), "default")

	a := campaign(t, leases, "master-a")
	eventually(t, 10*time.Second, "master-a leads", func() bool { l, _, _ := a.state(); return l })
	b := campaign(t, leases, "master-b")
	eventually(t, 5*time.Second, "master-b sees master-a lead", func() bool { _, _, s := b.state(); return s == "master-a" })
	// For twice the lease duration (many renewals) master-b does not take over.
	for end := time.Now().Add(2 * leaseDuration); time.Now().Before(end); {
		if l, _, _ := b.state(); l {
			t.Fatal("master-b leads while master-a renews its lease")
		}
		<-time.After(retryPeriod / 2)
	}
	if l, starts, _ := a.state(); !l || starts != 1 {
		t.Fatalf("master-a leading %v after %d starts: want one uninterrupted term", l, starts)
	}

	// A graceful stop releases the lease: master-b takes it within a few retries.
	a.cancel()
	<-a.done
	took := eventually(t, leaseDuration, "master-b leads after master-a released", func() bool { l, _, _ := b.state(); return l })
	t.Logf("handover after a release: %s", took)
	lease, err := leases.Get(context.Background(), "test-lease")
	if err != nil {
		t.Fatal(err)
	}
	if *lease.Spec.HolderIdentity != "master-b" || lease.Spec.LeaseTransitions == nil || *lease.Spec.LeaseTransitions < 1 {
		t.Errorf("lease after the handover: holder %v, transitions %v (want master-b, 1)", *lease.Spec.HolderIdentity, ptrString(lease.Spec.LeaseTransitions))
	}

	// A crashed leader: master-b's lease is frozen as a dead process leaves it
	// (a third candidate sees it renewed last by master-b and never again).
	b.cancel()
	<-b.done
	lease, err = leases.Get(context.Background(), "test-lease")
	if err != nil {
		t.Fatal(err)
	}
	dead := "master-b"
	lease.Spec.HolderIdentity = &dead
	secs := int32(leaseDuration / time.Second)
	lease.Spec.LeaseDurationSeconds = &secs
	if _, err := leases.Update(context.Background(), lease); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	c := campaign(t, leases, "master-c")
	eventually(t, 3*leaseDuration, "master-c takes the dead leader's lease", func() bool { l, _, _ := c.state(); return l })
	if waited := time.Since(start); waited < leaseDuration {
		t.Errorf("master-c took a live-looking lease after %s, before its duration %s", waited, leaseDuration)
	} else {
		t.Logf("takeover from a dead leader: %s (lease duration %s)", waited, leaseDuration)
	}
}

func ptrString(p *int32) string {
	if p == nil {
		return "nil"
	}
	return fmt.Sprint(*p)
}
