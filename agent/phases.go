package agent

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
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
	"github.com/nodeagent/nodeagent/images"
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
	// systemd is the D-Bus connection its phases share; closed by close when
	// the set opened it itself.
	systemd    *systemd.Session
	ownSystemd bool
}

// close releases what the set opened for its run (its D-Bus connection).
func (ps *phaseSet) close() {
	if ps.ownSystemd {
		ps.systemd.Close()
	}
}

// buildPhases assembles the phases for this node's role. Nothing runs here; AWS
// and D-Bus connections are made lazily by the phases that need them, so `plan`
// works on a machine without either.
func buildPhases(ctx context.Context, o Options, n *Node) (*phaseSet, error) {
	log := o.log()
	spec := n.Config.Spec
	ps := &phaseSet{systemd: o.Systemd}
	if ps.systemd == nil {
		ps.systemd, ps.ownSystemd = systemd.NewSession(), true
	}
	connect := ps.systemd.Connect

	inst := &assets.Installer{Root: o.Root, HTTP: &http.Client{Timeout: 10 * time.Minute}, Log: log,
		FullCheckEvery: spec.AssetChecks.Interval()}
	if n.AWS != nil {
		inst.S3 = cloud.NewS3(*n.AWS)
	}
	nodeIP := net.ParseIP(n.Identity.PrivateIP)

	ps.phases = append(ps.phases,
		host.NewPrepPhase(host.Options{
			Root: o.Root, Hostname: n.Name, Sysctls: spec.Host.Sysctls, KernelModules: spec.Host.KernelModules, Log: log,
		}),
		inst.Phase(spec.Assets),
		cri.NewPhase(cri.Options{
			Root: o.Root, Runtime: spec.ContainerRuntime, Systemd: connect, Log: log, PauseImage: spec.Images.PauseImage,
			RegistryMirrors: spec.Containerd.RegistryMirrors, Networking: spec.Networking.Mode,
			RestrictOOMScoreAdj: !canLowerOOM(log),
		}),
		// Before kubelet, so that its static pods find their images without a registry.
		images.NewPhase(images.Options{
			Root: o.Root, Runtime: spec.ContainerRuntime, Archives: spec.Images.Archives, Fetcher: inst, StateDir: o.StateDir, Log: log,
		}),
	)
	runtimeUnit := "containerd.service"
	if spec.ContainerRuntime == config.RuntimeDocker {
		runtimeUnit = "docker.service"
	}
	ps.units = []string{runtimeUnit, "kubelet.service"}
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("locate own binary: %w", err)
	}
	daemonPhase := systemd.NewUnitSetPhase("nodeagent-service", systemd.UnitSet{
		Root: o.Root, Files: []systemd.File{systemd.NodeagentUnit(exe)}, Enable: []string{"nodeagent.service"},
		Start: []string{"nodeagent.service"}, Systemd: connect, Log: log,
	})

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
			Root: o.Root, CA: caSource, ClusterName: spec.Cluster.Name, APIServer: spec.Cluster.APIServer, NodeName: n.Name, NodeIP: nodeIP,
			ServiceCIDR: spec.Networking.ServiceCIDR, Role: spec.Role, EtcdClusters: spec.Etcd.Clusters,
			OmitKubeletKubeconfig: true, ServiceAccountKey: saKeySourceFor(o, n), Log: log,
		})
		kubeconfig = kubelet.ClientCert{}
		// The daemon starts as soon as the volumes are claimed: it joins the gossip
		// ring and publishes this node's etcd member names, which the other masters
		// need before any etcd cluster can reach quorum. Started later, after
		// etcd-health, every master would wait for names nobody publishes.
		backups, err := backupStoreFor(n)
		if err != nil {
			return nil, err
		}
		ps.phases = append(ps.phases, ps.volumes, daemonPhase, pkiPhase,
			// Before the static pods: a member on a blank volume learns from its
			// live peers whether it joins an existing cluster.
			etcdJoinPhase(o, n, backups))
	} else if usesSigner(n) {
		sp, err := signerPhase(o, n)
		if err != nil {
			return nil, err
		}
		ps.phases = append(ps.phases, sp)
	} else if caSource != nil {
		ps.phases = append(ps.phases, pki.NewPhase(pki.Options{
			Root: o.Root, CA: caSource, ClusterName: spec.Cluster.Name, APIServer: spec.Cluster.APIServer, NodeName: n.Name, NodeIP: nodeIP,
			ServiceCIDR: spec.Networking.ServiceCIDR, Role: spec.Role, OmitKubeletKubeconfig: true, Log: log,
		}))
	}
	// A standalone worker (no CA, so no API server it could reach) runs no static
	// pods of ours: kube-proxy would have nothing to proxy for.
	if caSource != nil || n.IsControlPlane() {
		ps.phases = append(ps.phases, manifests.NewPhase(manifests.Options{
			Root: o.Root, Config: n.Config, NodeName: n.Name, NodeIP: nodeIP, Log: log,
		}))
	}
	ps.phases = append(ps.phases,
		kubelet.NewPhase(kubelet.Options{
			Root: o.Root, Config: n.Config, NodeName: n.Name, NodeIP: n.Identity.PrivateIP, Labels: n.Labels,
			Kubeconfig: kubeconfig, Systemd: connect, Log: log,
		}),
	)
	if n.IsControlPlane() {
		ps.phases = append(ps.phases, etcd.NewHealthPhase(etcdHealthOptions(o, n)))
	} else {
		ps.phases = append(ps.phases, daemonPhase)
	}

	timeout, err := time.ParseDuration(spec.Readiness.Timeout)
	if err != nil {
		return nil, fmt.Errorf("spec.readiness.timeout: %w", err)
	}
	ps.readiness = &readinessPhase{
		store: o.store(), hook: spec.Readiness.LifecycleHook, instanceID: n.Identity.InstanceID, log: log, timeout: timeout,
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

// canLowerOOM says whether the runtime may lower containers' oom_score_adj here;
// when it cannot be told, the answer is yes, as on an instance.
func canLowerOOM(log *slog.Logger) bool {
	ok, err := host.CanLowerOOMScore()
	if err != nil {
		log.Warn("cannot tell the process's capabilities; assuming an instance's root", "err", err)
		return true
	}
	return ok
}

// etcdHealthOptions points the health phase at this node's local members; their
// names come from the run's facts.
func etcdHealthOptions(o Options, n *Node) etcd.HealthOptions {
	ho := etcd.HealthOptions{
		Root: o.Root, Log: o.log(), ClusterName: n.Config.Spec.Cluster.Name, PeerPorts: map[string]int{},
		TLS: func(cluster string) (*tls.Config, error) { return pki.ClientTLS(o.Root, cluster) },
	}
	// spec.readiness.timeout bounds each wait for readiness, etcd's quorum among
	// them (at most etcd's own default): a master alone hands over to its daemon
	// after it, as it does when its Node is not Ready in time.
	if d, err := time.ParseDuration(n.Config.Spec.Readiness.Timeout); err == nil && d > 0 {
		ho.Timeout = min(d, etcd.DefaultHealthTimeout)
	}
	for _, c := range n.Config.Spec.Etcd.Clusters {
		ho.Clusters = append(ho.Clusters, etcd.Member{Cluster: c.Name, ClientURL: fmt.Sprintf("https://127.0.0.1:%d", c.ClientPort)})
		ho.PeerPorts[c.Name] = c.PeerPort
	}
	return ho
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

// saKeySourceFor is the cluster's shared service-account key: the state store's,
// when there is one.
func saKeySourceFor(o Options, n *Node) pki.KeySource {
	if f := n.Config.Spec.PKI.ServiceAccountKeyFile; f != "" {
		return pki.FileKey{Root: o.Root, Path: f}
	}
	if n.Store == nil {
		return nil
	}
	return storeSAKey{n.Store}
}

type storeSAKey struct{ s *cloud.StateStore }

func (k storeSAKey) Load(ctx context.Context) ([]byte, error) { return k.s.ServiceAccountKey(ctx) }

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
