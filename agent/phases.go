package agent

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/nodeagent/nodeagent/assets"
	"github.com/nodeagent/nodeagent/bootstrap"
	"github.com/nodeagent/nodeagent/cloud"
	"github.com/nodeagent/nodeagent/config"
	"github.com/nodeagent/nodeagent/cri"
	"github.com/nodeagent/nodeagent/etcd"
	"github.com/nodeagent/nodeagent/host"
	"github.com/nodeagent/nodeagent/kubelet"
	"github.com/nodeagent/nodeagent/manifests"
	"github.com/nodeagent/nodeagent/pki"
	"github.com/nodeagent/nodeagent/systemd"
	"github.com/nodeagent/nodeagent/volumes"
)

// phaseSet is the ordered boot of one node plus the handles the daemon needs.
type phaseSet struct {
	phases    []bootstrap.Phase
	volumes   *volumes.ClaimPhase // control plane only
	readiness *readinessPhase
	node      *nodeObject // nil when kubelet runs standalone
	units     []string
}

// buildPhases assembles the phases for this node's role. Nothing runs here; AWS
// and D-Bus connections are made lazily by the phases that need them, so `plan`
// works on a machine without either.
func buildPhases(ctx context.Context, o Options, n *Node) (*phaseSet, error) {
	log := o.log()
	spec := n.Config.Spec
	ps := &phaseSet{}
	connect := func(ctx context.Context) (*systemd.Manager, error) { return systemd.Connect(ctx) }

	inst := &assets.Installer{Root: o.Root, HTTP: &http.Client{Timeout: 10 * time.Minute}, Log: log}
	if n.AWS != nil {
		inst.S3 = cloud.NewS3(*n.AWS)
	}
	nodeIP := net.ParseIP(n.Identity.PrivateIP)

	ps.phases = append(ps.phases,
		host.NewPrepPhase(host.Options{
			Root: o.Root, Hostname: n.Name, Sysctls: spec.Host.Sysctls, KernelModules: spec.Host.KernelModules, Log: log,
		}),
		inst.Phase(spec.Assets),
		cri.NewPhase(cri.Options{Root: o.Root, Runtime: spec.ContainerRuntime, Systemd: connect, Log: log}),
	)
	runtimeUnit := "containerd.service"
	if spec.ContainerRuntime == config.RuntimeDocker {
		runtimeUnit = "docker.service"
	}
	ps.units = []string{runtimeUnit, "kubelet.service"}

	caSource := caSourceFor(o, n)
	// Without a CA the node cannot talk to an API server: kubelet runs standalone
	// (static pods only). A bootstrap token means TLS bootstrap; a CA alone means
	// the pki phase issues the kubelet's client certificate.
	kubeconfig := kubelet.KubeconfigMode(kubelet.Standalone{})
	switch {
	case spec.Kubelet.BootstrapToken != "":
		kubeconfig = kubelet.Bootstrap{}
	case caSource != nil:
		kubeconfig = kubelet.ClientCert{}
	}
	if n.IsControlPlane() {
		if n.AWS == nil {
			return nil, errors.New("a control-plane node needs AWS (EC2) to claim its etcd volumes")
		}
		ps.volumes = volumes.NewClaimPhase(volumes.Options{
			EC2: cloud.NewEC2(*n.AWS), Root: o.Root, ClusterName: spec.Cluster.Name,
			InstanceID: n.Identity.InstanceID, InstanceType: n.Identity.InstanceType, AvailabilityZone: n.Identity.AvailabilityZone,
			EtcdClusters: spec.Etcd.Clusters, Log: log,
		})
		pkiPhase := pki.NewPhase(pki.Options{
			Root: o.Root, CA: caSource, ClusterName: spec.Cluster.Name, NodeName: n.Name, NodeIP: nodeIP,
			ServiceCIDR: spec.Networking.ServiceCIDR, Role: spec.Role, EtcdClusters: spec.Etcd.Clusters,
			EtcdMember: ps.etcdMemberNames, OmitKubeletKubeconfig: true, Log: log,
		})
		kubeconfig = kubelet.ClientCert{}
		ps.phases = append(ps.phases, ps.volumes, pkiPhase)
	} else if caSource != nil {
		ps.phases = append(ps.phases, pki.NewPhase(pki.Options{
			Root: o.Root, CA: caSource, ClusterName: spec.Cluster.Name, NodeName: n.Name, NodeIP: nodeIP,
			ServiceCIDR: spec.Networking.ServiceCIDR, Role: spec.Role, OmitKubeletKubeconfig: true, Log: log,
		}))
	}
	// A standalone worker (no CA, so no API server it could reach) runs no static
	// pods of ours: kube-proxy would have nothing to proxy for.
	if caSource != nil || n.IsControlPlane() {
		ps.phases = append(ps.phases, manifests.NewPhase(manifests.Options{
			Root: o.Root, Config: n.Config, NodeName: n.Name, NodeIP: nodeIP, Etcd: ps.etcdMembers, Log: log,
		}))
	}
	ps.phases = append(ps.phases,
		kubelet.NewPhase(kubelet.Options{
			Root: o.Root, Config: n.Config, NodeName: n.Name, NodeIP: n.Identity.PrivateIP, Labels: n.Labels,
			Kubeconfig: kubeconfig, Systemd: connect, Log: log,
		}),
	)
	if n.IsControlPlane() {
		// The member names are known only once the volumes phase has claimed its
		// volumes, so the health phase is built when it runs.
		ps.phases = append(ps.phases, &lazyPhase{name: "etcd-health", build: func() bootstrap.Phase {
			return etcd.NewHealthPhase(etcdHealthOptions(o, n, ps))
		}})
	}
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("locate own binary: %w", err)
	}
	ps.phases = append(ps.phases, systemd.NewUnitSetPhase("nodeagent-service", systemd.UnitSet{
		Root: o.Root, Files: []systemd.File{systemd.NodeagentUnit(exe)}, Enable: []string{"nodeagent.service"},
		Start: []string{"nodeagent.service"}, Systemd: connect, Log: log,
	}))

	ps.readiness = &readinessPhase{
		store: o.store(), hook: spec.Readiness.LifecycleHook, instanceID: n.Identity.InstanceID, log: log,
		asg: func() (cloud.AutoScalingAPI, error) {
			if n.AWS == nil {
				return nil, errors.New("AWS is not configured")
			}
			return cloud.NewAutoScaling(*n.AWS), nil
		},
		checks: append([]readyCheck{{name: "phases", fn: phasesDone(o.store())}}, ps.readyChecks(connect)...),
	}
	ps.addNodeCheck(o, n, kubeconfig)
	ps.phases = append(ps.phases, ps.readiness)
	return ps, nil
}

