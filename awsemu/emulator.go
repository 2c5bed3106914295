package awsemu

import (
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Options tune an emulator beyond its world.
type Options struct {
	// VolumeDir holds each volume's sparse backing file (<volume-id>.img), kept
	// across restarts so data written through a loop device survives. Empty means a
	// private temporary directory removed by Close.
	VolumeDir string
	Log       *slog.Logger
	// Seed drives fault injection, so a failing run can be replayed.
	Seed int64
	// Devices makes an attached volume's block device appear on its instance.
	// Nil means a symlink to the loop device under the instance's DevRoot on this
	// host; a harness whose instances are machines with their own /dev (nspawn)
	// creates the device node and link inside the machine instead.
	Devices DeviceLinker
}

// DeviceLinker shows attached volumes to instances. link is the path the
// instance looks for (DevicePath with the instance's DevRoot), loop the host's
// loop device backing the volume.
type DeviceLinker interface {
	Link(instanceID, loop, link string) error
	// Unlink undoes Link; it is called on detach, also for an instance that is
	// gone, so it must treat a missing instance as done.
	Unlink(instanceID, loop, link string) error
}

// hostLinker is the default DeviceLinker: a symlink on this host.
type hostLinker struct{}

func (hostLinker) Link(_, loop, link string) error { return replaceSymlink(loop, link) }

func (hostLinker) Unlink(_, loop, link string) error {
	// Only our own link is removed: the path may since point elsewhere.
	if target, err := os.Readlink(link); err == nil && target == loop {
		if err := os.Remove(link); err != nil {
			return fmt.Errorf("remove %s: %w", link, err)
		}
	}
	return nil
}

// Emulator is one emulated AWS account in one region.
type Emulator struct {
	log          *slog.Logger
	region       string
	accessKeyID  string
	secretKey    string
	volumeDir    string
	ownVolumeDir bool
	devices      DeviceLinker
	// clock is replaceable (SetClock) by tests that need tokens, presigned
	// URLs or attachments to age.
	clock atomic.Pointer[func() time.Time]

	mu            sync.Mutex
	instances     map[string]*instance
	instOrder     []string
	volumes       map[string]*volume
	volOrder      []string
	buckets       map[string]map[string]*object
	uploads       map[string]*multipartUpload // by upload ID: S3 multipart uploads not yet completed or aborted
	nextUpload    int
	hooks         map[string][]string // group -> launch hook names
	lifecycle     map[string]string   // instance -> CONTINUE/ABANDON
	heartbeats    map[string]int      // instance -> RecordLifecycleActionHeartbeat calls
	hookDone      map[string]bool     // instance + "/" + hook
	ends          endState            // terminate hooks, warm pools, spot notices (termination.go)
	faults        map[string]Faults
	faulted       map[string]int // requests faulted since SetFaults, by service
	rng           *rand.Rand
	calls         map[string]int // service + " " + action
	objectReads   map[string]int // bucket -> GetObject requests
	tokens        map[string]imdsToken
	creds         map[string]*credential // access key ID -> instance-profile credentials
	policies      map[string]*policyDoc  // role -> policy
	attachLatency time.Duration
	stuck         map[string]bool
	reqSeq        uint64
	closed        bool
}

type instance struct {
	Instance
	launched    time.Time
	reservation string
}

type volume struct {
	Volume
	created time.Time
	file    string
	att     *attachment
}

type attachment struct {
	instanceID string
	device     string
	at         time.Time
	attached   bool
	timer      *time.Timer
	loop       string // /dev/loopN once attached
	link       string // symlink under the instance's DevRoot
}

// New builds an emulator from a world. The world is copied: later changes to w
// have no effect. Volumes the world lists as attached get their loop devices now.
func New(w *World, o Options) (_ *Emulator, err error) {
	if w == nil {
		w = &World{}
	}
	e := &Emulator{
		log:           o.Log,
		region:        w.Region,
		accessKeyID:   w.AccessKeyID,
		secretKey:     w.SecretAccessKey,
		volumeDir:     o.VolumeDir,
		creds:         map[string]*credential{},
		policies:      map[string]*policyDoc{},
		instances:     map[string]*instance{},
		volumes:       map[string]*volume{},
		buckets:       map[string]map[string]*object{},
		hooks:         map[string][]string{},
		lifecycle:     map[string]string{},
		heartbeats:    map[string]int{},
		hookDone:      map[string]bool{},
		ends:          newEndState(),
		faults:        map[string]Faults{},
		faulted:       map[string]int{},
		uploads:       map[string]*multipartUpload{},
		rng:           rand.New(rand.NewPCG(uint64(o.Seed), uint64(o.Seed)^0x9e3779b97f4a7c15)),
		calls:         map[string]int{},
		objectReads:   map[string]int{},
		tokens:        map[string]imdsToken{},
		attachLatency: w.AttachLatency,
		stuck:         map[string]bool{},
		devices:       o.Devices,
	}
	e.SetClock(nil)
	for role, doc := range w.Policies {
		p, err := parsePolicy(doc)
		if err != nil {
			return nil, fmt.Errorf("world: role %s: %w", role, err)
		}
		e.policies[role] = p
	}
	if e.devices == nil {
		e.devices = hostLinker{}
	}
	if e.log == nil {
		e.log = slog.New(slog.DiscardHandler)
	}
	if e.region == "" {
		e.region = DefaultRegion
	}
	if e.accessKeyID == "" {
		e.accessKeyID = DefaultAccessKeyID
	}
	if e.secretKey == "" {
		e.secretKey = DefaultSecretAccessKey
	}
	if w.AttachLatency < 0 {
		return nil, errors.New("world: attachLatency is negative")
	}
	if e.volumeDir == "" {
		dir, err := os.MkdirTemp("", "awsemu-volumes-")
		if err != nil {
			return nil, fmt.Errorf("volume dir: %w", err)
		}
		e.volumeDir, e.ownVolumeDir = dir, true
		defer func() {
			if err != nil {
				os.RemoveAll(dir)
			}
		}()
	} else if err := os.MkdirAll(e.volumeDir, 0o755); err != nil {
		return nil, fmt.Errorf("volume dir: %w", err)
	}
	for svc, f := range w.Faults {
		if err := validFaults(svc, f); err != nil {
			return nil, fmt.Errorf("world: %w", err)
		}
		e.faults[svc] = f
	}
	for _, id := range w.StuckAttaching {
		e.stuck[id] = true
	}
	for _, in := range w.Instances {
		if err := e.addInstance(in); err != nil {
			return nil, fmt.Errorf("world: %w", err)
		}
	}
	for _, v := range w.Volumes {
		if err := e.addVolume(v); err != nil {
			return nil, fmt.Errorf("world: %w", err)
		}
	}
	for b, objs := range w.Buckets {
		e.ensureBucket(b)
		for k, content := range objs {
			e.buckets[b][k] = newMemObject([]byte(content), e.now())
		}
	}
	for b, objs := range w.ObjectFiles {
		e.ensureBucket(b)
		for k, p := range objs {
			fi, err := os.Stat(p)
			if err != nil {
				return nil, fmt.Errorf("world: object s3://%s/%s: %w", b, k, err)
			}
			if !fi.Mode().IsRegular() {
				return nil, fmt.Errorf("world: object s3://%s/%s: %s is not a regular file", b, k, p)
			}
			e.buckets[b][k] = &object{path: p, modified: fi.ModTime(), size: fi.Size()}
		}
	}
	for _, h := range w.LifecycleHooks {
		if h.AutoScalingGroup == "" || h.Name == "" {
			return nil, fmt.Errorf("world: lifecycle hook %+v needs autoScalingGroup and name", h)
		}
		switch h.Transition {
		case "", TransitionLaunching:
			e.hooks[h.AutoScalingGroup] = append(e.hooks[h.AutoScalingGroup], h.Name)
		case TransitionTerminating:
			e.ends.termHooks[h.AutoScalingGroup] = append(e.ends.termHooks[h.AutoScalingGroup], h.Name)
		default:
			return nil, fmt.Errorf("world: lifecycle hook %s: transition %q is neither %s nor %s", h.Name, h.Transition, TransitionLaunching, TransitionTerminating)
		}
	}
	// Pre-attached volumes get their devices last, once every instance exists.
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, id := range e.volOrder {
		v := e.volumes[id]
		if v.att == nil {
			continue
		}
		if err := e.materialize(v); err != nil {
			e.closeLocked()
			return nil, fmt.Errorf("world: pre-attached %s: %w", id, err)
		}
	}
	return e, nil
}

func validFaults(svc string, f Faults) error {
	switch svc {
	case ServiceEC2, ServiceS3, ServiceAutoScaling, ServiceIMDS:
	default:
		return fmt.Errorf("faults: unknown service %q (want ec2, s3, autoscaling or imds)", svc)
	}
	if f.ResetRate < 0 || f.ResetRate > 1 || f.Limit < 0 {
		return fmt.Errorf("faults %s: resetRate must be within 0..1 and limit not negative", svc)
	}
	if f.ThrottleRate < 0 || f.ThrottleRate > 1 || f.ErrorRate < 0 || f.ErrorRate > 1 {
		return fmt.Errorf("faults %s: rates must be within 0..1", svc)
	}
	if f.LoseAnswerRate < 0 || f.LoseAnswerRate > 1 {
		return fmt.Errorf("faults %s: loseAnswerRate must be within 0..1", svc)
	}
	if f.LoseAnswerRate > 0 && svc == ServiceIMDS {
		return errors.New("faults imds: loseAnswerRate is for ec2, s3 and autoscaling actions")
	}
	if f.Latency < 0 {
		return fmt.Errorf("faults %s: negative latency", svc)
	}
	if f.PutHopLimitExceeded && svc != ServiceIMDS {
		return fmt.Errorf("faults %s: putHopLimitExceeded is an imds fault", svc)
	}
	if len(f.Deny) > 0 && svc == ServiceIMDS {
		return errors.New("faults imds: deny is for ec2, s3 and autoscaling actions")
	}
	return nil
}

func (e *Emulator) addInstance(in Instance) error {
	if in.ID == "" {
		return errors.New("instance without id")
	}
	if !strings.HasPrefix(in.ID, "i-") {
		return fmt.Errorf("instance id %q must start with i-", in.ID)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if _, dup := e.instances[in.ID]; dup {
		return fmt.Errorf("duplicate instance %s", in.ID)
	}
	if in.Type == "" {
		in.Type = "m5.large"
	}
	if in.AvailabilityZone == "" {
		in.AvailabilityZone = e.region + "a"
	}
	if !strings.HasPrefix(in.AvailabilityZone, e.region) {
		return fmt.Errorf("instance %s: zone %s is not in region %s", in.ID, in.AvailabilityZone, e.region)
	}
	if in.PrivateIP == "" {
		in.PrivateIP = fmt.Sprintf("10.0.%d.%d", (len(e.instOrder)/250)%250, 10+len(e.instOrder)%240)
	}
	if in.Hostname == "" {
		in.Hostname = privateDNSName(in.PrivateIP, e.region)
	}
	if in.State == "" {
		in.State = "running"
	}
	if _, ok := stateCodes[in.State]; !ok {
		return fmt.Errorf("instance %s: unknown state %q", in.ID, in.State)
	}
	if in.ImageID == "" {
		in.ImageID = "ami-0123456789abcdef0"
	}
	if err := validTarget(in.TargetLifecycleState); err != nil {
		return fmt.Errorf("instance %s: %w", in.ID, err)
	}
	in.Tags = cloneMap(in.Tags)
	e.instances[in.ID] = &instance{Instance: in, launched: e.now().UTC(), reservation: "r-" + strings.TrimPrefix(in.ID, "i-")}
	e.instOrder = append(e.instOrder, in.ID)
	return nil
}

func (e *Emulator) addVolume(v Volume) error {
	if !strings.HasPrefix(v.ID, "vol-") {
		return fmt.Errorf("volume id %q must start with vol-", v.ID)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if _, dup := e.volumes[v.ID]; dup {
		return fmt.Errorf("duplicate volume %s", v.ID)
	}
	if v.SizeGiB <= 0 && v.SizeMiB <= 0 {
		v.SizeGiB = 1
	}
	if v.AvailabilityZone == "" {
		v.AvailabilityZone = e.region + "a"
	}
	if v.VolumeType == "" {
		v.VolumeType = "gp3"
	}
	v.Tags = cloneMap(v.Tags)
	vol := &volume{Volume: v, created: e.now().UTC(), file: filepath.Join(e.volumeDir, v.ID+".img")}
	if v.AttachedTo != "" {
		in, ok := e.instances[v.AttachedTo]
		if !ok {
			return fmt.Errorf("volume %s: attachedTo unknown instance %s", v.ID, v.AttachedTo)
		}
		if in.AvailabilityZone != v.AvailabilityZone {
			return fmt.Errorf("volume %s (%s) attached to %s in another zone (%s)", v.ID, v.AvailabilityZone, in.ID, in.AvailabilityZone)
		}
		dev := v.Device
		if dev == "" {
			dev = "/dev/xvdu"
		}
		if !validDeviceName(dev) {
			return fmt.Errorf("volume %s: device %q is not a valid EBS device name", v.ID, dev)
		}
		vol.att = &attachment{instanceID: in.ID, device: dev, at: vol.created}
		vol.State = "in-use"
	} else {
		if v.State == "" || v.State == "in-use" {
			vol.State = "available"
		}
	}
	vol.Device = ""
	vol.AttachedTo = ""
	e.volumes[v.ID] = vol
	e.volOrder = append(e.volOrder, v.ID)
	return nil
}

func (e *Emulator) ensureBucket(b string) {
	if e.buckets[b] == nil {
		e.buckets[b] = map[string]*object{}
	}
}

// Handler serves EC2, S3 and Auto Scaling on one endpoint, routed by the
// service in the request's SigV4 credential scope.
func (e *Emulator) Handler() http.Handler { return http.HandlerFunc(e.serveAWS) }

// IMDSHandler serves IMDSv2 for one instance.
func (e *Emulator) IMDSHandler(instanceID string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { e.serveIMDS(w, r, instanceID) })
}

// SetFaults replaces the faults injected into one service ("ec2", "s3",
// "autoscaling", "imds"); the zero Faults turns injection off.
func (e *Emulator) SetFaults(service string, f Faults) {
	if err := validFaults(service, f); err != nil {
		e.log.Error("set faults ignored", "service", service, "err", err)
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.faults[service] = f
	e.faulted[service] = 0
}

// Calls counts the requests received for one service and action, whatever their
// outcome (faulted, rejected or served). S3 actions are the SDK operation names
// (GetObject, ListObjectsV2, ...); IMDS actions are paths below /latest/
// (api/token, meta-data/instance-id, user-data, ...).
func (e *Emulator) Calls(service, action string) int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.calls[service+" "+action]
}

// ObjectReads counts the GetObject requests received for one bucket, whatever
// their outcome: what was read from it, e.g. downloads from an assets bucket as
// opposed to the state store's reads.
func (e *Emulator) ObjectReads(bucket string) int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.objectReads[bucket]
}

// SetInstanceState changes an instance's state. Terminating an instance detaches
// its volumes, as EC2 does for volumes that survive termination.
func (e *Emulator) SetInstanceState(id, state string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.setInstanceStateLocked(id, state)
}

// setInstanceStateLocked is SetInstanceState with e.mu held.
func (e *Emulator) setInstanceStateLocked(id, state string) {
	in, ok := e.instances[id]
	if !ok {
		e.log.Error("set state of unknown instance", "instance", id)
		return
	}
	if _, ok := stateCodes[state]; !ok {
		e.log.Error("unknown instance state", "instance", id, "state", state)
		return
	}
	in.State = state
	if state == "terminated" {
		for _, vid := range e.volOrder {
			v := e.volumes[vid]
			if v.att != nil && v.att.instanceID == id {
				e.detachLocked(v)
			}
		}
	}
	e.log.Info("instance state", "instance", id, "state", state)
}

// AddInstance adds an instance at run time (a node joining); errors are logged.
func (e *Emulator) AddInstance(in Instance) {
	if err := e.addInstance(in); err != nil {
		e.log.Error("add instance", "err", err)
	}
}

// Heartbeats returns how often an instance heartbeated its pending launch action.
func (e *Emulator) Heartbeats(instanceID string) int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.heartbeats[instanceID]
}

