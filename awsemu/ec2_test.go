package awsemu

import (
	"sort"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/nodeagent/nodeagent/cloud"
)

func filters(kv ...string) []types.Filter {
	var fs []types.Filter
	for i := 0; i+1 < len(kv); i += 2 {
		fs = append(fs, types.Filter{Name: aws.String(kv[i]), Values: strings.Split(kv[i+1], "|")})
	}
	return fs
}

func TestDescribeInstances(t *testing.T) {
	r := Start(t, testWorld(t), Options{})
	c := cloud.NewEC2(sdkConfig(t, r, ""))
	cases := []struct {
		name     string
		in       ec2.DescribeInstancesInput
		want     []string
		wantCode string
	}{
		{name: "all", want: []string{nitroID, nitroB, xenID, otherAZ}},
		{name: "cluster tag and running (gossip seeds)",
			in:   ec2.DescribeInstancesInput{Filters: filters("tag:KubernetesCluster", "proyecto.k8s.local", "instance-state-name", "running")},
			want: []string{nitroID, nitroB, xenID}},
		{name: "tag-key", in: ec2.DescribeInstancesInput{Filters: filters("tag-key", "k8s.io/role/master")}, want: []string{nitroID, nitroB}},
		{name: "wildcard tag value", in: ec2.DescribeInstancesInput{Filters: filters("tag:Name", "cp-*")}, want: []string{nitroID, nitroB}},
		{name: "state stopped", in: ec2.DescribeInstancesInput{Filters: filters("instance-state-name", "stopped")}, want: []string{otherAZ}},
		{name: "instance-id filter, two values", in: ec2.DescribeInstancesInput{Filters: filters("instance-id", xenID+"|"+otherAZ)}, want: []string{xenID, otherAZ}},
		{name: "InstanceIds", in: ec2.DescribeInstancesInput{InstanceIds: []string{xenID}}, want: []string{xenID}},
		{name: "InstanceIds and filter", in: ec2.DescribeInstancesInput{InstanceIds: []string{xenID, nitroID}, Filters: filters("availability-zone", "us-east-1a")}, want: []string{nitroID}},
		{name: "filters combine with AND", in: ec2.DescribeInstancesInput{Filters: filters("tag-key", "k8s.io/role/master", "availability-zone", "us-east-1b")}},
		{name: "unknown instance", in: ec2.DescribeInstancesInput{InstanceIds: []string{"i-0000000000000dead"}}, wantCode: "InvalidInstanceID.NotFound"},
		{name: "malformed instance id", in: ec2.DescribeInstancesInput{InstanceIds: []string{"vol-1"}}, wantCode: "InvalidInstanceID.Malformed"},
		{name: "unknown filter", in: ec2.DescribeInstancesInput{Filters: filters("colour", "blue")}, wantCode: "InvalidParameterValue"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			out, err := c.DescribeInstances(ctx(t), &tc.in)
			if tc.wantCode != "" {
				if apiCode(err) != tc.wantCode {
					t.Fatalf("err = %v, want code %s", err, tc.wantCode)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, res := range out.Reservations {
				for _, in := range res.Instances {
					got = append(got, aws.ToString(in.InstanceId))
				}
			}
			if strings.Join(got, ",") != strings.Join(tc.want, ",") {
				t.Errorf("instances = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestDescribeInstancesFields(t *testing.T) {
	r := Start(t, testWorld(t), Options{})
	c := cloud.NewEC2(sdkConfig(t, r, ""))
	out, err := c.DescribeInstances(ctx(t), &ec2.DescribeInstancesInput{InstanceIds: []string{nitroID}})
	if err != nil {
		t.Fatal(err)
	}
	in := out.Reservations[0].Instances[0]
	checks := map[string][2]string{
		"privateIpAddress": {aws.ToString(in.PrivateIpAddress), "10.0.1.10"},
		"privateDnsName":   {aws.ToString(in.PrivateDnsName), "ip-10-0-1-10.ec2.internal"},
		"instanceType":     {string(in.InstanceType), "m5.large"},
		"placement":        {aws.ToString(in.Placement.AvailabilityZone), "us-east-1a"},
		"instanceState":    {string(in.State.Name), "running"},
		"tag Name":         {tagValue(in.Tags, "Name"), "cp-a"},
	}
	for field, c := range checks {
		if c[0] != c[1] {
			t.Errorf("%s = %q, want %q", field, c[0], c[1])
		}
	}
	if aws.ToInt32(in.State.Code) != 16 || in.LaunchTime == nil {
		t.Errorf("state code %d, launch time %v", aws.ToInt32(in.State.Code), in.LaunchTime)
	}
	if aws.ToString(out.Reservations[0].ReservationId) == "" {
		t.Error("no reservation id")
	}
}

func TestDescribeInstancesPagination(t *testing.T) {
	w := &World{}
	for i := 0; i < 12; i++ {
		w.Instances = append(w.Instances, Instance{ID: "i-" + strings.Repeat("0", 15) + string(rune('a'+i))})
	}
	r := Start(t, w, Options{})
	p := ec2.NewDescribeInstancesPaginator(cloud.NewEC2(sdkConfig(t, r, "")), &ec2.DescribeInstancesInput{MaxResults: aws.Int32(5)})
	n, pages := 0, 0
	for p.HasMorePages() {
		out, err := p.NextPage(ctx(t))
		if err != nil {
			t.Fatal(err)
		}
		pages++
		for _, res := range out.Reservations {
			n += len(res.Instances)
		}
	}
	if n != 12 || pages != 3 {
		t.Fatalf("%d instances in %d pages, want 12 in 3", n, pages)
	}
}

func tagValue(tags []types.Tag, key string) string {
	for _, t := range tags {
		if aws.ToString(t.Key) == key {
			return aws.ToString(t.Value)
		}
	}
	return ""
}

func TestDescribeVolumes(t *testing.T) {
	w := testWorld(t)
	w.Volumes = append(w.Volumes, Volume{ID: "vol-00000000000000d01", AvailabilityZone: "us-east-1b", SizeMiB: 8, AttachedTo: xenID, Device: "/dev/sdf"})
	r := Start(t, w, Options{})
	c := cloud.NewEC2(sdkConfig(t, r, ""))
	cases := []struct {
		name     string
		in       ec2.DescribeVolumesInput
		want     []string
		wantCode string
	}{
		{name: "etcd volumes of the zone (claim candidates)",
			in:   ec2.DescribeVolumesInput{Filters: filters("tag:KubernetesCluster", "proyecto.k8s.local", "tag-key", "k8s.io/etcd/main", "availability-zone", "us-east-1a", "status", "available")},
			want: []string{volA}},
		{name: "tag-key any etcd cluster", in: ec2.DescribeVolumesInput{Filters: filters("tag-key", "k8s.io/etcd/main|k8s.io/etcd/events")}, want: []string{volA, volB, volXen}},
		{name: "in-use", in: ec2.DescribeVolumesInput{Filters: filters("status", "in-use")}, want: []string{"vol-00000000000000d01"}},
		{name: "attachment.instance-id", in: ec2.DescribeVolumesInput{Filters: filters("attachment.instance-id", xenID)}, want: []string{"vol-00000000000000d01"}},
		{name: "volume-id filter", in: ec2.DescribeVolumesInput{Filters: filters("volume-id", volB)}, want: []string{volB}},
		{name: "VolumeIds", in: ec2.DescribeVolumesInput{VolumeIds: []string{volC, volA}}, want: []string{volC, volA}},
		{name: "unknown volume", in: ec2.DescribeVolumesInput{VolumeIds: []string{"vol-0000000000000dead"}}, wantCode: "InvalidVolume.NotFound"},
		{name: "unknown filter", in: ec2.DescribeVolumesInput{Filters: filters("colour", "blue")}, wantCode: "InvalidParameterValue"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			out, err := c.DescribeVolumes(ctx(t), &tc.in)
			if tc.wantCode != "" {
				if apiCode(err) != tc.wantCode {
					t.Fatalf("err = %v, want code %s", err, tc.wantCode)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, v := range out.Volumes {
				got = append(got, aws.ToString(v.VolumeId))
			}
			if strings.Join(got, ",") != strings.Join(tc.want, ",") {
				t.Errorf("volumes = %v, want %v", got, tc.want)
			}
		})
	}

	out, err := c.DescribeVolumes(ctx(t), &ec2.DescribeVolumesInput{VolumeIds: []string{"vol-00000000000000d01", volA}})
	if err != nil {
		t.Fatal(err)
	}
	att := out.Volumes[0].Attachments
	if len(att) != 1 || aws.ToString(att[0].InstanceId) != xenID || aws.ToString(att[0].Device) != "/dev/sdf" || att[0].State != types.VolumeAttachmentStateAttached {
		t.Errorf("pre-attached volume attachments = %+v", att)
	}
	if aws.ToInt32(out.Volumes[1].Size) != 20 || out.Volumes[1].State != types.VolumeStateAvailable || aws.ToString(out.Volumes[1].AvailabilityZone) != "us-east-1a" {
		t.Errorf("volume A = size %d state %s zone %s", aws.ToInt32(out.Volumes[1].Size), out.Volumes[1].State, aws.ToString(out.Volumes[1].AvailabilityZone))
	}
}

func TestTags(t *testing.T) {
	r := Start(t, testWorld(t), Options{})
	c := cloud.NewEC2(sdkConfig(t, r, ""))
	_, err := c.CreateTags(ctx(t), &ec2.CreateTagsInput{
		Resources: []string{volA, nitroID},
		Tags:      []types.Tag{{Key: aws.String("claimed-by"), Value: aws.String("cp-a")}},
	})
	if err != nil {
		t.Fatal(err)
	}
	out, err := c.DescribeTags(ctx(t), &ec2.DescribeTagsInput{Filters: filters("key", "claimed-by")})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, td := range out.Tags {
		got = append(got, aws.ToString(td.ResourceId)+"/"+string(td.ResourceType)+"/"+aws.ToString(td.Value))
	}
	sort.Strings(got)
	if want := nitroID + "/instance/cp-a," + volA + "/volume/cp-a"; strings.Join(got, ",") != want {
		t.Errorf("tags = %v, want %s", got, want)
	}
	vols, err := c.DescribeVolumes(ctx(t), &ec2.DescribeVolumesInput{Filters: filters("tag:claimed-by", "cp-a")})
	if err != nil || len(vols.Volumes) != 1 {
		t.Fatalf("DescribeVolumes by new tag: %v, %d volumes", err, len(vols.Volumes))
	}
	if _, err := c.DeleteTags(ctx(t), &ec2.DeleteTagsInput{Resources: []string{volA}, Tags: []types.Tag{{Key: aws.String("claimed-by")}}}); err != nil {
		t.Fatal(err)
	}
	out, err = c.DescribeTags(ctx(t), &ec2.DescribeTagsInput{Filters: filters("key", "claimed-by", "resource-type", "volume")})
	if err != nil || len(out.Tags) != 0 {
		t.Fatalf("after DeleteTags: %v, %+v", err, out.Tags)
	}
	_, err = c.CreateTags(ctx(t), &ec2.CreateTagsInput{Resources: []string{"vol-0000000000000dead"}, Tags: []types.Tag{{Key: aws.String("k"), Value: aws.String("v")}}})
	if apiCode(err) != "InvalidVolume.NotFound" {
		t.Fatalf("CreateTags on a missing volume = %v", err)
	}
}
