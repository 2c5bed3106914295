package awsemu

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/xml"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	"github.com/aws/aws-sdk-go-v2/service/autoscaling"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/nodeagent/nodeagent/cloud"
)

func TestBadCredentialsRejected(t *testing.T) {
	r := Start(t, testWorld(t), Options{})
	cases := []struct {
		name, akid, secret       string
		wantEC2, wantS3, wantASG string
	}{
		{"wrong secret", DefaultAccessKeyID, "not-the-secret", "AuthFailure", "SignatureDoesNotMatch", "SignatureDoesNotMatch"},
		{"unknown access key", "AKIDUNKNOWN", DefaultSecretAccessKey, "AuthFailure", "InvalidAccessKeyId", "InvalidClientTokenId"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r.Setenv(t, "")
			t.Setenv("AWS_ACCESS_KEY_ID", tc.akid)
			t.Setenv("AWS_SECRET_ACCESS_KEY", tc.secret)
			cfg, err := cloud.LoadConfig(ctx(t))
			if err != nil {
				t.Fatal(err)
			}
			_, err = cloud.NewEC2(cfg).DescribeInstances(ctx(t), &ec2.DescribeInstancesInput{})
			if apiCode(err) != tc.wantEC2 {
				t.Errorf("EC2: %v, want %s", err, tc.wantEC2)
			}
			_, err = cloud.NewS3(cfg).GetObject(ctx(t), &s3.GetObjectInput{Bucket: aws.String("state"), Key: aws.String("assets/kubelet")})
			if apiCode(err) != tc.wantS3 {
				t.Errorf("S3: %v, want %s", err, tc.wantS3)
			}
			_, err = cloud.NewAutoScaling(cfg).DescribeAutoScalingInstances(ctx(t), &autoscaling.DescribeAutoScalingInstancesInput{})
			if apiCode(err) != tc.wantASG {
				t.Errorf("Auto Scaling: %v, want %s", err, tc.wantASG)
			}
		})
	}
}

