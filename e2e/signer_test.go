//go:build e2e

package e2e

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials/ec2rolecreds"
	"github.com/aws/aws-sdk-go-v2/feature/ec2/imds"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/smithy-go"

	"github.com/nodeagent/nodeagent/awsemu"
	"github.com/nodeagent/nodeagent/cloud"
	"github.com/nodeagent/nodeagent/pki"
)

// assertWorkerSigned: the worker holds no CA key, its own instance profile is
// refused the CA key by the (emulated) IAM policy while it may read the CA
// certificate, it proved itself through STS, and a master's node signer
// issued its credentials.
func assertWorkerSigned(t *testing.T, ctx context.Context, h *haLab, worker *haNode, masters []*haNode) {
	t.Helper()
	if _, err := os.Stat(worker.M.Path(pki.DefaultPaths().CAKey)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the worker has a CA key file: %v", err)
	}
	s3c := workerS3(t, h, worker.InstanceID)
	get := func(key string) error {
		out, err := s3c.GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String(haStateBkt), Key: aws.String(haCluster + "/" + key)})
		if err == nil {
			out.Body.Close()
		}
		return err
	}
	var ae smithy.APIError
	if err := get(cloud.CAKeyKey); !errors.As(err, &ae) || ae.ErrorCode() != "AccessDenied" {
		t.Errorf("the worker's instance profile reading %s: %v, want AccessDenied", cloud.CAKeyKey, err)
	}
	if err := get(cloud.CACertKey); err != nil {
		t.Errorf("the worker's instance profile reading %s: %v", cloud.CACertKey, err)
	}
	if n := h.env.Emu.Calls(awsemu.ServiceSTS, "GetCallerIdentity"); n < 1 {
		t.Errorf("STS GetCallerIdentity was called %d times, want the signer's check", n)
	}
	var issued bool
	for _, m := range masters {
		out, _, _ := m.M.Exec(ctx, nil, "journalctl", "--no-pager", "-u", "nodeagent.service", "--grep", "issued node credentials")
		if strings.Contains(string(out), worker.InstanceID) {
			issued = true
		}
	}
	if !issued {
		t.Errorf("no master's journal says it issued node credentials to %s", worker.InstanceID)
	}
}

// workerS3 is an S3 client signing with the worker's own instance-profile
// credentials (from its IMDS), over the emulator served on this host.
func workerS3(t *testing.T, h *haLab, instanceID string) *s3.Client {
	t.Helper()
	awsSrv := httptest.NewServer(h.env.Emu.Handler())
	t.Cleanup(awsSrv.Close)
	imdsSrv := httptest.NewServer(h.env.Emu.IMDSHandler(instanceID))
	t.Cleanup(imdsSrv.Close)
	md := imds.New(imds.Options{Endpoint: imdsSrv.URL})
	cfg := aws.Config{Region: awsemu.DefaultRegion, BaseEndpoint: aws.String(awsSrv.URL),
		Credentials: aws.NewCredentialsCache(ec2rolecreds.New(func(o *ec2rolecreds.Options) { o.Client = md }))}
	return s3.NewFromConfig(cfg, func(o *s3.Options) { o.UsePathStyle = true })
}

// renewWhileMasterDown takes the worker's kubelet certificate away while a
// master is down: its daemon's next reconcile asks the signers again and a
// living master signs. The returned check waits for the new certificate and
// that kubelet was not restarted.
func renewWhileMasterDown(t *testing.T, ctx context.Context, worker *haNode) (check func()) {
	t.Helper()
	paths := pki.DefaultPaths()
	old := certSerial(t, worker.M.Path(paths.KubeletClientCert))
	pid := kubeletPID(t, ctx, worker)
	for _, p := range []string{paths.KubeletClientCert, paths.KubeletClientKey} {
		if err := os.Remove(worker.M.Path(p)); err != nil {
			t.Fatal(err)
		}
	}
	removed := time.Now()
	return func() {
		t.Helper()
		eventually(t, 3*time.Minute, "the worker's kubelet certificate issued again", func() (bool, string) {
			if _, err := os.Stat(worker.M.Path(paths.KubeletClientKey)); err != nil {
				return false, err.Error()
			}
			s := certSerial(t, worker.M.Path(paths.KubeletClientCert))
			return s != "" && s != old, "serial " + s
		})
		// Checked once the replacement master is ready: an upper bound.
		t.Logf("FIGURE worker certificate re-issued with a master down: within %s of its removal (the daemon's reconcile runs each minute)", time.Since(removed).Round(time.Second))
		if now := kubeletPID(t, ctx, worker); now != pid {
			t.Errorf("kubelet restarted (pid %s → %s) for a new certificate", pid, now)
		}
	}
}

func certSerial(t *testing.T, path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		return ""
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		return ""
	}
	return c.SerialNumber.String()
}

func kubeletPID(t *testing.T, ctx context.Context, n *haNode) string {
	t.Helper()
	out, errOut, err := n.M.Exec(ctx, nil, "systemctl", "show", "-p", "MainPID", "--value", "kubelet.service")
	if err != nil {
		t.Fatalf("kubelet pid: %v %s", err, errOut)
	}
	return strings.TrimSpace(string(out))
}
