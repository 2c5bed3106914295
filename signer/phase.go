package signer

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/nodeagent/nodeagent/bootstrap"
	"github.com/nodeagent/nodeagent/config"
	"github.com/nodeagent/nodeagent/internal/fsutil"
	"github.com/nodeagent/nodeagent/pki"
)

// PhaseOptions configure a worker's "pki" phase in signer mode.
type PhaseOptions struct {
	Root        fsutil.Root
	ClusterName string
	// APIServer is spec.cluster.apiServer; kube-proxy's kubeconfig points at it.
	APIServer string
	NodeName  string
	NodeIP    string
	// CACert loads the cluster CA certificate (the state store's pki/ca.crt).
	CACert func(ctx context.Context) ([]byte, error)
	Client *Client
	// Patience is how long Act keeps asking while no signer answers before the
	// phase reports that it waits; default 2 minutes.
	Patience time.Duration
	Log      *slog.Logger
	Now      func() time.Time
}

// Phase keeps a worker's cluster CA, kubelet client certificate and kube-proxy
// kubeconfig current with certificates from the masters' signers: issued on
// the first boot, renewed when a third of their life is left (the daemon's
// reconcile runs it every minute). kubelet reads its certificate files again
// by itself (client-go reloads certificate files), so no restart is needed.
type Phase struct {
	o PhaseOptions

	mu     sync.Mutex
	caCert []byte // as loaded by the last Check
}

// NewPhase returns the phase.
func NewPhase(o PhaseOptions) *Phase {
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Patience <= 0 {
		o.Patience = 2 * time.Minute
	}
	return &Phase{o: o}
}

// Name is the same as the CA-signing pki phase's: the phase owns the same files.
func (p *Phase) Name() string { return "pki" }

func (p *Phase) paths() (ca, kubeletCert, kubeletKey, proxyConf string) {
	ps := pki.DefaultPaths()
	return ps.CACert, ps.KubeletClientCert, ps.KubeletClientKey, ps.KubeProxyConf
}

// pair checks one certificate and key file pair and adds the change it needs.
func (p *Phase) pair(certPath, keyPath string, ca []byte, want pki.ClientCertSpec, now time.Time, add func(kind, path, why string, exists bool)) error {
	cert, err := p.read(certPath)
	if err != nil {
		return err
	}
	key, err := p.read(keyPath)
	if err != nil {
		return err
	}
	if cert == nil || key == nil {
		add("cert", certPath, "missing: asked of the node signer", false)
	} else if why := pki.ClientCertStatus(cert, key, ca, want, now, RenewFraction); why != "" {
		add("cert", certPath, why+": asked of the node signer", true)
	}
	return nil
}

func (p *Phase) kubeletSpec() pki.ClientCertSpec {
	return pki.ClientCertSpec{CN: KubeletCN(p.o.NodeName), Orgs: []string{KubeletOrg}, DNS: []string{p.o.NodeName}, IPs: []net.IP{net.ParseIP(p.o.NodeIP)}}
}

func (p *Phase) read(path string) ([]byte, error) {
	b, err := os.ReadFile(p.o.Root.Path(path))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	return b, nil
}

// Check says which files are missing, stale or due for renewal.
func (p *Phase) Check(ctx context.Context) ([]bootstrap.Change, error) {
	if p.o.NodeName == "" || net.ParseIP(p.o.NodeIP) == nil {
		return nil, fmt.Errorf("node signer: node name %q and IP %q are required", p.o.NodeName, p.o.NodeIP)
	}
	ca, err := p.o.CACert(ctx)
	if err != nil {
		return nil, fmt.Errorf("load the cluster CA certificate: %w", err)
	}
	p.mu.Lock()
	p.caCert = ca
	p.mu.Unlock()
	caPath, certPath, keyPath, proxyPath := p.paths()
	now := p.o.Now()
	var changes []bootstrap.Change
	add := func(kind, path, why string, exists bool) {
		action := "update"
		if !exists {
			action = "create"
		}
		changes = append(changes, bootstrap.Change{Kind: kind, Target: path, Action: action, Detail: why})
	}
	if same, err := fsutil.FileEquals(p.o.Root.Path(caPath), ca, 0o644); err != nil {
		return nil, err
	} else if !same {
		have, _ := p.read(caPath)
		add("file", caPath, "cluster CA certificate", have != nil)
	}
	if err := p.pair(certPath, keyPath, ca, p.kubeletSpec(), now, add); err != nil {
		return nil, err
	}
	ps := pki.DefaultPaths()
	if err := p.pair(ps.KubeProxyClientCert, ps.KubeProxyClientKey, ca, pki.ClientCertSpec{CN: KubeProxyCN}, now, add); err != nil {
		return nil, err
	}
	want, err := p.proxyKubeconfig(ca)
	if err != nil {
		return nil, err
	}
	if same, err := fsutil.FileEquals(p.o.Root.Path(proxyPath), want, 0o600); err != nil {
		return nil, err
	} else if !same {
		have, _ := p.read(proxyPath)
		add("kubeconfig", proxyPath, "kube-proxy's kubeconfig (server, CA, certificate files)", have != nil)
	}
	return changes, nil
}

