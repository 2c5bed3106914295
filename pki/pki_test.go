package pki

import (
	"context"
	"crypto/x509"
	"flag"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nodeagent/nodeagent/config"
	"github.com/nodeagent/nodeagent/internal/fsutil"
	"sigs.k8s.io/yaml"
)

var update = flag.Bool("update", false, "rewrite golden files")

const year = 365 * 24 * time.Hour

var controlPlaneFiles = map[string]fs.FileMode{
	"/etc/kubernetes/pki/ca.crt":                       0o644,
	"/etc/kubernetes/pki/ca.key":                       0o600,
	"/etc/kubernetes/pki/apiserver.crt":                0o644,
	"/etc/kubernetes/pki/apiserver.key":                0o600,
	"/etc/kubernetes/pki/apiserver-kubelet-client.crt": 0o644,
	"/etc/kubernetes/pki/apiserver-kubelet-client.key": 0o600,
	"/etc/kubernetes/pki/apiserver-etcd-client.crt":    0o644,
	"/etc/kubernetes/pki/apiserver-etcd-client.key":    0o600,
	"/etc/kubernetes/pki/service-account.key":          0o600,
	"/etc/kubernetes/pki/service-account.pub":          0o644,
	"/etc/kubernetes/pki/etcd/main/server.crt":         0o644,
	"/etc/kubernetes/pki/etcd/main/server.key":         0o600,
	"/etc/kubernetes/pki/etcd/main/peer.crt":           0o644,
	"/etc/kubernetes/pki/etcd/main/peer.key":           0o600,
	"/etc/kubernetes/pki/etcd/main/client.crt":         0o644,
	"/etc/kubernetes/pki/etcd/main/client.key":         0o600,
	"/etc/kubernetes/pki/etcd/events/server.crt":       0o644,
	"/etc/kubernetes/pki/etcd/events/server.key":       0o600,
	"/etc/kubernetes/pki/etcd/events/peer.crt":         0o644,
	"/etc/kubernetes/pki/etcd/events/peer.key":         0o600,
	"/etc/kubernetes/pki/etcd/events/client.crt":       0o644,
	"/etc/kubernetes/pki/etcd/events/client.key":       0o600,
	"/etc/kubernetes/controller-manager.conf":          0o600,
	"/etc/kubernetes/scheduler.conf":                   0o600,
	"/etc/kubernetes/nodeagent-addons.conf":            0o600,
	"/etc/kubernetes/kube-proxy.conf":                  0o600,
	"/var/lib/kubelet/pki/kubelet-client.crt":          0o644,
	"/var/lib/kubelet/pki/kubelet-client.key":          0o600,
	"/var/lib/kubelet/kubeconfig":                      0o600,
}

var workerFiles = map[string]fs.FileMode{
	"/etc/kubernetes/pki/ca.crt":              0o644,
	"/etc/kubernetes/kube-proxy.conf":         0o600,
	"/var/lib/kubelet/pki/kubelet-client.crt": 0o644,
	"/var/lib/kubelet/pki/kubelet-client.key": 0o600,
	"/var/lib/kubelet/kubeconfig":             0o600,
}

// certWant is one certificate's specification as the design states it.
type certWant struct {
	cn     string
	orgs   []string
	dns    []string
	ips    []string
	usages []x509.ExtKeyUsage
}

var (
	server = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	client = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	both   = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
)