// etcdMembers tells the manifests phase which member of each etcd cluster this node
// is, from the volumes it claimed.
func (ps *phaseSet) etcdMembers() []manifests.EtcdMember {
	if ps.volumes == nil {
		return nil
	}
	var out []manifests.EtcdMember
	for _, c := range ps.volumes.Claims() {
		out = append(out, manifests.EtcdMember{Cluster: c.EtcdCluster, Member: c.Member, Members: c.Members, DataDir: c.MountPoint})
	}
	return out
}

func (ps *phaseSet) etcdMemberNames() map[string]string {
	if ps.volumes == nil {
		return nil
	}
	out := map[string]string{}
	for _, c := range ps.volumes.Claims() {
		out[c.EtcdCluster] = c.Member
	}
	return out
}

// readyChecks are the conditions of readiness: managed units active, kubelet healthy.
func (ps *phaseSet) readyChecks(connect func(context.Context) (*systemd.Manager, error)) []readyCheck {
	return []readyCheck{
		{name: "units", fn: func(ctx context.Context) error {
			m, err := connect(ctx)
			if err != nil {
				return err
			}
			defer m.Close()
			for _, u := range ps.units {
				st, err := m.UnitState(ctx, u)
				if err != nil {
					return err
				}
				if st.ActiveState != "active" {
					return fmt.Errorf("%s is %s (%s)", u, st.ActiveState, st.SubState)
				}
			}
			return nil
		}},
		{name: "kubelet", fn: kubelet.Healthz},
	}
}

// etcdHealthOptions points the health phase at this node's local members.
func etcdHealthOptions(o Options, n *Node, ps *phaseSet) etcd.HealthOptions {
	return etcd.HealthOptions{
		Root: o.Root, Log: o.log(),
		Clusters: ps.localEtcdMembers(n),
		TLS:      func(cluster string) (*tls.Config, error) { return pki.ClientTLS(o.Root, cluster) },
	}
}

// localEtcdMembers lists this node's members with their local client URLs. The
// member names come from the claimed volumes, so it is evaluated when called.
func (ps *phaseSet) localEtcdMembers(n *Node) []etcd.Member {
	names := ps.etcdMemberNames()
	var out []etcd.Member
	if n.Config.Spec.Etcd == nil {
		return nil
	}
	for _, c := range n.Config.Spec.Etcd.Clusters {
		out = append(out, etcd.Member{Cluster: c.Name, Name: names[c.Name], ClientURL: fmt.Sprintf("https://127.0.0.1:%d", c.ClientPort)})
	}
	return out
}

// caSourceFor picks where the cluster CA comes from: a file named in the config,
// else the state store; nil when neither (a standalone worker).
func caSourceFor(o Options, n *Node) pki.CASource {
	if f := n.Config.Spec.PKI; f.CACertFile != "" {
		return pki.FileCA{Root: o.Root, CertFile: f.CACertFile, KeyFile: f.CAKeyFile}
	}
	if n.Store != nil {
		return &storeCA{s: n.Store}
	}
	return nil
}

// storeCA reads the CA from the state store. The pki phase loads it in Check,
// Act and Verify; one fetch serves a whole run, and the daemon's next reconcile
// (a minute later) sees a rotated CA.
type storeCA struct {
	s         *cloud.StateStore
	mu        sync.Mutex
	cert, key []byte
	at        time.Time
}

const caCacheFor = 30 * time.Second

func (c *storeCA) Load(ctx context.Context) ([]byte, []byte, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cert != nil && time.Since(c.at) < caCacheFor {
		return c.cert, c.key, nil
	}
	cert, key, err := c.s.CA(ctx)
	if err != nil {
		return nil, nil, err
	}
	c.cert, c.key, c.at = cert, key, time.Now()
	return cert, key, nil
}

// lazyPhase builds its phase from state that earlier phases produce, each time it
// is asked, so a re-run sees the current claims.
type lazyPhase struct {
	name  string
	build func() bootstrap.Phase
	last  bootstrap.Phase
}

func (p *lazyPhase) Name() string { return p.name }

func (p *lazyPhase) phase() bootstrap.Phase {
	p.last = p.build()
	return p.last
}

func (p *lazyPhase) Check(ctx context.Context) ([]bootstrap.Change, error) {
	return p.phase().Check(ctx)
}
func (p *lazyPhase) Act(ctx context.Context) error    { return p.phase().Act(ctx) }
func (p *lazyPhase) Verify(ctx context.Context) error { return p.phase().Verify(ctx) }

// Report passes the built phase's results on to the state file.
func (p *lazyPhase) Report(st *bootstrap.State) {
	if r, ok := p.last.(bootstrap.Reporter); ok {
		r.Report(st)
	}
}
