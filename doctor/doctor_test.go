package doctor

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"

	"github.com/nodeagent/nodeagent/awsemu"
	"github.com/nodeagent/nodeagent/cloud"
	"github.com/nodeagent/nodeagent/config"
	"github.com/nodeagent/nodeagent/gossip"
	"github.com/nodeagent/nodeagent/internal/fsutil"
	"github.com/nodeagent/nodeagent/internal/sntptest"
	"github.com/nodeagent/nodeagent/pki"
	"github.com/nodeagent/nodeagent/volumes"
)

func TestReportWorstAndExitCode(t *testing.T) {
	check := func(name string, r Result) Check {
		return Check{Name: name, Run: func(context.Context) []Finding {
			return []Finding{{Result: r, Message: name + " says " + string(r), Fix: "do x"}}
		}}
	}
	for _, tc := range []struct {
		results []Result
		worst   Result
		code    int
	}{
		{[]Result{OK, Skip}, Skip, 0},
		{[]Result{OK, Warn, Skip}, Warn, 1},
		{[]Result{Fail, Warn, OK}, Fail, 2},
	} {
		var cs []Check
		for i, r := range tc.results {
			cs = append(cs, check(string(rune('a'+i)), r))
		}
		rep := Run(context.Background(), "n", cs, time.Second)
		if rep.Worst != tc.worst || rep.ExitCode() != tc.code {
			t.Errorf("%v: worst %s exit %d, want %s %d", tc.results, rep.Worst, rep.ExitCode(), tc.worst, tc.code)
		}
		var table, js bytes.Buffer
		if err := rep.Write(&table, "table"); err != nil {
			t.Fatal(err)
		}
		if tc.worst == Fail && !strings.Contains(table.String(), "FAIL") || !strings.Contains(table.String(), "fix: do x") && tc.code > 0 {
			t.Errorf("table:\n%s", table.String())
		}
		if err := rep.Write(&js, "json"); err != nil {
			t.Fatal(err)
		}
		var back Report
		if err := json.Unmarshal(js.Bytes(), &back); err != nil || len(back.Findings) != len(tc.results) {
			t.Errorf("json does not read back: %v\n%s", err, js.String())
		}
	}
	if err := (Report{}).Write(&bytes.Buffer{}, "yaml"); err == nil {
		t.Error("an unknown format is accepted")
	}
}

// A check that hangs is cut off at its deadline and the report goes on.
func TestCheckDeadline(t *testing.T) {
	hang := Check{Name: "hang", Run: func(ctx context.Context) []Finding {
		<-ctx.Done()
		return fail("", "gave up: %v", ctx.Err())
	}}
	start := time.Now()
	rep := Run(context.Background(), "n", []Check{hang, Swap(fsutil.Root(t.TempDir()))}, 100*time.Millisecond)
	if time.Since(start) > 2*time.Second || len(rep.Findings) != 2 {
		t.Errorf("report %+v after %s", rep, time.Since(start))
	}
}