var controlPlaneCerts = map[string]certWant{
	"/etc/kubernetes/pki/apiserver.crt": {cn: "kube-apiserver", usages: server,
		dns: []string{"kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local",
			"api.internal.k.example.com", "api.k.example.com", "ip-10-0-0-1.ec2.internal", "localhost"},
		ips: []string{"10.0.0.1", "100.64.0.1", "127.0.0.1"}},
	"/etc/kubernetes/pki/apiserver-kubelet-client.crt": {cn: "kube-apiserver-kubelet-client", orgs: []string{"system:masters"}, usages: client},
	"/etc/kubernetes/pki/apiserver-etcd-client.crt":    {cn: "kube-apiserver-etcd-client", usages: client},
	"/etc/kubernetes/pki/etcd/main/server.crt": {cn: "etcd-a.internal.k.example.com", usages: both,
		dns: []string{"etcd-a.internal.k.example.com", "localhost"}, ips: []string{"127.0.0.1", "10.0.0.1"}},
	"/etc/kubernetes/pki/etcd/main/peer.crt": {cn: "etcd-a.internal.k.example.com", usages: both,
		dns: []string{"etcd-a.internal.k.example.com", "localhost"}, ips: []string{"127.0.0.1", "10.0.0.1"}},
	"/etc/kubernetes/pki/etcd/main/client.crt": {cn: "nodeagent-etcd-client", usages: client},
	"/etc/kubernetes/pki/etcd/events/server.crt": {cn: "etcd-events-a.internal.k.example.com", usages: both,
		dns: []string{"etcd-events-a.internal.k.example.com", "localhost"}, ips: []string{"127.0.0.1", "10.0.0.1"}},
	"/etc/kubernetes/pki/etcd/events/peer.crt": {cn: "etcd-events-a.internal.k.example.com", usages: both,
		dns: []string{"etcd-events-a.internal.k.example.com", "localhost"}, ips: []string{"127.0.0.1", "10.0.0.1"}},
	"/etc/kubernetes/pki/etcd/events/client.crt": {cn: "nodeagent-etcd-client", usages: client},
	"/etc/kubernetes/controller-manager.conf":    {cn: "system:kube-controller-manager", usages: client},
	"/etc/kubernetes/scheduler.conf":             {cn: "system:kube-scheduler", usages: client},
	"/etc/kubernetes/nodeagent-addons.conf":      {cn: "nodeagent:addons", orgs: []string{"system:masters"}, usages: client},
	"/etc/kubernetes/kube-proxy.conf":            {cn: "system:kube-proxy", usages: client},
	"/var/lib/kubelet/pki/kubelet-client.crt":    {cn: "system:node:ip-10-0-0-1.ec2.internal", orgs: []string{"system:nodes"}, usages: client},
}

var workerCerts = map[string]certWant{
	"/etc/kubernetes/kube-proxy.conf":         {cn: "system:kube-proxy", usages: client},
	"/var/lib/kubelet/pki/kubelet-client.crt": {cn: "system:node:ip-10-0-1-7.ec2.internal", orgs: []string{"system:nodes"}, usages: client},
}

// certAt reads a certificate from a .crt file or from a kubeconfig's embedded data.
func certAt(t *testing.T, root, path string) *x509.Certificate {
	t.Helper()
	if strings.HasSuffix(path, ".crt") {
		return readCert(t, filepath.Join(root, path))
	}
	b, err := os.ReadFile(filepath.Join(root, path))
	if err != nil {
		t.Fatal(err)
	}
	c, _, err := embeddedCredentials(b)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	cert, err := firstCert(c)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return cert
}

func TestIssuesFullSet(t *testing.T) {
	for _, tc := range []struct {
		name   string
		opts   func(fsutil.Root, CASource) Options
		files  map[string]fs.FileMode
		certs  map[string]certWant
		server string // kubeconfig server
	}{
		{"control plane", cpOptions, controlPlaneFiles, controlPlaneCerts, "https://127.0.0.1:443"},
		{"worker", workerOptions, workerFiles, workerCerts, "https://api.internal.k.example.com:443"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			ca := newCA(t, "kubernetes-ca", 10*year)
			changes := converge(t, tc.opts(fsutil.Root(root), ca))

			snap := snapshot(t, root)
			got := map[string]fs.FileMode{}
			for p, fi := range snap {
				got[p] = fi.mode
			}
			for p, m := range tc.files {
				if got[p] != m {
					t.Errorf("%s: mode %04o, want %04o", p, got[p], m)
				}
			}
			for p := range got {
				if _, ok := tc.files[p]; !ok {
					t.Errorf("unexpected file %s", p)
				}
			}
			if got, want := changeTargets(changes), wantFirstRunTargets(tc.files); !slices.Equal(got, want) {
				t.Errorf("first run targets\n got %v\nwant %v", got, want)
			}
			for _, c := range changes {
				if c.Action != "create" || c.Detail != "missing" {
					t.Errorf("first run change %v, want create (missing)", c)
				}
			}
			if snap["/etc/kubernetes/pki/ca.crt"].content != string(ca.cert) {
				t.Error("ca.crt is not the CA certificate")
			}
			if strings.Contains(snap["/etc/kubernetes/pki/ca.crt"].content, "PRIVATE KEY") {
				t.Error("ca.crt holds key material")
			}

			pool, _ := caPool(t, ca)
			for path, want := range tc.certs {
				c := certAt(t, root, path)
				if c.Subject.CommonName != want.cn {
					t.Errorf("%s: CN %q, want %q", path, c.Subject.CommonName, want.cn)
				}
				if !slices.Equal(c.Subject.Organization, want.orgs) {
					t.Errorf("%s: O %v, want %v", path, c.Subject.Organization, want.orgs)
				}
				if !slices.Equal(c.DNSNames, want.dns) {
					t.Errorf("%s: DNS SANs %v, want %v", path, c.DNSNames, want.dns)
				}
				var ips []string
				for _, ip := range c.IPAddresses {
					ips = append(ips, ip.String())
				}
				if !slices.Equal(ips, want.ips) {
					t.Errorf("%s: IP SANs %v, want %v", path, ips, want.ips)
				}
				if !slices.Equal(c.ExtKeyUsage, want.usages) {
					t.Errorf("%s: usages %v, want %v", path, c.ExtKeyUsage, want.usages)
				}
				if c.IsCA {
					t.Errorf("%s: leaf is a CA", path)
				}
				if _, err := c.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: want.usages}); err != nil {
					t.Errorf("%s: chain: %v", path, err)
				}
				if d := time.Until(c.NotAfter); d < year-time.Hour || d > year+time.Hour {
					t.Errorf("%s: valid for %s, want about a year", path, d)
				}
			}
			for _, kc := range []string{"/etc/kubernetes/kube-proxy.conf", "/etc/kubernetes/controller-manager.conf", "/etc/kubernetes/scheduler.conf"} {
				if _, ok := tc.files[kc]; !ok {
					continue
				}
				var cfg kubeconfig
				if err := yaml.Unmarshal([]byte(snap[kc].content), &cfg); err != nil {
					t.Fatalf("%s: %v", kc, err)
				}
				if s := cfg.Clusters[0].Cluster.Server; s != tc.server {
					t.Errorf("%s: server %q, want %q", kc, s, tc.server)
				}
				if string(cfg.Clusters[0].Cluster.CertificateAuthorityData) != string(ca.cert) {
					t.Errorf("%s: embedded CA is not the cluster CA", kc)
				}
			}
		})
	}
}

