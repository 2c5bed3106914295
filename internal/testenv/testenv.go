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
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/nodeagent/nodeagent/awsemu"
	"github.com/nodeagent/nodeagent/config"
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

// WorkerBinaries are the executables a containerd worker installs: containerd and
// runc from Debian's packages, and a kubelet built from source.
func WorkerBinaries(kubelet string) ([]Binary, error) {
	if kubelet == "" {
		kubelet = DefaultKubelet
	}
	bins := []Binary{
		{Name: "containerd", Path: "/usr/bin/containerd"},
		{Name: "containerd-shim-runc-v2", Path: "/usr/bin/containerd-shim-runc-v2"},
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
		return nil, fmt.Errorf("asset binaries missing: %s (apt-get install containerd runc; hack/build-k8s.sh)", strings.Join(missing, ", "))
	}
	return bins, nil
}

// Options configure an Env.
type Options struct {
	// Binaries are served from the assets bucket and the HTTP mirror.
	Binaries []Binary
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
	for _, b := range o.Binaries {
		sum, err := fileSHA256(b.Path)
		if err != nil {
			return nil, err
		}
		w.ObjectFiles[AssetsBucket]["assets/"+b.Name] = b.Path
		path := b.Path
		mirror.HandleFunc("/assets/"+b.Name, func(rw http.ResponseWriter, r *http.Request) { http.ServeFile(rw, r, path) })
		sums = append(sums, config.Asset{Name: b.Name, SHA256: sum})
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
	for _, a := range sums {
		a.URLs = []string{e.MirrorURL + "/assets/" + a.Name, "s3://" + AssetsBucket + "/assets/" + a.Name}
		e.Assets = append(e.Assets, a)
	}
	return e, nil
}

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
