package awsemu

import (
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/feature/ec2/imds"
	"github.com/aws/aws-sdk-go-v2/service/autoscaling"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	smithyhttp "github.com/aws/smithy-go/transport/http"

	"github.com/nodeagent/nodeagent/cloud"
)

// TestFaultsExhaustRetries: at rate 1.0 every attempt fails, so the SDK's
// standard retryer makes its three attempts and returns the service's error.
func TestFaultsExhaustRetries(t *testing.T) {
	r := Start(t, testWorld(t), Options{Seed: 7})
	cfg := fastRetries(sdkConfig(t, r, ""))
	calls := []struct {
		service, action string
		call            func() error
	}{
		{"ec2", "DescribeInstances", func() error {
			_, err := cloud.NewEC2(cfg).DescribeInstances(ctx(t), &ec2.DescribeInstancesInput{})
			return err
		}},
		{"s3", "GetObject", func() error {
			_, err := cloud.NewS3(cfg).GetObject(ctx(t), &s3.GetObjectInput{Bucket: aws.String("state"), Key: aws.String("assets/kubelet")})
			return err
		}},
		{"autoscaling", "DescribeAutoScalingInstances", func() error {
			_, err := cloud.NewAutoScaling(cfg).DescribeAutoScalingInstances(ctx(t), &autoscaling.DescribeAutoScalingInstancesInput{})
			return err
		}},
	}
	cases := []struct {
		name   string
		faults Faults
		want   map[string]string // service -> code
		status map[string]int
	}{
		{"throttled", Faults{ThrottleRate: 1},
			map[string]string{"ec2": "RequestLimitExceeded", "s3": "SlowDown", "autoscaling": "Throttling"},
			map[string]int{"ec2": 503, "s3": 503, "autoscaling": 400}},
		{"internal errors", Faults{ErrorRate: 1},
			map[string]string{"ec2": "InternalError", "s3": "InternalError", "autoscaling": "InternalFailure"},
			map[string]int{"ec2": 500, "s3": 500, "autoscaling": 500}},
	}
	for _, tc := range cases {
		for _, c := range calls {
			t.Run(tc.name+"/"+c.service, func(t *testing.T) {
				r.E.SetFaults(c.service, tc.faults)
				defer r.E.SetFaults(c.service, Faults{})
				before := r.E.Calls(c.service, c.action)
				err := c.call()
				if apiCode(err) != tc.want[c.service] {
					t.Fatalf("err = %v, want %s", err, tc.want[c.service])
				}
				var re *smithyhttp.ResponseError
				if !errors.As(err, &re) || re.HTTPStatusCode() != tc.status[c.service] {
					t.Errorf("HTTP status of %v, want %d", err, tc.status[c.service])
				}
				if n := r.E.Calls(c.service, c.action) - before; n != 3 {
					t.Errorf("%d attempts reached the emulator, want the SDK's 3", n)
				}
			})
		}
	}
	for _, c := range calls {
		if err := c.call(); err != nil {
			t.Errorf("%s after faults were cleared: %v", c.service, err)
		}
	}
}

// TestFaultRates: a partial rate hits about that fraction of requests and the
// SDK's retries hide most of them.
func TestFaultRates(t *testing.T) {
	w := testWorld(t)
	w.Faults = map[string]Faults{"ec2": {ThrottleRate: 0.3}}
	r := Start(t, w, Options{Seed: 42})
	cfg := fastRetries(sdkConfig(t, r, ""))
	c := cloud.NewEC2(cfg)
	const n = 100
	failed := 0
	for i := 0; i < n; i++ {
		if _, err := c.DescribeVolumes(ctx(t), &ec2.DescribeVolumesInput{}); err != nil {
			if apiCode(err) != "RequestLimitExceeded" {
				t.Fatal(err)
			}
			failed++
		}
	}
	attempts := r.E.Calls("ec2", "DescribeVolumes")
	throttled := attempts - (n - failed)
	frac := float64(throttled) / float64(attempts)
	t.Logf("%d attempts, %d throttled (%.2f), %d calls failed after retries", attempts, throttled, frac, failed)
	if frac < 0.18 || frac > 0.42 {
		t.Errorf("throttled fraction %.2f, want about 0.3", frac)
	}
	if failed > 10 {
		t.Errorf("%d of %d calls failed despite retries (0.3^3 predicts about 3)", failed, n)
	}
}

func TestFaultLatency(t *testing.T) {
	r := Start(t, testWorld(t), Options{})
	r.E.SetFaults("ec2", Faults{Latency: 150 * time.Millisecond})
	c := cloud.NewEC2(sdkConfig(t, r, ""))
	start := time.Now()
	if _, err := c.DescribeInstances(ctx(t), &ec2.DescribeInstancesInput{}); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < 150*time.Millisecond {
		t.Errorf("call took %v, want at least the 150ms latency", d)
	}
}

func TestIMDSFaults(t *testing.T) {
	r := Start(t, testWorld(t), Options{})
	c := cloud.NewIMDS(fastRetries(sdkConfig(t, r, nitroID)))
	r.E.SetFaults("imds", Faults{ErrorRate: 1})
	_, err := cloud.FetchIdentity(ctx(t), c)
	// The SDK's token provider wraps the HTTP error without exposing it.
	if err == nil || !strings.Contains(err.Error(), "StatusCode: 500") {
		t.Fatalf("FetchIdentity with failing IMDS = %v, want a 500", err)
	}
	if n := r.E.Calls("imds", "api/token"); n != 3 {
		t.Errorf("%d token attempts, want the SDK's 3", n)
	}
	r.E.SetFaults("imds", Faults{})
	if _, err := c.GetMetadata(ctx(t), &imds.GetMetadataInput{Path: "instance-id"}); err != nil {
		t.Fatalf("after clearing faults: %v", err)
	}
}

