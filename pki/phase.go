package pki

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nodeagent/nodeagent/bootstrap"
	"github.com/nodeagent/nodeagent/config"
	"github.com/nodeagent/nodeagent/internal/fsutil"
)

const (
	certPerm fs.FileMode = 0o644
	keyPerm  fs.FileMode = 0o600
	// Kubeconfigs embed private keys.
	kubeconfigPerm fs.FileMode = 0o600
)

type targetKind int

const (
	kindCert       targetKind = iota // certificate + key file pair
	kindKubeconfig                   // kubeconfig embedding its own certificate + key
	kindFile                         // file with fixed content (ca.crt, ca.key, kubelet kubeconfig)
	kindSAKey                        // service-account key pair, generated once
)

// target is one thing the phase owns on disk. Paths are host paths.
type target struct {
	kind    targetKind
	path    string // certificate, kubeconfig, plain file or service-account private key
	keyPath string // certificate key or service-account public key
	spec    certSpec
	// kindFile
	content []byte
	perm    fs.FileMode
	// kindKubeconfig
	kcCluster, kcUser, kcServer string
}

// outcome is what evaluating a target found.
type outcome struct {
	t       target
	action  string // "" (keep), "create" or "update"
	reason  string
	reissue bool // a new key (and certificate) is needed; otherwise rewrite existing bytes
	certPEM []byte
	keyPEM  []byte
}

type phase struct {
	o     Options
	paths Paths

	mu       sync.Mutex
	warnings []string
	sharedSA []byte // the cluster's service-account key, when the source has one
}

func newPhase(o Options) *phase {
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.RenewBefore <= 0 {
		o.RenewBefore = DefaultRenewBefore
	}
	if o.Validity <= 0 {
		o.Validity = DefaultValidity
	}
	if o.ServiceCIDR == "" {
		o.ServiceCIDR = config.DefaultServiceCIDR
	}
	return &phase{o: o, paths: DefaultPaths()}
}

func (p *phase) Name() string { return "pki" }

func (p *phase) sharedKey() []byte {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.sharedSA
}

// UseFacts takes this node's etcd member names from the run's facts.
func (p *phase) UseFacts(f bootstrap.Facts) {
	if len(f.EtcdMembers) == 0 {
		return
	}
	p.o.EtcdMember = map[string]string{}
	for _, m := range f.EtcdMembers {
		p.o.EtcdMember[m.Cluster] = m.Member
	}
}

// Warnings are conditions the phase worked around (member name not yet known, CA
// about to expire).
func (p *phase) Warnings() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.warnings)
}

func (p *phase) Check(ctx context.Context) ([]bootstrap.Change, error) {
	outs, _, err := p.evaluate(ctx)
	if err != nil {
		return nil, err
	}
	var changes []bootstrap.Change
	for _, o := range outs {
		if o.action == "" {
			continue
		}
		changes = append(changes, bootstrap.Change{Kind: o.t.changeKind(), Target: o.t.path, Action: o.action, Detail: o.reason})
	}
	return changes, nil
}

func (p *phase) Act(ctx context.Context) error {
	outs, a, err := p.evaluate(ctx)
	if err != nil {
		return err
	}
	now := p.o.Now()
	for _, o := range outs {
		if o.action == "" {
			continue
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := p.apply(a, o, now); err != nil {
			return fmt.Errorf("%s %s: %w", o.action, o.t.path, err)
		}
	}
	return nil
}

func (p *phase) Verify(ctx context.Context) error {
	outs, a, err := p.evaluate(ctx)
	if err != nil {
		return err
	}
	pool := x509.NewCertPool()
	pool.AddCert(a.cert)
	var errs []error
	for _, o := range outs {
		if o.action != "" {
			errs = append(errs, fmt.Errorf("%s: %s", o.t.path, o.reason))
			continue
		}
		if o.t.kind != kindCert && o.t.kind != kindKubeconfig {
			continue
		}
		c, err := firstCert(o.certPEM)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", o.t.path, err))
			continue
		}
		if _, err := c.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: o.t.spec.Usages, CurrentTime: p.o.Now()}); err != nil {
			errs = append(errs, fmt.Errorf("%s: chain: %w", o.t.path, err))
		}
	}
	return errors.Join(errs...)
}

