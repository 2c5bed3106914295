package bootstrap

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/nodeagent/nodeagent/internal/fsutil"
)

// StateFileName is the file, under --state-dir, that holds State.
const StateFileName = "state.json"

// SchemaVersion is bumped when State changes incompatibly.
const SchemaVersion = 1

// PhaseState is where a phase stands.
type PhaseState string

const (
	PhasePending PhaseState = "pending"
	PhaseRunning PhaseState = "running"
	PhaseDone    PhaseState = "done"
	PhaseFailed  PhaseState = "failed"
	PhaseSkipped PhaseState = "skipped"
	// PhaseWaiting: the phase could not finish because it waits on something
	// outside this node (see WaitError); the daemon keeps trying.
	PhaseWaiting PhaseState = "waiting"
)

// State is what happened on this node; it is written atomically after every phase.
type State struct {
	SchemaVersion int       `json:"schemaVersion"`
	Node          NodeInfo  `json:"node"`
	ConfigHash    string    `json:"configHash,omitempty"`
	StartedAt     time.Time `json:"startedAt,omitzero"`
	FinishedAt    time.Time `json:"finishedAt,omitzero"`
	// Error is the one-line reason of the last failed run, empty after success.
	Error     string           `json:"error,omitempty"`
	Phases    []PhaseStatus    `json:"phases"`
	Volumes   []VolumeStatus   `json:"volumes,omitempty"`
	Units     []UnitStatus     `json:"units,omitempty"`
	Manifests []ManifestStatus `json:"manifests,omitempty"`
	Assets    []AssetStatus    `json:"assets,omitempty"`
	Readiness ReadinessStatus  `json:"readiness"`
	// Facts are what the phases learned about this node (see Facts).
	Facts Facts `json:"facts,omitzero"`
	// Config is the effective config the node runs and where it came from, and
	// a newer one it could not take in place.
	Config *ConfigStatus `json:"config,omitempty"`
	// Boot is the timeline of the last boot (the last run of `nodeagent
	// bootstrap`); the daemon's later runs do not change it.
	Boot *BootRecord `json:"boot,omitempty"`
	// Exit is the node's graceful exit, once one began (the group terminating
	// the instance, a spot interruption notice, or `nodeagent drain`).
	Exit *ExitStatus `json:"exit,omitempty"`
	// Warm is the node's stay in its Auto Scaling group's warm pool, if it was
	// launched into one.
	Warm *WarmStatus `json:"warm,omitempty"`
	// Gossip is the daemon's gossip keyring: the key generation it sends
	// with, every one it accepts, and the last failure to follow the state
	// store's keyring document.
	Gossip *GossipStatus `json:"gossip,omitempty"`
}

// GossipStatus is the gossip keyring as the daemon last applied it
// (gossip.KeyringStatus): generation 0 means the cluster's single key object,
// with no keyring document.
type GossipStatus struct {
	KeyGeneration  uint64   `json:"keyGeneration"`
	KeyGenerations []uint64 `json:"keyGenerations,omitempty"`
	KeyringError   string   `json:"keyringError,omitempty"`
}

// WarmStatus records a launch into a warm pool: what was prepared (the
// phases up to the image import; kubelet not started) and the warm launch
// hook's result.
type WarmStatus struct {
	Target     string    `json:"target"` // Warmed:Stopped, Warmed:Running, Warmed:Hibernated
	PreparedAt time.Time `json:"preparedAt"`
	Lifecycle  string    `json:"lifecycle,omitempty"`
	// InServiceAt is when a Warmed:Running node saw itself moved into service.
	InServiceAt time.Time `json:"inServiceAt,omitzero"`
}

// ExitStatus records a graceful exit step by step.
type ExitStatus struct {
	Reason     string     `json:"reason"`
	StartedAt  time.Time  `json:"startedAt"`
	FinishedAt time.Time  `json:"finishedAt,omitzero"`
	Steps      []ExitStep `json:"steps,omitempty"`
	// Lifecycle is the result the terminate hook was completed with.
	Lifecycle string `json:"lifecycle,omitempty"`
}

// ExitStep is one step of an exit: drain, gossip-leave, etcd-handoff, volumes,
// lifecycle.
type ExitStep struct {
	Name     string        `json:"name"`
	Error    string        `json:"error,omitempty"`
	Detail   string        `json:"detail,omitempty"`
	Duration time.Duration `json:"duration"`
}

