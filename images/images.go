// Package images imports the image archives a node runs without a registry
// (spec.images.archives: the control-plane images, the pause image, add-ons)
// into the container runtime's image store before kubelet starts.
//
// Each archive is fetched into the verified asset cache by the assets installer
// (mirrors, retries, SHA-256, cache by hash) and imported with the runtime's own
// tool: containerd's `ctr images import` into the k8s.io namespace, where the
// CRI plugin (and so kubelet) finds it, or Docker's `docker load`, where
// cri-dockerd finds it. containerd imports unpack the layers into the default
// snapshotter, so the first pod start does not pay for it. Gzip-compressed
// archives are decompressed on the way in (ctr reads plain tar only).
//
// What was imported is recorded in <state dir>/images/imported.json: for each
// reference, the archive's SHA-256 and the digest the runtime gave the image.
// A reference is imported again when it is missing from the store, when its
// archive changed, or when the store's digest is no longer the one imported
// (someone pulled or tagged over it).
package images

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path"
	"strings"
	"time"

	"github.com/nodeagent/nodeagent/bootstrap"
	"github.com/nodeagent/nodeagent/config"
	"github.com/nodeagent/nodeagent/internal/fsutil"
)

// PhaseName is the name of the phase in status.
const PhaseName = "images"

// Defaults for Options.
const (
	DefaultBinDir            = "/usr/local/bin"
	DefaultStateDir          = "/var/lib/nodeagent"
	DefaultContainerdAddress = "/run/containerd/containerd.sock"
	DefaultDockerAddress     = "/run/docker.sock"
	// Namespace is containerd's namespace for the CRI plugin's images.
	Namespace = "k8s.io"
)

// RecordPath is where the record of imports lives under the state directory.
const RecordPath = "images/imported.json"

// Fetcher puts a verified copy of an asset into the cache and says where it is
// (assets.Installer).
type Fetcher interface {
	Fetch(ctx context.Context, a config.Asset) (cachePath, source string, err error)
}

// Exec runs a command with stdin (nil for none) and returns its standard
// output; a failure's error carries the command's standard error.
type Exec interface {
	Run(ctx context.Context, stdin io.Reader, name string, args ...string) ([]byte, error)
}

// Options configure the images phase.
type Options struct {
	Root     fsutil.Root
	Runtime  config.Runtime // containerd (default) or docker
	Archives []config.ImageArchive
	Fetcher  Fetcher
	// BinDir is where the assets phase installed ctr or docker; they are looked
	// for there first, then in PATH.
	BinDir string
	// Address is the runtime's socket as this process reaches it (not resolved
	// under Root); default /run/containerd/containerd.sock, or /run/docker.sock
	// for Docker, under Root.
	Address string
	// StateDir holds the record of imports; default /var/lib/nodeagent.
	StateDir string
	Exec     Exec // default: os/exec
	Log      *slog.Logger
}

func (o Options) withDefaults() Options {
	if o.Runtime == "" {
		o.Runtime = config.RuntimeContainerd
	}
	if o.BinDir == "" {
		o.BinDir = DefaultBinDir
	}
	if o.Address == "" {
		o.Address = o.Root.Path(DefaultContainerdAddress)
		if o.Runtime == config.RuntimeDocker {
			o.Address = o.Root.Path(DefaultDockerAddress)
		}
	}
	if o.StateDir == "" {
		o.StateDir = DefaultStateDir
	}
	if o.Exec == nil {
		o.Exec = osExec{}
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	return o
}

// store is a runtime's image store as the phase uses it.
type store interface {
	// digests returns the digest of each of refs present in the store.
	digests(ctx context.Context, refs []string) (map[string]string, error)
	// load imports the archive read from r (decompressed); file is the archive
	// on disk, as fetched (maybe gzip-compressed).
	load(ctx context.Context, r io.Reader, file string) error
}

// Phase imports the archives. Check lists the store and the record; Act
// fetches and imports what is missing or stale, going on past failures; Verify
// proves every reference is in the store with the digest imported.
type Phase struct {
	o Options
}

var (
	_ bootstrap.Phase  = (*Phase)(nil)
	_ bootstrap.Warner = (*Phase)(nil)
)

// NewPhase returns the "images" phase.
func NewPhase(o Options) *Phase {
	return &Phase{o: o.withDefaults()}
}

func (p *Phase) Name() string { return PhaseName }

// Warnings implements bootstrap.Warner: Docker nodes load archives with docker
// load, which is worth saying since the contract speaks of containerd.
func (p *Phase) Warnings() []string {
	if p.o.Runtime == config.RuntimeDocker && len(p.o.Archives) > 0 {
		return []string{"containerRuntime is docker: image archives are loaded with `docker load` into Docker's image store, where cri-dockerd finds them, not imported into containerd's k8s.io namespace"}
	}
	return nil
}

// Imported is what the record keeps of one imported reference.
type Imported struct {
	Runtime       config.Runtime `json:"runtime"`
	ArchiveSHA256 string         `json:"archiveSHA256"`
	Digest        string         `json:"digest"`
	ImportedAt    time.Time      `json:"importedAt"`
}

type recordFile struct {
	Images map[string]Imported `json:"images"`
}

func (p *Phase) recordPath() string {
	return p.o.Root.Path(path.Join(p.o.StateDir, RecordPath))
}

func (p *Phase) readRecord() (map[string]Imported, error) {
	b, err := os.ReadFile(p.recordPath())
	if errors.Is(err, fs.ErrNotExist) {
		return map[string]Imported{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read image record: %w", err)
	}
	var rf recordFile
	if err := json.Unmarshal(b, &rf); err != nil {
		// A broken record only costs re-imports; it must not block the node.
		p.o.Log.Warn("image record unreadable; importing every archive again", "path", p.recordPath(), "err", err)
		return map[string]Imported{}, nil
	}
	if rf.Images == nil {
		rf.Images = map[string]Imported{}
	}
	return rf.Images, nil
}

func (p *Phase) writeRecord(rec map[string]Imported) error {
	b, err := json.MarshalIndent(recordFile{Images: rec}, "", "  ")
	if err != nil {
		return fmt.Errorf("encode image record: %w", err)
	}
	if err := os.MkdirAll(path.Dir(p.recordPath()), 0o755); err != nil {
		return fmt.Errorf("write image record: %w", err)
	}
	return fsutil.WriteFileAtomic(p.recordPath(), append(b, '\n'), 0o644)
}

// asset is the archive as the assets installer fetches it. Its name only
// labels the installer's logs and errors, and the installer refuses names
// holding '/' or '..'.
func asset(a config.ImageArchive) config.Asset {
	name := strings.NewReplacer("/", "_", "..", "__").Replace(a.Name)
	return config.Asset{Name: "image " + name, URLs: a.URLs, SHA256: strings.ToLower(a.SHA256)}
}

// Bake fetches every archive into the asset cache, verified, and when the
// runtime answers on its socket imports them as Act does, so that a machine
// image baked with it boots without network and, where the runtime ran during
// the bake, without importing. It reports whether it imported; every failure
// is reported, not just the first.
func (p *Phase) Bake(ctx context.Context) (imported bool, err error) {
	if len(p.o.Archives) == 0 {
		return false, nil
	}
	if p.o.Fetcher == nil {
		return false, errors.New("bake images: no fetcher configured")
	}
	var errs []error
	for _, a := range p.o.Archives {
		if _, _, err := p.o.Fetcher.Fetch(ctx, asset(a)); err != nil {
			errs = append(errs, fmt.Errorf("image %s: %w", a.Name, err))
		}
	}
	if len(errs) > 0 {
		return false, errors.Join(errs...)
	}
	d := net.Dialer{Timeout: 2 * time.Second}
	c, err := d.DialContext(ctx, "unix", p.o.Address)
	if err != nil {
		p.o.Log.Info("image archives cached, not imported: the runtime does not answer; the images phase imports them at boot",
			"runtime", p.o.Runtime, "address", p.o.Address, "reason", err)
		return false, nil
	}
	c.Close()
	if err := p.Act(ctx); err != nil {
		return false, err
	}
	return true, p.Verify(ctx)
}

// reason says why an archive must be imported, or "" when it need not be.
func (p *Phase) reason(a config.ImageArchive, digests map[string]string, rec map[string]Imported) string {
	ref := Normalize(a.Name)
	digest, present := digests[ref]
	r, recorded := rec[ref]
	switch {
	case !present:
		return "not in the image store"
	case !recorded:
		return "in the image store but not imported from this archive"
	case r.Runtime != p.o.Runtime:
		return "imported into " + string(r.Runtime)
	case r.ArchiveSHA256 != strings.ToLower(a.SHA256):
		return "archive changed"
	case r.Digest != digest:
		return fmt.Sprintf("the store has %s, not the imported %s", short(digest), short(r.Digest))
	}
	return ""
}

func short(digest string) string {
	if len(digest) > len("sha256:")+12 {
		return digest[:len("sha256:")+12]
	}
	return digest
}

// refs is every archive's normalized reference.
func (p *Phase) refs() []string {
	out := make([]string, 0, len(p.o.Archives))
	for _, a := range p.o.Archives {
		out = append(out, Normalize(a.Name))
	}
	return out
}

// Check lists what Act would import. Before the runtime has a socket (plan on a
// fresh machine), every archive is reported with that reason instead of failing.
func (p *Phase) Check(ctx context.Context) ([]bootstrap.Change, error) {
	if len(p.o.Archives) == 0 {
		return nil, nil
	}
	change := func(a config.ImageArchive, why string) bootstrap.Change {
		return bootstrap.Change{Kind: "image", Target: a.Name, Action: "import",
			Detail: fmt.Sprintf("%s; archive sha256:%s", why, strings.ToLower(a.SHA256)[:min(12, len(a.SHA256))])}
	}
	if _, err := os.Stat(p.o.Address); errors.Is(err, fs.ErrNotExist) {
		var out []bootstrap.Change
		for _, a := range p.o.Archives {
			out = append(out, change(a, fmt.Sprintf("%s is not running yet (no %s)", p.o.Runtime, p.o.Address)))
		}
		return out, nil
	}
	_, todo, _, err := p.survey(ctx)
	if err != nil {
		return nil, err
	}
	var out []bootstrap.Change
	for _, i := range todo {
		out = append(out, change(i.archive, i.why))
	}
	return out, nil
}

// pending is an archive to import and why.
type pending struct {
	archive config.ImageArchive
	why     string
}

// survey compares the store and the record of imports with the archives: it
// returns the runtime's store, the archives to import, in order, and the record.
func (p *Phase) survey(ctx context.Context) (store, []pending, map[string]Imported, error) {
	s, err := p.store()
	if err != nil {
		return nil, nil, nil, err
	}
	digests, err := s.digests(ctx, p.refs())
	if err != nil {
		return nil, nil, nil, err
	}
	rec, err := p.readRecord()
	if err != nil {
		return nil, nil, nil, err
	}
	var todo []pending
	for _, a := range p.o.Archives {
		if why := p.reason(a, digests, rec); why != "" {
			todo = append(todo, pending{a, why})
		}
	}
	return s, todo, rec, nil
}

// Act fetches and imports every archive that needs it. One failing does not
// stop the others, so a single run says everything that is wrong.
func (p *Phase) Act(ctx context.Context) error {
	if len(p.o.Archives) == 0 {
		return nil
	}
	s, todo, rec, err := p.survey(ctx)
	if err != nil {
		return err
	}
	var errs []error
	for _, i := range todo {
		imp, err := p.importOne(ctx, s, i.archive, i.why)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		rec[Normalize(i.archive.Name)] = imp
		if err := p.writeRecord(rec); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (p *Phase) importOne(ctx context.Context, s store, a config.ImageArchive, why string) (Imported, error) {
	if p.o.Fetcher == nil {
		return Imported{}, fmt.Errorf("image %s: no fetcher configured", a.Name)
	}
	log := p.o.Log.With("phase", PhaseName, "image", a.Name)
	file, source, err := p.o.Fetcher.Fetch(ctx, asset(a))
	if err != nil {
		return Imported{}, fmt.Errorf("image %s: %w", a.Name, err)
	}
	start := time.Now()
	if err := p.loadFile(ctx, s, file); err != nil {
		return Imported{}, fmt.Errorf("image %s: import %s: %w", a.Name, file, err)
	}
	ref := Normalize(a.Name)
	digests, err := s.digests(ctx, []string{ref})
	if err != nil {
		return Imported{}, fmt.Errorf("image %s: %w", a.Name, err)
	}
	digest, ok := digests[ref]
	if !ok {
		return Imported{}, fmt.Errorf("image %s: archive %s was imported but the store has no %s: the archive must carry that name "+
			"(docker save's RepoTags, or the io.containerd.image.name or org.opencontainers.image.ref.name annotation of an OCI archive)",
			a.Name, short("sha256:"+strings.ToLower(a.SHA256)), ref)
	}
	log.Info("image imported", "reason", why, "source", source, "digest", digest, "duration", time.Since(start).Round(time.Millisecond))
	return Imported{Runtime: p.o.Runtime, ArchiveSHA256: strings.ToLower(a.SHA256), Digest: digest, ImportedAt: time.Now().UTC()}, nil
}

// loadFile feeds the archive to the store, decompressing gzip on the way.
func (p *Phase) loadFile(ctx context.Context, s store, file string) error {
	f, err := os.Open(file)
	if err != nil {
		return err
	}
	defer f.Close()
	br := bufio.NewReader(f)
	magic, _ := br.Peek(2)
	if !bytes.Equal(magic, []byte{0x1f, 0x8b}) {
		return s.load(ctx, br, file)
	}
	zr, err := gzip.NewReader(br)
	if err != nil {
		return fmt.Errorf("gunzip: %w", err)
	}
	defer zr.Close()
	return s.load(ctx, zr, file)
}

// Verify checks that every archive's reference is in the store with the digest
// recorded when it was imported from that archive.
func (p *Phase) Verify(ctx context.Context) error {
	if len(p.o.Archives) == 0 {
		return nil
	}
	_, todo, _, err := p.survey(ctx)
	if err != nil {
		return err
	}
	var errs []error
	for _, i := range todo {
		errs = append(errs, fmt.Errorf("image %s: %s", i.archive.Name, i.why))
	}
	return errors.Join(errs...)
}

// store returns the runtime's image store, finding its tool.
func (p *Phase) store() (store, error) {
	switch p.o.Runtime {
	case config.RuntimeContainerd:
		bin, err := p.tool("ctr", "containerd")
		if err != nil {
			return nil, err
		}
		return &containerd{exec: p.o.Exec, ctr: bin, address: p.o.Address}, nil
	case config.RuntimeDocker:
		bin, err := p.tool("docker", "Docker Engine")
		if err != nil {
			return nil, err
		}
		return &docker{exec: p.o.Exec, docker: bin, host: "unix://" + p.o.Address}, nil
	}
	return nil, fmt.Errorf("container runtime %q: want containerd or docker", p.o.Runtime)
}

// tool finds a runtime's command-line tool in BinDir (where assets are
// installed), then in PATH.
func (p *Phase) tool(name, shipsWith string) (string, error) {
	inBin := p.o.Root.Path(path.Join(p.o.BinDir, name))
	if fi, err := os.Stat(inBin); err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0 {
		return inBin, nil
	}
	if found, err := exec.LookPath(name); err == nil {
		return found, nil
	}
	return "", fmt.Errorf("%s is needed to import image archives but is neither in %s nor in PATH: add %s (it ships with %s) to spec.assets",
		name, path.Join(p.o.BinDir, name), name, shipsWith)
}

// Normalize spells a reference the way the runtimes store it: Docker Hub
// references get their docker.io/ (and library/) prefix.
func Normalize(ref string) string {
	first, rest, found := strings.Cut(ref, "/")
	if !found || (!strings.ContainsAny(first, ".:") && first != "localhost") {
		first, rest = "docker.io", ref
	}
	if first == "docker.io" && !strings.Contains(rest, "/") {
		rest = "library/" + rest
	}
	return first + "/" + rest
}

// osExec runs commands with os/exec.
type osExec struct{}

func (osExec) Run(ctx context.Context, stdin io.Reader, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdin = stdin
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("%s %s: %w: %s", path.Base(name), strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}
