// Package pki issues and renews the node's certificates and kubeconfigs from the
// cluster CA, so that a control-plane node can run etcd, the apiserver and the
// controllers, and a worker can run kubelet and kube-proxy.
//
// Every certificate is checked before anything is written: one that is still
// valid, signed by the current CA, has the wanted subject, SANs and usages and is
// not close to expiry is kept byte for byte. That is what makes a re-run a no-op
// and a node-IP change re-issue only the certificates that carry the IP.
package pki

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path"
	"time"

	"github.com/nodeagent/nodeagent/bootstrap"
	"github.com/nodeagent/nodeagent/config"
	"github.com/nodeagent/nodeagent/internal/fsutil"
)

// Defaults for Options.
const (
	DefaultRenewBefore = 30 * 24 * time.Hour
	DefaultValidity    = 365 * 24 * time.Hour
)

// CASource yields the cluster CA as PEM. The key may be empty when the node only
// needs ca.crt and every certificate it holds is still good.
type CASource interface {
	Load(ctx context.Context) (certPEM, keyPEM []byte, err error)
}

// FileKey reads a private key from a host file (resolved under Root).
type FileKey struct {
	Root fsutil.Root
	Path string
}

// Load reads the key file.
func (f FileKey) Load(context.Context) ([]byte, error) {
	b, err := os.ReadFile(f.Root.Path(f.Path))
	if err != nil {
		return nil, fmt.Errorf("read key: %w", err)
	}
	return b, nil
}

// FileCA reads the CA from two host files (resolved under Root).
type FileCA struct {
	Root     fsutil.Root
	CertFile string
	KeyFile  string // optional
}

// Load reads the CA files.
func (f FileCA) Load(context.Context) ([]byte, []byte, error) {
	if f.CertFile == "" {
		return nil, nil, errors.New("CA certificate file is not set")
	}
	cert, err := os.ReadFile(f.Root.Path(f.CertFile))
	if err != nil {
		return nil, nil, fmt.Errorf("read CA certificate: %w", err)
	}
	if f.KeyFile == "" {
		return cert, nil, nil
	}
	key, err := os.ReadFile(f.Root.Path(f.KeyFile))
	if err != nil {
		return nil, nil, fmt.Errorf("read CA key: %w", err)
	}
	return cert, key, nil
}

// Options configure the pki phase.
type Options struct {
	Root        fsutil.Root
	CA          CASource
	ClusterName string
	// APIServer is spec.cluster.apiServer (host:port or URL): the apiserver's
	// certificate names its host, and the kubeconfigs of nodes that reach the
	// API servers over the network point at it. Default api.internal.<cluster>:443.
	APIServer string
	NodeName  string
	NodeIP    net.IP
	// ServiceCIDR is the cluster's service range; the apiserver's service IP (the
	// first host of it) goes into the serving certificate. Default 100.64.0.0/13.
	ServiceCIDR  string
	Role         config.Role
	EtcdClusters []config.EtcdCluster
	// EtcdMember maps etcd cluster name to this node's member name. The phase
	// takes it from the run's facts (the volumes phase learns it); nil or a missing
	// entry issues the etcd certificates without the member's DNS name (they are
	// re-issued with it once it is known).
	EtcdMember map[string]string
	// OmitKubeletKubeconfig leaves /var/lib/kubelet/kubeconfig alone (the kubelet
	// client certificate is still issued). Set it when another phase owns that file,
	// e.g. the kubelet phase in its ClientCert or Bootstrap mode: two writers with
	// different content would rewrite it on every run.
	OmitKubeletKubeconfig bool
	// ServiceAccountKey, on a control plane, is the cluster's shared
	// service-account signing key (PEM). Every API server must verify the tokens
	// any controller manager signs, so in an HA control plane all masters need the
	// same key; the state store holds it. Nil, or a source that has none, makes
	// the node generate its own (fine for a single master, said in a warning).
	ServiceAccountKey KeySource
	Log               *slog.Logger
	Now               func() time.Time
	RenewBefore       time.Duration // default 30 days
	Validity          time.Duration // default 1 year
}

// KeySource loads a private key (PEM); (nil, nil) means it holds none.
type KeySource interface {
	Load(ctx context.Context) ([]byte, error)
}