func TestClockOffsetAgainstSNTPServer(t *testing.T) {
	s, err := sntptest.Start("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	root := fsutil.Root(t.TempDir())
	server := net.JoinHostPort("127.0.0.1", itoa(s.Port()))
	want(t, run(t, Clock(root, server, 2*time.Second)), OK, "clock offset", server)
	s.SetOffset(300 * time.Millisecond)
	want(t, run(t, Clock(root, server, 2*time.Second)), Warn, "clock is 3", "behind")
	s.SetOffset(-5 * time.Minute)
	want(t, run(t, Clock(root, server, 2*time.Second)), Fail, "clock is 5m0s ahead")
	// timesyncd's word is read from its state file.
	want(t, run(t, Clock(root, server, 2*time.Second)), Warn, "no time sync daemon")
	writeFile(t, string(root), "/run/systemd/timesync/synchronized", "")
	want(t, run(t, Clock(root, server, 2*time.Second)), OK, "systemd-timesyncd reports")
	want(t, run(t, Clock(root, "127.0.0.1:1", 300*time.Millisecond)), Warn, "cannot measure the clock offset")
}

func itoa(i int) string { return strconv.Itoa(i) }

func emuWorld() *awsemu.World {
	tags := map[string]string{"KubernetesCluster": "doc.k8s.local", "kubernetes.io/cluster/doc.k8s.local": "owned"}
	etcd := func(name, val string) map[string]string {
		m := map[string]string{"k8s.io/role/master": "1", "k8s.io/etcd/" + name: val}
		for k, v := range tags {
			m[k] = v
		}
		return m
	}
	return &awsemu.World{
		Instances: []awsemu.Instance{
			{ID: "i-0d0c0000000000001", Type: "m5.large", AvailabilityZone: "us-east-1a", PrivateIP: "10.0.1.10", Tags: tags},
			{ID: "i-0d0c0000000000002", Type: "m5.large", AvailabilityZone: "us-east-1a", PrivateIP: "10.0.1.11", Tags: tags, State: "shutting-down"},
		},
		Volumes: []awsemu.Volume{
			{ID: "vol-0d0c0000000000001", AvailabilityZone: "us-east-1a", SizeMiB: 8, Tags: etcd("main", "a/a,b,c"), AttachedTo: "i-0d0c0000000000002"},
			{ID: "vol-0d0c0000000000002", AvailabilityZone: "us-east-1a", SizeMiB: 8, Tags: etcd("events", "a/a,b,c")},
		},
		Buckets: map[string]map[string]string{"state": {"doc.k8s.local/nodeagent/cluster.yaml": "{}\n"}},
	}
}

const self = "i-0d0c0000000000001"

func emuConfig(t *testing.T, r *awsemu.Running) aws.Config {
	t.Helper()
	r.Setenv(t, self)
	cfg, err := cloud.LoadConfig(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// The emulator drops the answer to IMDS token PUTs as a too-low hop limit does:
// doctor names the hop limit, not "IMDS down".
func TestIMDSHopLimit(t *testing.T) {
	r := awsemu.Start(t, emuWorld(), awsemu.Options{})
	url := r.IMDSURL(self)
	want(t, run(t, IMDS(url, 500*time.Millisecond)), OK, "IMDSv2 token")
	r.E.SetFaults("imds", awsemu.Faults{PutHopLimitExceeded: true})
	fs := run(t, IMDS(url, 500*time.Millisecond))
	want(t, fs, Fail, "never answered the token PUT", "hop limit")
	if !strings.Contains(fs[0].Fix, "--http-put-response-hop-limit 2") {
		t.Errorf("fix %q does not say how to raise the hop limit", fs[0].Fix)
	}
	want(t, run(t, IMDS("http://127.0.0.1:1", 300*time.Millisecond)), Fail, "does not answer")
}

func TestIdentity(t *testing.T) {
	r := awsemu.Start(t, emuWorld(), awsemu.Options{})
	fs := run(t, Identity(cloud.NewIMDS(emuConfig(t, r))))
	want(t, fs, OK, self, "us-east-1a")
	want(t, fs, OK, "credentials come from the environment")
}

// Credentials denied for a call the configuration needs are named with the call.
func TestPermissionsDenied(t *testing.T) {
	r := awsemu.Start(t, emuWorld(), awsemu.Options{})
	c := cloud.NewEC2(emuConfig(t, r))
	calls := []AWSCall{{Name: "ec2:DescribeVolumes", Call: func(ctx context.Context) error {
		_, err := c.DescribeVolumes(ctx, &ec2.DescribeVolumesInput{DryRun: aws.Bool(true)})
		return err
	}}}
	want(t, run(t, Permissions(calls)), OK, "ec2:DescribeVolumes allowed (dry run)")
	r.E.SetFaults("ec2", awsemu.Faults{Deny: []string{"DescribeVolumes"}})
	want(t, run(t, Permissions(calls)), Fail, "credentials denied for ec2:DescribeVolumes", "UnauthorizedOperation")

	store, err := cloud.NewStateStore(cloud.NewS3(emuConfig(t, r)), "s3://state/doc.k8s.local")
	if err != nil {
		t.Fatal(err)
	}
	want(t, run(t, StateStore("s3://state/doc.k8s.local", store)), OK, "readable")
	r.E.SetFaults("s3", awsemu.Faults{Deny: []string{"GetObject"}})
	want(t, run(t, StateStore("s3://state/doc.k8s.local", store)), Fail, "credentials denied for s3:GetObject s3://state/doc.k8s.local/nodeagent/cluster.yaml")
}

// A replaced master's volume still attached to the old instance leaves no free
// volume in the zone: doctor names the volume and where it is.
func TestEtcdVolumesNoFreeVolume(t *testing.T) {
	r := awsemu.Start(t, emuWorld(), awsemu.Options{})
	claim := volumes.NewClaimPhase(volumes.Options{
		EC2: cloud.NewEC2(emuConfig(t, r)), ClusterName: "doc.k8s.local", InstanceID: self, AvailabilityZone: "us-east-1a",
		EtcdClusters: []config.EtcdCluster{{Name: "main"}, {Name: "events"}},
	})
	fs := run(t, EtcdVolumes("us-east-1a", claim))
	want(t, fs, Fail, "etcd main: no free etcd volume in us-east-1a", "vol-0d0c0000000000001", "i-0d0c0000000000002")
	want(t, fs, OK, "etcd events: a free volume")
	want(t, run(t, EtcdVolumes("us-east-1a", nil)), Skip, "not a control plane")
}

// A peer running the ring refuses a node with another key: named as a key
// mismatch; the right key is accepted.
func TestGossipWrongKey(t *testing.T) {
	ip := net.ParseIP("127.0.0.1")
	key := []byte("0123456789abcdef")
	l, err := net.ListenTCP("tcp", &net.TCPAddr{IP: ip})
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	peer, err := gossip.Start(context.Background(), gossip.Config{ClusterName: "doc.k8s.local", NodeName: "peer-a", BindIP: ip, Port: port, SecretKey: key})
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Shutdown()
	opts := GossipOptions{Enabled: true, ClusterName: "doc.k8s.local", NodeName: "node-b", BindIP: ip, Port: port, Key: key,
		Peers: func(context.Context) ([]string, error) { return []string{"127.0.0.1"}, nil }}
	want(t, run(t, Gossip(opts)), OK, "accepted this node's gossip key")
	opts.Key = []byte("not-the-ring-key")
	want(t, run(t, Gossip(opts)), Fail, "gossip key mismatch", "127.0.0.1")
	opts.Peers = func(context.Context) ([]string, error) { return nil, nil }
	want(t, run(t, Gossip(opts)), OK, "no other running instance")
	want(t, run(t, Gossip(GossipOptions{})), Skip, "not a gossip cluster")
}

// A kubelet client certificate issued by the pki phase a year and a day ago,
// valid for a year, has expired; doctor names the file and the date.
func TestExpiredKubeletCertificate(t *testing.T) {
	root := fsutil.Root(t.TempDir())
	caCert, caKey, err := pki.GenerateCA("kubernetes", 10*365*24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, string(root), "/etc/kubernetes/pki/ca.crt", string(caCert))
	writeFile(t, string(root), "/ca/ca.key", string(caKey))
	issued := time.Now().Add(-366 * 24 * time.Hour)
	ph := pki.NewPhase(pki.Options{
		Root: root, CA: pki.FileCA{Root: root, CertFile: "/etc/kubernetes/pki/ca.crt", KeyFile: "/ca/ca.key"},
		ClusterName: "doc.example.com", NodeName: "ip-10-0-1-7.ec2.internal", NodeIP: net.ParseIP("10.0.1.7"),
		Role: config.RoleNode, Now: func() time.Time { return issued }, Validity: 365 * 24 * time.Hour,
	})
	if _, err := ph.Check(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := ph.Act(context.Background()); err != nil {
		t.Fatal(err)
	}
	dirs := []string{"/etc/kubernetes/pki", "/var/lib/kubelet/pki"}
	fs := run(t, Certificates(root, dirs, time.Now))
	want(t, fs, Fail, "/var/lib/kubelet/pki/kubelet-client.crt", "expired on "+issued.Add(365*24*time.Hour).UTC().Format("2006-01-02"))
	for _, f := range fs {
		if strings.Contains(f.Message, "ca.crt") {
			t.Errorf("the valid CA is reported: %+v", f)
		}
	}
	// A year and an hour on, it would still have a day left.
	day := run(t, Certificates(root, []string{"/var/lib/kubelet/pki"}, func() time.Time { return issued.Add(364 * 24 * time.Hour) }))
	want(t, day, Warn, "kubelet-client.crt", "expires on")
}

// A node signer's certificate lives a day and is renewed when a third is
// left: with 20 hours left it is fine, with 5 hours left renewal is not
// happening and doctor says so.
func TestShortLivedCertificate(t *testing.T) {
	root := fsutil.Root(t.TempDir())
	caCert, caKey, err := pki.GenerateCA("kubernetes", 365*24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	_, pubPEM, err := pki.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	pub, err := pki.ParsePublicKey(pubPEM)
	if err != nil {
		t.Fatal(err)
	}
	issued := time.Now()
	cert, err := pki.SignClientCert(caCert, caKey, pub, pki.ClientCertSpec{CN: "system:node:ip-10-0-1-7.ec2.internal", Orgs: []string{"system:nodes"}}, issued, 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, string(root), "/var/lib/kubelet/pki/kubelet-client.crt", string(cert))
	at := func(d time.Duration) func() time.Time { return func() time.Time { return issued.Add(d) } }
	want(t, run(t, Certificates(root, []string{"/var/lib/kubelet/pki"}, at(4*time.Hour))), OK, "1 certificate(s) valid")
	want(t, run(t, Certificates(root, []string{"/var/lib/kubelet/pki"}, at(19*time.Hour))), Warn, "kubelet-client.crt", "expires on")
}

// Files as the host has them: swap listed in /proc/swaps, a runtime whose
// cgroup driver is not kubelet's, a module that is not loaded.
func TestHostFiles(t *testing.T) {
	root := t.TempDir()
	r := fsutil.Root(root)
	writeFile(t, root, "/proc/swaps", "Filename\tType\tSize\tUsed\tPriority\n")
	want(t, run(t, Swap(r)), OK, "swap is off")
	writeFile(t, root, "/proc/swaps", "Filename\tType\tSize\tUsed\tPriority\n/swapfile  file  1048572  0  -2\n")
	want(t, run(t, Swap(r)), Fail, "swap is on (/swapfile)", "kubelet refuses")
	writeFile(t, root, KubeletConfigPath, "kind: KubeletConfiguration\nfailSwapOn: false\ncgroupDriver: systemd\n")
	want(t, run(t, Swap(r)), Warn, "failSwapOn: false")

	writeFile(t, root, "/sys/fs/cgroup/cgroup.controllers", "cpu memory\n")
	writeFile(t, root, ContainerdConfigPath, "[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]\n  SystemdCgroup = false\n")
	want(t, run(t, Cgroups(r, "containerd")), Fail, "cgroup driver is cgroupfs", "kubelet's is systemd")
	writeFile(t, root, ContainerdConfigPath, "[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]\n  SystemdCgroup = true\n")
	want(t, run(t, Cgroups(r, "containerd")), OK, "cgroup driver systemd")

	writeFile(t, root, "/proc/modules", "overlay 151552 0 - Live 0x0\n")
	writeFile(t, root, "/proc/sys/net/ipv4/ip_forward", "0\n")
	fs := run(t, Kernel(r, []string{"overlay", "br_netfilter"}, map[string]string{"net.ipv4.ip_forward": "1"}))
	want(t, fs, Fail, "kernel modules not loaded: br_netfilter")
	want(t, fs, Fail, "net.ipv4.ip_forward=0 (want 1)")

	if err := os.MkdirAll(root+"/var/lib", 0o755); err != nil {
		t.Fatal(err)
	}
	// The test's own disk: a result, whichever it is, that names the path.
	if fs := run(t, Disk(r, "/var/lib")); len(fs) != 1 || !strings.Contains(fs[0].Message, "/var/lib") {
		t.Errorf("disk: %+v", fs)
	}
}
