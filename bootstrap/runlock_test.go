package bootstrap

import (
	"context"
	"errors"
	"testing"
	"time"
)

// Bootstrap and the daemon it starts must never run phases at the same time: the
// second run waits for the first, and a readiness report is skipped meanwhile.
func TestRunLockSerializesRuns(t *testing.T) {
	store := StateStore{Dir: t.TempDir()}
	unlock, err := store.LockRun(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if _, ok, err := store.TryLockRun(); err != nil || ok {
		t.Fatalf("TryLockRun while a run holds the lock: ok=%v err=%v", ok, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	r := &Runner{Store: store}
	if err := r.Run(ctx, nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("second run while the first holds the lock: %v, want it to wait until its deadline", err)
	}
	done := make(chan error, 1)
	go func() { done <- r.Run(context.Background(), nil) }()
	time.Sleep(100 * time.Millisecond)
	select {
	case err := <-done:
		t.Fatalf("run finished while the lock was held: %v", err)
	default:
	}
	unlock()
	if err := <-done; err != nil {
		t.Fatalf("run after the lock was released: %v", err)
	}
	unlock2, ok, err := store.TryLockRun()
	if err != nil || !ok {
		t.Fatalf("TryLockRun after both runs: ok=%v err=%v", ok, err)
	}
	unlock2()
}
