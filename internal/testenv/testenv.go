// Package testenv is the emulated AWS side of an end-to-end run: a wire-level
// emulator (EC2, S3, Auto Scaling and one IMDS per instance) on loopback HTTP, an
// assets bucket and a plain HTTP mirror serving real binaries with their SHA-256,
// and the user-data that makes a node of a given role. The end-to-end tests and
// `make demo` share it, so the demo shows exactly what the tests check.
package testenv

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nodeagent/nodeagent/awsemu"
	"github.com/nodeagent/nodeagent/config"
	"github.com/nodeagent/nodeagent/internal/releasearchive"
)

// AssetsBucket holds the binaries nodes install, under assets/<name>.
const AssetsBucket = "nodeagent-assets"

// Binary is a real executable served to nodes as a verified asset.
type Binary struct {
	Name string // asset name, installed as /usr/local/bin/<name>
	Path string // host path of the file served
}

// DefaultKubelet is where hack/build-k8s.sh caches the kubelet it builds.
const DefaultKubelet = "/var/cache/nodeagent-e2e/kubelet-v1.34.4"

// WorkerBinaries are the plain executables a containerd worker installs, as
// upstream publishes them: runc from Debian's package and a kubelet built from
// source. containerd and the CNI plugins come as archives (WorkerArchives).
func WorkerBinaries(kubelet string) ([]Binary, error) {
	if kubelet == "" {
		kubelet = DefaultKubelet
	}
	bins := []Binary{
		{Name: "runc", Path: "/usr/sbin/runc"},
		{Name: "kubelet", Path: kubelet},
	}
	var missing []string
	for _, b := range bins {
		if _, err := os.Stat(b.Path); err != nil {
			missing = append(missing, b.Path)
		}
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("asset binaries missing: %s (apt-get install runc; hack/build-k8s.sh)", strings.Join(missing, ", "))
	}
	return bins, nil
}

// CNIPlugins are the CNI plugins a kubenet node needs (bridge, IPAM, hostPort,
// the CRI plugin's lo), from Debian's containernetworking-plugins.
var CNIPlugins = []string{"bridge", "host-local", "loopback", "portmap"}

// Archive is a release archive in upstream's layout, built from host files,
// served as one asset whose members the node installs.
type Archive struct {
	Name    string // asset name
	File    string // served file name, e.g. containerd-1.6-linux-amd64.tar.gz
	Files   []releasearchive.File
	Members []config.ArchiveMember
}

// WorkerArchives are containerd and the CNI plugins as their projects publish
// them, made from Debian's binaries: containerd's tarball with its binaries
// under bin/ (as 1.6 ships it: containerd, the shims, ctr), of which containerd,
// the runc v2 shim and ctr are installed; the CNI plugins' flat tarball ("./"
// names, LICENSE and README.md beside the plugins), every plugin of which is
// installed into /opt/cni/bin.
func WorkerArchives() ([]Archive, error) {
	ctd := Archive{Name: "containerd", File: "containerd-1.6-linux-amd64.tar.gz",
		Files: []releasearchive.File{{Name: "bin/", Dir: true}},
		Members: []config.ArchiveMember{
			{Name: "bin/containerd", Path: "/usr/local/bin/containerd"},
			{Name: "bin/containerd-shim-runc-v2", Path: "/usr/local/bin/"},
			{Name: "bin/ctr", Path: "/usr/local/bin/ctr"},
		}}
	var missing []string
	for _, b := range []string{"containerd", "containerd-shim", "containerd-shim-runc-v1", "containerd-shim-runc-v2", "ctr"} {
		if _, err := os.Stat("/usr/bin/" + b); err != nil {
			missing = append(missing, "/usr/bin/"+b)
		}
		ctd.Files = append(ctd.Files, releasearchive.File{Name: "bin/" + b, From: "/usr/bin/" + b})
	}
	cni := Archive{Name: "cni-plugins", File: "cni-plugins-linux-amd64-v1.1.1.tgz",
		Files: []releasearchive.File{{Name: "./", Dir: true}},
		Members: []config.ArchiveMember{
			{Name: "*", Exclude: []string{"LICENSE", "README.md"}, Path: "/opt/cni/bin/"},
		}}
	for _, p := range CNIPlugins {
		if _, err := os.Stat("/usr/lib/cni/" + p); err != nil {
			missing = append(missing, "/usr/lib/cni/"+p)
		}
		cni.Files = append(cni.Files, releasearchive.File{Name: "./" + p, From: "/usr/lib/cni/" + p})
	}
	cni.Files = append(cni.Files,
		releasearchive.File{Name: "./LICENSE", Body: []byte("Apache License, Version 2.0\n"), Mode: 0o644},
		releasearchive.File{Name: "./README.md", Body: []byte("Some CNI network plugins, maintained by the containernetworking team.\n"), Mode: 0o644})
	if len(missing) > 0 {
		return nil, fmt.Errorf("archive binaries missing: %s (apt-get install containerd containernetworking-plugins)", strings.Join(missing, ", "))
	}
	return []Archive{ctd, cni}, nil
}