// wantFirstRunTargets is one change per file, except that a key is written
// with its certificate and the service-account public key with its private key.
func wantFirstRunTargets(files map[string]fs.FileMode) []string {
	var out []string
	for p := range files {
		if strings.HasSuffix(p, ".pub") {
			continue
		}
		// ca.key is the CA's, written on its own; other keys go with their certificate.
		if crt := strings.TrimSuffix(p, ".key") + ".crt"; strings.HasSuffix(p, ".key") && p != "/etc/kubernetes/pki/ca.key" {
			if _, ok := files[crt]; ok {
				continue
			}
		}
		out = append(out, p)
	}
	return sorted(out)
}

// The kubelet kubeconfig only names files, so it is the same on every run: golden.
func TestKubeletKubeconfigGolden(t *testing.T) {
	for _, tc := range []struct {
		name, golden string
		opts         func(fsutil.Root, CASource) Options
	}{
		{"control plane", "kubelet-kubeconfig-controlplane.yaml", cpOptions},
		{"worker", "kubelet-kubeconfig-worker.yaml", workerOptions},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			converge(t, tc.opts(fsutil.Root(root), newCA(t, "ca", year*10)))
			got, err := os.ReadFile(filepath.Join(root, "/var/lib/kubelet/kubeconfig"))
			if err != nil {
				t.Fatal(err)
			}
			golden := filepath.Join("testdata", tc.golden)
			if *update {
				if err := os.WriteFile(golden, got, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != string(want) {
				t.Errorf("kubelet kubeconfig differs from %s (run with -update):\n%s", golden, got)
			}
		})
	}
}

func TestOmitKubeletKubeconfig(t *testing.T) {
	root := t.TempDir()
	o := workerOptions(fsutil.Root(root), newCA(t, "ca", 10*year))
	o.OmitKubeletKubeconfig = true
	converge(t, o)
	snap := snapshot(t, root)
	if _, ok := snap["/var/lib/kubelet/kubeconfig"]; ok {
		t.Error("kubelet kubeconfig written although omitted")
	}
	if _, ok := snap["/var/lib/kubelet/pki/kubelet-client.crt"]; !ok {
		t.Error("kubelet client certificate not issued")
	}
	// Another owner's kubeconfig is left as it is.
	if err := os.WriteFile(filepath.Join(root, "/var/lib/kubelet/kubeconfig"), []byte("owned elsewhere"), 0o600); err != nil {
		t.Fatal(err)
	}
	if changes := converge(t, o); len(changes) != 0 {
		t.Errorf("changes %v", changes)
	}
}

