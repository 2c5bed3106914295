// Package awsemu is a wire-level emulator of the parts of AWS the node agent uses:
// EC2 (query protocol), S3 (REST, path-style), Auto Scaling (query protocol) and
// IMDSv2. The real aws-sdk-go-v2 clients talk to it through the SDK's standard
// endpoint settings, every request is SigV4-verified against the world's
// credentials, and an attached EBS volume becomes a real loop device with the
// symlink a Nitro or Xen instance would see.
package awsemu

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"time"

	"sigs.k8s.io/yaml"
)

// Defaults used when the world leaves them empty. The secret is the documented
// AWS example key: the emulator's credentials are not secrets.
const (
	DefaultRegion          = "us-east-1"
	DefaultAccessKeyID     = "AKIDEXAMPLE"
	DefaultSecretAccessKey = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
	DefaultAccountID       = "123456789012"
)

// Services that faults can be injected into.
const (
	ServiceEC2         = "ec2"
	ServiceS3          = "s3"
	ServiceAutoScaling = "autoscaling"
	ServiceIMDS        = "imds"
)

// World is the initial state of the emulated account, loaded from YAML or JSON.
type World struct {
	Region string `json:"region,omitempty"`
	// AccessKeyID and SecretAccessKey are the only credentials the emulator accepts.
	AccessKeyID     string `json:"accessKeyID,omitempty"`
	SecretAccessKey string `json:"secretAccessKey,omitempty"`

	Instances []Instance `json:"instances,omitempty"`
	Volumes   []Volume   `json:"volumes,omitempty"`

	// Buckets holds small objects inline: bucket -> key -> content.
	Buckets map[string]map[string]string `json:"buckets,omitempty"`
	// ObjectFiles serves big objects from local files: bucket -> key -> path.
	ObjectFiles map[string]map[string]string `json:"objectFiles,omitempty"`

	LifecycleHooks []LifecycleHook `json:"lifecycleHooks,omitempty"`

	// Policies are IAM policy documents (JSON) by role name. Requests signed
	// with an instance profile's credentials are allowed only what their role's
	// policy allows; the world's own key pair (the account's root) anything.
	Policies map[string]string `json:"policies,omitempty"`

	// Faults per service: "ec2", "s3", "autoscaling", "imds".
	Faults map[string]Faults `json:"faults,omitempty"`

	// AttachLatency is how long an attached volume stays "attaching" (YAML: "2s").
	AttachLatency time.Duration `json:"-"`
	// StuckAttaching lists volumes that never leave "attaching" (and never get a device).
	StuckAttaching []string `json:"stuckAttaching,omitempty"`
}

// Instance is one EC2 instance.
type Instance struct {
	ID string `json:"id"`
	// Type decides the device naming: Nitro types (m5, c5, t3, ...) expose EBS
	// volumes as NVMe, Xen types (t2, m4, ...) as /dev/xvdX.
	Type             string `json:"type,omitempty"`
	AvailabilityZone string `json:"availabilityZone,omitempty"`
	PrivateIP        string `json:"privateIP,omitempty"`
	// Hostname is the private DNS name; derived from PrivateIP when empty.
	Hostname string            `json:"hostname,omitempty"`
	State    string            `json:"state,omitempty"` // pending, running, stopping, stopped, shutting-down, terminated
	Tags     map[string]string `json:"tags,omitempty"`
	UserData string            `json:"userData,omitempty"`
	ImageID  string            `json:"imageID,omitempty"`
	// DevRoot is the directory under which this instance's device symlinks are
	// made (dev/disk/by-id/... or dev/xvdX); "" means "/".
	DevRoot          string `json:"devRoot,omitempty"`
	AutoScalingGroup string `json:"autoScalingGroup,omitempty"`
	// InstanceProfile is the role of the instance's profile: IMDS serves
	// temporary credentials of its own under iam/security-credentials/<role>.
	InstanceProfile string `json:"instanceProfile,omitempty"`
	// TargetLifecycleState is where the group is taking the instance, served in
	// IMDS at autoscaling/target-lifecycle-state: InService (the default for a
	// group member) or, launched into a warm pool, Warmed:Stopped,
	// Warmed:Running or Warmed:Hibernated (SetTargetLifecycleState moves it).
	TargetLifecycleState string `json:"targetLifecycleState,omitempty"`
}

