package awsemu

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/credentials/ec2rolecreds"
	"github.com/aws/aws-sdk-go-v2/feature/ec2/imds"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/sts"
	"github.com/aws/smithy-go"

	"github.com/nodeagent/nodeagent/iam"
)

const (
	profMaster = "i-00000000000000d01"
	profNode   = "i-00000000000000e01"
)

// iamWorld has a master and a node with instance profiles under the shipped
// policies, and a state store holding what each may and may not read.
func iamWorld(t *testing.T) *Running {
	t.Helper()
	pol := map[string]string{}
	for _, role := range []string{iam.Masters, iam.Nodes} {
		var err error
		if pol[role], err = iam.Policy(role, "s3://state/c.k8s.local", "s3://assets/assets"); err != nil {
			t.Fatal(err)
		}
	}
	return Start(t, &World{
		Instances: []Instance{
			{ID: profMaster, PrivateIP: "10.0.0.10", InstanceProfile: iam.Masters},
			{ID: profNode, PrivateIP: "10.0.1.10", InstanceProfile: iam.Nodes},
		},
		Buckets: map[string]map[string]string{
			"state":  {"c.k8s.local/pki/ca.crt": "CERT", "c.k8s.local/pki/private/ca.key": "KEY", "c.k8s.local/nodeagent/cluster.yaml": "x"},
			"assets": {"assets/kubelet": "ELF"},
		},
		Policies: pol,
	}, Options{})
}

func profileConfig(r *Running, id string) aws.Config {
	md := imds.New(imds.Options{Endpoint: r.IMDSURL(id)})
	return aws.Config{Region: DefaultRegion, BaseEndpoint: aws.String(r.URL),
		Credentials: aws.NewCredentialsCache(ec2rolecreds.New(func(o *ec2rolecreds.Options) { o.Client = md }))}
}

func apiErrorCode(err error) string {
	var ae smithy.APIError
	if errors.As(err, &ae) {
		return ae.ErrorCode()
	}
	return ""
}

// TestInstanceProfilePolicies: each instance signs with its own credentials
// from IMDS, and the emulator holds them to their role's policy: a node reads
// the CA certificate, the cluster config and assets, never the masters' keys; a
// master reads them; EC2 actions outside a policy (a node's DescribeInstances
// too) are UnauthorizedOperation.
func TestInstanceProfilePolicies(t *testing.T) {
	r := iamWorld(t)
	ctx := context.Background()
	get := func(cfg aws.Config, bucket, key string) error {
		out, err := s3.NewFromConfig(cfg, func(o *s3.Options) { o.UsePathStyle = true }).GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String(bucket), Key: aws.String(key)})
		if err == nil {
			out.Body.Close()
		}
		return err
	}
	node, master := profileConfig(r, profNode), profileConfig(r, profMaster)
	creds, err := node.Credentials.Retrieve(ctx)
	if err != nil || !strings.HasPrefix(creds.AccessKeyID, "ASIA") || creds.SessionToken == "" || !creds.CanExpire {
		t.Fatalf("node credentials from IMDS: %+v %v", creds, err)
	}
	for _, c := range []struct {
		cfg         aws.Config
		who, bucket string
		key         string
		want        string // "" allowed, else the error code
	}{
		{node, "node", "state", "c.k8s.local/pki/ca.crt", ""},
		{node, "node", "state", "c.k8s.local/nodeagent/cluster.yaml", ""},
		{node, "node", "assets", "assets/kubelet", ""},
		{node, "node", "state", "c.k8s.local/pki/private/ca.key", "AccessDenied"},
		{master, "master", "state", "c.k8s.local/pki/private/ca.key", ""},
		{master, "master", "assets", "assets/kubelet", ""},
	} {
		if err := get(c.cfg, c.bucket, c.key); apiErrorCode(err) != c.want || (c.want == "" && err != nil) {
			t.Errorf("%s GetObject %s/%s: %v, want %q", c.who, c.bucket, c.key, err, c.want)
		}
	}
	_, err = ec2.NewFromConfig(node).DescribeVolumes(ctx, &ec2.DescribeVolumesInput{})
	if apiErrorCode(err) != "UnauthorizedOperation" || !strings.Contains(err.Error(), "assumed-role/nodes/"+profNode) {
		t.Errorf("node DescribeVolumes: %v, want UnauthorizedOperation naming its role", err)
	}
	if _, err := ec2.NewFromConfig(master).DescribeVolumes(ctx, &ec2.DescribeVolumesInput{}); err != nil {
		t.Errorf("master DescribeVolumes: %v", err)
	}
	// Workers find their gossip seeds in the state store, not through EC2.
	if _, err := ec2.NewFromConfig(node).DescribeInstances(ctx, &ec2.DescribeInstancesInput{}); apiErrorCode(err) != "UnauthorizedOperation" {
		t.Errorf("node DescribeInstances: %v, want UnauthorizedOperation", err)
	}
	if _, err := ec2.NewFromConfig(master).DescribeInstances(ctx, &ec2.DescribeInstancesInput{}); err != nil {
		t.Errorf("master DescribeInstances (gossip seeds, the signer's lookups): %v", err)
	}
}