// LifecycleResults returns the lifecycle action result each instance completed.
func (e *Emulator) LifecycleResults() map[string]string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return cloneMap(e.lifecycle)
}

// VolumeStatus reports a volume's current attachment and device.
func (e *Emulator) VolumeStatus(id string) (VolumeStatus, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	v, ok := e.volumes[id]
	if !ok {
		return VolumeStatus{}, false
	}
	st := VolumeStatus{ID: id, State: v.State, BackingFile: v.file}
	if a := v.att; a != nil {
		st.InstanceID, st.Device, st.LoopDevice, st.DevicePath = a.instanceID, a.device, a.loop, a.link
		st.AttachState = "attaching"
		if a.attached {
			st.AttachState = "attached"
		}
	}
	return st, true
}

// Object returns an object's content, as a test checks what a node uploaded.
func (e *Emulator) Object(bucket, key string) ([]byte, bool) {
	e.mu.Lock()
	o, ok := e.buckets[bucket][key]
	e.mu.Unlock()
	if !ok {
		return nil, false
	}
	b, err := o.bytes()
	if err != nil {
		e.log.Error("read object", "bucket", bucket, "key", key, "err", err)
		return nil, false
	}
	return b, true
}

// PutObject stores an object (creating the bucket), as a test seeds the state store.
func (e *Emulator) PutObject(bucket, key string, data []byte) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.ensureBucket(bucket)
	e.buckets[bucket][key] = newMemObject(data, e.now())
}

