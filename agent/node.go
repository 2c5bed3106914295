package agent

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/feature/ec2/imds"
	"sigs.k8s.io/yaml"

	"github.com/nodeagent/nodeagent/bootstrap"
	"github.com/nodeagent/nodeagent/cloud"
	"github.com/nodeagent/nodeagent/config"
	"github.com/nodeagent/nodeagent/internal/fsutil"
	"github.com/nodeagent/nodeagent/systemd"
)

// Options are the global settings every command shares.
type Options struct {
	// Root is the host filesystem root; every host path is resolved under it.
	Root fsutil.Root
	// StateDir holds state.json and the effective config (a host path, under Root).
	StateDir string
	// ConfigFile is a NodeConfig file ("-" for standard input); empty means EC2 user-data.
	ConfigFile string
	Stdin      io.Reader
	Log        *slog.Logger
	// Systemd is the D-Bus connection the phases share; nil: each phase set
	// opens its own (buildPhases) and its run closes it. The daemon keeps one.
	Systemd *systemd.Session
}

// DefaultStateDir is where state.json lives.
const DefaultStateDir = "/var/lib/nodeagent"

// effectiveConfigName is the config bootstrap ran with, kept for the daemon so that a
// reboot reconciles against the same document without asking IMDS again.
const effectiveConfigName = "config.yaml"

func (o Options) stateDir() string {
	d := o.StateDir
	if d == "" {
		d = DefaultStateDir
	}
	return o.Root.Path(d)
}

func (o Options) store() bootstrap.StateStore { return bootstrap.StateStore{Dir: o.stateDir()} }

func (o Options) log() *slog.Logger {
	if o.Log != nil {
		return o.Log
	}
	return slog.Default()
}

// Node is everything the phases need to know about this machine.
type Node struct {
	Config     *config.NodeConfig
	ConfigHash string
	Identity   cloud.Identity
	// Name is the Kubernetes node name.
	Name string
	// Labels are the node labels kubelet registers with.
	Labels map[string]string
	// AWS is nil when no AWS configuration could be loaded (plan, bake or config
	// check on a machine that is not an instance).
	AWS *aws.Config
	// IMDS is the run's one metadata client (set with AWS): its IMDSv2 token is
	// fetched once and kept for every read (user-data, identity, lifecycle).
	IMDS  *imds.Client
	Store *cloud.StateStore
	// Inputs are the raw inputs Config was derived from.
	Inputs *configInputs
}

// IsControlPlane reports whether the node runs the control plane.
func (n *Node) IsControlPlane() bool { return n.Config.Spec.Role == config.RoleControlPlane }

// Info is the node as recorded in the state file.
func (n *Node) Info() bootstrap.NodeInfo {
	return bootstrap.NodeInfo{
		Name: n.Name, Cluster: n.Config.Spec.Cluster.Name, Role: string(n.Config.Spec.Role),
		InstanceID: n.Identity.InstanceID, InstanceType: n.Identity.InstanceType, Region: n.Identity.Region,
		AvailabilityZone: n.Identity.AvailabilityZone, PrivateIP: n.Identity.PrivateIP,
	}
}

// loadMode says how much of the node must be known.
type loadMode int

const (
	// needIdentity: bootstrap and run must know who they are; no identity is an error.
	needIdentity loadMode = iota
	// identityIfAvailable: plan shows what it can even off EC2.
	identityIfAvailable
	// followInputs: the daemon needs its identity and takes the node's document
	// from where the last bootstrap took it (user-data, or its --config file).
	followInputs
)

// LoadNode reads the node's raw config inputs (its document from --config or
// user-data, the state store's cluster.yaml), derives the effective config from
// them, validates it, and learns the instance's identity. Nothing on the host
// is touched.
func LoadNode(ctx context.Context, o Options, mode loadMode) (*Node, error) {
	return loadNode(ctx, o, mode, nil)
}

// loadNode is LoadNode; a non-nil preset is the config to derive from instead
// of the inputs (the daemon starts on the config the node last took).
func loadNode(ctx context.Context, o Options, mode loadMode, preset []byte) (*Node, error) {
	n := &Node{}
	log := o.log()
	step := time.Now()
	took := func(msg string) { // the load's own timings, for profiling a run
		log.Debug(msg, "took", time.Since(step).Round(10*time.Microsecond))
		step = time.Now()
	}
	awsCfg, awsErr := cloud.LoadConfig(ctx)
	if awsErr == nil {
		n.AWS, n.IMDS = &awsCfg, cloud.NewIMDS(awsCfg)
	}
	took("AWS config loaded")
	saved, err := loadInputs(o)
	if err != nil {
		o.log().Warn("kept config inputs unreadable; reading them afresh", "err", err)
		saved = nil
	}
	var in *configInputs
	var store *cloud.StateStore
	if preset != nil {
		in = &configInputs{NodeSource: "applied", Node: preset, StateStore: stateStoreURL(preset)}
		if saved != nil {
			in = saved // what it was derived from, for status
		}
		if url := stateStoreURL(preset); url != "" && n.AWS != nil {
			if store, err = cloud.NewStateStore(cloud.NewS3(*n.AWS), url); err != nil {
				return nil, fmt.Errorf("spec.cluster.stateStore: %w", err)
			}
		}
		n.Identity, err = learnIdentity(ctx, n, awsErr, mode)
		took("instance identity learned")
	} else {
		// The identity is learned while the inputs are read: neither needs the
		// other. Inputs that cannot be read end the wait for the identity.
		idCtx, cancel := context.WithCancel(ctx)
		var idErr error
		idDone := make(chan struct{})
		go func() {
			defer close(idDone)
			n.Identity, idErr = learnIdentity(idCtx, n, awsErr, mode)
		}()
		in, store, err = readInputs(ctx, o, n.AWS, n.IMDS, awsErr, saved, mode == followInputs)
		if err != nil {
			cancel()
		}
		<-idDone
		cancel()
		if err != nil {
			return nil, err
		}
		took("config inputs read and instance identity learned")
		err = idErr
	}
	if err != nil {
		if mode != identityIfAvailable {
			return nil, fmt.Errorf("learn instance identity: %w", err)
		}
		o.log().Warn("instance identity unavailable; planning without it", "err", err)
		n.Identity.Hostname, _ = os.Hostname()
	}
	if preset != nil {
		return n.deriveFrom(preset, in, store)
	}
	return n.derive(in, store)
}

