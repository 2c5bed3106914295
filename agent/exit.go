package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/nodeagent/nodeagent/bootstrap"
	"github.com/nodeagent/nodeagent/cloud"
	"github.com/nodeagent/nodeagent/drain"
	"github.com/nodeagent/nodeagent/etcd"
	"github.com/nodeagent/nodeagent/kube"
	"github.com/nodeagent/nodeagent/kubelet"
	"github.com/nodeagent/nodeagent/manifests"
	"github.com/nodeagent/nodeagent/pki"
	"github.com/nodeagent/nodeagent/volumes"
)

// exitWatchEvery is how often the daemon reads IMDS for the group terminating
// the instance or a spot interruption notice: a spot notice gives two minutes.
const exitWatchEvery = 5 * time.Second

// exitRunner is the node's graceful exit. The daemon watches IMDS
// (autoscaling/target-lifecycle-state becoming Terminated: a scale-in by the
// cluster autoscaler, an instance refresh replacing the node; spot/instance-action:
// a spot interruption notice) and, on the first sign or on `nodeagent drain`,
// runs the exit once: cordon and drain the Node through the API server, hand
// etcd leadership on (masters), leave the gossip ring so peers drop this
// node's names at once; then, when the group is terminating the instance, it
// completes the terminate hook with CONTINUE, heartbeating it meanwhile.
type exitRunner struct {
	store        bootstrap.StateStore
	log          *slog.Logger
	node         string
	imds         cloud.IMDSAPI // nil without AWS
	asg          func() (cloud.AutoScalingAPI, error)
	hook         string // terminate hook; "" when none
	instanceID   string
	drainTimeout time.Duration
	kube         func() (drain.API, error)
	// steps after the drain: etcd handoff (masters), gossip leave.
	steps []exitStep
	// heartbeatEvery spaces the terminate hook's heartbeats (default 20 s).
	heartbeatEvery time.Duration

	mu       sync.Mutex
	started  bool
	done     chan struct{}
	hookDone bool
}

// exitStep is one step of the exit after the drain.
type exitStep struct {
	name string
	fn   func(ctx context.Context) (detail string, err error)
}

func newExitRunner(o Options, n *Node, steps []exitStep) *exitRunner {
	spec := n.Config.Spec
	x := &exitRunner{
		store: o.store(), log: o.log(), node: n.Name, hook: spec.Readiness.TerminationHook, instanceID: n.Identity.InstanceID,
		drainTimeout: drain.DefaultTimeout, steps: steps, done: make(chan struct{}),
		asg: func() (cloud.AutoScalingAPI, error) {
			if n.AWS == nil {
				return nil, errors.New("AWS is not configured")
			}
			return cloud.NewAutoScaling(*n.AWS), nil
		},
	}
	if d, err := time.ParseDuration(spec.Readiness.DrainTimeout); err == nil && d > 0 {
		x.drainTimeout = d
	}
	if n.AWS != nil {
		x.imds = n.metadata()
	}
	// Masters drain with the add-on credentials; a worker with its kubelet's,
	// which the Node authorizer and NodeRestriction limit to this node and its
	// pods (cordon, list, evict).
	kc := kubelet.KubeconfigPath
	if n.IsControlPlane() {
		kc = pki.DefaultPaths().AddonsConf
	}
	x.kube = func() (drain.API, error) {
		c, err := kube.Load(o.Root, kc)
		if err != nil {
			return nil, err
		}
		return c, nil
	}
	return x
}

