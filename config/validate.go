package config

import (
	"fmt"
	"maps"
	"net"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/nodeagent/nodeagent/addons"
	"github.com/nodeagent/nodeagent/internal/lazyre"
)

// FieldError is one problem with a NodeConfig, located by its field path
// (e.g. spec.assets[1].sha256).
type FieldError struct {
	Path    string
	Message string
}

func (e FieldError) Error() string { return e.Path + ": " + e.Message }

// ValidationError lists every problem found, so a user fixes them all in one go.
type ValidationError []FieldError

func (v ValidationError) Error() string {
	msgs := make([]string, len(v))
	for i, e := range v {
		msgs[i] = e.Error()
	}
	return fmt.Sprintf("invalid NodeConfig (%s): %s", Problems(len(v)), strings.Join(msgs, "; "))
}

// Problems counts problems in English: "1 problem", "2 problems".
func Problems(n int) string {
	if n == 1 {
		return "1 problem"
	}
	return fmt.Sprintf("%d problems", n)
}

var (
	dns1123Label   = lazyre.New(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)
	sha256Hex      = lazyre.New(`^[0-9a-f]{64}$`)
	k8sVersion     = lazyre.New(`^v1\.[0-9]+\.[0-9]+$`)
	imageTagRE     = lazyre.New(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$`)
	sysctlKey      = lazyre.New(`^[a-z0-9_]+(\.[a-zA-Z0-9_-]+)+$`)
	moduleName     = lazyre.New(`^[a-zA-Z0-9_-]+$`)
	assetName      = lazyre.New(`^[a-zA-Z0-9][a-zA-Z0-9._-]*$`)
	labelNameRegex = lazyre.New(`^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$`)
	labelValue     = lazyre.New(`^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$`)

	// An image reference as the distribution grammar has it, narrowed to what
	// an imported archive can be found by: [host[:port]/]path[/path...]:tag.
	registryHost = `[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?(\.[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?)*(:[0-9]+)?`
	pathPart     = `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
	imageTagged  = lazyre.New(`^(` + registryHost + `/)?` + pathPart + `(/` + pathPart + `)*:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$`)
	// registryPrefix is what spec.images.registry may be: a host followed by
	// path components, the part of a reference before the image's own name.
	registryPrefix = lazyre.New(`^` + registryHost + `(/` + pathPart + `)*$`)
	// mirrorKey is a registry host as containerd names its hosts.toml
	// directories: lower case, with an optional port.
	mirrorKey = lazyre.New(`^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*(:[0-9]+)?$`)
)

// Validate checks a defaulted NodeConfig and returns a ValidationError listing every
// problem, or nil.
func (c *NodeConfig) Validate() error {
	var errs ValidationError
	add := func(path, format string, args ...any) {
		errs = append(errs, FieldError{Path: path, Message: fmt.Sprintf(format, args...)})
	}
	if c.APIVersion != APIVersion {
		add("apiVersion", "must be %q, got %q", APIVersion, c.APIVersion)
	}
	if c.Kind != Kind {
		add("kind", "must be %q, got %q", Kind, c.Kind)
	}
	s := &c.Spec

	switch {
	case s.Cluster.Name == "":
		add("spec.cluster.name", "required")
	case !IsDNS1123Subdomain(s.Cluster.Name):
		add("spec.cluster.name", "%q is not a DNS-1123 subdomain (lower case letters, digits, '-' and '.')", s.Cluster.Name)
	}
	if s.Cluster.StateStore != "" {
		if _, _, err := ParseS3URL(s.Cluster.StateStore); err != nil {
			add("spec.cluster.stateStore", "%v", err)
		}
	}
	if s.Cluster.APIServer != "" {
		if _, _, err := net.SplitHostPort(s.Cluster.APIServer); err != nil {
			add("spec.cluster.apiServer", "must be host:port: %v", err)
		}
	}

	switch s.Role {
	case RoleControlPlane, RoleNode:
	case "":
		add("spec.role", "required: ControlPlane or Node")
	default:
		add("spec.role", "must be ControlPlane or Node, got %q", s.Role)
	}
	switch {
	case s.KubernetesVersion == "":
		add("spec.kubernetesVersion", "required, e.g. v1.31.2")
	case !k8sVersion().MatchString(s.KubernetesVersion):
		add("spec.kubernetesVersion", "%q is not of the form v1.MINOR.PATCH", s.KubernetesVersion)
	}
	switch s.ContainerRuntime {
	case RuntimeContainerd, RuntimeDocker:
	default:
		add("spec.containerRuntime", "must be containerd or docker, got %q", s.ContainerRuntime)
	}

	names := map[string]int{}
	paths := map[string]string{}
	for i, a := range s.Assets {
		p := fmt.Sprintf("spec.assets[%d]", i)
		_, dupName := names[a.Name]
		switch {
		case a.Name == "":
			add(p+".name", "required")
		case !assetName().MatchString(a.Name):
			add(p+".name", "%q: only letters, digits, '.', '_' and '-'", a.Name)
		default:
			if j, dup := names[a.Name]; dup {
				add(p+".name", "%q already used by spec.assets[%d]", a.Name, j)
			}
			names[a.Name] = i
		}
		validateSource(add, p, "asset", a.URLs, a.SHA256)
		if a.Archive != nil {
			validateArchive(add, p, a, paths)
			continue
		}
		if a.Path != "" {
			if !strings.HasPrefix(a.Path, "/") || strings.Contains(a.Path, "..") {
				add(p+".path", "must be an absolute path without '..', got %q", a.Path)
			} else if prev, dup := paths[a.Path]; dup && !dupName {
				add(p+".path", "%q already used by %s", a.Path, prev)
			} else {
				paths[a.Path] = p
			}
		}
	}

	validateImages(s, add)

	for _, k := range slices.Sorted(maps.Keys(s.Kubelet.NodeLabels)) {
		p := "spec.kubelet.nodeLabels[" + k + "]"
		if !labelNameRegex().MatchString(k) || len(k) > 316 {
			add(p, "invalid label key %q", k)
		}
		if v := s.Kubelet.NodeLabels[k]; len(v) > 63 || !labelValue().MatchString(v) {
			add(p, "invalid label value %q", v)
		}
	}
	for _, k := range []string{"apiVersion", "kind", "staticPodPath", "cgroupDriver"} {
		if _, set := s.Kubelet.Config[k]; set {
			add("spec.kubelet.config."+k, "is managed by nodeagent and cannot be overridden")
		}
	}

	for _, k := range slices.Sorted(maps.Keys(s.Host.Sysctls)) {
		if !sysctlKey().MatchString(k) {
			add("spec.host.sysctls["+k+"]", "invalid sysctl name")
		}
		if v := s.Host.Sysctls[k]; v == "" || strings.ContainsAny(v, "\n\r") {
			add("spec.host.sysctls["+k+"]", "value must be a non-empty single line")
		}
	}
	for i, m := range s.Host.KernelModules {
		if !moduleName().MatchString(m) {
			add(fmt.Sprintf("spec.host.kernelModules[%d]", i), "invalid module name %q", m)
		}
	}
	if s.Host.Hostname != "" && !IsDNS1123Subdomain(s.Host.Hostname) {
		add("spec.host.hostname", "%q is not a valid host name", s.Host.Hostname)
	}

	if s.Etcd != nil {
		if v := s.Etcd.Version; v != "" && !imageTagRE().MatchString(v) {
			add("spec.etcd.version", "%q is not usable as an image tag, e.g. %s", v, DefaultEtcdVersion)
		}
		if s.Role != RoleControlPlane {
			add("spec.etcd", "only allowed when spec.role is ControlPlane")
		}
		ports := map[int]string{}
		seen := map[string]bool{}
		for i, ec := range s.Etcd.Clusters {
			p := fmt.Sprintf("spec.etcd.clusters[%d]", i)
			if !dns1123Label().MatchString(ec.Name) {
				add(p+".name", "%q is not a DNS-1123 label", ec.Name)
			} else if seen[ec.Name] {
				add(p+".name", "%q is listed twice", ec.Name)
			}
			seen[ec.Name] = true
			for _, port := range []struct {
				field string
				v     int
			}{{"clientPort", ec.ClientPort}, {"peerPort", ec.PeerPort}} {
				if port.v < 1 || port.v > 65535 {
					add(p+"."+port.field, "must be 1-65535, got %d", port.v)
					continue
				}
				if other, dup := ports[port.v]; dup {
					add(p+"."+port.field, "port %d already used by %s", port.v, other)
				}
				ports[port.v] = p + "." + port.field
			}
		}
	}

	if s.Etcd != nil {
		b := s.Etcd.Backups
		for _, f := range []struct{ field, v string }{{"schedule", b.Schedule}, {"keepHourly", b.KeepHourly}, {"keepDaily", b.KeepDaily}} {
			if d, err := time.ParseDuration(f.v); f.v != "" && (err != nil || d <= 0) {
				add("spec.etcd.backups."+f.field, "must be a positive duration such as 1h, got %q", f.v)
			}
		}
	}

	if s.Gossip.Port < 1 || s.Gossip.Port > 65535 {
		add("spec.gossip.port", "must be 1-65535, got %d", s.Gossip.Port)
	}
	if s.Gossip.SecretKeyFile != "" && !strings.HasPrefix(s.Gossip.SecretKeyFile, "/") {
		add("spec.gossip.secretKeyFile", "must be an absolute path")
	}
	if GossipCluster(s.Cluster.Name) && s.Gossip.SecretKeyFile == "" && s.Cluster.StateStore == "" {
		// The daemon joins the gossip ring of every .k8s.local cluster and cannot
		// without a key: said here, before the host is touched, not by a
		// crash-looping nodeagent.service after the boot.
		add("spec.gossip.secretKeyFile", "a .k8s.local cluster runs the gossip ring, which needs its key: set spec.gossip.secretKeyFile, or spec.cluster.stateStore holding nodeagent/gossip.key")
	}
	if d, err := time.ParseDuration(s.AssetChecks.FullCheckInterval); err != nil || d < time.Minute {
		add("spec.assetChecks.fullCheckInterval", "must be a duration of at least 1m such as 24h, got %q", s.AssetChecks.FullCheckInterval)
	}
	if d, err := time.ParseDuration(s.Readiness.Timeout); err != nil || d <= 0 {
		add("spec.readiness.timeout", "must be a positive duration such as 10m, got %q", s.Readiness.Timeout)
	}
	if t := s.Readiness.DrainTimeout; t != "" {
		if d, err := time.ParseDuration(t); err != nil || d <= 0 {
			add("spec.readiness.drainTimeout", "must be a positive duration such as 90s, got %q", t)
		}
	}
	for _, f := range []struct{ path, v string }{
		{"spec.networking.serviceCIDR", s.Networking.ServiceCIDR},
		{"spec.networking.podCIDR", s.Networking.PodCIDR},
	} {
		if _, _, err := net.ParseCIDR(f.v); err != nil {
			add(f.path, "%q is not a CIDR", f.v)
		}
	}
	if ip := net.ParseIP(s.Networking.ClusterDNS); ip == nil {
		add("spec.networking.clusterDNS", "%q is not an IP address", s.Networking.ClusterDNS)
	} else if _, svc, err := net.ParseCIDR(s.Networking.ServiceCIDR); err == nil && !svc.Contains(ip) {
		// The CoreDNS Service gets this address: it must be a service IP.
		add("spec.networking.clusterDNS", "%s is not in spec.networking.serviceCIDR %s", ip, s.Networking.ServiceCIDR)
	}
	if n := s.KubeProxy.ConntrackMaxPerCore; n != nil && *n < 0 {
		add("spec.kubeProxy.conntrackMaxPerCore", "must be 0 or more, got %d", *n)
	}
	known := addons.BuiltinNames()
	for i, d := range s.Addons.Disable {
		if !slices.Contains(known, d) {
			add(fmt.Sprintf("spec.addons.disable[%d]", i), "no built-in add-on %q (built-in: %s)", d, strings.Join(known, ", "))
		}
	}
	switch s.Networking.Mode {
	case NetworkKubenet, NetworkCNI:
	default:
		add("spec.networking.mode", "must be kubenet or cni, got %q", s.Networking.Mode)
	}
	switch s.Networking.PodRoutes {
	case PodRoutesNone:
	case PodRoutesGossip:
		if !GossipCluster(s.Cluster.Name) {
			add("spec.networking.podRoutes", "gossip needs the gossip ring, which runs only for a cluster whose name ends in .k8s.local; use none")
		}
	default:
		add("spec.networking.podRoutes", "must be gossip or none, got %q", s.Networking.PodRoutes)
	}
	if (s.PKI.CACertFile == "") != (s.PKI.CAKeyFile == "") {
		add("spec.pki", "caCertFile and caKeyFile go together")
	}
	if v := s.PKI.NodeCredentialsValidity; v != "" {
		if d, err := time.ParseDuration(v); err != nil || d < time.Minute || d > 8760*time.Hour {
			add("spec.pki.nodeCredentialsValidity", "must be a duration from 1m to 8760h, got %q", v)
		}
	}
	if len(errs) == 0 {
		return nil
	}
	return errs
}

// validateImages checks spec.images and spec.containerd.
func validateImages(s *Spec, add func(path, format string, args ...any)) {
	registry := strings.TrimSuffix(s.Images.Registry, "/")
	badRegistry := len(registry) > 255 || !registryPrefix().MatchString(registry)
	if badRegistry {
		add("spec.images.registry", "%q is not a registry such as registry.k8s.io or mirror.example:5000/k8s", s.Images.Registry)
	}
	// A pause image derived from a bad registry is the registry's problem, said once.
	derived := s.Images.PauseImage == registry+"/"+DefaultPauseImageName
	if p := s.Images.PauseImage; !IsImageReference(p) && !(badRegistry && derived) {
		add("spec.images.pauseImage", "%q is not an image reference with a tag, e.g. registry.k8s.io/pause:3.10", p)
	}
	names := map[string]int{}
	for i, a := range s.Images.Archives {
		p := fmt.Sprintf("spec.images.archives[%d]", i)
		switch {
		case a.Name == "":
			add(p+".name", "required: the image reference the archive carries, e.g. registry.k8s.io/kube-apiserver:v1.34.4")
		case !IsImageReference(a.Name):
			add(p+".name", "%q is not an image reference with a tag, e.g. registry.k8s.io/kube-apiserver:v1.34.4", a.Name)
		default:
			if j, dup := names[a.Name]; dup {
				add(p+".name", "%q already used by spec.images.archives[%d]", a.Name, j)
			}
			names[a.Name] = i
		}
		validateSource(add, p, "archive", a.URLs, a.SHA256)
	}

	mirrors := s.Containerd.RegistryMirrors
	if len(mirrors) > 0 && s.ContainerRuntime == RuntimeDocker {
		add("spec.containerd.registryMirrors", "only used with containerRuntime containerd: Docker's pulls do not read containerd's hosts.toml")
	}
	for _, host := range slices.Sorted(maps.Keys(mirrors)) {
		p := "spec.containerd.registryMirrors[" + host + "]"
		if len(host) > 255 || !mirrorKey().MatchString(host) {
			add(p, "%q is not a registry host such as registry.k8s.io or mirror.example:5000 (lower case)", host)
		}
		if len(mirrors[host]) == 0 {
			add(p, "at least one mirror URL is required")
		}
		for j, m := range mirrors[host] {
			if err := validateMirrorURL(m); err != nil {
				add(fmt.Sprintf("%s[%d]", p, j), "%v", err)
			}
		}
	}
}

// IsImageReference reports whether s is an image reference with a tag, such as
// registry.k8s.io/kube-apiserver:v1.34.4 or busybox:1.36 (no digest).
func IsImageReference(s string) bool {
	return len(s) <= 255 && imageTagged().MatchString(s)
}

func validateMirrorURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Errorf("%q is not a URL", raw)
	}
	switch {
	case u.Scheme != "https" && u.Scheme != "http":
		return fmt.Errorf("%q: scheme must be https or http", raw)
	case u.Host == "":
		return fmt.Errorf("%q has no host", raw)
	case u.User != nil || u.RawQuery != "" || u.Fragment != "":
		return fmt.Errorf("%q: no credentials, query or fragment", raw)
	case strings.ContainsAny(raw, "\"\n\r"):
		return fmt.Errorf("%q: quotes and line breaks are not allowed", raw)
	}
	return nil
}

// IsDNS1123Subdomain reports whether s is a valid DNS-1123 subdomain.
func IsDNS1123Subdomain(s string) bool {
	if len(s) == 0 || len(s) > 253 {
		return false
	}
	for _, label := range strings.Split(s, ".") {
		if len(label) > 63 || !dns1123Label().MatchString(label) {
			return false
		}
	}
	return true
}

// ParseS3URL splits s3://bucket/key/prefix into bucket and key (without leading slash).
func ParseS3URL(raw string) (bucket, key string, err error) {
	u, err := url.Parse(raw)
	if err != nil {
		return "", "", fmt.Errorf("%q is not a URL: %w", raw, err)
	}
	if u.Scheme != "s3" || u.Host == "" {
		return "", "", fmt.Errorf("%q is not of the form s3://bucket/path", raw)
	}
	return u.Host, strings.TrimPrefix(u.Path, "/"), nil
}

func validateAssetURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Errorf("%q is not a URL", raw)
	}
	switch u.Scheme {
	case "http", "https":
		if u.Host == "" {
			return fmt.Errorf("%q has no host", raw)
		}
	case "s3":
		if _, key, err := ParseS3URL(raw); err != nil {
			return err
		} else if key == "" {
			return fmt.Errorf("%q names no object", raw)
		}
	case "file":
		if u.Path == "" {
			return fmt.Errorf("%q has no path", raw)
		}
	default:
		return fmt.Errorf("%q: scheme must be https, http, s3 or file", raw)
	}
	return nil
}

// validateSource checks what every verified download has: at least one usable
// URL and the SHA-256 it must match. what names the thing (asset, archive).
func validateSource(add func(path, format string, args ...any), p, what string, urls []string, sum string) {
	if len(urls) == 0 {
		add(p+".urls", "at least one URL is required")
	}
	for j, u := range urls {
		if err := validateAssetURL(u); err != nil {
			add(fmt.Sprintf("%s.urls[%d]", p, j), "%v", err)
		}
	}
	switch {
	case sum == "":
		add(p+".sha256", "required: the %s's SHA-256 as 64 hex characters", what)
	case !sha256Hex().MatchString(sum):
		add(p+".sha256", "must be 64 hex characters, got %d characters", len(sum))
	}
}