// proxyKubeconfig names kube-proxy's certificate files, which client-go in
// kube-proxy reloads when they are renewed.
func (p *Phase) proxyKubeconfig(ca []byte) ([]byte, error) {
	server := config.APIServerURL(config.Cluster{Name: p.o.ClusterName, APIServer: p.o.APIServer})
	ps := pki.DefaultPaths()
	return pki.FileKubeconfig(p.o.ClusterName, KubeProxyCN, server, ca, ps.KubeProxyClientCert, ps.KubeProxyClientKey)
}

// Act asks a signer for fresh certificates (new keys, made here) and writes
// keys before certificates: a crash in between leaves a pair that does not
// match, which the next run asks for again.
func (p *Phase) Act(ctx context.Context) error {
	changes, err := p.Check(ctx)
	if err != nil {
		return err
	}
	if len(changes) == 0 {
		return nil
	}
	p.mu.Lock()
	ca := p.caCert
	p.mu.Unlock()
	caPath, certPath, keyPath, proxyPath := p.paths()
	needCerts := false
	for _, c := range changes {
		if c.Kind == "cert" {
			needCerts = true
		}
	}
	if err := fsutil.WriteFileAtomic(p.o.Root.Path(caPath), ca, 0o644); err != nil {
		return err
	}
	kc, err := p.proxyKubeconfig(ca)
	if err != nil {
		return err
	}
	if err := fsutil.WriteFileAtomic(p.o.Root.Path(proxyPath), kc, 0o600); err != nil {
		return err
	}
	if !needCerts {
		return nil
	}
	kubeletKey, kubeletPub, err := pki.NewKey()
	if err != nil {
		return err
	}
	proxyKey, proxyPub, err := pki.NewKey()
	if err != nil {
		return err
	}
	req := Request{NodeName: p.o.NodeName, NodeIP: p.o.NodeIP, KubeletPublicKey: string(kubeletPub), KubeProxyPublicKey: string(proxyPub)}
	var resp *Response
	var lastErr error
	backoff := wait.Backoff{Duration: time.Second, Factor: 2, Jitter: 0.2, Steps: 100, Cap: 15 * time.Second}
	pctx, cancel := context.WithTimeout(ctx, p.o.Patience)
	defer cancel()
	err = wait.ExponentialBackoffWithContext(pctx, backoff, func(ctx context.Context) (bool, error) {
		r, err := p.o.Client.Get(ctx, ca, req)
		var rf *Refused
		switch {
		case err == nil:
			resp = r
			return true, nil
		case errors.As(err, &rf):
			return false, err
		}
		lastErr = err
		bootstrap.Progress(ctx, "waiting for a master's node signer: "+err.Error())
		p.o.Log.Info("no node signer answered yet; retrying", "err", err)
		return false, nil
	})
	if err != nil {
		var rf *Refused
		if errors.As(err, &rf) {
			return err
		}
		if lastErr != nil && ctx.Err() == nil {
			return bootstrap.Waiting("no master's node signer answered: %v", lastErr)
		}
		return fmt.Errorf("node signer: %w", err)
	}
	if err := p.checkIssued(resp, ca, kubeletKey, proxyKey); err != nil {
		return err
	}
	if err := fsutil.WriteFileAtomic(p.o.Root.Path(keyPath), kubeletKey, 0o600); err != nil {
		return err
	}
	if err := fsutil.WriteFileAtomic(p.o.Root.Path(certPath), []byte(resp.KubeletCert), 0o644); err != nil {
		return err
	}
	ps := pki.DefaultPaths()
	if err := fsutil.WriteFileAtomic(p.o.Root.Path(ps.KubeProxyClientKey), proxyKey, 0o600); err != nil {
		return err
	}
	if err := fsutil.WriteFileAtomic(p.o.Root.Path(ps.KubeProxyClientCert), []byte(resp.KubeProxyCert), 0o644); err != nil {
		return err
	}
	p.o.Log.Info("node credentials from the node signer", "node", p.o.NodeName, "notAfter", resp.NotAfter.UTC().Format(time.RFC3339))
	return nil
}

// checkIssued refuses what the signer sent unless it is what was asked for:
// nothing is written otherwise.
func (p *Phase) checkIssued(resp *Response, ca, kubeletKey, proxyKey []byte) error {
	now := p.o.Now()
	if why := pki.ClientCertStatus([]byte(resp.KubeletCert), kubeletKey, ca, p.kubeletSpec(), now, 0); why != "" {
		return fmt.Errorf("node signer: issued kubelet certificate is unusable: %s", why)
	}
	if why := pki.ClientCertStatus([]byte(resp.KubeProxyCert), proxyKey, ca, pki.ClientCertSpec{CN: KubeProxyCN}, now, 0); why != "" {
		return fmt.Errorf("node signer: issued kube-proxy certificate is unusable: %s", why)
	}
	return nil
}

// Verify checks that nothing is left to do.
func (p *Phase) Verify(ctx context.Context) error {
	changes, err := p.Check(ctx)
	if err != nil {
		return err
	}
	if len(changes) > 0 {
		return fmt.Errorf("node credentials still need: %s", changes[0])
	}
	return nil
}
