package signer_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/credentials/ec2rolecreds"
	"github.com/aws/aws-sdk-go-v2/feature/ec2/imds"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/nodeagent/nodeagent/awsemu"
	"github.com/nodeagent/nodeagent/cloud"
	"github.com/nodeagent/nodeagent/iam"
	"github.com/nodeagent/nodeagent/internal/fsutil"
	"github.com/nodeagent/nodeagent/pki"
	"github.com/nodeagent/nodeagent/signer"
)

const (
	cluster    = "proyecto.k8s.local"
	stateStore = "s3://state/" + cluster
	worker     = "i-0a0000000000000a1"
	neighbour  = "i-0a0000000000000a2"
	stranger   = "i-0a0000000000000b1" // a node of another cluster
	gone       = "i-0a0000000000000c1" // terminated after it got its credentials
	master1    = "i-0a0000000000000d1"
	master2    = "i-0a0000000000000d2"
)

// lab is one emulated account with a cluster's instances, each with its own
// instance-profile credentials under the shipped IAM policies, and the state
// store split into what nodes and what masters may read.
type lab struct {
	emu    *awsemu.Running
	caCert []byte
	logs   *syncBuffer
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func instanceIP(id string) string {
	return map[string]string{worker: "10.0.1.11", neighbour: "10.0.1.12", stranger: "10.0.1.13", gone: "10.0.1.14", master1: "10.0.0.11", master2: "10.0.0.12"}[id]
}

func nodeName(id string) string {
	return "ip-" + strings.ReplaceAll(instanceIP(id), ".", "-") + ".ec2.internal"
}

func newLab(t testing.TB) *lab {
	t.Helper()
	caCert, caKey, err := pki.GenerateCA("kubernetes-ca", 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	policies := map[string]string{}
	for _, role := range []string{iam.Masters, iam.Nodes} {
		if policies[role], err = iam.Policy(role, stateStore, "s3://assets"); err != nil {
			t.Fatal(err)
		}
	}
	tags := func(c string) map[string]string {
		return map[string]string{"KubernetesCluster": c, "kubernetes.io/cluster/" + c: "owned"}
	}
	inst := func(id, role, c string) awsemu.Instance {
		return awsemu.Instance{ID: id, PrivateIP: instanceIP(id), InstanceProfile: role, Tags: tags(c)}
	}
	world := &awsemu.World{
		Instances: []awsemu.Instance{
			inst(master1, iam.Masters, cluster), inst(master2, iam.Masters, cluster),
			inst(worker, iam.Nodes, cluster), inst(neighbour, iam.Nodes, cluster), inst(gone, iam.Nodes, cluster),
			inst(stranger, iam.Nodes, "other.k8s.local"),
		},
		Buckets: map[string]map[string]string{"state": {
			cluster + "/" + cloud.CACertKey:     string(caCert),
			cluster + "/" + cloud.CAKeyKey:      string(caKey),
			cluster + "/nodeagent/cluster.yaml": "apiVersion: nodeagent.io/v1alpha1\nkind: NodeConfig\nspec: {}\n",
		}},
		Policies: policies,
	}
	return &lab{emu: awsemu.Start(t, world, awsemu.Options{}), caCert: caCert, logs: &syncBuffer{}}
}

// instanceConfig is the SDK configuration a process on the instance has: the
// emulator's endpoint and the instance profile's credentials from IMDS.
func (l *lab) instanceConfig(id string) aws.Config {
	md := imds.New(imds.Options{Endpoint: l.emu.IMDSURL(id)})
	return aws.Config{
		Region: awsemu.DefaultRegion, BaseEndpoint: aws.String(l.emu.URL),
		Credentials: aws.NewCredentialsCache(ec2rolecreds.New(func(o *ec2rolecreds.Options) { o.Client = md })),
	}
}

// rootConfig signs with the account's own key pair: not an instance profile.
func (l *lab) rootConfig() aws.Config {
	return aws.Config{
		Region: awsemu.DefaultRegion, BaseEndpoint: aws.String(l.emu.URL),
		Credentials: credentials.NewStaticCredentialsProvider(awsemu.DefaultAccessKeyID, awsemu.DefaultSecretAccessKey, ""),
	}
}

func (l *lab) store(cfg aws.Config) *cloud.StateStore {
	s, err := cloud.NewStateStore(s3.NewFromConfig(cfg, func(o *s3.Options) { o.UsePathStyle = true }), stateStore)
	if err != nil {
		panic(err)
	}
	return s
}

type storeCA struct{ s *cloud.StateStore }

func (c storeCA) Load(ctx context.Context) ([]byte, []byte, error) { return c.s.CA(ctx) }

// startSigner runs a master's signer, as its daemon does, on a loopback port.
func (l *lab) startSigner(t testing.TB, id string, o signer.ServerOptions) (addr string, stop func()) {
	t.Helper()
	cfg := l.instanceConfig(id)
	sts, err := signer.STSEndpoint(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	o.ClusterName, o.CA, o.EC2, o.STSEndpoint = cluster, storeCA{l.store(cfg)}, ec2.NewFromConfig(cfg), sts
	o.Log = slog.New(slog.NewTextHandler(l.logs, nil)).With("master", id)
	srv, err := signer.NewServer(o)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(ctx, ln); err != nil {
			t.Errorf("signer %s: %v", id, err)
		}
	}()
	stop = func() { cancel(); <-done }
	t.Cleanup(stop)
	return ln.Addr().String(), stop
}

func static(addrs ...string) func(context.Context) ([]string, error) {
	return func(context.Context) ([]string, error) { return addrs, nil }
}

func (l *lab) client(cfg aws.Config, addrs ...string) *signer.Client {
	return &signer.Client{ClusterName: cluster, Presign: signer.AWSPresigner(cfg), Endpoints: static(addrs...), Timeout: 5 * time.Second}
}

func request(t testing.TB, id string) signer.Request {
	t.Helper()
	_, kpub, err := pki.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	_, ppub, err := pki.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	return signer.Request{NodeName: nodeName(id), NodeIP: instanceIP(id), KubeletPublicKey: string(kpub), KubeProxyPublicKey: string(ppub)}
}

// TestWorkerGetsCredentialsFromMaster: a worker whose instance profile may not
// read the CA key (the shipped nodes policy, enforced by the emulator) gets
// its kubelet and kube-proxy certificates from a master's signer through the
// pki phase, for its own name and IP; the kubelet certificate is accepted by a
// server that verifies clients against the cluster CA, as the API server does.
func TestWorkerGetsCredentialsFromMaster(t *testing.T) {
	l := newLab(t)
	ctx := context.Background()
	wcfg := l.instanceConfig(worker)
	wstore := l.store(wcfg)
	if _, _, err := wstore.CA(ctx); err == nil || !strings.Contains(err.Error(), "AccessDenied") {
		t.Fatalf("a worker read the CA key: %v", err)
	}
	if _, err := wstore.Get(ctx, cloud.CACertKey); err != nil {
		t.Fatalf("a worker cannot read the CA certificate: %v", err)
	}
	addr, _ := l.startSigner(t, master1, signer.ServerOptions{})

	root := t.TempDir()
	ph := signer.NewPhase(signer.PhaseOptions{
		Root: fsutil.Root(root), ClusterName: cluster, NodeName: nodeName(worker), NodeIP: instanceIP(worker),
		CACert: func(ctx context.Context) ([]byte, error) { return wstore.Get(ctx, cloud.CACertKey) },
		Client: l.client(wcfg, addr),
	})
	changes, err := ph.Check(ctx)
	if err != nil || len(changes) != 4 {
		t.Fatalf("first check: %v %v, want ca.crt, the kubelet and kube-proxy certificates and kube-proxy's kubeconfig", changes, err)
	}
	if err := ph.Act(ctx); err != nil {
		t.Fatalf("act: %v\n%s", err, l.logs)
	}
	if err := ph.Verify(ctx); err != nil {
		t.Fatal(err)
	}
	if changes, err := ph.Check(ctx); err != nil || len(changes) != 0 {
		t.Fatalf("re-check after act: %v %v, want converged", changes, err)
	}
	paths := pki.DefaultPaths()
	cert := readCert(t, filepath.Join(root, paths.KubeletClientCert))
	if cert.Subject.CommonName != "system:node:"+nodeName(worker) || len(cert.Subject.Organization) != 1 || cert.Subject.Organization[0] != "system:nodes" {
		t.Errorf("kubelet certificate subject %s", cert.Subject)
	}
	if left := time.Until(cert.NotAfter); left > signer.DefaultValidity || left < signer.DefaultValidity-time.Minute {
		t.Errorf("kubelet certificate lives %s more, want the default %s", left, signer.DefaultValidity)
	}
	if c := readCert(t, filepath.Join(root, paths.KubeProxyClientCert)); c.Subject.CommonName != "system:kube-proxy" {
		t.Errorf("kube-proxy certificate subject %s", c.Subject)
	}
	kc, err := os.ReadFile(filepath.Join(root, paths.KubeProxyConf))
	if err != nil || !strings.Contains(string(kc), "client-certificate: "+paths.KubeProxyClientCert) {
		t.Errorf("kube-proxy's kubeconfig does not name its renewable certificate file: %v\n%s", err, kc)
	}
	if fi, err := os.Stat(filepath.Join(root, paths.KubeletClientKey)); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("kubelet key: %v %v, want mode 0600", fi, err)
	}

	// The API server's view: a client certificate verified against the CA.
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(l.caCert)
	api := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte(r.TLS.PeerCertificates[0].Subject.CommonName))
	}))
	api.TLS = &tls.Config{ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: pool}
	api.StartTLS()
	defer api.Close()
	pair, err := tls.LoadX509KeyPair(filepath.Join(root, paths.KubeletClientCert), filepath.Join(root, paths.KubeletClientKey))
	if err != nil {
		t.Fatal(err)
	}
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{Certificates: []tls.Certificate{pair}, InsecureSkipVerify: true}}}
	resp, err := hc.Get(api.URL)
	if err != nil {
		t.Fatalf("kubelet's certificate refused by a CA-verifying server: %v", err)
	}
	resp.Body.Close()
	if !strings.Contains(l.logs.String(), "issued node credentials") {
		t.Errorf("the signer logged no issue:\n%s", l.logs)
	}
}