// TestGetCallerIdentity: STS names an instance profile's caller by its role and
// instance, the root key as a user; presigned requests expire after 15 minutes
// when they say nothing else, and a wrong session token is refused.
func TestGetCallerIdentity(t *testing.T) {
	r := iamWorld(t)
	ctx := context.Background()
	out, err := sts.NewFromConfig(profileConfig(r, profNode)).GetCallerIdentity(ctx, &sts.GetCallerIdentityInput{})
	if err != nil || aws.ToString(out.Arn) != "arn:aws:sts::"+DefaultAccountID+":assumed-role/nodes/"+profNode {
		t.Fatalf("node identity: %v %v", out, err)
	}
	root := aws.Config{Region: DefaultRegion, BaseEndpoint: aws.String(r.URL),
		Credentials: credentials.NewStaticCredentialsProvider(DefaultAccessKeyID, DefaultSecretAccessKey, "")}
	if out, err := sts.NewFromConfig(root).GetCallerIdentity(ctx, &sts.GetCallerIdentityInput{}); err != nil || !strings.Contains(aws.ToString(out.Arn), ":user/") {
		t.Errorf("root identity: %v %v", out, err)
	}

	pre, err := sts.NewPresignClient(sts.NewFromConfig(profileConfig(r, profMaster))).PresignGetCallerIdentity(ctx, &sts.GetCallerIdentityInput{})
	if err != nil {
		t.Fatal(err)
	}
	call := func(url string) (int, string) {
		req, _ := http.NewRequest(pre.Method, url, nil)
		for k, v := range pre.SignedHeader {
			if k != "Host" {
				req.Header[k] = v
			}
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := call(pre.URL); code != 200 || !strings.Contains(body, "assumed-role/masters/"+profMaster) {
		t.Errorf("presigned: %d %s", code, body)
	}
	r.E.SetClock(func() time.Time { return time.Now().Add(16 * time.Minute) })
	if code, body := call(pre.URL); code != 400 || !strings.Contains(body, "RequestExpired") {
		t.Errorf("presigned after 16 minutes: %d %s, want RequestExpired", code, body)
	}
	r.E.SetClock(nil)
	if code, body := call(strings.Replace(pre.URL, "X-Amz-Security-Token=", "X-Amz-Security-Token=x", 1)); code != 403 || !strings.Contains(body, "InvalidClientTokenId") {
		t.Errorf("presigned with another session token: %d %s, want InvalidClientTokenId", code, body)
	}
}

// TestPolicyRefusesWhatItCannotEvaluate: a policy the emulator would read
// more loosely than IAM (conditions, NotAction) is refused at load.
func TestPolicyRefusesWhatItCannotEvaluate(t *testing.T) {
	for _, doc := range []string{
		`{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:GetObject","Resource":"*","Condition":{"StringEquals":{"aws:ResourceTag/x":"y"}}}]}`,
		`{"Version":"2012-10-17","Statement":[{"Effect":"Allow","NotAction":"s3:GetObject","Resource":"*"}]}`,
		`{"Version":"2008-10-17","Statement":[]}`,
		`{"Version":"2012-10-17","Statement":[{"Effect":"Maybe","Action":"s3:GetObject","Resource":"*"}]}`,
	} {
		if _, err := New(&World{Policies: map[string]string{"r": doc}}, Options{}); err == nil {
			t.Errorf("policy accepted: %s", doc)
		}
	}
}