func (t target) changeKind() string {
	switch t.kind {
	case kindKubeconfig:
		return "kubeconfig"
	case kindSAKey:
		return "key"
	case kindFile:
		return "file"
	default:
		return "cert"
	}
}

// evaluate loads the CA, works out the wanted files and compares each with disk.
func (p *phase) evaluate(ctx context.Context) ([]outcome, *authority, error) {
	if p.o.CA == nil {
		return nil, nil, errors.New("no CA source configured")
	}
	// Otherwise a fresh certificate would already be due and every run re-issue.
	if p.o.RenewBefore >= p.o.Validity {
		return nil, nil, fmt.Errorf("renew-before %s must be shorter than validity %s", p.o.RenewBefore, p.o.Validity)
	}
	certPEM, keyPEM, err := p.o.CA.Load(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("load CA: %w", err)
	}
	var sharedSA []byte
	if p.o.ServiceAccountKey != nil && p.o.Role == config.RoleControlPlane {
		if sharedSA, err = p.o.ServiceAccountKey.Load(ctx); err != nil {
			return nil, nil, fmt.Errorf("load the cluster's service-account key: %w", err)
		}
		if sharedSA != nil {
			if _, err := parseKey(sharedSA); err != nil {
				return nil, nil, fmt.Errorf("the cluster's service-account key is not a private key: %w", err)
			}
		}
	}
	p.mu.Lock()
	p.sharedSA = sharedSA
	p.mu.Unlock()
	now := p.o.Now()
	a, err := parseCA(certPEM, keyPEM, now)
	if err != nil {
		return nil, nil, err
	}
	targets, warnings, err := p.targets(a)
	if err != nil {
		return nil, nil, err
	}
	if left := a.cert.NotAfter.Sub(now); left < p.o.RenewBefore {
		warnings = append(warnings, fmt.Sprintf("cluster CA %q expires %s; certificates cannot outlive it",
			a.cert.Subject.CommonName, a.cert.NotAfter.UTC().Format(time.RFC3339)))
	}
	p.mu.Lock()
	p.warnings = warnings
	p.mu.Unlock()
	outs := make([]outcome, 0, len(targets))
	for _, t := range targets {
		o, err := p.evaluateTarget(a, t, now)
		if err != nil {
			return nil, nil, err
		}
		outs = append(outs, o)
	}
	return outs, a, nil
}