// ConfigStatus is the node's effective config: derived from its raw inputs
// (user-data or a --config file, the state store's cluster.yaml) on every
// reconcile.
type ConfigStatus struct {
	// Hash identifies the effective config applied (also ConfigHash).
	Hash string `json:"hash"`
	// Sources are the inputs it was derived from, with their versions.
	Sources []ConfigSource `json:"sources,omitempty"`
	// AppliedAt is when the node took this config.
	AppliedAt time.Time `json:"appliedAt,omitzero"`
	// Effective is the merged, defaulted config (secrets redacted).
	Effective json.RawMessage `json:"effective,omitempty"`
	// Rejected is a newer config the node did not take; nil when none.
	Rejected *RejectedConfig `json:"rejected,omitempty"`
}

// ConfigSource is one raw input of the effective config.
type ConfigSource struct {
	// Name is user-data, file or cluster.yaml.
	Name string `json:"name"`
	// Location is the file path or s3:// URL; empty for user-data.
	Location string `json:"location,omitempty"`
	// Version is the S3 ETag of cluster.yaml, or a SHA-256 prefix of the bytes.
	Version string `json:"version,omitempty"`
}

// RejectedConfig is a config the node cannot take in place: it changes what
// only a new instance can change (NeedsReplacement), or it is invalid (Error).
type RejectedConfig struct {
	Hash  string    `json:"hash,omitempty"`
	Since time.Time `json:"since"`
	// NeedsReplacement lists the changes that need a new instance, e.g.
	// "spec.role: Node → ControlPlane".
	NeedsReplacement []string `json:"needsReplacement,omitempty"`
	Error            string   `json:"error,omitempty"`
}

// BootRecord is one boot's timeline: when it ran, how it ended, and each
// phase's start and duration.
type BootRecord struct {
	StartedAt  time.Time `json:"startedAt"`
	FinishedAt time.Time `json:"finishedAt"`
	// Result is done, failed or waiting (a master waiting for its peers, which
	// the daemon then sees through).
	Result string        `json:"result"`
	Phases []PhaseTiming `json:"phases"`
}

// PhaseTiming is one phase of a boot's timeline.
type PhaseTiming struct {
	Name     string     `json:"name"`
	State    PhaseState `json:"state"`
	Started  time.Time  `json:"started,omitzero"`
	Duration Duration   `json:"duration"`
}

// bootRecord makes the timeline of the run the state holds.
func (s *State) bootRecord(result string) *BootRecord {
	b := &BootRecord{StartedAt: s.StartedAt, FinishedAt: s.FinishedAt, Result: result}
	for _, p := range s.Phases {
		b.Phases = append(b.Phases, PhaseTiming{Name: p.Name, State: p.State, Started: p.Started, Duration: p.Duration})
	}
	return b
}

// NodeInfo identifies the node.
type NodeInfo struct {
	Name             string `json:"name,omitempty"`
	Cluster          string `json:"cluster,omitempty"`
	Role             string `json:"role,omitempty"`
	InstanceID       string `json:"instanceID,omitempty"`
	InstanceType     string `json:"instanceType,omitempty"`
	Region           string `json:"region,omitempty"`
	AvailabilityZone string `json:"availabilityZone,omitempty"`
	PrivateIP        string `json:"privateIP,omitempty"`
}

// PhaseStatus is one phase's last outcome.
type PhaseStatus struct {
	Name     string     `json:"name"`
	State    PhaseState `json:"state"`
	Started  time.Time  `json:"started,omitzero"`
	Duration Duration   `json:"duration"`
	// Changed is false when Check found nothing to do.
	Changed bool     `json:"changed"`
	Changes []Change `json:"changes,omitempty"`
	Error   string   `json:"error,omitempty"`
	// Warnings are things the phase could not do but that do not fail it, stated
	// plainly (e.g. "kernel refused module br_netfilter: ...").
	Warnings []string `json:"warnings,omitempty"`
	// Progress is what a running phase is doing or waiting on now.
	Progress string `json:"progress,omitempty"`
}

// VolumeStatus is one claimed etcd volume.
type VolumeStatus struct {
	ID          string   `json:"id"`
	EtcdCluster string   `json:"etcdCluster"`
	Member      string   `json:"member"`
	Members     []string `json:"members,omitempty"`
	Device      string   `json:"device,omitempty"`
	MountPoint  string   `json:"mountPoint,omitempty"`
	Formatted   bool     `json:"formatted"`
	State       string   `json:"state"`
}

// UnitStatus is one systemd unit the agent manages.
type UnitStatus struct {
	Name        string `json:"name"`
	ActiveState string `json:"activeState"`
	SubState    string `json:"subState,omitempty"`
	Enabled     bool   `json:"enabled"`
}