// Paths is the file layout, as host paths (not resolved under a root). The
// manifests and kubelet phases point their components at these.
type Paths struct {
	Dir                        string // /etc/kubernetes/pki
	CACert, CAKey              string
	APIServerCert              string
	APIServerKey               string
	APIServerKubeletClientCert string
	APIServerKubeletClientKey  string
	APIServerEtcdClientCert    string
	APIServerEtcdClientKey     string
	ServiceAccountKey          string
	ServiceAccountPub          string
	EtcdDir                    string // per cluster: EtcdDir/<cluster>/{server,peer,client}.{crt,key}
	ControllerManagerConf      string
	SchedulerConf              string
	// AddonsConf is the kubeconfig the masters' daemon applies the cluster's
	// add-ons with (system:masters, like kops' protokube).
	AddonsConf    string
	KubeProxyConf string
	// KubeProxyDir holds kube-proxy's client certificate and key when they come
	// from the node signer: the kube-proxy pod mounts the directory, so the
	// renewed files are seen (client-go reloads them) without a pod restart.
	KubeProxyDir        string
	KubeProxyClientCert string
	KubeProxyClientKey  string
	KubeletClientCert   string
	KubeletClientKey    string
	KubeletKubeconfig   string
}

// DefaultPaths is the layout the agent uses.
func DefaultPaths() Paths {
	const d = "/etc/kubernetes/pki"
	return Paths{
		Dir:                        d,
		CACert:                     d + "/ca.crt",
		CAKey:                      d + "/ca.key",
		APIServerCert:              d + "/apiserver.crt",
		APIServerKey:               d + "/apiserver.key",
		APIServerKubeletClientCert: d + "/apiserver-kubelet-client.crt",
		APIServerKubeletClientKey:  d + "/apiserver-kubelet-client.key",
		APIServerEtcdClientCert:    d + "/apiserver-etcd-client.crt",
		APIServerEtcdClientKey:     d + "/apiserver-etcd-client.key",
		ServiceAccountKey:          d + "/service-account.key",
		ServiceAccountPub:          d + "/service-account.pub",
		EtcdDir:                    d + "/etcd",
		ControllerManagerConf:      "/etc/kubernetes/controller-manager.conf",
		SchedulerConf:              "/etc/kubernetes/scheduler.conf",
		AddonsConf:                 "/etc/kubernetes/nodeagent-addons.conf",
		KubeProxyConf:              "/etc/kubernetes/kube-proxy.conf",
		KubeProxyDir:               "/var/lib/kube-proxy",
		KubeProxyClientCert:        "/var/lib/kube-proxy/client.crt",
		KubeProxyClientKey:         "/var/lib/kube-proxy/client.key",
		KubeletClientCert:          "/var/lib/kubelet/pki/kubelet-client.crt",
		KubeletClientKey:           "/var/lib/kubelet/pki/kubelet-client.key",
		KubeletKubeconfig:          "/var/lib/kubelet/kubeconfig",
	}
}

// EtcdServerCert and the five below name one etcd cluster's files.
func (p Paths) EtcdServerCert(cluster string) string {
	return path.Join(p.EtcdDir, cluster, "server.crt")
}
func (p Paths) EtcdServerKey(cluster string) string {
	return path.Join(p.EtcdDir, cluster, "server.key")
}
func (p Paths) EtcdPeerCert(cluster string) string { return path.Join(p.EtcdDir, cluster, "peer.crt") }
func (p Paths) EtcdPeerKey(cluster string) string  { return path.Join(p.EtcdDir, cluster, "peer.key") }
func (p Paths) EtcdClientCert(cluster string) string {
	return path.Join(p.EtcdDir, cluster, "client.crt")
}
func (p Paths) EtcdClientKey(cluster string) string {
	return path.Join(p.EtcdDir, cluster, "client.key")
}

// NewPhase returns the "pki" phase.
func NewPhase(o Options) bootstrap.Phase { return newPhase(o) }

// ClientTLS loads the etcd client certificate of one cluster and the cluster CA,
// for the agent's own calls to the local etcd member.
func ClientTLS(root fsutil.Root, etcdCluster string) (*tls.Config, error) {
	p := DefaultPaths()
	cert, err := tls.LoadX509KeyPair(root.Path(p.EtcdClientCert(etcdCluster)), root.Path(p.EtcdClientKey(etcdCluster)))
	if err != nil {
		return nil, fmt.Errorf("etcd %s client certificate: %w", etcdCluster, err)
	}
	caPEM, err := os.ReadFile(root.Path(p.CACert))
	if err != nil {
		return nil, fmt.Errorf("etcd %s: read CA: %w", etcdCluster, err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("etcd %s: %s holds no PEM certificate", etcdCluster, p.CACert)
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: pool, MinVersion: tls.VersionTLS12}, nil
}
