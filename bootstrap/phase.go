// Package bootstrap runs a node's boot as a list of named, idempotent phases and
// records each one's outcome in the state file that `nodeagent status` reads.
//
// A phase is check → act → verify: Check looks at the host and says what it would
// change (nothing means converged, so a re-run after success is a no-op); Act makes
// those changes; Verify proves the result. Because every phase checks before it acts,
// re-running after a crash or a reboot converges instead of starting over.
package bootstrap

import (
	"context"
	"errors"
	"fmt"
)

// Change is one thing a phase would do to the host; `nodeagent plan` prints them.
type Change struct {
	Kind   string `json:"kind"`   // file, unit, sysctl, module, swap, hostname, asset, image, volume, manifest, cert
	Target string `json:"target"` // path, unit name, key, volume id
	Action string `json:"action"` // create, update, delete, apply, start, restart, attach, format, mount, import
	Detail string `json:"detail,omitempty"`
}

func (c Change) String() string {
	s := c.Action + " " + c.Kind + " " + c.Target
	if c.Detail != "" {
		s += " (" + c.Detail + ")"
	}
	return s
}

// Phase is one named step of the boot.
type Phase interface {
	Name() string
	// Check inspects the host and returns the changes Act would make; an empty list
	// means the phase has converged. It must change nothing.
	Check(ctx context.Context) ([]Change, error)
	// Act makes the host match the desired state.
	Act(ctx context.Context) error
	// Verify checks that the desired state holds now.
	Verify(ctx context.Context) error
}

// Reporter is implemented by phases that have results worth showing in status
// (volumes, units, manifests). Report is called after the phase ends, done or not.
type Reporter interface {
	Report(st *State)
}

// RecordReader is implemented by phases that read the outcomes of the phases
// before them from the state file (readiness: every phase done). The runner
// writes the outcomes it holds back (see Runner.RunHeld) before such a phase
// runs.
type RecordReader interface {
	ReadsRecord()
}

// WaitError is how a phase says it cannot finish yet because it waits on
// something outside this node (a master on its peers for etcd quorum), not
// because something here is broken. The runner records the phase as waiting, not
// failed; `bootstrap` does not abandon the launch for it, and the daemon keeps
// trying.
type WaitError struct {
	Reason string
}

func (e *WaitError) Error() string { return "waiting: " + e.Reason }

// Waiting wraps a reason as a WaitError.
func Waiting(format string, args ...any) error {
	return &WaitError{Reason: fmt.Sprintf(format, args...)}
}

// IsWaiting reports whether err (or what it wraps) is a WaitError.
func IsWaiting(err error) bool {
	var w *WaitError
	return errors.As(err, &w)
}

type progressKey struct{}

// Progress tells status what a running phase is doing or waiting on now ("no
// etcd volume available in us-east-1d: …"), while it runs; the runner clears it
// when the phase ends. Outside a runner it does nothing.
func Progress(ctx context.Context, msg string) {
	if f, ok := ctx.Value(progressKey{}).(func(string)); ok {
		f(msg)
	}
}

func withProgress(ctx context.Context, f func(string)) context.Context {
	return context.WithValue(ctx, progressKey{}, f)
}