// TestSignerRefusals: each request the signer must turn down gets a 4xx with
// the reason, the reason is in the signer's log, and nothing is issued.
func TestSignerRefusals(t *testing.T) {
	l := newLab(t)
	ctx := context.Background()
	addr, _ := l.startSigner(t, master1, signer.ServerOptions{})
	// Credentials fetched before the instance is terminated.
	goneCfg := l.instanceConfig(gone)
	if _, err := goneCfg.Credentials.Retrieve(ctx); err != nil {
		t.Fatal(err)
	}
	l.emu.E.SetInstanceState(gone, "terminated")

	wcfg := l.instanceConfig(worker)
	// A presigned identity captured (or kept) for later.
	captured := func() signer.Presigner {
		var id *signer.Identity
		return func(ctx context.Context, hash string) (*signer.Identity, error) {
			if id == nil {
				var err error
				if id, err = signer.AWSPresigner(wcfg)(ctx, hash); err != nil {
					return nil, err
				}
			}
			return id, nil
		}
	}
	cases := []struct {
		name   string
		client func() *signer.Client
		req    signer.Request
		before func()
		after  func()
		reason string
	}{
		{
			name:   "another instance asks for this node's name",
			client: func() *signer.Client { return l.client(l.instanceConfig(neighbour), addr) },
			req:    request(t, worker),
			reason: "is node " + nodeName(neighbour) + `, not "` + nodeName(worker) + `"`,
		},
		{
			name:   "a request past its expiry",
			client: func() *signer.Client { return l.client(wcfg, addr) },
			req:    request(t, worker),
			before: func() { l.emu.E.SetClock(func() time.Time { return time.Now().Add(16 * time.Minute) }) },
			after:  func() { l.emu.E.SetClock(nil) },
			reason: "STS refused the identity",
		},
		{
			name: "a body changed after signing",
			client: func() *signer.Client {
				orig := request(t, worker)
				c := l.client(wcfg, addr)
				c.Presign = func(ctx context.Context, _ string) (*signer.Identity, error) {
					b, err := json.Marshal(orig)
					if err != nil {
						return nil, err
					}
					return signer.AWSPresigner(wcfg)(ctx, signer.BodyHash(b))
				}
				return c
			},
			req:    request(t, worker),
			reason: "request body changed after signing",
		},
		{
			name:   "an instance of another cluster",
			client: func() *signer.Client { return l.client(l.instanceConfig(stranger), addr) },
			req:    request(t, stranger),
			reason: `belongs to cluster "other.k8s.local"`,
		},
		{
			name:   "a terminated instance",
			client: func() *signer.Client { return l.client(goneCfg, addr) },
			req:    request(t, gone),
			reason: "is terminated, not running",
		},
		{
			name:   "credentials that are not an instance profile",
			client: func() *signer.Client { return l.client(l.rootConfig(), addr) },
			req:    request(t, worker),
			reason: "are not an instance profile's",
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if tc.before != nil {
				tc.before()
			}
			if tc.after != nil {
				defer tc.after()
			}
			resp, err := tc.client().Get(ctx, l.caCert, tc.req)
			assertRefused(t, l, resp, err, tc.reason)
		})
	}

	t.Run("a replayed request within its expiry", func(t *testing.T) {
		req := request(t, worker)
		c := l.client(wcfg, addr)
		c.Presign = captured()
		if _, err := c.Get(ctx, l.caCert, req); err != nil {
			t.Fatalf("first use: %v", err)
		}
		issued := strings.Count(l.logs.String(), "issued node credentials")
		resp, err := c.Get(ctx, l.caCert, req)
		assertRefused(t, l, resp, err, "identity replayed")
		if n := strings.Count(l.logs.String(), "issued node credentials"); n != issued {
			t.Errorf("the replay was issued credentials")
		}
	})
	if n := strings.Count(l.logs.String(), "issued node credentials"); n != 1 {
		t.Errorf("%d issues, want only the one legitimate request's:\n%s", n, l.logs)
	}
}

