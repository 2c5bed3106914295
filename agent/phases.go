package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/nodeagent/nodeagent/assets"
	"github.com/nodeagent/nodeagent/bootstrap"
	"github.com/nodeagent/nodeagent/cloud"
	"github.com/nodeagent/nodeagent/config"
	"github.com/nodeagent/nodeagent/cri"
	"github.com/nodeagent/nodeagent/etcd"
	"github.com/nodeagent/nodeagent/kubelet"
	"github.com/nodeagent/nodeagent/manifests"
	"github.com/nodeagent/nodeagent/pki"
	"github.com/nodeagent/nodeagent/systemd"
	"github.com/nodeagent/nodeagent/volumes"
	"github.com/nodeagent/nodeagent/host"
)

// phaseSet is the ordered boot of one node plus the handles the daemon needs.
type phaseSet struct {
	phases    []bootstrap.Phase
	volumes   *volumes.ClaimPhase // control plane only
	readiness *readinessPhase
	units     []string
	pkiPaths  pki.Paths
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

	var caPEM func(ctx context.Context) ([]byte, error)
	caSource := caSourceFor(o, n)
	kubeconfig := kubelet.KubeconfigMode(kubelet.Standalone{})
	if spec.Kubelet.BootstrapToken != "" {
		kubeconfig = kubelet.Bootstrap{}
	}
	if n.IsControlPlane() {
		if n.AWS == nil {
			return nil, errors.New("a control-plane node needs AWS (EC2) to claim its etcd volumes")
		}
		ps.volumes = volumes.NewClaimPhase(volumes.Options{
			EC2: cloud.NewEC2(*n.AWS), Root: o.Root, ClusterName: spec.Cluster.Name,
			InstanceID: n.Identity.InstanceID, AvailabilityZone: n.Identity.AvailabilityZone,
			EtcdClusters: spec.Etcd.Clusters, Log: log,
		})
		pkiPhase := pki.NewPhase(pki.Options{
			Root: o.Root, CA: caSource, ClusterName: spec.Cluster.Name, NodeName: n.Name, NodeIP: nodeIP,
			ServiceCIDR: spec.Networking.ServiceCIDR, Role: spec.Role, EtcdClusters: spec.Etcd.Clusters,
			EtcdMember: ps.etcdMemberNames, Log: log,
		})
		ps.pkiPaths = pki.DefaultPaths()
		kubeconfig = kubelet.ClientCert{}
		ps.phases = append(ps.phases, ps.volumes, pkiPhase)
	} else if caSource != nil {
		ps.phases = append(ps.phases, pki.NewPhase(pki.Options{
			Root: o.Root, CA: caSource, ClusterName: spec.Cluster.Name, NodeName: n.Name, NodeIP: nodeIP,
			ServiceCIDR: spec.Networking.ServiceCIDR, Role: spec.Role, Log: log,
		}))
	}
	_ = caPEM
	ps.phases = append(ps.phases,
		manifests.NewPhase(manifests.Options{
			Root: o.Root, Config: n.Config, NodeName: n.Name, NodeIP: nodeIP, Etcd: ps.etcdMembers, Log: log,
		}),
		kubelet.NewPhase(kubelet.Options{
			Root: o.Root, Config: n.Config, NodeName: n.Name, NodeIP: n.Identity.PrivateIP, Labels: n.Labels,
			Kubeconfig: kubeconfig, Systemd: connect, Log: log,
		}),
	)
	if n.IsControlPlane() {
		ps.phases = append(ps.phases, etcd.NewHealthPhase(etcdHealthOptions(o, n, ps)))
	}
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("locate own binary: %w", err)
	}
	ps.phases = append(ps.phases, systemd.NewUnitSetPhase("nodeagent-service", systemd.UnitSet{
		Root: o.Root, Files: []systemd.File{systemd.NodeagentUnit(exe)}, Enable: []string{"nodeagent.service"},
		Systemd: connect, Log: log,
	}))

	ps.readiness = &readinessPhase{
		store: o.store(), hook: spec.Readiness.LifecycleHook, instanceID: n.Identity.InstanceID, log: log,
		asg: func() (cloud.AutoScalingAPI, error) {
			if n.AWS == nil {
				return nil, errors.New("AWS is not configured")
			}
			return cloud.NewAutoScaling(*n.AWS), nil
		},
		checks: ps.readyChecks(connect),
	}
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

// caSourceFor picks where the cluster CA comes from: a file named in the config,
// else the state store; nil when neither (a standalone worker).
func caSourceFor(o Options, n *Node) pki.CASource {
	if f := n.Config.Spec.PKI; f.CACertFile != "" {
		return pki.FileCA{Root: o.Root, CertFile: f.CACertFile, KeyFile: f.CAKeyFile}
	}
	if n.Store != nil {
		return storeCA{n.Store}
	}
	return nil
}

type storeCA struct{ s *cloud.StateStore }

func (c storeCA) Load(ctx context.Context) ([]byte, []byte, error) { return c.s.CA(ctx) }
