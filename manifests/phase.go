package manifests

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"maps"
	"os"
	"path"
	"slices"
	"sort"
	"strings"

	"sigs.k8s.io/yaml"

	"github.com/nodeagent/nodeagent/bootstrap"
	"github.com/nodeagent/nodeagent/config"
	"github.com/nodeagent/nodeagent/internal/fsutil"
)

// FileMode is the mode of every manifest: they name key files and carry flags an
// unprivileged user has no business reading.
const FileMode fs.FileMode = 0o600

// DataDirMode is what etcd wants of its data directory; it warns about anything wider.
const DataDirMode fs.FileMode = 0o700

// maxManifestSize bounds how much of a foreign file is read to look for the
// ownership marker; real static pods are a few kilobytes.
const maxManifestSize = 1 << 20

// Phase writes the rendered manifests and removes managed ones no longer wanted.
// Writes happen only when content or mode differs, so kubelet, which watches the
// directory, sees no event (and restarts no pod) when nothing changed.
type Phase struct{ o Options }

// NewPhase returns the "manifests" phase.
func NewPhase(o Options) *Phase { return &Phase{o: o} }

var (
	_ bootstrap.Phase        = (*Phase)(nil)
	_ bootstrap.Reporter     = (*Phase)(nil)
	_ bootstrap.FactConsumer = (*Phase)(nil)
)

// UseFacts takes this node's etcd memberships from the run's facts (on a control
// plane; a worker's phase has no etcd clusters to render).
func (p *Phase) UseFacts(f bootstrap.Facts) {
	if p.o.Config == nil || p.o.Config.Spec.Role != config.RoleControlPlane {
		return
	}
	p.o.Etcd = MembersFromFacts(f)
}

// MembersFromFacts converts the facts' etcd memberships to render input.
func MembersFromFacts(f bootstrap.Facts) []EtcdMember {
	out := make([]EtcdMember, 0, len(f.EtcdMembers))
	for _, m := range f.EtcdMembers {
		out = append(out, EtcdMember{Cluster: m.Cluster, Member: m.Member, Members: m.Members, DataDir: m.MountPoint,
			ClusterState: m.ClusterState, InitialCluster: m.InitialCluster})
	}
	return out
}

// Name implements bootstrap.Phase.
func (p *Phase) Name() string { return "manifests" }

// dir is the static pod directory as a host path (not resolved under Root).
func (p *Phase) dir() string {
	if p.o.Dir != "" {
		return path.Clean(p.o.Dir)
	}
	return DefaultDir
}

func (p *Phase) log() *slog.Logger {
	if p.o.Log != nil {
		return p.o.Log.With("phase", p.Name())
	}
	return slog.Default().With("phase", p.Name())
}

// plan is what Act would do: etcd data directories to prepare, files to write
// (with the reason) and files to delete.
type plan struct {
	want     map[string][]byte
	dataDirs []string
	dirs     []bootstrap.Change
	writes   []bootstrap.Change
	stale    []managedFile
}

func (p *Phase) plan() (*plan, error) {
	want, dataDirs, err := render(p.o)
	if err != nil {
		return nil, err
	}
	pl := &plan{want: want, dataDirs: dataDirs}
	for _, d := range dataDirs {
		ch, err := p.checkDataDir(d)
		if err != nil {
			return nil, err
		}
		if ch != nil {
			pl.dirs = append(pl.dirs, *ch)
		}
	}
	for _, name := range slices.Sorted(maps.Keys(want)) {
		hostPath := path.Join(p.dir(), name)
		action, detail, err := compare(p.o.Root.Path(hostPath), want[name])
		if err != nil {
			return nil, err
		}
		if action != "" {
			pl.writes = append(pl.writes, bootstrap.Change{Kind: "manifest", Target: hostPath, Action: action, Detail: detail})
		}
	}
	managed, err := p.managed()
	if err != nil {
		return nil, err
	}
	for _, m := range managed {
		if _, wanted := want[m.file]; !wanted {
			pl.stale = append(pl.stale, m)
		}
	}
	return pl, nil
}

func (pl *plan) changes() []bootstrap.Change {
	out := append(append([]bootstrap.Change(nil), pl.dirs...), pl.writes...)
	for _, m := range pl.stale {
		out = append(out, bootstrap.Change{Kind: "manifest", Target: m.hostPath, Action: "delete", Detail: "managed static pod " + m.podName + " is no longer wanted"})
	}
	return out
}

// checkDataDir says what an etcd data directory needs. Its parent is the claimed
// volume's mount point, which the volumes phase provides; if that is missing the
// volume is not mounted and nothing may be created in its place.
func (p *Phase) checkDataDir(dir string) (*bootstrap.Change, error) {
	mount := path.Dir(dir)
	fi, err := os.Stat(p.o.Root.Path(mount))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("etcd volume mount point %s is not there (is the volume mounted?)", mount)
	}
	if err != nil {
		return nil, fmt.Errorf("inspect etcd volume mount point %s: %w", mount, err)
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("etcd volume mount point %s is not a directory", mount)
	}
	fi, err = os.Stat(p.o.Root.Path(dir))
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return &bootstrap.Change{Kind: "file", Target: dir, Action: "create", Detail: "etcd data directory"}, nil
	case err != nil:
		return nil, fmt.Errorf("inspect etcd data directory %s: %w", dir, err)
	case !fi.IsDir():
		return nil, fmt.Errorf("etcd data directory %s exists but is not a directory", dir)
	case fi.Mode().Perm() != DataDirMode:
		return &bootstrap.Change{Kind: "file", Target: dir, Action: "update",
			Detail: fmt.Sprintf("etcd data directory mode %04o -> %04o", fi.Mode().Perm(), DataDirMode)}, nil
	}
	return nil, nil
}

// compare says whether the file at p must be created or updated to hold data.
func compare(p string, data []byte) (action, detail string, err error) {
	fi, err := os.Stat(p)
	if errors.Is(err, fs.ErrNotExist) {
		return "create", "", nil
	}
	if err != nil {
		return "", "", fmt.Errorf("inspect manifest %s: %w", p, err)
	}
	same, err := fsutil.FileEquals(p, data, FileMode)
	if err != nil {
		return "", "", fmt.Errorf("inspect manifest %s: %w", p, err)
	}
	if same {
		return "", "", nil
	}
	if fi.Mode().Perm() != FileMode {
		old, err := os.ReadFile(p)
		if err == nil && string(old) == string(data) {
			return "update", fmt.Sprintf("mode %04o -> %04o", fi.Mode().Perm(), FileMode), nil
		}
	}
	return "update", "content differs", nil
}

// Check implements bootstrap.Phase; it reads the directory and writes nothing.
func (p *Phase) Check(ctx context.Context) ([]bootstrap.Change, error) {
	pl, err := p.plan()
	if err != nil {
		return nil, err
	}
	return pl.changes(), nil
}

// Act implements bootstrap.Phase: prepares the etcd data directories, writes
// changed manifests, then deletes stale managed ones. Writing first means a renamed pod never has a moment with neither
// its old nor its new manifest present.
func (p *Phase) Act(ctx context.Context) error {
	log := p.log()
	pl, err := p.plan()
	if err != nil {
		return err
	}
	for _, d := range pl.dataDirs {
		full := p.o.Root.Path(d)
		if err := os.Mkdir(full, DataDirMode); err != nil && !errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("create etcd data directory %s: %w", d, err)
		}
		// Mkdir's mode is filtered by the umask, and an existing directory keeps its own.
		if err := os.Chmod(full, DataDirMode); err != nil {
			return fmt.Errorf("create etcd data directory %s: %w", d, err)
		}
	}
	for _, name := range slices.Sorted(maps.Keys(pl.want)) {
		if err := ctx.Err(); err != nil {
			return err
		}
		hostPath := path.Join(p.dir(), name)
		changed, err := fsutil.WriteFileIfChanged(p.o.Root.Path(hostPath), pl.want[name], FileMode)
		if err != nil {
			return fmt.Errorf("write manifest %s: %w", hostPath, err)
		}
		if changed {
			log.Info("static pod manifest written", "path", hostPath, "sha256", sum(pl.want[name]))
		}
		// gofail: var manifestsMidWrite string
		// failpointCrash("manifestsMidWrite", manifestsMidWrite, name)
	}
	for _, m := range pl.stale {
		if err := os.Remove(p.o.Root.Path(m.hostPath)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("remove stale manifest %s: %w", m.hostPath, err)
		}
		log.Info("stale static pod manifest removed", "path", m.hostPath, "pod", m.podName)
	}
	return nil
}

// Verify implements bootstrap.Phase: every wanted manifest is on disk as rendered
// and no stale managed manifest is left.
func (p *Phase) Verify(ctx context.Context) error {
	pl, err := p.plan()
	if err != nil {
		return err
	}
	if ch := pl.changes(); len(ch) > 0 {
		msgs := make([]string, len(ch))
		for i, c := range ch {
			msgs[i] = c.String()
		}
		return fmt.Errorf("manifests not converged: %s", strings.Join(msgs, "; "))
	}
	return nil
}

// Report implements bootstrap.Reporter with what is on disk now: every manifest
// carrying the ownership marker, whether or not this run got to write it.
func (p *Phase) Report(st *bootstrap.State) {
	managed, err := p.managed()
	if err != nil {
		p.log().Warn("cannot list static pod manifests for status", "dir", p.dir(), "err", err)
		return
	}
	st.Manifests = make([]bootstrap.ManifestStatus, 0, len(managed))
	for _, m := range managed {
		st.Manifests = append(st.Manifests, bootstrap.ManifestStatus{Name: m.podName, Path: m.hostPath, SHA256: m.sha256})
	}
}

// managedFile is a manifest in the directory that carries the ownership marker.
type managedFile struct {
	file     string // base name
	hostPath string
	podName  string
	sha256   string
}

// managed lists the directory's manifests that carry the ownership marker, sorted
// by file name. Hidden files are skipped as kubelet skips them (they include our
// own temporary files); files that do not parse are not ours to judge.
func (p *Phase) managed() ([]managedFile, error) {
	dir := p.o.Root.Path(p.dir())
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list static pod manifests: %w", err)
	}
	var out []managedFile
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".") || e.IsDir() {
			continue
		}
		full := path.Join(dir, e.Name())
		fi, err := os.Stat(full)
		if err != nil || !fi.Mode().IsRegular() || fi.Size() > maxManifestSize {
			continue
		}
		data, err := os.ReadFile(full)
		if err != nil {
			return nil, fmt.Errorf("read static pod manifest %s: %w", full, err)
		}
		name, ok := ownedPod(data)
		if !ok {
			continue
		}
		if name == "" {
			name = strings.TrimSuffix(e.Name(), path.Ext(e.Name()))
		}
		out = append(out, managedFile{
			file: e.Name(), hostPath: path.Join(p.dir(), e.Name()), podName: name, sha256: sum(data),
		})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].file < out[j].file })
	return out, nil
}

// ownedPod reports whether a manifest carries the ownership marker, and its pod name.
func ownedPod(data []byte) (string, bool) {
	var m struct {
		Metadata struct {
			Name        string            `json:"name"`
			Annotations map[string]string `json:"annotations"`
		} `json:"metadata"`
	}
	if err := yaml.Unmarshal(data, &m); err != nil {
		return "", false
	}
	return m.Metadata.Name, m.Metadata.Annotations[ManagedAnnotation] == "true"
}

func sum(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}