// Volume is one EBS volume.
type Volume struct {
	ID               string `json:"id"`
	AvailabilityZone string `json:"availabilityZone,omitempty"`
	// SizeGiB is the reported size; SizeMiB, when set, is the backing file's size
	// instead (tests use a few MiB; the API then reports at least 1 GiB).
	SizeGiB    int               `json:"sizeGiB,omitempty"`
	SizeMiB    int               `json:"sizeMiB,omitempty"`
	VolumeType string            `json:"volumeType,omitempty"`
	Tags       map[string]string `json:"tags,omitempty"`
	State      string            `json:"state,omitempty"` // available (default) or in-use when AttachedTo is set
	// AttachedTo and Device describe a volume attached before the emulator starts.
	AttachedTo string `json:"attachedTo,omitempty"`
	Device     string `json:"device,omitempty"`
	// MultiAttachEnabled is EBS Multi-Attach (io1/io2): reported as
	// multiAttachEnabled; the emulator still attaches it to one instance at a time.
	MultiAttachEnabled bool `json:"multiAttachEnabled,omitempty"`
}

// LifecycleHook is a lifecycle hook of an Auto Scaling group. A launch hook
// (the default transition) holds an instance in Pending:Wait (or, launched into
// a warm pool, Warmed:Pending:Wait) until it is completed; a terminate hook
// holds an instance the group terminates in Terminating:Wait.
type LifecycleHook struct {
	AutoScalingGroup string `json:"autoScalingGroup"`
	Name             string `json:"name"`
	// Transition is TransitionLaunching ("" means that) or TransitionTerminating.
	Transition string `json:"transition,omitempty"`
}

// Lifecycle hook transitions, as Auto Scaling names them.
const (
	TransitionLaunching   = "autoscaling:EC2_INSTANCE_LAUNCHING"
	TransitionTerminating = "autoscaling:EC2_INSTANCE_TERMINATING"
)

// Faults are injected into one service's requests with the emulator's seeded RNG.
type Faults struct {
	ThrottleRate float64       `json:"throttleRate,omitempty"` // 0..1: fraction answered with the throttle error
	ErrorRate    float64       `json:"errorRate,omitempty"`    // 0..1: fraction answered with a 500
	Latency      time.Duration `json:"-"`                      // added to every request (YAML: "50ms")
	// Deny lists actions the caller's IAM policy does not allow: each is refused
	// with the service's own access-denied error (EC2 UnauthorizedOperation, also
	// for a DryRun; S3 and Auto Scaling AccessDenied).
	Deny []string `json:"deny,omitempty"`
	// PutHopLimitExceeded (imds only) drops the answer to every token PUT, as
	// IMDS does when the PUT response's hop limit (HttpPutResponseHopLimit) is
	// lower than the hops to the caller, e.g. 1 for a process in a container:
	// the PUT is never answered and the caller times out. GETs still answer.
	PutHopLimitExceeded bool `json:"putHopLimitExceeded,omitempty"`
	// ResetRate (0..1) is the fraction of requests whose connection is reset
	// (TCP RST, no answer), as a load balancer dropping it would.
	ResetRate float64 `json:"resetRate,omitempty"`
	// LoseAnswerRate (0..1; ec2, s3 and autoscaling) is the fraction of requests
	// the emulator serves, acting on them, and then answers with a reset
	// connection: the change is made but the caller never hears of it.
	LoseAnswerRate float64 `json:"loseAnswerRate,omitempty"`
	// Actions limits the faults above (not Deny) to requests whose action
	// starts with one of these (S3 operation names, EC2/Auto Scaling actions,
	// IMDS paths below /latest/); empty: every action.
	Actions []string `json:"actions,omitempty"`
	// Limit is how many requests are faulted at most (counted from SetFaults);
	// 0: no limit.
	Limit int `json:"limit,omitempty"`
}