func TestRerunChangesNothing(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts func(fsutil.Root, CASource) Options
	}{
		{"control plane", cpOptions},
		{"worker", workerOptions},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			ca := newCA(t, "ca", 10*year)
			converge(t, tc.opts(fsutil.Root(root), ca))
			before := snapshot(t, root)
			time.Sleep(20 * time.Millisecond) // so a rewrite would show in mtime
			ph := NewPhase(tc.opts(fsutil.Root(root), ca))
			changes, err := ph.Check(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if len(changes) != 0 {
				t.Fatalf("re-run wants changes: %v", changes)
			}
			// Act on a converged host is also a no-op.
			if err := ph.Act(context.Background()); err != nil {
				t.Fatal(err)
			}
			if ch := changedFiles(before, snapshot(t, root)); len(ch) != 0 {
				t.Errorf("re-run rewrote %v", ch)
			}
		})
	}
}

func TestCheckWritesNothing(t *testing.T) {
	root := t.TempDir()
	changes, err := NewPhase(cpOptions(fsutil.Root(root), newCA(t, "ca", year))).Check(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(changes) == 0 {
		t.Fatal("check on an empty root found nothing to do")
	}
	if s := snapshot(t, root); len(s) != 0 {
		t.Errorf("check wrote %d files", len(s))
	}
}

// Changing one input re-issues exactly the certificates that depend on it.
func TestReissue(t *testing.T) {
	etcdPeerServer := []string{
		"/etc/kubernetes/pki/etcd/events/peer.crt", "/etc/kubernetes/pki/etcd/events/server.crt",
		"/etc/kubernetes/pki/etcd/main/peer.crt", "/etc/kubernetes/pki/etcd/main/server.crt",
	}
	withKeys := func(crts ...string) []string {
		var out []string
		for _, c := range crts {
			out = append(out, c)
			if strings.HasSuffix(c, ".crt") {
				out = append(out, strings.TrimSuffix(c, ".crt")+".key")
			}
		}
		slices.Sort(out)
		return out
	}
	for _, tc := range []struct {
		name        string
		change      func(o *Options)
		wantTargets []string // Check's change targets
		wantDetail  string   // every change's detail contains this
		wantFiles   []string // files rewritten by Act
	}{
		{
			name:        "node IP change",
			change:      func(o *Options) { o.NodeIP = net.ParseIP("10.0.0.2") },
			wantTargets: sorted(append([]string{"/etc/kubernetes/pki/apiserver.crt"}, etcdPeerServer...)),
			wantDetail:  "SANs changed: +IP:10.0.0.2 -IP:10.0.0.1",
			wantFiles:   withKeys(append([]string{"/etc/kubernetes/pki/apiserver.crt"}, etcdPeerServer...)...),
		},
		{
			name:        "service CIDR change",
			change:      func(o *Options) { o.ServiceCIDR = "10.96.0.0/12" },
			wantTargets: []string{"/etc/kubernetes/pki/apiserver.crt"},
			wantDetail:  "SANs changed: +IP:10.96.0.1 -IP:100.64.0.1",
			wantFiles:   withKeys("/etc/kubernetes/pki/apiserver.crt"),
		},
		{
			name: "etcd member change",
			change: func(o *Options) {
				o.EtcdMember = map[string]string{"main": "b", "events": "a"}
			},
			wantTargets: []string{"/etc/kubernetes/pki/etcd/main/peer.crt", "/etc/kubernetes/pki/etcd/main/server.crt"},
			wantDetail:  "subject CN=etcd-a.internal.k.example.com, want CN=etcd-b.internal.k.example.com",
			wantFiles:   withKeys("/etc/kubernetes/pki/etcd/main/peer.crt", "/etc/kubernetes/pki/etcd/main/server.crt"),
		},
		{
			name:        "within renew window",
			change:      func(o *Options) { o.Now = func() time.Time { return time.Now().Add(year - 29*24*time.Hour) } },
			wantTargets: allCertTargets(),
			wantDetail:  "within 720h0m0s",
			wantFiles:   allCertFiles(),
		},
		{
			name:        "expired",
			change:      func(o *Options) { o.Now = func() time.Time { return time.Now().Add(year + 24*time.Hour) } },
			wantTargets: allCertTargets(),
			wantDetail:  "expired ",
			wantFiles:   allCertFiles(),
		},
		{
			name:   "not yet in renew window",
			change: func(o *Options) { o.Now = func() time.Time { return time.Now().Add(year - 31*24*time.Hour) } },
		},
		{
			name:        "renew window longer than what is left",
			change:      func(o *Options) { o.RenewBefore, o.Validity = year+time.Hour, 3*year },
			wantTargets: allCertTargets(),
			wantDetail:  "expires ",
			wantFiles:   allCertFiles(),
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			ca := newCA(t, "ca", 10*year)
			o := cpOptions(fsutil.Root(root), ca)
			converge(t, o)
			before := snapshot(t, root)
			time.Sleep(20 * time.Millisecond)

			tc.change(&o)
			changes, err := NewPhase(o).Check(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if got := changeTargets(changes); !slices.Equal(got, tc.wantTargets) {
				t.Errorf("check targets\n got %v\nwant %v", got, tc.wantTargets)
			}
			for _, c := range changes {
				if c.Action != "update" || !strings.Contains(c.Detail, tc.wantDetail) {
					t.Errorf("change %v, want update with %q", c, tc.wantDetail)
				}
			}
			converge(t, o)
			if got := changedFiles(before, snapshot(t, root)); !slices.Equal(got, tc.wantFiles) {
				t.Errorf("rewritten files\n got %v\nwant %v", got, tc.wantFiles)
			}
		})
	}
}

func sorted(s []string) []string { slices.Sort(s); return s }

// allCertTargets are the control plane's certificates (not ca.crt, not the
// service-account key, not the kubelet kubeconfig which only names files).
func allCertTargets() []string {
	var out []string
	for p := range controlPlaneCerts {
		out = append(out, p)
	}
	return sorted(out)
}

func allCertFiles() []string {
	var out []string
	for p := range controlPlaneCerts {
		out = append(out, p)
		if strings.HasSuffix(p, ".crt") {
			out = append(out, strings.TrimSuffix(p, ".crt")+".key")
		}
	}
	return sorted(out)
}

func TestCARotation(t *testing.T) {
	root := t.TempDir()
	o := cpOptions(fsutil.Root(root), newCA(t, "old-ca", 10*year))
	converge(t, o)
	before := snapshot(t, root)
	time.Sleep(20 * time.Millisecond)

	newer := newCA(t, "new-ca", 10*year)
	o.CA = newer
	changes, err := NewPhase(o).Check(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range changes {
		if c.Kind == "cert" || c.Kind == "kubeconfig" {
			if c.Detail != "not signed by the current CA" {
				t.Errorf("%v: want re-issue because of the CA", c)
			}
		}
	}
	converge(t, o)
	after := snapshot(t, root)
	// Everything but the service-account key pair (tokens must stay valid) changes.
	var want []string
	for p := range controlPlaneFiles {
		// The kubelet kubeconfig names files, so it does not change either.
		if !strings.Contains(p, "service-account") && p != "/var/lib/kubelet/kubeconfig" {
			want = append(want, p)
		}
	}
	if got := changedFiles(before, after); !slices.Equal(got, sorted(want)) {
		t.Errorf("rewritten\n got %v\nwant %v", got, sorted(want))
	}
	pool, _ := caPool(t, newer)
	for p := range controlPlaneCerts {
		if _, err := certAt(t, root, p).Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
			t.Errorf("%s does not chain to the new CA: %v", p, err)
		}
	}
}

// A CA that ends before the normal validity caps the certificates, and a
// capped certificate is not re-issued on every run.
func TestShortLivedCA(t *testing.T) {
	root := t.TempDir()
	ca := newCA(t, "ca", 10*24*time.Hour)
	o := cpOptions(fsutil.Root(root), ca)
	ph := NewPhase(o)
	converge(t, o)
	_, caCert := caPool(t, ca)
	if c := readCert(t, filepath.Join(root, "/etc/kubernetes/pki/apiserver.crt")); !c.NotAfter.Equal(caCert.NotAfter) {
		t.Errorf("apiserver cert ends %s, want the CA's end %s", c.NotAfter, caCert.NotAfter)
	}
	if _, err := ph.Check(context.Background()); err != nil {
		t.Fatal(err)
	}
	w := ph.(interface{ Warnings() []string }).Warnings()
	if len(w) != 1 || !strings.Contains(w[0], `cluster CA "ca" expires`) {
		t.Errorf("warnings %q, want the CA expiry", w)
	}
}

func TestRepairs(t *testing.T) {
	for _, tc := range []struct {
		name       string
		damage     func(root string) error
		wantTarget string
		wantDetail string
		reissued   bool // the certificate's key changes
	}{
		{
			name:       "key deleted",
			damage:     func(r string) error { return os.Remove(r + "/etc/kubernetes/pki/apiserver.key") },
			wantTarget: "/etc/kubernetes/pki/apiserver.crt", wantDetail: "key missing", reissued: true,
		},
		{
			name: "key swapped",
			damage: func(r string) error {
				b, err := os.ReadFile(r + "/etc/kubernetes/pki/etcd/main/client.key")
				if err != nil {
					return err
				}
				return os.WriteFile(r+"/etc/kubernetes/pki/apiserver.key", b, 0o600)
			},
			wantTarget: "/etc/kubernetes/pki/apiserver.crt", wantDetail: "key does not match certificate", reissued: true,
		},
		{
			name: "certificate garbage",
			damage: func(r string) error {
				return os.WriteFile(r+"/etc/kubernetes/pki/apiserver.crt", []byte("junk"), 0o644)
			},
			wantTarget: "/etc/kubernetes/pki/apiserver.crt", wantDetail: "unreadable certificate: no PEM CERTIFICATE block", reissued: true,
		},
		{
			name:       "key readable by all",
			damage:     func(r string) error { return os.Chmod(r+"/etc/kubernetes/pki/apiserver.key", 0o644) },
			wantTarget: "/etc/kubernetes/pki/apiserver.crt", wantDetail: "modes 0644/0644, want 0644/0600",
		},
		{
			name:       "kubeconfig readable by all",
			damage:     func(r string) error { return os.Chmod(r+"/etc/kubernetes/scheduler.conf", 0o644) },
			wantTarget: "/etc/kubernetes/scheduler.conf", wantDetail: "server, CA or mode differs",
		},
		{
			name:       "ca.key mode",
			damage:     func(r string) error { return os.Chmod(r+"/etc/kubernetes/pki/ca.key", 0o640) },
			wantTarget: "/etc/kubernetes/pki/ca.key", wantDetail: "mode 0640, want 0600",
		},
		{
			name:       "service-account public key deleted",
			damage:     func(r string) error { return os.Remove(r + "/etc/kubernetes/pki/service-account.pub") },
			wantTarget: "/etc/kubernetes/pki/service-account.key", wantDetail: "public key missing",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			ca := newCA(t, "ca", 10*year)
			o := cpOptions(fsutil.Root(root), ca)
			converge(t, o)
			before := snapshot(t, root)
			if err := tc.damage(root); err != nil {
				t.Fatal(err)
			}
			changes := converge(t, o)
			if len(changes) != 1 || changes[0].Target != tc.wantTarget || changes[0].Detail != tc.wantDetail {
				t.Fatalf("changes %v, want one on %s (%s)", changes, tc.wantTarget, tc.wantDetail)
			}
			after := snapshot(t, root)
			for p, m := range controlPlaneFiles {
				if after[p].mode != m {
					t.Errorf("%s: mode %04o after repair, want %04o", p, after[p].mode, m)
				}
			}
			keyPath := strings.TrimSuffix(tc.wantTarget, ".crt") + ".key"
			if strings.HasSuffix(tc.wantTarget, ".crt") {
				if changedKey := before[keyPath].content != after[keyPath].content; changedKey != tc.reissued {
					t.Errorf("key changed = %v, want %v", changedKey, tc.reissued)
				}
			}
			if before["/etc/kubernetes/pki/service-account.key"].content != after["/etc/kubernetes/pki/service-account.key"].content {
				t.Error("service-account key was regenerated")
			}
		})
	}
}

func TestEtcdMemberNotYetKnown(t *testing.T) {
	root := t.TempDir()
	ca := newCA(t, "ca", 10*year)
	o := cpOptions(fsutil.Root(root), ca)
	o.EtcdClusters = twoEtcd[:1]
	o.EtcdMember = nil
	ph := NewPhase(o)
	converge(t, o)
	if _, err := ph.Check(context.Background()); err != nil {
		t.Fatal(err)
	}
	if w := ph.(interface{ Warnings() []string }).Warnings(); len(w) != 1 || !strings.Contains(w[0], "etcd main: this node's member name is not known yet") {
		t.Errorf("warnings %q", w)
	}
	c := readCert(t, filepath.Join(root, "/etc/kubernetes/pki/etcd/main/server.crt"))
	if c.Subject.CommonName != "ip-10-0-0-1.ec2.internal" || !slices.Equal(c.DNSNames, []string{"localhost"}) {
		t.Errorf("without member: CN %q DNS %v", c.Subject.CommonName, c.DNSNames)
	}
	o.EtcdMember = map[string]string{"main": "c"}
	changes := converge(t, o)
	if got := changeTargets(changes); !slices.Equal(got, []string{"/etc/kubernetes/pki/etcd/main/peer.crt", "/etc/kubernetes/pki/etcd/main/server.crt"}) {
		t.Errorf("once the member is known, re-issued %v", got)
	}
	c = readCert(t, filepath.Join(root, "/etc/kubernetes/pki/etcd/main/server.crt"))
	if !slices.Equal(c.DNSNames, []string{"etcd-c.internal.k.example.com", "localhost"}) {
		t.Errorf("with member: DNS %v", c.DNSNames)
	}
}

func TestBadCA(t *testing.T) {
	good := newCA(t, "ca", 10*year)
	other := newCA(t, "other", 10*year)
	// A leaf certificate (CA:FALSE) with its own key, from a converged root.
	leafRoot := t.TempDir()
	converge(t, workerOptions(fsutil.Root(leafRoot), good))
	leafCert, _ := os.ReadFile(filepath.Join(leafRoot, "/var/lib/kubelet/pki/kubelet-client.crt"))
	leafKey, _ := os.ReadFile(filepath.Join(leafRoot, "/var/lib/kubelet/pki/kubelet-client.key"))
	shortLived := newCA(t, "short", 24*time.Hour)

	for _, tc := range []struct {
		name    string
		ca      staticCA
		role    config.Role
		now     time.Time
		wantErr string
	}{
		{"certificate not PEM", staticCA{[]byte("not a certificate"), good.key}, config.RoleControlPlane, time.Time{}, "CA certificate: no PEM CERTIFICATE block"},
		{"key not PEM", staticCA{good.cert, []byte("nope")}, config.RoleControlPlane, time.Time{}, "CA key: no PEM private key block"},
		{"certificate given as key", staticCA{good.cert, good.cert}, config.RoleControlPlane, time.Time{}, "CA key: no PEM private key block"},
		{"key of another CA", staticCA{good.cert, other.key}, config.RoleControlPlane, time.Time{}, `CA key does not match CA certificate "ca"`},
		{"not a CA", staticCA{leafCert, leafKey}, config.RoleNode, time.Time{}, `is not a CA`},
		{"expired CA", shortLived, config.RoleNode, time.Now().Add(48 * time.Hour), `CA certificate "short" expired at`},
		{"control plane without CA key", staticCA{good.cert, nil}, config.RoleControlPlane, time.Time{}, "a control-plane node needs the CA key"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			o := cpOptions(fsutil.Root(root), tc.ca)
			o.Role = tc.role
			if !tc.now.IsZero() {
				o.Now = func() time.Time { return tc.now }
			}
			ph := NewPhase(o)
			_, err := ph.Check(context.Background())
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("check error %v, want %q", err, tc.wantErr)
			}
			if err := ph.Act(context.Background()); err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("act error %v, want %q", err, tc.wantErr)
			}
			if strings.Contains(err.Error(), "PRIVATE KEY") {
				t.Error("error echoes key material")
			}
			if s := snapshot(t, root); len(s) != 0 {
				t.Errorf("wrote %d files with a bad CA", len(s))
			}
		})
	}
}

func TestRenewWindowMustBeShorterThanValidity(t *testing.T) {
	o := cpOptions(fsutil.Root(t.TempDir()), newCA(t, "ca", 10*year))
	o.RenewBefore, o.Validity = 48*time.Hour, 24*time.Hour
	if _, err := NewPhase(o).Check(context.Background()); err == nil || !strings.Contains(err.Error(), "must be shorter than validity") {
		t.Fatalf("err %v", err)
	}
}

// A worker whose CA source has only the certificate can keep certificates that
// are good, but cannot issue new ones.
func TestWorkerWithoutCAKey(t *testing.T) {
	ca := newCA(t, "ca", 10*year)
	certOnly := staticCA{cert: ca.cert}

	root := t.TempDir()
	ph := NewPhase(workerOptions(fsutil.Root(root), certOnly))
	if _, err := ph.Check(context.Background()); err != nil {
		t.Fatalf("check: %v", err)
	}
	if err := ph.Act(context.Background()); err == nil || !strings.Contains(err.Error(), "the CA source has no key") {
		t.Fatalf("act error %v, want no key", err)
	}

	converge(t, workerOptions(fsutil.Root(root), ca))
	converge(t, workerOptions(fsutil.Root(root), certOnly))
}

func TestFileCA(t *testing.T) {
	ca := newCA(t, "ca", 10*year)
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "/etc/nodeagent"), 0o755); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(root, "/etc/nodeagent/ca.crt"), ca.cert, 0o644)
	os.WriteFile(filepath.Join(root, "/etc/nodeagent/ca.key"), ca.key, 0o600)
	for _, tc := range []struct {
		name     string
		src      FileCA
		wantCert bool
		wantKey  bool
		wantErr  string
	}{
		{"both", FileCA{Root: fsutil.Root(root), CertFile: "/etc/nodeagent/ca.crt", KeyFile: "/etc/nodeagent/ca.key"}, true, true, ""},
		{"cert only", FileCA{Root: fsutil.Root(root), CertFile: "/etc/nodeagent/ca.crt"}, true, false, ""},
		{"missing key", FileCA{Root: fsutil.Root(root), CertFile: "/etc/nodeagent/ca.crt", KeyFile: "/nope"}, false, false, "read CA key"},
		{"no cert file", FileCA{Root: fsutil.Root(root)}, false, false, "CA certificate file is not set"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, k, err := tc.src.Load(context.Background())
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if (string(c) == string(ca.cert)) != tc.wantCert || (string(k) == string(ca.key)) != tc.wantKey {
				t.Errorf("cert loaded %v key loaded %v", string(c) == string(ca.cert), string(k) == string(ca.key))
			}
		})
	}
}

