package agent

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	"github.com/aws/aws-sdk-go-v2/service/autoscaling"
	"github.com/aws/aws-sdk-go-v2/service/ec2"

	"github.com/nodeagent/nodeagent/cloud"
	"github.com/nodeagent/nodeagent/config"
	"github.com/nodeagent/nodeagent/doctor"
	"github.com/nodeagent/nodeagent/gossip"
	"github.com/nodeagent/nodeagent/kubelet"
	"github.com/nodeagent/nodeagent/volumes"
)

// DoctorOptions configure `nodeagent doctor`.
type DoctorOptions struct {
	// NTPServer is the time source the clock is measured against
	// (default: the Amazon Time Sync Service).
	NTPServer string
	// CheckTimeout bounds each check (default doctor.DefaultCheckTimeout).
	CheckTimeout time.Duration
}

// Doctor runs every read-only check that applies to this node. It works on a
// node that never booted (from user-data) as on one that did (from the config
// bootstrap ran with), and needs no working IMDS: what the state file
// recorded of the instance stands in.
func Doctor(ctx context.Context, o Options, do DoctorOptions) doctor.Report {
	n, cfgErr := doctorNode(ctx, o)
	var checks []doctor.Check
	if cfgErr != nil {
		checks = append(checks, doctor.Check{Name: "config", Run: func(context.Context) []doctor.Finding {
			return []doctor.Finding{{Result: doctor.Fail, Message: "no usable NodeConfig: " + cfgErr.Error(),
				Fix: "nodeagent config check on the user-data; bootstrap keeps the config it ran with in " + filepath.Join(DefaultStateDir, effectiveConfigName)}}
		}})
	}
	checks = append(checks, doctor.IMDS(doctor.IMDSEndpoint(), 2*time.Second))
	if n != nil && n.AWS != nil {
		checks = append(checks, doctor.Identity(cloud.NewIMDS(*n.AWS)))
	}
	ntp := do.NTPServer
	if ntp == "" {
		ntp = doctor.AmazonTimeSync
	}
	checks = append(checks,
		doctor.Clock(o.Root, ntp, 2*time.Second),
		doctor.Swap(o.Root),
		doctor.Disk(o.Root, "/var/lib"),
		doctor.Certificates(o.Root, []string{"/etc/kubernetes/pki", "/var/lib/kubelet/pki"}, time.Now),
	)
	name := ""
	if n != nil {
		name = n.Name
		spec := n.Config.Spec
		sysctls := maps.Clone(config.DefaultSysctls)
		maps.Copy(sysctls, spec.Host.Sysctls)
		modules := slices.Compact(slices.Sorted(slices.Values(append(slices.Clone(config.DefaultKernelModules), spec.Host.KernelModules...))))
		checks = append(checks,
			doctor.Kernel(o.Root, modules, sysctls),
			doctor.Cgroups(o.Root, string(spec.ContainerRuntime)),
		)
		checks = append(checks, awsChecks(o, n)...)
		checks = append(checks, doctor.APIServer(doctor.APIServerOptions{
			Root: o.Root, Name: config.APIInternalName(spec.Cluster.Name), Port: 443, CAFile: kubelet.CACertPath,
		}))
	}
	return doctor.Run(ctx, name, checks, do.CheckTimeout)
}