// signed builds a request signed by the SDK's own SigV4 signer, then lets the
// test tamper with it.
func signed(t *testing.T, r *Running, service, method, url, body string, at time.Time, tamper func(*http.Request)) *http.Response {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx(t), method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if body != "" && service != ServiceS3 {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded; charset=utf-8")
	}
	sum := sha256.Sum256([]byte(body))
	hash := hex.EncodeToString(sum[:])
	if service == ServiceS3 {
		req.Header.Set("X-Amz-Content-Sha256", hash)
	}
	creds := aws.Credentials{AccessKeyID: DefaultAccessKeyID, SecretAccessKey: DefaultSecretAccessKey}
	if err := v4.NewSigner().SignHTTP(context.Background(), creds, req, hash, service, DefaultRegion, at); err != nil {
		t.Fatal(err)
	}
	if tamper != nil {
		tamper(req)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	return resp
}

func errorCode(t *testing.T, resp *http.Response) string {
	t.Helper()
	b, _ := io.ReadAll(resp.Body)
	var doc struct {
		Code   string `xml:"Code"`
		Errors struct {
			Code string `xml:"Error>Code"`
		} `xml:"Errors"`
		Error struct {
			Code string `xml:"Code"`
		} `xml:"Error"`
	}
	if err := xml.Unmarshal(b, &doc); err != nil {
		t.Fatalf("error body %q: %v", b, err)
	}
	for _, c := range []string{doc.Code, doc.Errors.Code, doc.Error.Code} {
		if c != "" {
			return c
		}
	}
	t.Fatalf("no error code in %q", b)
	return ""
}

func TestSignatureVerification(t *testing.T) {
	r := Start(t, testWorld(t), Options{})
	const describe = "Action=DescribeInstances&Version=2016-11-15"
	now := time.Now()
	cases := []struct {
		name, service, method, path, body string
		at                                time.Time
		tamper                            func(*http.Request)
		wantStatus                        int
		wantCode                          string
	}{
		{name: "ec2 signed", service: "ec2", method: "POST", path: "/", body: describe, at: now, wantStatus: 200},
		{name: "ec2 unsigned", service: "ec2", method: "POST", path: "/", body: describe, at: now,
			tamper: func(r *http.Request) { r.Header.Del("Authorization") }, wantStatus: 401, wantCode: "AuthFailure"},
		{name: "ec2 body changed after signing", service: "ec2", method: "POST", path: "/", body: describe, at: now,
			tamper: func(r *http.Request) {
				b := "Action=DescribeVolumes&Version=2016-11-15"
				r.Body, r.ContentLength = io.NopCloser(strings.NewReader(b)), int64(len(b))
			}, wantStatus: 401, wantCode: "AuthFailure"},
		{name: "ec2 signed header changed", service: "ec2", method: "POST", path: "/", body: describe, at: now,
			tamper: func(r *http.Request) { r.Header.Set("Content-Type", "application/x-www-form-urlencoded") }, wantStatus: 401, wantCode: "AuthFailure"},
		{name: "ec2 clock skew", service: "ec2", method: "POST", path: "/", body: describe, at: now.Add(-20 * time.Minute), wantStatus: 400, wantCode: "RequestExpired"},
		{name: "s3 signed", service: "s3", method: "GET", path: "/state/assets/kubelet", at: now, wantStatus: 200},
		{name: "s3 unsigned", service: "s3", method: "GET", path: "/state/assets/kubelet", at: now,
			tamper: func(r *http.Request) { r.Header.Del("Authorization") }, wantStatus: 403, wantCode: "AccessDenied"},
		{name: "s3 other key than signed", service: "s3", method: "GET", path: "/state/assets/kubelet", at: now,
			tamper: func(r *http.Request) { r.URL.Path = "/state/proyecto.k8s.local/pki/ca.key" }, wantStatus: 403, wantCode: "SignatureDoesNotMatch"},
		{name: "s3 payload differs from its hash", service: "s3", method: "PUT", path: "/state/x", body: "signed", at: now,
			tamper: func(r *http.Request) { r.Body, r.ContentLength = io.NopCloser(strings.NewReader("forged")), 6 }, wantStatus: 400, wantCode: "XAmzContentSHA256Mismatch"},
		{name: "s3 wrong region in scope", service: "s3", method: "GET", path: "/state/assets/kubelet", at: now,
			tamper: func(r *http.Request) {
				r.Header.Set("Authorization", strings.Replace(r.Header.Get("Authorization"), "/us-east-1/", "/eu-west-1/", 1))
			}, wantStatus: 400, wantCode: "AuthorizationHeaderMalformed"},
		{name: "ec2 action not emulated", service: "ec2", method: "POST", path: "/", body: "Action=RunInstances&Version=2016-11-15", at: now, wantStatus: 400, wantCode: "InvalidAction"},
		{name: "ec2 wrong API version", service: "ec2", method: "POST", path: "/", body: "Action=DescribeInstances&Version=2013-01-01", at: now, wantStatus: 400, wantCode: "InvalidParameterValue"},
		{name: "autoscaling unsigned", service: "autoscaling", method: "POST", path: "/", body: "Action=DescribeAutoScalingInstances&Version=2011-01-01", at: now,
			tamper: func(r *http.Request) { r.Header.Del("Authorization") }, wantStatus: 403, wantCode: "MissingAuthenticationToken"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			resp := signed(t, r, tc.service, tc.method, r.URL+tc.path, tc.body, tc.at, tc.tamper)
			if resp.StatusCode != tc.wantStatus {
				b, _ := io.ReadAll(resp.Body)
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tc.wantStatus, b)
			}
			if tc.wantCode != "" {
				if got := errorCode(t, resp); got != tc.wantCode {
					t.Fatalf("code %s, want %s", got, tc.wantCode)
				}
			}
		})
	}
}

// TestSigV4Vector checks the verifier against the "get-vanilla" case of AWS's
// published SigV4 test suite, independent of the SDK's signer.
func TestSigV4Vector(t *testing.T) {
	e, err := New(&World{}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	e.SetClock(func() time.Time { return time.Date(2015, 8, 30, 12, 36, 0, 0, time.UTC) })
	req, _ := http.NewRequest("GET", "http://example.amazonaws.com/", nil)
	req.Host = "example.amazonaws.com"
	req.Header.Set("X-Amz-Date", "20150830T123600Z")
	req.Header.Set("Authorization", "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31")
	s, ok, err := parseSigV4(req)
	if !ok || err != nil {
		t.Fatalf("parse: %v %v", ok, err)
	}
	if _, af := e.verify(req, s, nil); af != nil {
		t.Fatalf("published vector rejected: %s", af.message)
	}
	req.Header.Set("X-Amz-Date", "20150830T123601Z")
	if _, af := e.verify(req, s, nil); af == nil || af.kind != authBadSignature {
		t.Fatalf("altered date accepted: %+v", af)
	}
}

func TestPresignedURL(t *testing.T) {
	r := Start(t, testWorld(t), Options{})
	p := s3.NewPresignClient(cloud.NewS3(sdkConfig(t, r, "")))
	req, err := p.PresignGetObject(ctx(t), &s3.GetObjectInput{Bucket: aws.String("state"), Key: aws.String("assets/kubelet")}, s3.WithPresignExpires(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.Get(req.URL)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(b) != "kubelet-binary" {
		t.Fatalf("presigned GET: %d %q", resp.StatusCode, b)
	}
	resp, err = http.Get(strings.Replace(req.URL, "/assets/kubelet?", "/assets/other?", 1))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 403 {
		t.Fatalf("presigned URL for another key: %d, want 403", resp.StatusCode)
	}
}
