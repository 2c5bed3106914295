// Package election elects one holder of a coordination.k8s.io/v1 Lease at a
// time, as client-go's leaderelection does with its LeaseLock: a candidate takes
// a lease nobody holds or whose holder has not renewed it for its duration (as
// seen on this candidate's own clock: the time it last saw the lease change),
// the holder renews it every retry period and gives up leading when it could not
// renew within the renew deadline, and a holder that stops releases the lease so
// that a successor need not wait out its duration. Every write is an update with
// the resource version read, so two candidates never both win one round.
//
// client-go's leaderelection is not used because its resourcelock imports the
// typed clientset, whose scheme registers every API group of k8s.io/api: some
// 10 MB of the agent's binary and milliseconds of every start.
package election

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/dynamic"
)

// Leases reads and writes the Lease objects of one namespace. Update must
// refuse (apierrors Conflict) a lease whose resource version is not current.
type Leases interface {
	Get(ctx context.Context, name string) (*coordinationv1.Lease, error)
	Create(ctx context.Context, l *coordinationv1.Lease) (*coordinationv1.Lease, error)
	Update(ctx context.Context, l *coordinationv1.Lease) (*coordinationv1.Lease, error)
}

// Config of one candidate.
type Config struct {
	Leases Leases
	// Name of the Lease; Identity is this candidate's holder identity.
	Name, Identity string
	// LeaseDuration is how long others wait after the lease last changed
	// before taking it; the holder gives up leading when it could not renew
	// within RenewDeadline; every try is RetryPeriod apart (jittered while
	// waiting for the lease).
	LeaseDuration, RenewDeadline, RetryPeriod time.Duration
	// OnStartedLeading runs (in its own goroutine) once the lease is won, with
	// a context that ends when leadership ends.
	OnStartedLeading func(ctx context.Context)
	// OnStoppedLeading is called when Run returns (led or not).
	OnStoppedLeading func()
	// OnNewLeader, when set, is told each holder seen, this candidate included.
	OnNewLeader func(identity string)
	Log         *slog.Logger
	// Now is the clock; time.Now when nil.
	Now func() time.Time
}

func (c *Config) validate() error {
	var errs []error
	if c.Leases == nil || c.Name == "" || c.Identity == "" {
		errs = append(errs, errors.New("a lease store, a lease name and an identity are needed"))
	}
	if c.RetryPeriod <= 0 || c.RenewDeadline <= c.RetryPeriod || c.LeaseDuration <= c.RenewDeadline {
		errs = append(errs, fmt.Errorf("want 0 < retry period (%s) < renew deadline (%s) < lease duration (%s)", c.RetryPeriod, c.RenewDeadline, c.LeaseDuration))
	}
	if c.OnStartedLeading == nil {
		errs = append(errs, errors.New("OnStartedLeading is needed"))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("election %s: %w", c.Name, err)
	}
	return nil
}

// Run campaigns for the lease until it is won, leads until leadership is lost
// or ctx ends (then releases the lease), and returns. Only a bad Config is an
// error; a failing API server is retried (and logged).
func Run(ctx context.Context, c Config) error {
	if err := c.validate(); err != nil {
		return err
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
	if c.OnStoppedLeading != nil {
		defer c.OnStoppedLeading()
	}
	e := &elector{c: c}
	if !e.acquire(ctx) {
		return nil
	}
	leading, stop := context.WithCancel(ctx)
	defer stop()
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.OnStartedLeading(leading)
	}()
	e.renew(leading)
	stop()
	<-done
	e.release()
	return nil
}

type elector struct {
	c Config
	// lease is the lease as last read or written; seen is when this candidate
	// saw its resource version change (the clock expiry is judged by).
	lease    *coordinationv1.Lease
	seen     time.Time
	reported string
}

// acquire tries every RetryPeriod (jittered) until the lease is won (true) or
// ctx ends (false).
func (e *elector) acquire(ctx context.Context) bool {
	for {
		if e.try(ctx) {
			return true
		}
		t := time.NewTimer(wait.Jitter(e.c.RetryPeriod, 1.2))
		select {
		case <-ctx.Done():
			t.Stop()
			return false
		case <-t.C:
		}
	}
}

// renew renews the lease every RetryPeriod; it returns when a renewal did not
// succeed within RenewDeadline (leadership lost) or ctx ends.
func (e *elector) renew(ctx context.Context) {
	for {
		t := time.NewTimer(e.c.RetryPeriod)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		err := wait.PollUntilContextTimeout(ctx, e.c.RetryPeriod, e.c.RenewDeadline, true,
			func(ctx context.Context) (bool, error) { return e.try(ctx), nil })
		if err != nil {
			if ctx.Err() == nil {
				e.c.Log.Warn("lease not renewed within the deadline; leadership lost", "lease", e.c.Name, "deadline", e.c.RenewDeadline)
			}
			return
		}
	}
}