// awsChecks are the checks of the AWS calls this configuration makes.
func awsChecks(o Options, n *Node) []doctor.Check {
	spec := n.Config.Spec
	if n.AWS == nil {
		return nil
	}
	// The doctor reports, it does not persevere: the SDK's standard three
	// attempts, not the agent's boot-time eight.
	cfg := n.AWS.Copy()
	cfg.Retryer = func() aws.Retryer { return retry.NewStandard() }
	ec2c := cloud.NewEC2(cfg)
	var calls []doctor.AWSCall
	gossipOn := gossipEnabled(spec.Cluster.Name)
	// Workers with a state store find gossip seeds and signers there
	// (least privilege): only masters need ec2:DescribeInstances.
	if n.IsControlPlane() || gossipOn && n.Store == nil {
		calls = append(calls, doctor.AWSCall{Name: "ec2:DescribeInstances", Call: func(ctx context.Context) error {
			_, err := ec2c.DescribeInstances(ctx, &ec2.DescribeInstancesInput{DryRun: aws.Bool(true)})
			return err
		}})
	}
	var survey doctor.VolumeSurveyor
	if n.IsControlPlane() {
		calls = append(calls, doctor.AWSCall{Name: "ec2:DescribeVolumes", Call: func(ctx context.Context) error {
			_, err := ec2c.DescribeVolumes(ctx, &ec2.DescribeVolumesInput{DryRun: aws.Bool(true)})
			return err
		}})
		survey = volumes.NewClaimPhase(volumes.Options{
			EC2: ec2c, Root: o.Root, ClusterName: spec.Cluster.Name, InstanceID: n.Identity.InstanceID,
			InstanceType: n.Identity.InstanceType, AvailabilityZone: n.Identity.AvailabilityZone, EtcdClusters: spec.Etcd.Clusters, Log: o.log(),
		})
	}
	if hook := spec.Readiness.LifecycleHook; hook != "" {
		asg := cloud.NewAutoScaling(cfg)
		calls = append(calls, doctor.AWSCall{Name: "autoscaling:DescribeAutoScalingInstances", Call: func(ctx context.Context) error {
			_, err := asg.DescribeAutoScalingInstances(ctx, &autoscaling.DescribeAutoScalingInstancesInput{InstanceIds: []string{n.Identity.InstanceID}})
			return err
		}})
	}
	var store doctor.StateStoreGetter
	if n.Store != nil {
		if s, err := cloud.NewStateStore(cloud.NewS3(cfg), spec.Cluster.StateStore); err == nil {
			store = s
		}
	}
	checks := []doctor.Check{
		doctor.Permissions(calls),
		doctor.StateStore(spec.Cluster.StateStore, store),
	}
	if n.IsControlPlane() {
		checks = append(checks, doctor.EtcdVolumes(n.Identity.AvailabilityZone, survey))
	}
	g := doctor.GossipOptions{Enabled: gossipOn, ClusterName: spec.Cluster.Name, NodeName: n.Name,
		BindIP: net.ParseIP(n.Identity.PrivateIP), Port: spec.Gossip.Port}
	if gossipOn {
		kctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		g.Key, g.KeyErr = gossipKey(kctx, o, n)
		cancel()
		var sr gossip.ObjectReader
		if store != nil {
			sr = store
		}
		g.Peers = gossipSeeds(n, ec2c, sr).Seeds
	}
	return append(checks, doctor.Gossip(g))
}

// doctorNode is the node as doctor sees it: the config bootstrap saved (else
// user-data), and the instance as the state file recorded it (else IMDS). No
// state store is read here: the state-store check does that, and says why it
// fails.
func doctorNode(ctx context.Context, o Options) (*Node, error) {
	saved := filepath.Join(o.stateDir(), effectiveConfigName)
	raw, err := os.ReadFile(saved)
	if errors.Is(err, fs.ErrNotExist) {
		lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		return LoadNode(lctx, o, identityIfAvailable)
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", saved, err)
	}
	n := &Node{}
	if n.Config, err = config.Parse(raw); err != nil {
		return nil, fmt.Errorf("%s: %w", saved, err)
	}
	n.ConfigHash = hashConfig(n.Config)
	lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if awsCfg, err := cloud.LoadConfig(lctx); err == nil {
		n.AWS, n.IMDS = &awsCfg, cloud.NewIMDS(awsCfg)
		if url := n.Config.Spec.Cluster.StateStore; url != "" {
			n.Store, _ = cloud.NewStateStore(cloud.NewS3(awsCfg), url)
		}
	}
	if st, err := o.store().Load(); err == nil {
		ni := st.Node
		n.Identity = cloud.Identity{InstanceID: ni.InstanceID, InstanceType: ni.InstanceType, Region: ni.Region,
			AvailabilityZone: ni.AvailabilityZone, PrivateIP: ni.PrivateIP, Hostname: ni.Name}
		n.Name = ni.Name
	}
	if n.Name == "" {
		n.Name, _ = os.Hostname()
	}
	return n, nil
}
