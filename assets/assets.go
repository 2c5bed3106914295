// Package assets fetches the binaries a node installs (kubelet, containerd, ...)
// from mirrors, verifies each by SHA-256, keeps verified copies in a cache keyed by
// hash, and installs them atomically.
//
// Nothing unverified is ever installed or kept: downloads stream into a temporary
// file beside the cache entry while being hashed and are renamed into place only
// when the hash matches; installation copies from the cache through another hash
// check into a temporary file beside the destination, renamed over it at the end.
// A failure at any point leaves the installed file exactly as it was.
package assets

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/nodeagent/nodeagent/bootstrap"
	"github.com/nodeagent/nodeagent/config"
	"github.com/nodeagent/nodeagent/internal/fsutil"
)

// S3API is the part of the S3 client the installer uses.
type S3API interface {
	GetObject(ctx context.Context, in *s3.GetObjectInput, optFns ...func(*s3.Options)) (*s3.GetObjectOutput, error)
}

// DefaultCacheDir is where verified assets are kept, by hash, under Root.
const DefaultCacheDir = "/var/cache/nodeagent/assets"

// SourceCache is the source of an asset served from the cache.
const SourceCache = "cache"

// Installer fetches, caches and installs assets.
type Installer struct {
	Root fsutil.Root
	// HTTP serves http:// and https:// URLs; nil means http.DefaultClient.
	HTTP *http.Client
	// S3 serves s3:// URLs; nil makes them fail with a clear error.
	S3 S3API
	// CacheDir is a host path (resolved under Root); default DefaultCacheDir.
	CacheDir string
	Log      *slog.Logger
	Retry    RetryPolicy
	// FullCheckEvery is how long an installed file's recorded hash is trusted while
	// its device, inode, size, mtime and ctime are unchanged; 0 means
	// DefaultFullCheckEvery, negative hashes every file on every check.
	FullCheckEvery time.Duration
	// Now is the clock of the full check; nil means time.Now.
	Now func() time.Time

	record hashRecord
}

// MismatchError is a download whose content does not have the expected hash. It
// is never retried on the same URL: the mirror serves the wrong file.
type MismatchError struct {
	Asset    string
	URL      string // without query or credentials
	Expected string
	Got      string
	Bytes    int64
}

func (e *MismatchError) Error() string {
	return fmt.Sprintf("sha256 mismatch for %s from %s: expected %s, got %s (%d bytes)", e.Asset, e.URL, e.Expected, e.Got, e.Bytes)
}

func (i *Installer) logger() *slog.Logger {
	if i.Log != nil {
		return i.Log
	}
	return slog.New(slog.DiscardHandler)
}

func (i *Installer) cacheDir() string {
	d := i.CacheDir
	if d == "" {
		d = DefaultCacheDir
	}
	return i.Root.Path(d)
}

// InstallPath is where a plain (non-archive) asset is installed on the host
// (before Root); an archive asset's members say where they go.
func InstallPath(a config.Asset) string {
	if a.Path != "" {
		return a.Path
	}
	return "/usr/local/bin/" + a.Name
}

// checkedSum returns the asset's hash in the cache's spelling, refusing anything
// that is not 64 hex characters: it becomes a file name.
func checkedSum(a config.Asset) (string, error) {
	s := strings.ToLower(a.SHA256)
	if len(s) != sha256.Size*2 {
		return "", fmt.Errorf("asset %s: sha256 must be %d hex characters, got %d", a.Name, sha256.Size*2, len(s))
	}
	if _, err := hex.DecodeString(s); err != nil {
		return "", fmt.Errorf("asset %s: sha256 %q is not hex", a.Name, a.SHA256)
	}
	if a.Name == "" || strings.ContainsAny(a.Name, "/\x00") || a.Name == "." || a.Name == ".." {
		return "", fmt.Errorf("asset %q: invalid name", a.Name)
	}
	if a.Archive != nil {
		for _, m := range a.Archive.Members {
			if !strings.HasPrefix(m.Path, "/") || strings.Contains(m.Path, "..") {
				return "", fmt.Errorf("asset %s: member %s: path %q must be absolute without '..'", a.Name, m.Name, m.Path)
			}
		}
		return s, nil
	}
	if p := InstallPath(a); !strings.HasPrefix(p, "/") || strings.Contains(p, "..") {
		return "", fmt.Errorf("asset %s: path %q must be absolute without '..'", a.Name, p)
	}
	return s, nil
}