// try takes or renews the lease once: true when this candidate holds it now.
func (e *elector) try(ctx context.Context) bool {
	now := e.c.Now()
	cur, err := e.c.Leases.Get(ctx, e.c.Name)
	if apierrors.IsNotFound(err) {
		l := &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: e.c.Name}}
		e.hold(l, now)
		created, err := e.c.Leases.Create(ctx, l)
		if err != nil {
			e.c.Log.Debug("lease not created", "lease", e.c.Name, "err", err)
			return false
		}
		e.observe(created, now)
		return true
	}
	if err != nil {
		e.c.Log.Warn("lease not read", "lease", e.c.Name, "err", err)
		return false
	}
	e.observe(cur, now)
	if holder := holderOf(cur); holder != "" && holder != e.c.Identity && now.Before(e.seen.Add(durationOf(cur))) {
		return false // held by another, renewed within its duration
	}
	next := cur.DeepCopy()
	e.hold(next, now)
	updated, err := e.c.Leases.Update(ctx, next)
	if err != nil {
		// A conflict: another candidate wrote first; the next try reads it.
		e.c.Log.Debug("lease not updated", "lease", e.c.Name, "err", err)
		return false
	}
	e.observe(updated, now)
	return true
}

// hold makes l's spec say this candidate holds it from now: a change of
// holder (a lease taken over, or taken after a release) counts a transition
// and a new acquire time; the holder itself only renews. A new lease starts at
// zero transitions.
func (e *elector) hold(l *coordinationv1.Lease, now time.Time) {
	t := metav1.NewMicroTime(now)
	secs := int32(e.c.LeaseDuration / time.Second)
	switch {
	case l.ResourceVersion == "":
		l.Spec.LeaseTransitions = new(int32)
		l.Spec.AcquireTime = &t
	case holderOf(l) != e.c.Identity:
		n := int32(1)
		if l.Spec.LeaseTransitions != nil {
			n = *l.Spec.LeaseTransitions + 1
		}
		l.Spec.LeaseTransitions = &n
		l.Spec.AcquireTime = &t
	}
	id := e.c.Identity
	l.Spec.HolderIdentity = &id
	l.Spec.LeaseDurationSeconds = &secs
	l.Spec.RenewTime = &t
}

// observe records l as the lease last seen, restarting the expiry clock when
// it changed, and reports a new holder.
func (e *elector) observe(l *coordinationv1.Lease, now time.Time) {
	if e.lease == nil || e.lease.ResourceVersion != l.ResourceVersion {
		e.seen = now
	}
	e.lease = l
	if h := holderOf(l); h != "" && h != e.reported {
		e.reported = h
		if e.c.OnNewLeader != nil {
			e.c.OnNewLeader(h)
		}
	}
}

// release gives the lease up (no holder, a one-second duration) if this
// candidate still holds it as last seen, so that a successor takes it at its
// next try; a conflict means someone else wrote it meanwhile: nothing to give.
func (e *elector) release() {
	if e.lease == nil || holderOf(e.lease) != e.c.Identity {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), e.c.RenewDeadline)
	defer cancel()
	l := e.lease.DeepCopy()
	now := metav1.NewMicroTime(e.c.Now())
	one := int32(1)
	l.Spec.HolderIdentity = nil
	l.Spec.LeaseDurationSeconds = &one
	l.Spec.RenewTime = &now
	if _, err := e.c.Leases.Update(ctx, l); err != nil {
		e.c.Log.Warn("lease not released; successors wait for it to expire", "lease", e.c.Name, "err", err)
	}
}

func holderOf(l *coordinationv1.Lease) string {
	if l.Spec.HolderIdentity == nil {
		return ""
	}
	return *l.Spec.HolderIdentity
}

func durationOf(l *coordinationv1.Lease) time.Duration {
	if l.Spec.LeaseDurationSeconds == nil {
		return 0
	}
	return time.Duration(*l.Spec.LeaseDurationSeconds) * time.Second
}

// LeasesOf is the Leases of namespace through a dynamic client.
func LeasesOf(c dynamic.Interface, namespace string) Leases {
	return dynamicLeases{c.Resource(coordinationv1.SchemeGroupVersion.WithResource("leases")).Namespace(namespace), namespace}
}

type dynamicLeases struct {
	ri        dynamic.ResourceInterface
	namespace string
}

func (d dynamicLeases) Get(ctx context.Context, name string) (*coordinationv1.Lease, error) {
	return fromUnstructured(d.ri.Get(ctx, name, metav1.GetOptions{}))
}

func (d dynamicLeases) Create(ctx context.Context, l *coordinationv1.Lease) (*coordinationv1.Lease, error) {
	u, err := d.toUnstructured(l)
	if err != nil {
		return nil, err
	}
	return fromUnstructured(d.ri.Create(ctx, u, metav1.CreateOptions{}))
}

func (d dynamicLeases) Update(ctx context.Context, l *coordinationv1.Lease) (*coordinationv1.Lease, error) {
	u, err := d.toUnstructured(l)
	if err != nil {
		return nil, err
	}
	return fromUnstructured(d.ri.Update(ctx, u, metav1.UpdateOptions{}))
}

func (d dynamicLeases) toUnstructured(l *coordinationv1.Lease) (*unstructured.Unstructured, error) {
	l = l.DeepCopy()
	l.Namespace = d.namespace
	l.TypeMeta = metav1.TypeMeta{APIVersion: coordinationv1.SchemeGroupVersion.String(), Kind: "Lease"}
	obj, err := runtime.DefaultUnstructuredConverter.ToUnstructured(l)
	if err != nil {
		return nil, fmt.Errorf("lease %s: %w", l.Name, err)
	}
	return &unstructured.Unstructured{Object: obj}, nil
}

func fromUnstructured(u *unstructured.Unstructured, err error) (*coordinationv1.Lease, error) {
	if err != nil {
		return nil, err
	}
	l := &coordinationv1.Lease{}
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, l); err != nil {
		return nil, fmt.Errorf("lease %s: %w", u.GetName(), err)
	}
	return l, nil
}