// Close detaches every loop device the emulator attached and removes the
// symlinks it made. It is safe to call more than once.
func (e *Emulator) Close() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.closeLocked()
}

func (e *Emulator) closeLocked() error {
	if e.closed {
		return nil
	}
	e.closed = true
	var errs []error
	for _, id := range e.volOrder {
		if v := e.volumes[id]; v.att != nil {
			if err := e.teardown(v.att); err != nil {
				errs = append(errs, fmt.Errorf("close: %s: %w", id, err))
			}
		}
	}
	if e.ownVolumeDir {
		if err := os.RemoveAll(e.volumeDir); err != nil {
			errs = append(errs, fmt.Errorf("close: remove %s: %w", e.volumeDir, err))
		}
	}
	return errors.Join(errs...)
}

func (e *Emulator) countCall(service, action string) {
	e.mu.Lock()
	e.calls[service+" "+action]++
	e.mu.Unlock()
}

func cloneValues(v map[string][]string) map[string][]string {
	out := make(map[string][]string, len(v))
	for k, vs := range v {
		out[k] = append([]string(nil), vs...)
	}
	return out
}

func cloneMap(m map[string]string) map[string]string {
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

func privateDNSName(ip, region string) string {
	host := "ip-" + strings.ReplaceAll(ip, ".", "-")
	if region == "us-east-1" {
		return host + ".ec2.internal"
	}
	return host + "." + region + ".compute.internal"
}

var stateCodes = map[string]int{
	"pending": 0, "running": 16, "shutting-down": 32, "terminated": 48, "stopping": 64, "stopped": 80,
}

// SetUserData replaces an instance's user-data, as ModifyInstanceAttribute does
// on a stopped instance before it is started again.
func (e *Emulator) SetUserData(id, userData string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	in, ok := e.instances[id]
	if !ok {
		e.log.Error("set user-data of unknown instance", "instance", id)
		return
	}
	in.UserData = userData
}

// InstanceTags returns a copy of an instance's tags (nil when unknown).
func (e *Emulator) InstanceTags(id string) map[string]string {
	e.mu.Lock()
	defer e.mu.Unlock()
	in, ok := e.instances[id]
	if !ok {
		return nil
	}
	return cloneMap(in.Tags)
}