// DefaultArchiveDir keeps the archives Start builds, by a hash of their inputs,
// so that every test of a run builds each once.
const DefaultArchiveDir = "/var/cache/nodeagent-e2e/archives"

// buildArchive writes a (deterministic) into dir unless a copy built from the
// same inputs is there, and returns its path.
func buildArchive(dir string, a Archive) (string, error) {
	h := sha256.New()
	fmt.Fprintf(h, "%s\n", a.File)
	for _, f := range a.Files {
		fmt.Fprintf(h, "%s|%s|%s|%s|%v|%o|%x\n", f.Name, f.From, f.Symlink, f.Hardlink, f.Dir, f.Mode, f.Body)
		if f.From != "" {
			fi, err := os.Stat(f.From)
			if err != nil {
				return "", fmt.Errorf("archive %s: %w", a.File, err)
			}
			fmt.Fprintf(h, "%d %d\n", fi.Size(), fi.ModTime().UnixNano())
		}
	}
	path := filepath.Join(dir, hex.EncodeToString(h.Sum(nil))[:16]+"-"+a.File)
	if _, err := os.Stat(path); err == nil {
		return path, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	tmp := filepath.Join(dir, fmt.Sprintf(".%d-%s", os.Getpid(), a.File))
	if err := releasearchive.Write(tmp, a.Files); err != nil {
		return "", err
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return "", err
	}
	return path, nil
}

// Options configure an Env.
type Options struct {
	// Binaries are served from the assets bucket and the HTTP mirror.
	Binaries []Binary
	// Archives are built (cached in ArchiveDir, default DefaultArchiveDir) and
	// served the same way, each as one archive asset.
	Archives   []Archive
	ArchiveDir string
	// VolumeDir holds the emulator's volume backing files ("" = private temp dir).
	VolumeDir string
	Log       *slog.Logger
	// Listen opens each endpoint's listener; nil means a free port on loopback.
	// Nodes in their own network namespaces need the endpoints on an address
	// they can reach (netns.ListenIn on the lab's bridge).
	Listen func() (net.Listener, error)
	// Devices shows attached volumes to instances (awsemu.Options.Devices).
	Devices awsemu.DeviceLinker
}

// Env is a running emulated AWS account plus an assets mirror.
type Env struct {
	Emu *awsemu.Emulator
	// URL is the AWS endpoint (AWS_ENDPOINT_URL) for EC2, S3 and Auto Scaling.
	URL string
	// MirrorURL serves the same binaries over plain HTTP.
	MirrorURL string
	// Assets lists every binary with the HTTP mirror first and S3 second, as a
	// NodeConfig would.
	Assets []config.Asset

	world  *awsemu.World
	log    *slog.Logger
	listen func() (net.Listener, error)

	mirrorRequests atomic.Int64

	mu      sync.Mutex
	servers []*http.Server
	imds    map[string]string
}

// Start serves w (plus the assets) on loopback ports. Close stops everything.
func Start(o Options, w *awsemu.World) (*Env, error) {
	if o.Log == nil {
		o.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	e := &Env{world: w, log: o.Log, imds: map[string]string{}, listen: o.Listen}
	if e.listen == nil {
		e.listen = func() (net.Listener, error) { return net.Listen("tcp", "127.0.0.1:0") }
	}
	if w.ObjectFiles == nil {
		w.ObjectFiles = map[string]map[string]string{}
	}
	if w.ObjectFiles[AssetsBucket] == nil {
		w.ObjectFiles[AssetsBucket] = map[string]string{}
	}
	mirror := http.NewServeMux()
	var sums []config.Asset
	var files []string // served name of each of sums
	serveFile := func(name, path string) (string, error) {
		sum, err := fileSHA256(path)
		if err != nil {
			return "", err
		}
		w.ObjectFiles[AssetsBucket]["assets/"+name] = path
		mirror.HandleFunc("/assets/"+name, func(rw http.ResponseWriter, r *http.Request) {
			e.mirrorRequests.Add(1)
			http.ServeFile(rw, r, path)
		})
		return sum, nil
	}
	for _, b := range o.Binaries {
		sum, err := serveFile(b.Name, b.Path)
		if err != nil {
			return nil, err
		}
		sums = append(sums, config.Asset{Name: b.Name, SHA256: sum})
		files = append(files, b.Name)
	}
	if o.ArchiveDir == "" {
		o.ArchiveDir = DefaultArchiveDir
	}
	for _, a := range o.Archives {
		path, err := buildArchive(o.ArchiveDir, a)
		if err != nil {
			return nil, err
		}
		sum, err := serveFile(a.File, path)
		if err != nil {
			return nil, err
		}
		sums = append(sums, config.Asset{Name: a.Name, SHA256: sum, Archive: &config.AssetArchive{Members: a.Members}})
		files = append(files, a.File)
	}
	emu, err := awsemu.New(w, awsemu.Options{VolumeDir: o.VolumeDir, Log: o.Log, Devices: o.Devices})
	if err != nil {
		return nil, fmt.Errorf("emulator: %w", err)
	}
	e.Emu = emu
	if e.URL, err = e.serve(emu.Handler()); err != nil {
		e.Close()
		return nil, err
	}
	if e.MirrorURL, err = e.serve(mirror); err != nil {
		e.Close()
		return nil, err
	}
	for k, a := range sums {
		a.URLs = []string{e.MirrorURL + "/assets/" + files[k], "s3://" + AssetsBucket + "/assets/" + files[k]}
		e.Assets = append(e.Assets, a)
	}
	return e, nil
}

// MirrorRequests counts the requests the HTTP mirror answered.
func (e *Env) MirrorRequests() int64 { return e.mirrorRequests.Load() }

// serve starts h on a new listener and returns its base URL.
func (e *Env) serve(h http.Handler) (string, error) {
	ln, err := e.listen()
	if err != nil {
		return "", fmt.Errorf("listen: %w", err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	e.mu.Lock()
	e.servers = append(e.servers, srv)
	e.mu.Unlock()
	return "http://" + ln.Addr().String(), nil
}

// IMDS returns the metadata endpoint of one instance, starting it on first use.
func (e *Env) IMDS(instanceID string) (string, error) {
	e.mu.Lock()
	u, ok := e.imds[instanceID]
	e.mu.Unlock()
	if ok {
		return u, nil
	}
	u, err := e.serve(e.Emu.IMDSHandler(instanceID))
	if err != nil {
		return "", err
	}
	e.mu.Lock()
	e.imds[instanceID] = u
	e.mu.Unlock()
	return u, nil
}

// AWSEnv is the environment of an agent running as instanceID: the SDK's own
// endpoint and credential variables, nothing test-specific.
func (e *Env) AWSEnv(instanceID string) ([]string, error) {
	region := e.world.Region
	if region == "" {
		region = awsemu.DefaultRegion
	}
	akid, secret := e.world.AccessKeyID, e.world.SecretAccessKey
	if akid == "" {
		akid, secret = awsemu.DefaultAccessKeyID, awsemu.DefaultSecretAccessKey
	}
	env := []string{
		"AWS_ENDPOINT_URL=" + e.URL,
		"AWS_REGION=" + region,
		"AWS_ACCESS_KEY_ID=" + akid,
		"AWS_SECRET_ACCESS_KEY=" + secret,
		"AWS_CONFIG_FILE=/dev/null",
		"AWS_SHARED_CREDENTIALS_FILE=/dev/null",
	}
	if instanceID != "" {
		u, err := e.IMDS(instanceID)
		if err != nil {
			return nil, err
		}
		env = append(env, "AWS_EC2_METADATA_SERVICE_ENDPOINT="+u)
	}
	return env, nil
}

// Close stops every server and the emulator (detaching its loop devices).
func (e *Env) Close() error {
	e.mu.Lock()
	servers := e.servers
	e.servers = nil
	e.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, s := range servers {
		_ = s.Shutdown(ctx)
	}
	if e.Emu != nil {
		return e.Emu.Close()
	}
	return nil
}

// HostIP is this machine's primary IPv4 address (the source of its default
// route): nspawn nodes share the host's network, so it is their private IP too.
func HostIP() (string, error) {
	c, err := net.Dial("udp4", "10.255.255.1:9")
	if err != nil {
		return "", fmt.Errorf("find host IP: %w", err)
	}
	defer c.Close()
	ip := c.LocalAddr().(*net.UDPAddr).IP
	if ip == nil || ip.IsLoopback() {
		return "", errors.New("find host IP: no non-loopback route")
	}
	return ip.String(), nil
}

func fileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("hash %s: %w", path, err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("hash %s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// SortedAssets returns a copy of list ordered by name (stable user-data).
func SortedAssets(list []config.Asset) []config.Asset {
	out := append([]config.Asset(nil), list...)
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}