func assertRefused(t *testing.T, l *lab, resp *signer.Response, err error, reason string) {
	t.Helper()
	var rf *signer.Refused
	if !errors.As(err, &rf) || rf.Status < 400 || rf.Status >= 500 {
		t.Fatalf("got %+v, %v; want a 4xx refusal", resp, err)
	}
	if resp != nil {
		t.Errorf("a refusal came with credentials")
	}
	if !strings.Contains(rf.Reason, reason) {
		t.Errorf("refusal %q does not say %q", rf.Reason, reason)
	}
	if !strings.Contains(l.logs.String(), strings.ReplaceAll(reason, `"`, `\"`)) {
		t.Errorf("the signer's log does not say %q:\n%s", reason, l.logs)
	}
}

// TestRenewalAndAnyMaster: with short lifetimes the worker's phase renews
// before expiry (new certificate, same files, later end), and renewal works
// through whichever master answers: the first one down, the second signs.
func TestRenewalAndAnyMaster(t *testing.T) {
	l := newLab(t)
	ctx := context.Background()
	var mu sync.Mutex
	now := time.Now()
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	addr1, stop1 := l.startSigner(t, master1, signer.ServerOptions{Validity: time.Hour, Now: clock})
	addr2, _ := l.startSigner(t, master2, signer.ServerOptions{Validity: time.Hour, Now: clock})

	wcfg := l.instanceConfig(worker)
	wstore := l.store(wcfg)
	root := t.TempDir()
	ph := signer.NewPhase(signer.PhaseOptions{
		Root: fsutil.Root(root), ClusterName: cluster, NodeName: nodeName(worker), NodeIP: instanceIP(worker),
		CACert: func(ctx context.Context) ([]byte, error) { return wstore.Get(ctx, cloud.CACertKey) },
		Client: l.client(wcfg, addr1, addr2), Now: clock, Patience: 10 * time.Second,
	})
	if err := ph.Act(ctx); err != nil {
		t.Fatal(err)
	}
	certPath := filepath.Join(root, pki.DefaultPaths().KubeletClientCert)
	first := readCert(t, certPath)

	advance(30 * time.Minute)
	if changes, err := ph.Check(ctx); err != nil || len(changes) != 0 {
		t.Fatalf("half-way through its life: %v %v, want nothing to renew yet", changes, err)
	}
	advance(15 * time.Minute) // less than a third of 65 minutes (5 backdated) left
	changes, err := ph.Check(ctx)
	if err != nil || len(changes) != 2 || !strings.Contains(changes[0].Detail, "due for renewal") {
		t.Fatalf("with a quarter of its life left: %v %v, want the kubelet and kube-proxy certificates renewed", changes, err)
	}
	stop1() // one master down: the other signs
	if err := ph.Act(ctx); err != nil {
		t.Fatalf("renew with master 1 down: %v", err)
	}
	second := readCert(t, certPath)
	if second.SerialNumber.Cmp(first.SerialNumber) == 0 || !second.NotAfter.After(first.NotAfter) {
		t.Errorf("not renewed: serial %s → %s, notAfter %s → %s", first.SerialNumber, second.SerialNumber, first.NotAfter, second.NotAfter)
	}
	if !strings.Contains(l.logs.String(), "master="+master2) || !strings.Contains(l.logs.String(), "issued node credentials") {
		t.Errorf("master 2 did not sign:\n%s", l.logs)
	}
	if err := ph.Verify(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestNoSignerWaits: with no master up, the phase says it waits (the daemon
// retries), it does not fail, and writes no certificate.
func TestNoSignerWaits(t *testing.T) {
	l := newLab(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close()
	wcfg := l.instanceConfig(worker)
	wstore := l.store(wcfg)
	root := t.TempDir()
	ph := signer.NewPhase(signer.PhaseOptions{
		Root: fsutil.Root(root), ClusterName: cluster, NodeName: nodeName(worker), NodeIP: instanceIP(worker),
		CACert: func(ctx context.Context) ([]byte, error) { return wstore.Get(ctx, cloud.CACertKey) },
		Client: l.client(wcfg, dead), Patience: 2 * time.Second,
	})
	err = ph.Act(context.Background())
	if err == nil || !strings.Contains(err.Error(), "waiting") {
		t.Fatalf("act with no signer: %v, want waiting", err)
	}
	if _, err := os.Stat(filepath.Join(root, pki.DefaultPaths().KubeletClientCert)); err == nil {
		t.Error("a certificate was written with no signer")
	}
}

func readCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return parseCert(t, b)
}

func parseCert(t *testing.T, b []byte) *x509.Certificate {
	t.Helper()
	blk, _ := pem.Decode(b)
	if blk == nil {
		t.Fatalf("no PEM certificate in %q", b)
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func signerOptions() signer.ServerOptions { return signer.ServerOptions{} }
