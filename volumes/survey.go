package volumes

import (
	"context"
	"fmt"
	"strings"

	"github.com/aws/aws-sdk-go-v2/service/ec2/types"
)

// VolumeView is one etcd volume of this cluster in this node's zone, as the
// claim judges it.
type VolumeView struct {
	ID     string
	Member string
	// Here is true when the volume is attached (or attaching) to this instance.
	Here bool
	// Free is true when the volume is available: the claim could attach it.
	Free bool
	// Holder is the instance it is attached to when not this one.
	Holder string
}

// Survey is what the claim would find for one etcd cluster.
type Survey struct {
	EtcdCluster string
	Volumes     []VolumeView
	// Rejected are tagged volumes the claim would skip, with the reason.
	Rejected []string
}

// Usable reports whether the claim can hold a volume: one is here or one is free.
func (s Survey) Usable() bool {
	for _, v := range s.Volumes {
		if v.Here || v.Free {
			return true
		}
	}
	return false
}

// Here lists the volumes attached to this instance.
func (s Survey) Here() []string {
	var ids []string
	for _, v := range s.Volumes {
		if v.Here {
			ids = append(ids, v.ID)
		}
	}
	return ids
}

// Survey describes, changing nothing, the etcd volumes each etcd cluster's claim
// would choose from, judged by the same tag and zone rules as the claim.
func (p *ClaimPhase) Survey(ctx context.Context) ([]Survey, error) {
	var out []Survey
	for _, ec := range p.o.EtcdClusters {
		s := Survey{EtcdCluster: ec.Name}
		vols, err := p.describeAll(ctx, describeInput(p.o, ec.Name))
		if err != nil {
			return nil, fmt.Errorf("describe etcd %s volumes: %w", ec.Name, err)
		}
		for _, v := range vols {
			c, err := p.toCandidate(v, ec.Name)
			if err != nil {
				s.Rejected = append(s.Rejected, strings.TrimSpace(err.Error()))
				continue
			}
			s.Volumes = append(s.Volumes, VolumeView{
				ID: c.ID, Member: c.Member, Here: c.Ours != nil, Holder: c.Holder,
				Free: c.Ours == nil && c.Holder == "" && c.State == types.VolumeStateAvailable,
			})
		}
		out = append(out, s)
	}
	return out, nil
}
