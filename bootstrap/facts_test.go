package bootstrap

import (
	"context"
	"errors"
	"testing"
)

// learner learns this node's etcd membership, as the volumes phase does.
type learner struct{ member string }

func (l *learner) Name() string                            { return "volumes" }
func (l *learner) Check(context.Context) ([]Change, error) { return nil, nil }
func (l *learner) Act(context.Context) error               { return nil }
func (l *learner) Verify(context.Context) error            { return nil }
func (l *learner) LearnFacts(f *Facts) {
	f.EtcdMembers = []EtcdMemberFact{{Cluster: "main", Member: l.member, Members: []string{"a", "b", "c"}, VolumeID: "vol-1", MountPoint: "/mnt/master-vol-1"}}
}

// user records the facts it was given before its check; it can be told to wait.
type user struct {
	got     Facts
	waitFor string
}

func (u *user) Name() string     { return "manifests" }
func (u *user) UseFacts(f Facts) { u.got = f }
func (u *user) Check(context.Context) ([]Change, error) {
	return []Change{{Kind: "etcd", Target: "main", Action: "wait"}}, nil
}
func (u *user) Act(ctx context.Context) error {
	if u.waitFor != "" {
		Progress(ctx, "looking for "+u.waitFor)
		return Waiting("no quorum: %s", u.waitFor)
	}
	return nil
}
func (u *user) Verify(context.Context) error { return nil }

// TestFactsTravelThroughTheRunner: what a phase learns reaches the phases after
// it in the same run, is recorded in the state file, and is where a later
// process (the daemon) starts from before any phase has run again.
func TestFactsTravelThroughTheRunner(t *testing.T) {
	store := StateStore{Dir: t.TempDir()}
	u := &user{}
	if err := (&Runner{Store: store}).Run(context.Background(), []Phase{&learner{member: "b"}, u}); err != nil {
		t.Fatal(err)
	}
	if m, ok := u.got.EtcdMember("main"); !ok || m.Member != "b" {
		t.Fatalf("the later phase got %+v, want member b of main", u.got)
	}
	st, err := store.Load()
	if err != nil {
		t.Fatal(err)
	}
	if m, ok := st.Facts.EtcdMember("main"); !ok || m.Member != "b" || m.MountPoint != "/mnt/master-vol-1" {
		t.Fatalf("state.json facts %+v, want member b", st.Facts)
	}
	// A new process that runs only the later phase starts from the record.
	later := &user{}
	if err := (&Runner{Store: store}).Run(context.Background(), []Phase{later}); err != nil {
		t.Fatal(err)
	}
	if m, _ := later.got.EtcdMember("main"); m.Member != "b" {
		t.Errorf("a later run started from %+v, want the recorded member b", later.got)
	}
	// Plan passes facts the same way.
	planned := &user{}
	Plan(context.Background(), []Phase{&learner{member: "c"}, planned}, Facts{})
	if m, _ := planned.got.EtcdMember("main"); m.Member != "c" {
		t.Errorf("plan gave %+v, want what the check before learned (c)", planned.got)
	}
}

// TestWaitingIsNotFailing: a phase that waits on others ends "waiting", the run's
// error says so and is recognisable as waiting, and its progress was shown while
// it ran.
func TestWaitingIsNotFailing(t *testing.T) {
	store := StateStore{Dir: t.TempDir()}
	err := (&Runner{Store: store}).Run(context.Background(), []Phase{&user{waitFor: "peers b and c"}})
	if err == nil || !IsWaiting(err) || !IsPhaseError(err) {
		t.Fatalf("Run = %v, want a waiting phase error", err)
	}
	var pe *PhaseError
	if !errors.As(err, &pe) || pe.Phase != "manifests" {
		t.Errorf("error %v does not name the phase", err)
	}
	st, _ := store.Load()
	p := st.Phase("manifests")
	if p == nil || p.State != PhaseWaiting || st.Error == "" {
		t.Fatalf("phase %+v, state error %q: want waiting with the reason", p, st.Error)
	}
	if IsWaiting(errors.New("disk full")) {
		t.Error("a plain error counts as waiting")
	}
}

// TestProgressShowsWhileRunning: a phase's progress is in the state file while
// it runs, and gone once it has finished.
func TestProgressShowsWhileRunning(t *testing.T) {
	store := StateStore{Dir: t.TempDir()}
	seen := ""
	p := &progressPhase{store: store, seen: &seen}
	if err := (&Runner{Store: store}).Run(context.Background(), []Phase{p}); err != nil {
		t.Fatal(err)
	}
	if seen != "waiting for an etcd volume" {
		t.Errorf("progress while running %q", seen)
	}
	st, _ := store.Load()
	if got := st.Phase("volumes").Progress; got != "" {
		t.Errorf("progress after the phase ended %q, want none", got)
	}
}

type progressPhase struct {
	store StateStore
	seen  *string
}

func (p *progressPhase) Name() string { return "volumes" }
func (p *progressPhase) Check(context.Context) ([]Change, error) {
	return []Change{{Kind: "volume", Target: "main", Action: "attach"}}, nil
}
func (p *progressPhase) Act(ctx context.Context) error {
	Progress(ctx, "waiting for an etcd volume")
	st, err := p.store.Load()
	if err != nil {
		return err
	}
	*p.seen = st.Phase("volumes").Progress
	return nil
}
func (p *progressPhase) Verify(context.Context) error { return nil }