// targets is the wanted set for this node's role.
func (p *phase) targets(a *authority) ([]target, []string, error) {
	o := p.o
	if o.ClusterName == "" {
		return nil, nil, errors.New("cluster name is required")
	}
	if o.NodeName == "" {
		return nil, nil, errors.New("node name is required")
	}
	ps := p.paths
	cp := o.Role == config.RoleControlPlane
	if !cp && o.Role != config.RoleNode {
		return nil, nil, fmt.Errorf("unknown role %q", o.Role)
	}
	apiCluster := config.Cluster{Name: o.ClusterName, APIServer: o.APIServer}
	server := config.APIServerURL(apiCluster)
	if cp {
		// The control plane talks to its own apiserver so that it does not depend
		// on the api.internal name resolving (gossip) before it is up.
		server = "https://127.0.0.1:443"
	}
	kc := func(path, cn string, orgs ...string) target {
		return target{kind: kindKubeconfig, path: path, kcCluster: o.ClusterName, kcUser: cn, kcServer: server,
			spec: certSpec{CN: cn, Orgs: orgs, Usages: clientUsage}}
	}
	kubeletKC, err := renderKubeconfig(o.ClusterName, "system:node:"+o.NodeName,
		kcCluster{Server: server, CertificateAuthority: ps.CACert},
		kcUser{ClientCertificate: ps.KubeletClientCert, ClientKey: ps.KubeletClientKey})
	if err != nil {
		return nil, nil, err
	}

	ts := []target{{kind: kindFile, path: ps.CACert, content: a.certPEM, perm: certPerm}}
	var warnings []string
	if cp {
		// controller-manager signs kubelet serving and client CSRs with it.
		if a.key == nil {
			return nil, nil, errors.New("a control-plane node needs the CA key, and the CA source has none")
		}
		caKey, err := encodeKey(a.key)
		if err != nil {
			return nil, nil, err
		}
		if o.NodeIP == nil {
			return nil, nil, errors.New("node IP is required on the control plane (apiserver and etcd SANs)")
		}
		svcIP, err := serviceIP(o.ServiceCIDR)
		if err != nil {
			return nil, nil, err
		}
		apiDNS := []string{"kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local",
			config.APIInternalName(o.ClusterName), config.APIPublicName(o.ClusterName), o.NodeName, "localhost"}
		apiIPs := []net.IP{o.NodeIP, svcIP, net.IPv4(127, 0, 0, 1)}
		// The name (or address) every worker's kubeconfig points at.
		if h := config.APIServerHost(apiCluster); h != "" {
			if ip := net.ParseIP(h); ip != nil {
				apiIPs = append(apiIPs, ip)
			} else if !slices.Contains(apiDNS, h) {
				apiDNS = append(apiDNS, h)
			}
		}
		ts = append(ts,
			target{kind: kindFile, path: ps.CAKey, content: caKey, perm: keyPerm},
			target{kind: kindCert, path: ps.APIServerCert, keyPath: ps.APIServerKey, spec: certSpec{
				CN: "kube-apiserver", DNS: apiDNS, IPs: apiIPs, Usages: serverUsage,
			}},
			target{kind: kindCert, path: ps.APIServerKubeletClientCert, keyPath: ps.APIServerKubeletClientKey,
				spec: certSpec{CN: "kube-apiserver-kubelet-client", Orgs: []string{"system:masters"}, Usages: clientUsage}},
			target{kind: kindCert, path: ps.APIServerEtcdClientCert, keyPath: ps.APIServerEtcdClientKey,
				spec: certSpec{CN: "kube-apiserver-etcd-client", Usages: clientUsage}},
			target{kind: kindSAKey, path: ps.ServiceAccountKey, keyPath: ps.ServiceAccountPub, content: p.sharedKey()},
		)
		if p.sharedKey() == nil {
			warnings = append(warnings, "no shared service-account key (state store pki/private/service-account.key): this master signs tokens with a key of its own, which the other API servers of an HA control plane will not accept")
		}
		members := o.EtcdMember
		for _, ec := range o.EtcdClusters {
			cn := o.NodeName
			dns := []string{"localhost"}
			if m := members[ec.Name]; m != "" {
				cn = config.EtcdMemberHost(ec.Name, m, o.ClusterName)
				dns = append([]string{cn}, dns...)
			} else {
				warnings = append(warnings, fmt.Sprintf("etcd %s: this node's member name is not known yet; its certificates lack the member DNS name", ec.Name))
			}
			ips := []net.IP{net.IPv4(127, 0, 0, 1), o.NodeIP}
			ts = append(ts,
				target{kind: kindCert, path: ps.EtcdServerCert(ec.Name), keyPath: ps.EtcdServerKey(ec.Name),
					spec: certSpec{CN: cn, DNS: dns, IPs: ips, Usages: bothUsages}},
				target{kind: kindCert, path: ps.EtcdPeerCert(ec.Name), keyPath: ps.EtcdPeerKey(ec.Name),
					spec: certSpec{CN: cn, DNS: dns, IPs: ips, Usages: bothUsages}},
				target{kind: kindCert, path: ps.EtcdClientCert(ec.Name), keyPath: ps.EtcdClientKey(ec.Name),
					spec: certSpec{CN: "nodeagent-etcd-client", Usages: clientUsage}},
			)
		}
		ts = append(ts,
			kc(ps.ControllerManagerConf, "system:kube-controller-manager"),
			kc(ps.SchedulerConf, "system:kube-scheduler"),
			kc(ps.AddonsConf, "nodeagent:addons", "system:masters"),
		)
	}
	ts = append(ts,
		kc(ps.KubeProxyConf, "system:kube-proxy"),
		target{kind: kindCert, path: ps.KubeletClientCert, keyPath: ps.KubeletClientKey,
			spec: certSpec{CN: "system:node:" + o.NodeName, Orgs: []string{"system:nodes"}, Usages: clientUsage}},
	)
	if !o.OmitKubeletKubeconfig {
		ts = append(ts, target{kind: kindFile, path: ps.KubeletKubeconfig, content: kubeletKC, perm: kubeconfigPerm})
	}
	return ts, warnings, nil
}