// ManifestStatus is one static pod manifest the agent owns.
type ManifestStatus struct {
	Name   string `json:"name"`
	Path   string `json:"path"`
	SHA256 string `json:"sha256"`
}

// AssetStatus is one installed, verified asset.
type AssetStatus struct {
	Name   string `json:"name"`
	Path   string `json:"path"`
	SHA256 string `json:"sha256"`
	Source string `json:"source,omitempty"` // cache, or the URL it came from (no credentials)
	// Member is the file of an archive asset installed at Path (e.g. bin/containerd).
	Member string `json:"member,omitempty"`
}

// ReadinessStatus says whether the node is ready and why not.
type ReadinessStatus struct {
	Ready     bool      `json:"ready"`
	Reason    string    `json:"reason,omitempty"`
	CheckedAt time.Time `json:"checkedAt,omitzero"`
	// Lifecycle is the Auto Scaling lifecycle result this instance reported
	// (CONTINUE or ABANDON), once it has.
	Lifecycle string `json:"lifecycle,omitempty"`
}

// Duration marshals as a Go duration string ("1.234s") for humans and as-is for tools.
type Duration time.Duration

func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

// Phase returns the status of the named phase, or nil.
func (s *State) Phase(name string) *PhaseStatus {
	for i := range s.Phases {
		if s.Phases[i].Name == name {
			return &s.Phases[i]
		}
	}
	return nil
}

// AllDone reports whether every recorded phase is done or skipped.
func (s *State) AllDone() bool {
	if len(s.Phases) == 0 {
		return false
	}
	for _, p := range s.Phases {
		if p.State != PhaseDone && p.State != PhaseSkipped {
			return false
		}
	}
	return true
}

// StateStore reads and writes the state file. Bootstrap and the daemon both update
// it, so every update is a locked read-modify-write.
type StateStore struct {
	Dir string
}

// Path is the state file's path.
func (s StateStore) Path() string { return filepath.Join(s.Dir, StateFileName) }

// Load reads the state file; a missing file is an empty State, not an error.
func (s StateStore) Load() (*State, error) {
	b, err := os.ReadFile(s.Path())
	if errors.Is(err, fs.ErrNotExist) {
		return &State{SchemaVersion: SchemaVersion}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read state: %w", err)
	}
	var st State
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("state file %s is corrupt: %w", s.Path(), err)
	}
	return &st, nil
}

// Update applies fn to the current state under an exclusive lock and writes the
// result atomically.
func (s StateStore) Update(fn func(*State)) (*State, error) {
	if err := os.MkdirAll(s.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("create state dir: %w", err)
	}
	lock, err := os.OpenFile(filepath.Join(s.Dir, ".state.lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock state: %w", err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return nil, fmt.Errorf("lock state: %w", err)
	}
	defer syscall.Flock(int(lock.Fd()), syscall.LOCK_UN)

	st, err := s.Load()
	if err != nil {
		return nil, err
	}
	fn(st)
	st.SchemaVersion = SchemaVersion
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encode state: %w", err)
	}
	// An update that changed nothing (a no-op run's config record) costs no
	// write and no fsync.
	if _, err := fsutil.WriteFileIfChanged(s.Path(), append(b, '\n'), 0o644); err != nil {
		return nil, err
	}
	return st, nil
}

// runLockName is held for the whole of a run, so that `nodeagent bootstrap` and the
// daemon it starts never act on the host at the same time or interleave their
// records: the second waits for the first.
const runLockName = ".run.lock"

// LockRun takes the run lock, waiting until it is free or ctx ends. The returned
// function releases it.
func (s StateStore) LockRun(ctx context.Context) (unlock func(), err error) {
	for delay := 50 * time.Millisecond; ; delay = min(delay*2, time.Second) {
		unlock, ok, err := s.TryLockRun()
		if err != nil || ok {
			return unlock, err
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("wait for the run in progress (lock %s): %w", filepath.Join(s.Dir, runLockName), ctx.Err())
		case <-time.After(delay):
		}
	}
}

// TryLockRun takes the run lock if it is free; ok is false when another run holds it.
func (s StateStore) TryLockRun() (unlock func(), ok bool, err error) {
	if err := os.MkdirAll(s.Dir, 0o700); err != nil {
		return nil, false, fmt.Errorf("create state dir: %w", err)
	}
	f, err := os.OpenFile(filepath.Join(s.Dir, runLockName), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, false, fmt.Errorf("run lock: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, false, nil
		}
		return nil, false, fmt.Errorf("run lock: %w", err)
	}
	return func() {
		_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		f.Close()
	}, true, nil
}