// TestDenyAndDryRun: a denied action is refused as IAM refuses it, also as a
// dry run; an allowed dry run answers DryRunOperation and does nothing.
func TestDenyAndDryRun(t *testing.T) {
	r := Start(t, testWorld(t), Options{})
	cfg := fastRetries(sdkConfig(t, r, ""))
	e := cloud.NewEC2(cfg)
	_, err := e.DescribeVolumes(ctx(t), &ec2.DescribeVolumesInput{DryRun: aws.Bool(true)})
	if apiCode(err) != "DryRunOperation" {
		t.Fatalf("allowed dry run = %v, want DryRunOperation", err)
	}
	r.E.SetFaults("ec2", Faults{Deny: []string{"DescribeVolumes"}})
	r.E.SetFaults("s3", Faults{Deny: []string{"GetObject"}})
	_, err = e.DescribeVolumes(ctx(t), &ec2.DescribeVolumesInput{DryRun: aws.Bool(true)})
	if apiCode(err) != "UnauthorizedOperation" {
		t.Errorf("denied dry run = %v, want UnauthorizedOperation", err)
	}
	if _, err := e.DescribeInstances(ctx(t), &ec2.DescribeInstancesInput{}); err != nil {
		t.Errorf("an action not denied: %v", err)
	}
	_, err = cloud.NewS3(cfg).GetObject(ctx(t), &s3.GetObjectInput{Bucket: aws.String("state"), Key: aws.String("assets/kubelet")})
	if apiCode(err) != "AccessDenied" {
		t.Errorf("denied GetObject = %v, want AccessDenied", err)
	}
	if n := r.E.Calls("s3", "GetObject"); n != 1 {
		t.Errorf("%d GetObject attempts, want 1: access denied is not retried", n)
	}
}

// TestIMDSPutHopLimit: with the token PUT's answer dropped, a token request
// times out while metadata GETs are still answered (401 without a token).
func TestIMDSPutHopLimit(t *testing.T) {
	r := Start(t, testWorld(t), Options{})
	r.E.SetFaults("imds", Faults{PutHopLimitExceeded: true})
	client := &http.Client{Timeout: 300 * time.Millisecond}
	req, _ := http.NewRequest(http.MethodPut, r.IMDSURL(nitroID)+"/latest/api/token", nil)
	req.Header.Set("X-aws-ec2-metadata-token-ttl-seconds", "60")
	if resp, err := client.Do(req); err == nil {
		resp.Body.Close()
		t.Fatalf("token PUT answered %d, want no answer", resp.StatusCode)
	}
	resp, err := client.Get(r.IMDSURL(nitroID) + "/latest/meta-data/instance-id")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("GET without a token = %d, want 401", resp.StatusCode)
	}
	if err := validFaults("ec2", Faults{PutHopLimitExceeded: true}); err == nil {
		t.Error("putHopLimitExceeded accepted for ec2")
	}
}

// TestLoseAnswer: with loseAnswerRate the emulator does what was asked and
// then resets the connection. The attach is made although the caller hears
// nothing; the SDK's retry of it is answered VolumeInUse, not attached again.
func TestLoseAnswer(t *testing.T) {
	r := Start(t, testWorld(t), Options{})
	cfg := fastRetries(sdkConfig(t, r, nitroID))
	r.E.SetFaults("ec2", Faults{LoseAnswerRate: 1, Actions: []string{"AttachVolume"}, Limit: 1})
	_, err := cloud.NewEC2(cfg).AttachVolume(ctx(t), &ec2.AttachVolumeInput{VolumeId: aws.String(volA), InstanceId: aws.String(nitroID), Device: aws.String("/dev/xvdu")})
	if apiCode(err) != "VolumeInUse" {
		t.Fatalf("attach whose first answer was lost = %v, want the retry answered VolumeInUse", err)
	}
	if vs, _ := r.E.VolumeStatus(volA); vs.InstanceID != nitroID || vs.Device != "/dev/xvdu" {
		t.Errorf("volume after the lost answer: %+v, want attached to %s as /dev/xvdu", vs, nitroID)
	}
	if n := r.E.Calls("ec2", "AttachVolume"); n != 2 {
		t.Errorf("%d AttachVolume requests, want 2 (the lost one and the SDK's retry)", n)
	}

	// Every answer lost: the put is stored, the caller is told the connection broke.
	r.E.SetFaults("s3", Faults{LoseAnswerRate: 1, Actions: []string{"PutObject"}})
	_, err = cloud.NewS3(cfg).PutObject(ctx(t), &s3.PutObjectInput{Bucket: aws.String("state"), Key: aws.String("lost/answer"), Body: strings.NewReader("kept")})
	if err == nil || !(strings.Contains(err.Error(), "connection reset") || strings.Contains(err.Error(), "EOF")) {
		t.Fatalf("put with every answer lost = %v, want a reset connection", err)
	}
	r.E.SetFaults("s3", Faults{})
	out, err := cloud.NewS3(cfg).GetObject(ctx(t), &s3.GetObjectInput{Bucket: aws.String("state"), Key: aws.String("lost/answer")})
	if err != nil {
		t.Fatalf("the put whose answers were lost was not stored: %v", err)
	}
	out.Body.Close()

	if err := validFaults("imds", Faults{LoseAnswerRate: 1}); err == nil {
		t.Error("loseAnswerRate accepted for imds, whose calls change nothing")
	}
}
