package gossip

import (
	"context"
	"fmt"
	"sort"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
)

// SeedSource lists peers to join, as "ip" or "ip:port" (the ring's port is
// assumed when absent).
type SeedSource interface {
	Seeds(ctx context.Context) ([]string, error)
}

// StaticSeeds is a fixed list of peers.
type StaticSeeds []string

// Seeds returns the list.
func (s StaticSeeds) Seeds(context.Context) ([]string, error) {
	return append([]string(nil), s...), nil
}

// EC2DescribeInstances is the one EC2 call EC2Seeds makes; *ec2.Client has it.
type EC2DescribeInstances interface {
	DescribeInstances(ctx context.Context, in *ec2.DescribeInstancesInput, opts ...func(*ec2.Options)) (*ec2.DescribeInstancesOutput, error)
}

// EC2Seeds finds peers the way kops does: every running instance tagged
// KubernetesCluster=<cluster> is a member, whether or not its agent is up yet.
type EC2Seeds struct {
	Client      EC2DescribeInstances
	ClusterName string
	// Self is this node's private IP, left out of the list.
	Self string
	// PageSize is DescribeInstances' MaxResults, 5 to 1000; 0 means 1000, so a
	// 1000-node cluster costs one call.
	PageSize int32
}

// Seeds returns the sorted private IPs of the cluster's running instances.
func (s *EC2Seeds) Seeds(ctx context.Context) ([]string, error) {
	in := &ec2.DescribeInstancesInput{
		Filters: []ec2types.Filter{
			{Name: aws.String("tag:KubernetesCluster"), Values: []string{s.ClusterName}},
			{Name: aws.String("instance-state-name"), Values: []string{"running"}},
		},
	}
	var ips []string
	seen := map[string]bool{}
	size := s.PageSize
	if size == 0 {
		size = 1000
	}
	p := ec2.NewDescribeInstancesPaginator(s.Client, in, func(o *ec2.DescribeInstancesPaginatorOptions) { o.Limit = size })
	for p.HasMorePages() {
		out, err := p.NextPage(ctx)
		if err != nil {
			return nil, fmt.Errorf("describe instances of cluster %s: %w", s.ClusterName, err)
		}
		for _, r := range out.Reservations {
			for _, inst := range r.Instances {
				ip := aws.ToString(inst.PrivateIpAddress)
				if ip == "" || ip == s.Self || seen[ip] {
					continue
				}
				seen[ip] = true
				ips = append(ips, ip)
			}
		}
	}
	sort.Strings(ips)
	return ips, nil
}