// etcdMemberDNS is the gossip name of a member, kops style: etcd-a.internal.c for
// the main cluster, etcd-events-a.internal.c for the others.

func (p *phase) read(path string) ([]byte, fs.FileMode, error) {
	full := p.o.Root.Path(path)
	fi, err := os.Stat(full)
	if err != nil {
		return nil, 0, err
	}
	b, err := os.ReadFile(full)
	return b, fi.Mode().Perm(), err
}

func (p *phase) evaluateTarget(a *authority, t target, now time.Time) (outcome, error) {
	o := outcome{t: t}
	need := func(action, reason string, reissue bool) (outcome, error) {
		o.action, o.reason, o.reissue = action, reason, reissue
		return o, nil
	}
	switch t.kind {
	case kindFile:
		data, mode, err := p.read(t.path)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			return need("create", "missing", false)
		case err != nil:
			return o, fmt.Errorf("read %s: %w", t.path, err)
		case string(data) != string(t.content):
			return need("update", "content differs", false)
		case mode != t.perm:
			return need("update", fmt.Sprintf("mode %04o, want %04o", mode, t.perm), false)
		}
		return o, nil

	case kindSAKey:
		data, mode, err := p.read(t.path)
		if t.content != nil {
			// The cluster's shared key wins over whatever is on disk.
			if err != nil && !errors.Is(err, fs.ErrNotExist) {
				return o, fmt.Errorf("read %s: %w", t.path, err)
			}
			if errors.Is(err, fs.ErrNotExist) || string(data) != string(t.content) {
				key, perr := parseKey(t.content)
				if perr != nil {
					return o, perr
				}
				pub, perr := encodePublic(key.Public())
				if perr != nil {
					return o, perr
				}
				o.keyPEM, o.certPEM = t.content, pub
				if errors.Is(err, fs.ErrNotExist) {
					return need("create", "missing", false)
				}
				return need("update", "differs from the cluster's shared key", false)
			}
		}
		if errors.Is(err, fs.ErrNotExist) {
			return need("create", "missing", true)
		}
		if err != nil {
			return o, fmt.Errorf("read %s: %w", t.path, err)
		}
		key, err := parseKey(data)
		if err != nil {
			return need("update", "unreadable key: "+err.Error(), true)
		}
		pub, err := encodePublic(key.Public())
		if err != nil {
			return o, err
		}
		o.keyPEM, o.certPEM = data, pub
		pubData, pubMode, err := p.read(t.keyPath)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			return need("update", "public key missing", false)
		case err != nil:
			return o, fmt.Errorf("read %s: %w", t.keyPath, err)
		case string(pubData) != string(pub):
			return need("update", "public key does not match private key", false)
		case mode != keyPerm || pubMode != certPerm:
			return need("update", fmt.Sprintf("modes %04o/%04o, want %04o/%04o", mode, pubMode, keyPerm, certPerm), false)
		}
		return o, nil

	case kindCert, kindKubeconfig:
		var certPEM, keyPEM []byte
		var modes string // "cert/key" modes when they are wrong
		if t.kind == kindCert {
			c, cmode, err := p.read(t.path)
			if errors.Is(err, fs.ErrNotExist) {
				return need("create", "missing", true)
			}
			if err != nil {
				return o, fmt.Errorf("read %s: %w", t.path, err)
			}
			k, kmode, err := p.read(t.keyPath)
			if errors.Is(err, fs.ErrNotExist) {
				return need("update", "key missing", true)
			}
			if err != nil {
				return o, fmt.Errorf("read %s: %w", t.keyPath, err)
			}
			certPEM, keyPEM = c, k
			if cmode != certPerm || kmode != keyPerm {
				modes = fmt.Sprintf("%04o/%04o", cmode, kmode)
			}
		} else {
			data, _, err := p.read(t.path)
			if errors.Is(err, fs.ErrNotExist) {
				return need("create", "missing", true)
			}
			if err != nil {
				return o, fmt.Errorf("read %s: %w", t.path, err)
			}
			certPEM, keyPEM, err = embeddedCredentials(data)
			if err != nil {
				return need("update", err.Error(), true)
			}
		}
		cert, err := firstCert(certPEM)
		if err != nil {
			return need("update", "unreadable certificate: "+err.Error(), true)
		}
		key, err := parseKey(keyPEM)
		if err != nil {
			return need("update", "unreadable key: "+err.Error(), true)
		}
		if !publicKeysEqual(key.Public(), cert.PublicKey) {
			return need("update", "key does not match certificate", true)
		}
		if why := mismatch(cert, t.spec, a.cert, now, p.o.RenewBefore); why != "" {
			return need("update", why, true)
		}
		o.certPEM, o.keyPEM = certPEM, keyPEM
		if t.kind == kindCert {
			if modes != "" {
				return need("update", fmt.Sprintf("modes %s, want %04o/%04o", modes, certPerm, keyPerm), false)
			}
			return o, nil
		}
		want, err := p.renderEmbedded(a, t, certPEM, keyPEM)
		if err != nil {
			return o, err
		}
		same, err := fsutil.FileEquals(p.o.Root.Path(t.path), want, kubeconfigPerm)
		if err != nil {
			return o, err
		}
		if !same {
			return need("update", "server, CA or mode differs", false)
		}
		return o, nil
	}
	return o, fmt.Errorf("unknown target kind %d", t.kind)
}