// learnIdentity reads the instance identity from IMDS, within the mode's deadline.
func learnIdentity(ctx context.Context, n *Node, awsErr error, mode loadMode) (cloud.Identity, error) {
	if n.AWS == nil {
		return cloud.Identity{}, awsErr
	}
	idCtx, cancel := context.WithTimeout(ctx, identityTimeout(mode))
	defer cancel()
	return cloud.FetchIdentity(idCtx, n.metadata())
}

// metadata is the node's IMDS client (n.AWS must be set).
func (n *Node) metadata() *imds.Client {
	if n.IMDS != nil {
		return n.IMDS
	}
	return cloud.NewIMDS(*n.AWS)
}

// derive is the node with the effective config of in: the node's document
// merged over cluster.yaml, defaulted and validated. n's AWS and identity are
// kept; n itself is not changed.
func (n *Node) derive(in *configInputs, store *cloud.StateStore) (*Node, error) {
	cfg, err := config.Merge(in.Cluster, in.Node)
	return n.withConfig(cfg, err, in, store)
}

// deriveFrom is the node with an effective config kept as a whole (config.yaml),
// recorded as derived from in.
func (n *Node) deriveFrom(effective []byte, in *configInputs, store *cloud.StateStore) (*Node, error) {
	cfg, err := config.Parse(effective)
	return n.withConfig(cfg, err, in, store)
}

func (n *Node) withConfig(cfg *config.NodeConfig, err error, in *configInputs, store *cloud.StateStore) (*Node, error) {
	if err == nil {
		err = validateForPhases(cfg)
	}
	if err != nil {
		return nil, err
	}
	out := &Node{Config: cfg, ConfigHash: hashConfig(cfg), Identity: n.Identity, AWS: n.AWS, IMDS: n.IMDS, Store: store, Inputs: in}
	out.Name = out.Identity.Hostname
	if h := cfg.Spec.Host.Hostname; h != "" {
		out.Name = h
	}
	out.Labels = nodeLabels(cfg, out.Identity)
	return out, nil
}

func identityTimeout(mode loadMode) time.Duration {
	if mode != identityIfAvailable {
		return 2 * time.Minute
	}
	return 5 * time.Second
}

// stateStoreURL peeks at spec.cluster.stateStore before the document is validated,
// because the cluster config it points at may supply required fields.
func stateStoreURL(raw []byte) string {
	var peek struct {
		Spec struct {
			Cluster struct {
				StateStore string `json:"stateStore"`
			} `json:"cluster"`
		} `json:"spec"`
	}
	if yaml.Unmarshal(raw, &peek) != nil {
		return ""
	}
	return peek.Spec.Cluster.StateStore
}

func hashConfig(c *config.NodeConfig) string {
	b, _ := json.Marshal(c)
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:8])
}

func nodeLabels(c *config.NodeConfig, id cloud.Identity) map[string]string {
	labels := map[string]string{}
	if id.AvailabilityZone != "" {
		labels["topology.kubernetes.io/zone"] = id.AvailabilityZone
	}
	if id.Region != "" {
		labels["topology.kubernetes.io/region"] = id.Region
	}
	if id.InstanceType != "" {
		labels["node.kubernetes.io/instance-type"] = id.InstanceType
	}
	// Role labels (node-role.kubernetes.io/*) are not in the set a kubelet may put on
	// its own node (NodeRestriction); as with kops, the control plane applies them.
	for k, v := range c.Spec.Kubelet.NodeLabels {
		labels[k] = v
	}
	return labels
}

// saveEffectiveConfig keeps the merged config for the daemon (0600: it may hold a
// bootstrap token).
func saveEffectiveConfig(o Options, c *config.NodeConfig) error {
	b, err := yaml.Marshal(c)
	if err != nil {
		return fmt.Errorf("encode effective config: %w", err)
	}
	_, err = fsutil.WriteFileIfChanged(filepath.Join(o.stateDir(), effectiveConfigName), b, 0o600)
	return err
}

func readConfigFile(o Options) ([]byte, error) {
	if o.ConfigFile == "-" {
		return io.ReadAll(io.LimitReader(o.Stdin, 1<<20))
	}
	b, err := os.ReadFile(o.ConfigFile)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	return b, nil
}