// hashFile returns the file's SHA-256 and mode; exists is false when it is absent.
func hashFile(path string) (sum string, mode fs.FileMode, exists bool, err error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return "", 0, false, nil
	}
	if err != nil {
		return "", 0, false, fmt.Errorf("read %s: %w", path, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return "", 0, false, fmt.Errorf("read %s: %w", path, err)
	}
	if !fi.Mode().IsRegular() {
		return "", fi.Mode(), true, nil
	}
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", 0, false, fmt.Errorf("hash %s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), fi.Mode(), true, nil
}

// Fetch returns the path of a verified copy of a in the cache, fetching it from
// its mirrors in order when the cache has none. source is "cache" or the URL it
// came from, without query or credentials. A cache entry is re-hashed before it is
// trusted; a corrupt one is deleted and fetched again.
func (i *Installer) Fetch(ctx context.Context, a config.Asset) (cachePath, source string, err error) {
	sum, err := checkedSum(a)
	if err != nil {
		return "", "", err
	}
	log := i.logger().With("asset", a.Name)
	dir := i.cacheDir()
	cachePath = filepath.Join(dir, sum)
	start := time.Now()
	got, _, exists, err := hashFile(cachePath)
	if err != nil {
		return "", "", err
	}
	if exists && got == sum {
		log.Debug("asset cache hit", "path", cachePath, "duration", time.Since(start))
		return cachePath, SourceCache, nil
	}
	if exists {
		log.Warn("corrupt cache entry removed", "path", cachePath, "expected", sum, "got", got)
		if err := os.RemoveAll(cachePath); err != nil {
			return "", "", fmt.Errorf("remove corrupt cache entry %s: %w", cachePath, err)
		}
	}
	if len(a.URLs) == 0 {
		return "", "", fmt.Errorf("asset %s: not in cache and no URLs to fetch it from", a.Name)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", "", fmt.Errorf("create cache %s: %w", dir, err)
	}
	var errs []error
	for _, raw := range a.URLs {
		src := Redact(raw)
		err := i.fetchMirror(ctx, log, a.Name, raw, src, cachePath, sum)
		if err == nil {
			return cachePath, src, nil
		}
		if ctx.Err() != nil {
			return "", "", fmt.Errorf("asset %s: %w", a.Name, ctx.Err())
		}
		log.Warn("asset mirror failed", "url", src, "err", err)
		errs = append(errs, err)
	}
	return "", "", fmt.Errorf("asset %s: every mirror failed: %w", a.Name, errors.Join(errs...))
}

// fetchMirror downloads from one URL, retrying transient failures.
func (i *Installer) fetchMirror(ctx context.Context, log *slog.Logger, name, raw, src, cachePath, sum string) error {
	pol := i.Retry.withDefaults()
	for attempt := 1; ; attempt++ {
		start := time.Now()
		n, err := i.download(ctx, name, raw, src, cachePath, sum)
		if err == nil {
			d := time.Since(start)
			log.Info("asset downloaded", "url", src, "bytes", n, "duration", d.Round(time.Millisecond),
				"MBps", fmt.Sprintf("%.1f", float64(n)/1e6/max(d.Seconds(), 1e-9)))
			return nil
		}
		if !isTransient(err) || ctx.Err() != nil {
			return err
		}
		if attempt >= pol.Attempts {
			return fmt.Errorf("%w (gave up after %d attempts)", err, attempt)
		}
		wait := pol.backoff(attempt)
		log.Warn("asset fetch failed, retrying", "url", src, "attempt", attempt, "backoff", wait, "err", err)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
	}
}