func (p *phase) renderEmbedded(a *authority, t target, certPEM, keyPEM []byte) ([]byte, error) {
	return renderKubeconfig(t.kcCluster, t.kcUser,
		kcCluster{Server: t.kcServer, CertificateAuthorityData: a.certPEM},
		kcUser{ClientCertificateData: certPEM, ClientKeyData: keyPEM})
}

func (p *phase) write(path string, data []byte, perm fs.FileMode) error {
	return fsutil.WriteFileAtomic(p.o.Root.Path(path), data, perm)
}

// apply makes one target right. A certificate's key is written before the
// certificate: a crash in between leaves a pair that does not match, which the
// next run re-issues.
func (p *phase) apply(a *authority, o outcome, now time.Time) error {
	t := o.t
	log := p.o.Log.With("path", t.path, "reason", o.reason)
	switch t.kind {
	case kindFile:
		if err := p.write(t.path, t.content, t.perm); err != nil {
			return err
		}
		log.Info("wrote file")
		return nil

	case kindSAKey:
		keyPEM, pubPEM := o.keyPEM, o.certPEM
		if o.reissue {
			k, err := rsa.GenerateKey(rand.Reader, 2048)
			if err != nil {
				return fmt.Errorf("generate service-account key: %w", err)
			}
			if keyPEM, err = encodeKey(k); err != nil {
				return err
			}
			if pubPEM, err = encodePublic(k.Public()); err != nil {
				return err
			}
		}
		if err := p.write(t.path, keyPEM, keyPerm); err != nil {
			return err
		}
		if err := p.write(t.keyPath, pubPEM, certPerm); err != nil {
			return err
		}
		log.Info("wrote service-account key pair", "generated", o.reissue)
		return nil
	}

	certPEM, keyPEM := o.certPEM, o.keyPEM
	if o.reissue {
		var err error
		if certPEM, keyPEM, err = issue(a, t.spec, now, p.o.Validity); err != nil {
			return err
		}
	}
	if t.kind == kindCert {
		if err := p.write(t.keyPath, keyPEM, keyPerm); err != nil {
			return err
		}
		// gofail: var pkiAfterKeyBeforeCert string
		// failpointCrash("pkiAfterKeyBeforeCert", pkiAfterKeyBeforeCert, t.path)
		if err := p.write(t.path, certPEM, certPerm); err != nil {
			return err
		}
	} else {
		data, err := p.renderEmbedded(a, t, certPEM, keyPEM)
		if err != nil {
			return err
		}
		if err := p.write(t.path, data, kubeconfigPerm); err != nil {
			return err
		}
	}
	if o.reissue {
		c, err := firstCert(certPEM)
		if err != nil {
			return err
		}
		log.Info("issued certificate", "subject", subjectString(c.Subject.CommonName, c.Subject.Organization),
			"sans", strings.Join(certSANs(c), ","), "notAfter", c.NotAfter.UTC().Format(time.RFC3339))
	} else {
		log.Info("rewrote certificate files")
	}
	return nil
}

func encodePublic(pub crypto.PublicKey) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("encode public key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), nil
}
