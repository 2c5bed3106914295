// Package volumes claims this control-plane node's etcd EBS volumes, one per etcd
// cluster, kops-style: find the cluster's tagged volumes in this AZ, take one by
// attaching it (EC2 makes only one AttachVolume win), format it only when it is
// provably blank, and mount it at /mnt/master-<volume-id>.
//
// Every step is written so that a mistake cannot destroy etcd data: a device is
// formatted only when our own probe and blkid both find nothing on it; a volume
// already attached to this instance is always adopted rather than attached again;
// a mount point holding anything unexpected is reported, never touched.
package volumes

import (
	"context"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/ec2"

	"github.com/nodeagent/nodeagent/bootstrap"
	"github.com/nodeagent/nodeagent/config"
	"github.com/nodeagent/nodeagent/internal/fsutil"
)

// EC2 is the part of the EC2 API the claim needs (aws-sdk-go-v2 signatures).
type EC2 interface {
	DescribeVolumes(context.Context, *ec2.DescribeVolumesInput, ...func(*ec2.Options)) (*ec2.DescribeVolumesOutput, error)
	AttachVolume(context.Context, *ec2.AttachVolumeInput, ...func(*ec2.Options)) (*ec2.AttachVolumeOutput, error)
}

// Options configure the claim.
type Options struct {
	EC2  EC2
	Root fsutil.Root
	// ClusterName is the KubernetesCluster tag value of the volumes.
	ClusterName string
	InstanceID  string
	// InstanceType is informational: the device is looked for under both the Nitro
	// (NVMe by-id) and the Xen (/dev/xvdX) names, since each name is specific to
	// this volume or attachment and cannot point at another disk.
	InstanceType     string
	AvailabilityZone string
	EtcdClusters     []config.EtcdCluster
	Log              *slog.Logger
	// AttachTimeout bounds the wait for a volume to become available and attached
	// (default 5m). DeviceTimeout bounds the wait for its block device (default 2m).
	AttachTimeout time.Duration
	DeviceTimeout time.Duration
}

// Claim is one etcd volume this node holds.
type Claim struct {
	EtcdCluster string
	VolumeID    string
	// Member is this node's etcd member name and Members all of them, from the
	// volume's k8s.io/etcd/<cluster>=<member>/<members> tag.
	Member  string
	Members []string
	// Device is the resolved host block device (e.g. /dev/nvme1n1).
	Device string
	// MountPoint is the host path (not resolved under Root), /mnt/master-<volume-id>.
	MountPoint string
	// Formatted is true when this agent created the filesystem (the volume was blank).
	Formatted bool
}

// PhaseName is the name of the claim phase in status and plans.
const PhaseName = "volumes"

// ClaimPhase is the bootstrap phase that claims, formats and mounts the volumes.
// It implements bootstrap.Phase, bootstrap.Reporter and bootstrap.Warner.
type ClaimPhase struct {
	o Options

	mu       sync.Mutex
	fstabMu  sync.Mutex
	progress map[string]*progress // by etcd cluster name
	warnings []string
	// devices reserves attach device names across concurrent claims.
	devices deviceAllocator
	// timing knobs; tests shorten them.
	poll pollConfig
	// owned is the volume this node holds for each etcd cluster according to
	// the facts recorded by an earlier run (state.json): the only volume it may
	// attach for that cluster from then on.
	owned map[string]bootstrap.EtcdMemberFact
}

// NewClaimPhase returns the phase for o.
func NewClaimPhase(o Options) *ClaimPhase {
	if o.Log == nil {
		o.Log = slog.Default()
	}
	if o.AttachTimeout <= 0 {
		o.AttachTimeout = 5 * time.Minute
	}
	if o.DeviceTimeout <= 0 {
		o.DeviceTimeout = 2 * time.Minute
	}
	return &ClaimPhase{o: o, progress: map[string]*progress{}, poll: defaultPoll}
}

// Name implements bootstrap.Phase.
func (p *ClaimPhase) Name() string { return PhaseName }

// Claims returns the volumes claimed so far, in the order of Options.EtcdClusters.
// They are known after Act or Verify (and after a Check that found them converged).
func (p *ClaimPhase) Claims() []Claim {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []Claim
	for _, ec := range p.o.EtcdClusters {
		if pr := p.progress[ec.Name]; pr != nil && pr.claim.VolumeID != "" && pr.state == stateMounted {
			c := pr.claim
			c.Members = append([]string(nil), c.Members...)
			out = append(out, c)
		}
	}
	return out
}

var _ bootstrap.FactConsumer = (*ClaimPhase)(nil)

// UseFacts takes the volumes an earlier run claimed. Which volume a node may
// take:
//   - with no recorded claim for an etcd cluster (its first boot), the first
//     available tagged volume in its zone that it wins;
//   - once a claim is recorded, only that volume, ever: if it is detached or
//     held elsewhere, the node waits for it and never claims another member's
//     free volume in its place (that would make it a second copy of a member
//     whose volume may come back, or leave its own member's data behind).
func (p *ClaimPhase) UseFacts(f bootstrap.Facts) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.owned = map[string]bootstrap.EtcdMemberFact{}
	for _, m := range f.EtcdMembers {
		if m.VolumeID != "" {
			p.owned[m.Cluster] = m
		}
	}
}

// ownedVolume is the volume an earlier run recorded for etcdCluster, if any.
func (p *ClaimPhase) ownedVolume(etcdCluster string) (bootstrap.EtcdMemberFact, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	m, ok := p.owned[etcdCluster]
	return m, ok
}

// LearnFacts records this node's etcd memberships from the volumes it holds
// mounted, replacing what an earlier run recorded for the same etcd cluster.
func (p *ClaimPhase) LearnFacts(f *bootstrap.Facts) {
	for _, c := range p.Claims() {
		m := bootstrap.EtcdMemberFact{
			Cluster: c.EtcdCluster, Member: c.Member, Members: c.Members, VolumeID: c.VolumeID, MountPoint: c.MountPoint,
		}
		i := slices.IndexFunc(f.EtcdMembers, func(x bootstrap.EtcdMemberFact) bool { return x.Cluster == c.EtcdCluster })
		if i < 0 {
			f.EtcdMembers = append(f.EtcdMembers, m)
			continue
		}
		if old := f.EtcdMembers[i]; old.VolumeID == m.VolumeID {
			// How the member joined belongs to its volume: kept while it is the same.
			m.ClusterState, m.InitialCluster = old.ClusterState, old.InitialCluster
		}
		f.EtcdMembers[i] = m
	}
}