// VolumeStatus is what the emulator currently knows about a volume.
type VolumeStatus struct {
	ID         string `json:"id"`
	State      string `json:"state"`                // available, in-use
	InstanceID string `json:"instanceID,omitempty"` // "" when not attached
	Device     string `json:"device,omitempty"`     // attach name, e.g. /dev/xvdu
	// AttachState is attaching, attached or "" when not attached.
	AttachState string `json:"attachState,omitempty"`
	// LoopDevice is the /dev/loopN backing the attachment, once attached.
	LoopDevice string `json:"loopDevice,omitempty"`
	// DevicePath is the symlink made under the instance's DevRoot, once attached.
	DevicePath string `json:"devicePath,omitempty"`
	// BackingFile is the sparse file holding the volume's data.
	BackingFile string `json:"backingFile"`
}

// LoadWorld reads a world from a YAML or JSON file. Unknown fields are errors.
func LoadWorld(path string) (*World, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load world: %w", err)
	}
	var w World
	if err := yaml.UnmarshalStrict(b, &w); err != nil {
		return nil, fmt.Errorf("load world %s: %w", path, err)
	}
	return &w, nil
}

// jsonDuration accepts "50ms"-style strings (and plain nanoseconds) in files.
type jsonDuration time.Duration

func (d *jsonDuration) UnmarshalJSON(b []byte) error {
	if bytes.Equal(b, []byte("null")) {
		return nil
	}
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		var n int64
		if err2 := json.Unmarshal(b, &n); err2 != nil {
			return fmt.Errorf("duration must be a string such as \"50ms\": %s", b)
		}
		*d = jsonDuration(n)
		return nil
	}
	if strings.TrimSpace(s) == "" {
		*d = 0
		return nil
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("duration %q: %w", s, err)
	}
	if v < 0 {
		return fmt.Errorf("duration %q is negative", s)
	}
	*d = jsonDuration(v)
	return nil
}

func (d jsonDuration) MarshalJSON() ([]byte, error) {
	return json.Marshal(time.Duration(d).String())
}

// strictDecode keeps unknown-field errors inside custom unmarshalers, which
// encoding/json would otherwise silently drop.
func strictDecode(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	return dec.Decode(v)
}

type worldFields World

type worldJSON struct {
	worldFields
	AttachLatency jsonDuration `json:"attachLatency,omitempty"`
}

// UnmarshalJSON reads attachLatency as a duration string.
func (w *World) UnmarshalJSON(b []byte) error {
	var aux worldJSON
	if err := strictDecode(b, &aux); err != nil {
		return err
	}
	*w = World(aux.worldFields)
	w.AttachLatency = time.Duration(aux.AttachLatency)
	return nil
}

// MarshalJSON writes attachLatency as a duration string.
func (w World) MarshalJSON() ([]byte, error) {
	return json.Marshal(worldJSON{worldFields: worldFields(w), AttachLatency: jsonDuration(w.AttachLatency)})
}

type faultFields Faults

type faultsJSON struct {
	faultFields
	Latency jsonDuration `json:"latency,omitempty"`
}

// UnmarshalJSON reads latency as a duration string.
func (f *Faults) UnmarshalJSON(b []byte) error {
	var aux faultsJSON
	if err := strictDecode(b, &aux); err != nil {
		return err
	}
	*f = Faults(aux.faultFields)
	f.Latency = time.Duration(aux.Latency)
	return nil
}

// MarshalJSON writes latency as a duration string.
func (f Faults) MarshalJSON() ([]byte, error) {
	return json.Marshal(faultsJSON{faultFields: faultFields(f), Latency: jsonDuration(f.Latency)})
}