// watch polls IMDS until ctx ends; a termination or a spot notice starts the
// exit, and once the exit is done the terminate hook is completed (if the
// group is terminating the instance).
func (x *exitRunner) watch(ctx context.Context, every time.Duration) {
	if x.imds == nil {
		return
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		x.poll(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (x *exitRunner) poll(ctx context.Context) {
	target, err := cloud.TargetLifecycleState(ctx, x.imds)
	if err != nil {
		x.log.Warn("read the target lifecycle state", "err", err)
	}
	terminating := target == cloud.TargetTerminated
	if terminating {
		x.start(ctx, "the Auto Scaling group terminates this instance (target lifecycle state Terminated)")
	}
	spot, err := cloud.SpotInstanceAction(ctx, x.imds)
	if err != nil {
		x.log.Warn("read the spot instance action", "err", err)
	}
	if spot != nil {
		x.start(ctx, fmt.Sprintf("spot interruption notice: %s at %s", spot.Action, spot.Time.Format(time.RFC3339)))
	}
	if terminating {
		x.followHook(ctx)
	}
}

// start begins the exit once; later calls do nothing.
func (x *exitRunner) start(ctx context.Context, reason string) <-chan struct{} {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.started {
		return x.done
	}
	x.started = true
	x.log.Warn("graceful exit begins", "reason", reason)
	go func() {
		defer close(x.done)
		x.run(context.WithoutCancel(ctx), reason)
	}()
	return x.done
}

// run is the exit itself; each step's outcome is recorded, and a failed step
// does not stop the next ones (the instance goes away all the same).
func (x *exitRunner) run(ctx context.Context, reason string) {
	x.record(func(e *bootstrap.ExitStatus) { *e = bootstrap.ExitStatus{Reason: reason, StartedAt: time.Now().UTC()} })
	steps := append([]exitStep{{name: "drain", fn: x.drain}}, x.steps...)
	for _, s := range steps {
		begin := time.Now()
		detail, err := s.fn(ctx)
		step := bootstrap.ExitStep{Name: s.name, Detail: detail, Duration: time.Since(begin)}
		if err != nil {
			step.Error = err.Error()
			x.log.Error("exit step failed; going on", "step", s.name, "err", err)
		} else {
			x.log.Info("exit step done", "step", s.name, "detail", detail, "duration", step.Duration)
		}
		x.record(func(e *bootstrap.ExitStatus) { e.Steps = append(e.Steps, step) })
	}
	x.record(func(e *bootstrap.ExitStatus) { e.FinishedAt = time.Now().UTC() })
}

func (x *exitRunner) drain(ctx context.Context) (string, error) {
	cs, err := x.kube()
	if err != nil {
		return "", fmt.Errorf("API client: %w", err)
	}
	res, err := drain.Drain(ctx, cs, drain.Options{Node: x.node, Timeout: x.drainTimeout, Log: x.log})
	detail := fmt.Sprintf("%d evicted, %d kept (DaemonSet, mirror)", len(res.Evicted), len(res.Skipped))
	if len(res.Evicted) > 0 {
		detail += ": " + strings.Join(res.Evicted, ", ")
	}
	return detail, err
}

// followHook heartbeats the terminate hook while the exit runs and completes
// it with CONTINUE once the exit is done, once.
func (x *exitRunner) followHook(ctx context.Context) {
	if x.hook == "" {
		return
	}
	x.mu.Lock()
	if x.hookDone || !x.started {
		x.mu.Unlock()
		return
	}
	x.hookDone = true
	done := x.done
	x.mu.Unlock()
	go func() {
		every := x.heartbeatEvery
		if every <= 0 {
			every = defaultHeartbeatEvery
		}
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-done:
				x.completeHook(context.WithoutCancel(ctx))
				return
			case <-t.C:
				client, err := x.asg()
				if err == nil {
					err = cloud.RecordLifecycleActionHeartbeat(ctx, client, x.hook, x.instanceID)
				}
				if err != nil {
					x.log.Warn("terminate hook heartbeat failed", "hook", x.hook, "err", err)
				}
			}
		}
	}()
}

func (x *exitRunner) completeHook(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	begin := time.Now()
	client, err := x.asg()
	if err == nil {
		err = cloud.CompleteLifecycleAction(ctx, client, x.hook, x.instanceID, cloud.LifecycleContinue)
	}
	step := bootstrap.ExitStep{Name: "lifecycle", Detail: x.hook + " " + cloud.LifecycleContinue, Duration: time.Since(begin)}
	if err != nil {
		step.Error = err.Error()
		x.log.Error("could not complete the terminate hook", "hook", x.hook, "err", err)
	} else {
		x.log.Info("terminate hook completed", "hook", x.hook, "result", cloud.LifecycleContinue)
	}
	x.record(func(e *bootstrap.ExitStatus) {
		e.Steps = append(e.Steps, step)
		if err == nil {
			e.Lifecycle = cloud.LifecycleContinue
		}
	})
}

func (x *exitRunner) record(fn func(*bootstrap.ExitStatus)) {
	if _, err := x.store.Update(func(st *bootstrap.State) {
		if st.Exit == nil {
			st.Exit = &bootstrap.ExitStatus{}
		}
		fn(st.Exit)
	}); err != nil {
		x.log.Error("record the exit", "err", err)
	}
}

// exiting says whether the exit began: the daemon then stops publishing into
// the gossip ring it left.
func (x *exitRunner) exiting() bool {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.started
}

// byHand is `nodeagent drain`: the same exit, waited for (a second call after
// it finished returns the record at once).
func (x *exitRunner) byHand(ctx context.Context) (*bootstrap.ExitStatus, error) {
	done := x.start(ctx, "nodeagent drain")
	select {
	case <-done:
	case <-ctx.Done():
		return nil, fmt.Errorf("waiting for the exit: %w", ctx.Err())
	}
	st, err := x.store.Load()
	if err != nil {
		return nil, err
	}
	if st.Exit == nil {
		return nil, errors.New("the exit left no record in the state file")
	}
	return st.Exit, nil
}

// exitSteps are the steps after the drain: a master hands its etcd
// leadership on; every node then leaves the gossip ring.
func exitSteps(o Options, n *Node, g *gossipRunner) []exitStep {
	var steps []exitStep
	if n.IsControlPlane() {
		steps = append(steps, exitStep{name: "etcd-handoff", fn: etcdHandoff(o, n)}, exitStep{name: "volumes", fn: etcdRelease(o, n)})
	}
	if g != nil {
		steps = append(steps, exitStep{name: "gossip-leave", fn: func(context.Context) (string, error) { return g.leave() }})
	}
	return steps
}

// localEtcdMembers is what a master's exit steps act on: its etcd members, as
// its last run recorded them, and each etcd cluster's client port.
func localEtcdMembers(o Options, n *Node) ([]bootstrap.EtcdMemberFact, map[string]int, error) {
	st, err := o.store().Load()
	if err != nil {
		return nil, nil, err
	}
	ports := map[string]int{}
	for _, c := range n.Config.Spec.Etcd.Clusters {
		ports[c.Name] = c.ClientPort
	}
	return st.Facts.EtcdMembers, ports, nil
}

// etcdHandoff moves the raft leadership of every local member that leads to
// another voting member. The member list is never changed on the way out: a
// master's members are its volumes' (the k8s.io/etcd tags list them), and
// whoever takes the volume next — the group's replacement — is that member
// again, so removing it would only lower the quorum margin meanwhile.
func etcdHandoff(o Options, n *Node) func(ctx context.Context) (string, error) {
	return func(ctx context.Context) (string, error) {
		members, ports, err := localEtcdMembers(o, n)
		if err != nil {
			return "", err
		}
		var (
			details []string
			errs    []error
		)
		for _, m := range members {
			endpoint := fmt.Sprintf("https://127.0.0.1:%d", ports[m.Cluster])
			tlsCfg, err := pki.ClientTLS(o.Root, m.Cluster)
			if err != nil {
				errs = append(errs, fmt.Errorf("etcd %s: %w", m.Cluster, err))
				continue
			}
			cli, err := etcd.NewClient([]string{endpoint}, tlsCfg)
			if err != nil {
				errs = append(errs, fmt.Errorf("etcd %s: %w", m.Cluster, err))
				continue
			}
			hctx, cancel := context.WithTimeout(ctx, 15*time.Second)
			d, err := etcd.HandOff(hctx, cli, endpoint)
			cancel()
			cli.Close()
			if err != nil {
				errs = append(errs, fmt.Errorf("etcd %s: %w", m.Cluster, err))
				continue
			}
			details = append(details, m.Cluster+": "+d)
		}
		return strings.Join(details, "; "), errors.Join(errs...)
	}
}

// DrainNode is `nodeagent drain`: it asks the local daemon for the graceful
// exit (cordon and drain the Node, hand etcd leadership on, leave the gossip
// ring; the terminate hook too when the group is terminating the instance),
// waits for it and prints each step. A step that failed exits 1.
func DrainNode(ctx context.Context, socket string, w io.Writer) error {
	var e bootstrap.ExitStatus
	if err := callAPI(ctx, socket, http.MethodPost, "/exit", 0, &e); err != nil {
		return err
	}
	fmt.Fprintf(w, "Exit: %s (started %s)\n", e.Reason, e.StartedAt.Format(time.RFC3339))
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "STEP\tRESULT\tDURATION\tDETAIL")
	failed := 0
	for _, s := range e.Steps {
		result, detail := "ok", s.Detail
		if s.Error != "" {
			result, detail, failed = "failed", s.Error, failed+1
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", s.Name, result, s.Duration.Round(time.Millisecond), orDash(detail))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if failed > 0 {
		return ExitError{Code: 1, Err: fmt.Errorf("%d exit step(s) failed", failed)}
	}
	return nil
}

// etcdRelease stops this master's etcd members (their static pods removed, so
// kubelet stops them; the daemon no longer reconciles once the exit began)
// and unmounts their volumes cleanly, so that the volume the group detaches
// next is consistent and its next holder needs no recovery.
func etcdRelease(o Options, n *Node) func(ctx context.Context) (string, error) {
	return func(ctx context.Context) (string, error) {
		members, ports, err := localEtcdMembers(o, n)
		if err != nil {
			return "", err
		}
		ctx, cancel := context.WithTimeout(ctx, 90*time.Second)
		defer cancel()
		for _, m := range members {
			path := o.Root.Path(filepath.Join(manifests.DefaultDir, manifests.EtcdPodName(m.Cluster)+".yaml"))
			if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return "", fmt.Errorf("stop etcd %s: %w", m.Cluster, err)
			}
		}
		var (
			done []string
			errs []error
		)
		for _, m := range members {
			addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[m.Cluster]))
			err := wait.PollUntilContextCancel(ctx, 500*time.Millisecond, true, func(ctx context.Context) (bool, error) {
				c, err := (&net.Dialer{Timeout: time.Second}).DialContext(ctx, "tcp", addr)
				if err != nil {
					return true, nil // nobody serves etcd there any more
				}
				c.Close()
				return false, nil
			})
			if err != nil {
				errs = append(errs, fmt.Errorf("etcd %s still serves on %s: %w", m.Cluster, addr, err))
				continue
			}
			if err := volumes.Unmount(ctx, m.MountPoint); err != nil {
				errs = append(errs, err)
				continue
			}
			done = append(done, m.VolumeID+" unmounted")
		}
		return strings.Join(done, ", "), errors.Join(errs...)
	}
}