// download streams one attempt into a temporary file next to the cache entry,
// hashing as it goes, and renames it into place only if the hash matches.
func (i *Installer) download(ctx context.Context, name, raw, src, cachePath, sum string) (int64, error) {
	body, err := i.open(ctx, raw, src)
	if err != nil {
		return 0, err
	}
	defer body.Close()
	dir := filepath.Dir(cachePath)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(cachePath)+".part-*")
	if err != nil {
		return 0, fmt.Errorf("create temp in %s: %w", dir, err)
	}
	keep := false
	defer func() {
		if !keep {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	h := sha256.New()
	prog := &progress{name: name, log: i.logger().With("asset", name, "url", src), every: progressEvery, last: time.Now(),
		report: func(msg string) { bootstrap.Progress(ctx, "downloading "+name+": "+msg) }, reportEvery: reportEvery}
	if sz, ok := body.(interface{ Size() int64 }); ok {
		prog.total = sz.Size()
	}
	n, err := io.Copy(io.MultiWriter(tmp, h, prog), body)
	if err != nil {
		if ctx.Err() != nil {
			return n, ctx.Err()
		}
		var pe *fs.PathError
		if errors.As(err, &pe) && pe.Path == tmp.Name() {
			return n, fmt.Errorf("write %s: %w", tmp.Name(), err) // local disk: not the mirror's fault
		}
		return n, transient(fmt.Errorf("read %s after %d bytes: %w", src, n, err))
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != sum {
		return n, &MismatchError{Asset: name, URL: src, Expected: sum, Got: got, Bytes: n}
	}
	if err := tmp.Chmod(0o644); err != nil {
		return n, fmt.Errorf("cache %s: %w", cachePath, err)
	}
	if err := tmp.Sync(); err != nil {
		return n, fmt.Errorf("cache %s: %w", cachePath, err)
	}
	if err := tmp.Close(); err != nil {
		return n, fmt.Errorf("cache %s: %w", cachePath, err)
	}
	if err := os.Rename(tmp.Name(), cachePath); err != nil {
		return n, fmt.Errorf("cache %s: %w", cachePath, err)
	}
	keep = true
	return n, fsutil.SyncDir(dir)
}

// Install puts a verified copy of a at its path (default /usr/local/bin/<name>),
// mode 0755, atomically; for an archive asset, each of its members at theirs. It
// reports whether it changed anything; an installed file that already has the
// hash is left alone and no cache or network is touched.
func (i *Installer) Install(ctx context.Context, a config.Asset) (changed bool, err error) {
	_, changed, err = i.install(ctx, a)
	return changed, err
}

// install is Install that also says where the bytes came from ("" when nothing
// had to be fetched).
func (i *Installer) install(ctx context.Context, a config.Asset) (source string, changed bool, err error) {
	sum, err := checkedSum(a)
	if err != nil {
		return "", false, err
	}
	if a.Archive != nil {
		source, files, err := i.installArchive(ctx, a, sum)
		return source, len(files) > 0, err
	}
	dest := i.Root.Path(InstallPath(a))
	got, mode, exists, err := i.installedSum(dest)
	if err != nil {
		return "", false, err
	}
	if exists && got == sum {
		if mode.Perm() == 0o755 {
			return "", false, nil
		}
		if err := os.Chmod(dest, 0o755); err != nil {
			return "", false, fmt.Errorf("asset %s: %w", a.Name, err)
		}
		i.logger().Info("asset mode fixed", "asset", a.Name, "path", dest, "was", mode.Perm())
		return "", true, nil
	}
	cachePath, source, err := i.Fetch(ctx, a)
	if err != nil {
		return "", false, err
	}
	// gofail: var assetsBeforeInstall string
	// failpointCrash("assetsBeforeInstall", assetsBeforeInstall, a.Name)
	if err := copyVerified(cachePath, dest, sum); err != nil {
		return "", false, fmt.Errorf("asset %s: %w", a.Name, err)
	}
	i.logger().Info("asset installed", "asset", a.Name, "path", dest, "sha256", sum, "source", source)
	return source, true, nil
}

// copyVerified copies the cache entry to dest through a temporary file in dest's
// directory, checking the hash again on the way so that a cache entry changed
// since it was verified cannot slip through.
func copyVerified(src, dest, sum string) error {
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("open cache entry: %w", err)
	}
	defer in.Close()
	dir := filepath.Dir(dest)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(dest)+".tmp-*")
	if err != nil {
		return fmt.Errorf("install %s: %w", dest, err)
	}
	fail := func(err error) error {
		tmp.Close()
		os.Remove(tmp.Name())
		return fmt.Errorf("install %s: %w", dest, err)
	}
	h := sha256.New()
	if _, err := io.Copy(io.MultiWriter(tmp, h), in); err != nil {
		return fail(err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != sum {
		return fail(fmt.Errorf("cache entry %s changed under us: sha256 %s, want %s", src, got, sum))
	}
	if err := tmp.Chmod(0o755); err != nil {
		return fail(err)
	}
	if err := tmp.Sync(); err != nil {
		return fail(err)
	}
	if err := tmp.Close(); err != nil {
		return fail(err)
	}
	if err := os.Rename(tmp.Name(), dest); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("install %s: %w", dest, err)
	}
	return fsutil.SyncDir(dir)
}

// Bake fetches every asset into the cache and installs it, so that a machine image
// built from this root boots without network. It goes through every asset and
// reports all failures.
func (i *Installer) Bake(ctx context.Context, list []config.Asset) error {
	var errs []error
	for _, a := range list {
		if _, _, err := i.Fetch(ctx, a); err != nil {
			errs = append(errs, err)
			continue
		}
		if _, err := i.Install(ctx, a); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// progressEvery is how often a long download says how far it got in the log;
// reportEvery how often in the phase's progress (status -w).
const (
	progressEvery = 10 * time.Second
	reportEvery   = time.Second
)

// progress logs a running byte count of a download, at most once per interval,
// so a slow mirror is visible in the journal before the download ends, and
// reports bytes and rate as the phase's progress for `status -w`.
type progress struct {
	name  string // the asset's
	log   *slog.Logger
	every time.Duration
	n     int64
	total int64 // 0 when unknown
	start time.Time
	last  time.Time

	report      func(string)
	reportEvery time.Duration
	lastReport  time.Time
}

func (p *progress) Write(b []byte) (int, error) {
	if p.start.IsZero() {
		p.start = p.last
		p.lastReport = p.last
	}
	p.n += int64(len(b))
	// gofail: var assetsMidDownload string
	// failpointCrash("assetsMidDownload", assetsMidDownload, p.name)
	now := time.Now()
	if now.Sub(p.last) >= p.every {
		p.last = now
		p.log.Info("asset download progress", "bytes", p.n, "elapsed", now.Sub(p.start).Round(time.Second))
	}
	if p.report != nil && now.Sub(p.lastReport) >= p.reportEvery {
		p.lastReport = now
		p.report(p.String(now))
	}
	return len(b), nil
}

// String says how far the download got: "12.0 MiB of 48.0 MiB at 6.0 MiB/s".
func (p *progress) String(now time.Time) string {
	s := mib(p.n)
	if p.total > 0 {
		s += " of " + mib(p.total)
	}
	if el := now.Sub(p.start).Seconds(); el > 0 {
		s += " at " + mib(int64(float64(p.n)/el)) + "/s"
	}
	return s
}

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }
