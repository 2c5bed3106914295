// Package host prepares a machine to be a Kubernetes node the way kubeadm's
// preflight and kops' nodeup expect: kernel modules for overlayfs and bridged
// traffic, the sysctls kube-proxy and the CNI rely on, swap off, and the host name.
//
// Every item has a persisted half (a file under /etc that makes it survive a
// reboot) and a runtime half (the running kernel). The persisted half is always
// within reach of the agent; the runtime half is not inside a container (no
// module loading, a read-only /proc/sys, EPERM on swapoff). How the phase treats
// a refusal from the kernel is described on PrepPhase.
package host

import (
	"log/slog"
	"maps"
	"slices"

	"github.com/nodeagent/nodeagent/config"
	"github.com/nodeagent/nodeagent/internal/fsutil"
)

// Options configure the host preparation phase.
type Options struct {
	// Root is the host filesystem root. The running kernel (modules, swap, host
	// name) is only touched when Root is "/" or empty; under a directory root only
	// files below it, including its /proc/sys, are read and written.
	Root fsutil.Root
	// Hostname, when set, is written to /etc/hostname and set on the kernel.
	Hostname string
	// Sysctls are merged over DefaultSysctls.
	Sysctls map[string]string
	// KernelModules are added to DefaultKernelModules.
	KernelModules []string
	Log           *slog.Logger
}

// Paths of the files this phase owns or edits, relative to Root.
const (
	SysctlFile      = "/etc/sysctl.d/99-nodeagent.conf"
	ModulesLoadFile = "/etc/modules-load.d/nodeagent.conf"
	FstabFile       = "/etc/fstab"
	SwapTargetMask  = "/etc/systemd/system/swap.target"
	HostnameFile    = "/etc/hostname"
	// RefusalsFile remembers, for the current boot only (/run is a tmpfs), what the
	// kernel refused, so that a re-run does not report the same unfixable change
	// again. See PrepPhase.
	RefusalsFile = "/run/nodeagent/host-prep-refused.json"
)

// DefaultSysctls are what kube-proxy and bridged pod networking need on every
// node (config.DefaultSysctls; a copy, so callers cannot change the defaults).
func DefaultSysctls() map[string]string { return maps.Clone(config.DefaultSysctls) }

// DefaultKernelModules are loaded on every node: overlay for the container
// runtime's snapshotter, br_netfilter so bridged traffic passes iptables.
func DefaultKernelModules() []string { return slices.Clone(config.DefaultKernelModules) }