func TestGenerateCA(t *testing.T) {
	c, k, err := GenerateCA("kubernetes-ca", 2*year)
	if err != nil {
		t.Fatal(err)
	}
	a, err := parseCA(c, k, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if a.cert.Subject.CommonName != "kubernetes-ca" || !a.cert.IsCA || a.cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		t.Errorf("CA %+v", a.cert.Subject)
	}
	pool := x509.NewCertPool()
	pool.AddCert(a.cert)
	if _, err := a.cert.Verify(x509.VerifyOptions{Roots: pool}); err != nil {
		t.Errorf("self-signed chain: %v", err)
	}
	for _, bad := range []struct {
		cn string
		v  time.Duration
	}{{"", year}, {"x", 0}} {
		if _, _, err := GenerateCA(bad.cn, bad.v); err == nil {
			t.Errorf("GenerateCA(%q, %s) succeeded", bad.cn, bad.v)
		}
	}
}

func TestServiceIP(t *testing.T) {
	for _, tc := range []struct{ cidr, want, err string }{
		{"100.64.0.0/13", "100.64.0.1", ""},
		{"10.96.0.0/12", "10.96.0.1", ""},
		{"10.0.0.255/24", "10.0.0.1", ""},
		{"fd00:10:96::/112", "fd00:10:96::1", ""},
		{"10.0.0.0/31", "", "no room"},
		{"nonsense", "", "service CIDR"},
	} {
		ip, err := serviceIP(tc.cidr)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%s: err %v, want %q", tc.cidr, err, tc.err)
			}
			continue
		}
		if err != nil || ip.String() != tc.want {
			t.Errorf("%s: %v %v, want %s", tc.cidr, ip, err, tc.want)
		}
	}
}

func TestClientTLS(t *testing.T) {
	root := t.TempDir()
	ca := newCA(t, "ca", 10*year)
	converge(t, cpOptions(fsutil.Root(root), ca))
	cfg, err := ClientTLS(fsutil.Root(root), "events")
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Certificates) != 1 || cfg.RootCAs == nil {
		t.Fatalf("config %+v", cfg)
	}
	leaf, err := x509.ParseCertificate(cfg.Certificates[0].Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	if leaf.Subject.CommonName != "nodeagent-etcd-client" {
		t.Errorf("client CN %q", leaf.Subject.CommonName)
	}
	if _, err := ClientTLS(fsutil.Root(root), "nosuch"); err == nil || !strings.Contains(err.Error(), "etcd nosuch client certificate") {
		t.Errorf("missing cluster: %v", err)
	}
}

// TestServiceAccountKeyIsTheClusters: every master writes the cluster's shared
// service-account key (so each API server verifies the tokens any controller
// manager signs), replaces a key of its own with it, and without one says that
// an HA control plane will not accept its tokens.
func TestServiceAccountKeyIsTheClusters(t *testing.T) {
	ca := newCA(t, "ca", 10*365*24*time.Hour)
	root := fsutil.Root(t.TempDir())
	o := cpOptions(root, ca)
	converge(t, o)
	b, err := os.ReadFile(root.Path("/etc/kubernetes/pki/service-account.key"))
	if err != nil || string(b) != string(sharedSAKey) {
		t.Fatalf("service-account.key is not the cluster's shared key (err %v)", err)
	}

	other, err := GenerateServiceAccountKey()
	if err != nil {
		t.Fatal(err)
	}
	o.ServiceAccountKey = staticKey(other)
	changes := converge(t, o)
	if got := changeTargets(changes); !slices.Contains(got, "/etc/kubernetes/pki/service-account.key") {
		t.Errorf("a rotated shared key changed %v, want service-account.key", got)
	}
	if b, _ := os.ReadFile(root.Path("/etc/kubernetes/pki/service-account.key")); string(b) != string(other) {
		t.Error("the key on disk was kept over the cluster's")
	}

	o.ServiceAccountKey = nil
	ph := NewPhase(o)
	if _, err := ph.Check(context.Background()); err != nil {
		t.Fatal(err)
	}
	if w := ph.(interface{ Warnings() []string }).Warnings(); len(w) != 1 || !strings.Contains(w[0], "no shared service-account key") {
		t.Errorf("without a shared key, warnings %q", w)
	}
}
