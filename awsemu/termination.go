package awsemu

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"
)

// endState is the emulator's model of an instance's way into service through a
// warm pool and its way out: terminate hooks, scale-in and spot interruption
// notices. Guarded by Emulator.mu.
type endState struct {
	termHooks      map[string][]string // group -> terminate hook names
	terminating    map[string]bool     // instance -> the group is terminating it
	termDone       map[string]bool     // instance + "/" + hook
	termResult     map[string]string   // instance -> the last terminate hook's result
	termHeartbeats map[string]int      // instance -> heartbeats of a terminate hook
	spot           map[string]string   // instance -> spot/instance-action JSON
	completions    map[string][]Completion
}

func newEndState() endState {
	return endState{
		termHooks: map[string][]string{}, terminating: map[string]bool{}, termDone: map[string]bool{},
		termResult: map[string]string{}, termHeartbeats: map[string]int{}, spot: map[string]string{},
		completions: map[string][]Completion{},
	}
}

// Completion is one CompleteLifecycleAction an instance made, with the
// transition it completed: "warm" (a launch into the warm pool), "launch" or
// "terminate".
type Completion struct {
	Hook       string
	Transition string
	Result     string
}

// Warm-pool and in-service target lifecycle states (IMDS
// autoscaling/target-lifecycle-state).
const (
	TargetInService       = "InService"
	TargetWarmedStopped   = "Warmed:Stopped"
	TargetWarmedRunning   = "Warmed:Running"
	TargetWarmedHibernate = "Warmed:Hibernated"
	TargetTerminated      = "Terminated"
)

func validTarget(s string) error {
	switch s {
	case "", TargetInService, TargetWarmedStopped, TargetWarmedRunning, TargetWarmedHibernate:
		return nil
	}
	return fmt.Errorf("target lifecycle state %q is none of InService, Warmed:Stopped, Warmed:Running, Warmed:Hibernated", s)
}

// targetLifecycleStateLocked is what IMDS serves at
// autoscaling/target-lifecycle-state; "" for an instance in no group.
func (e *Emulator) targetLifecycleStateLocked(in *instance) string {
	switch {
	case in.AutoScalingGroup == "":
		return ""
	case e.ends.terminating[in.ID] || in.State == "terminated":
		return TargetTerminated
	case in.TargetLifecycleState == "":
		return TargetInService
	}
	return in.TargetLifecycleState
}

// SetTargetLifecycleState moves a group's instance between the warm pool and
// service (InService, Warmed:Stopped, Warmed:Running, Warmed:Hibernated). Moving
// it out of the warm pool into service runs its launch hooks again, as Auto
// Scaling does: the instance is in Pending:Wait until it completes them.
func (e *Emulator) SetTargetLifecycleState(id, target string) error {
	if err := validTarget(target); err != nil {
		return err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	in, ok := e.instances[id]
	if !ok || in.AutoScalingGroup == "" {
		return fmt.Errorf("instance %s is not in an Auto Scaling group", id)
	}
	if e.ends.terminating[id] {
		return fmt.Errorf("instance %s is terminating", id)
	}
	wasWarm := strings.HasPrefix(in.TargetLifecycleState, "Warmed:")
	in.TargetLifecycleState = target
	if wasWarm && (target == TargetInService || target == "") {
		for _, h := range e.hooks[in.AutoScalingGroup] {
			delete(e.hookDone, id+"/"+h)
		}
		delete(e.lifecycle, id)
	}
	e.log.Info("target lifecycle state", "instance", id, "target", target)
	return nil
}

// TerminateInGroup is the group terminating one of its instances (a scale-in,
// an instance refresh replacing it): its target lifecycle state becomes
// Terminated and, with terminate hooks, it waits in Terminating:Wait until each
// is completed (or heartbeated); then, as without hooks, EC2 terminates it and
// its volumes are detached.
func (e *Emulator) TerminateInGroup(id string) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	in, ok := e.instances[id]
	if !ok || in.AutoScalingGroup == "" {
		return fmt.Errorf("instance %s is not in an Auto Scaling group", id)
	}
	if e.ends.terminating[id] {
		return nil
	}
	e.ends.terminating[id] = true
	e.log.Info("group terminates instance", "group", in.AutoScalingGroup, "instance", id)
	if !e.termHookPendingLocked(in) {
		e.setInstanceStateLocked(id, "terminated")
	}
	return nil
}

// InterruptSpot posts a spot interruption notice (spot/instance-action in IMDS:
// terminate at `at`, two minutes after the notice on AWS).
func (e *Emulator) InterruptSpot(id string, at time.Time) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if _, ok := e.instances[id]; !ok {
		return fmt.Errorf("no instance %s", id)
	}
	b, err := json.Marshal(map[string]string{"action": "terminate", "time": at.UTC().Format(time.RFC3339)})
	if err != nil {
		return err
	}
	e.ends.spot[id] = string(b)
	e.log.Info("spot interruption notice", "instance", id, "at", at)
	return nil
}

// Completions lists the lifecycle actions an instance completed, in order.
func (e *Emulator) Completions(id string) []Completion {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.ends.completions[id])
}

// TerminateHeartbeats counts an instance's heartbeats of its terminate hooks.
func (e *Emulator) TerminateHeartbeats(id string) int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.ends.termHeartbeats[id]
}

func (e *Emulator) termHookPendingLocked(in *instance) bool {
	for _, h := range e.ends.termHooks[in.AutoScalingGroup] {
		if !e.ends.termDone[in.ID+"/"+h] {
			return true
		}
	}
	return false
}

func (e *Emulator) pendingTerminateLocked(group, hook, iid string) *apiError {
	in, ok := e.instances[iid]
	if !ok || in.AutoScalingGroup != group || !e.ends.terminating[iid] || e.ends.termDone[iid+"/"+hook] {
		return errorf(400, "ValidationError", "No active Lifecycle Action found with instance ID %s", iid)
	}
	return nil
}

// completeTerminateLocked: with its last terminate hook completed (CONTINUE or
// ABANDON: both let the termination proceed) the instance is terminated.
func (e *Emulator) completeTerminateLocked(group, hook, iid, result string) {
	e.ends.termDone[iid+"/"+hook] = true
	e.ends.termResult[iid] = result
	e.ends.completions[iid] = append(e.ends.completions[iid], Completion{Hook: hook, Transition: "terminate", Result: result})
	e.log.Info("terminate lifecycle action completed", "group", group, "hook", hook, "instance", iid, "result", result)
	if in := e.instances[iid]; !e.termHookPendingLocked(in) {
		e.setInstanceStateLocked(iid, "terminated")
	}
}

func (e *Emulator) recordCompletionLocked(iid, hook, result string) {
	tr := "launch"
	if in := e.instances[iid]; in != nil && strings.HasPrefix(in.TargetLifecycleState, "Warmed:") {
		tr = "warm"
	}
	e.ends.completions[iid] = append(e.ends.completions[iid], Completion{Hook: hook, Transition: tr, Result: result})
}

// endMetadataLocked adds the lifecycle and spot entries of an instance's IMDS tree.
func (e *Emulator) endMetadataLocked(in *instance, md map[string]string) {
	if t := e.targetLifecycleStateLocked(in); t != "" {
		md["autoscaling/target-lifecycle-state"] = t
	}
	if a, ok := e.ends.spot[in.ID]; ok {
		md["spot/instance-action"] = a
		var v struct{ Time string }
		if json.Unmarshal([]byte(a), &v) == nil {
			md["spot/termination-time"] = v.Time
		}
		md["instance-life-cycle"] = "spot"
	}
}
