package assets

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/nodeagent/nodeagent/internal/fsutil"
)

// DefaultFullCheckEvery is how long a hash of an installed file is trusted while
// the file's identity (device, inode, size, modification and change times) stays
// the same; after it the file is hashed again whatever its identity says.
const DefaultFullCheckEvery = 24 * time.Hour

// hashRecordName is the record of installed files' hashes, in the cache directory.
const hashRecordName = "installed.json"

// fileStamp is what a file looked like (fstat before it was hashed) and its hash.
// Any write through the file system changes the change time (ctime), which no
// user can set back: `touch -d` restoring the modification time moves it too.
type fileStamp struct {
	Dev    uint64    `json:"dev"`
	Ino    uint64    `json:"ino"`
	Size   int64     `json:"size"`
	Mtime  int64     `json:"mtimeNs"`
	Ctime  int64     `json:"ctimeNs"`
	Mode   uint32    `json:"mode"`
	SHA256 string    `json:"sha256"`
	Hashed time.Time `json:"hashed"`
}

func stampOf(fi fs.FileInfo) (fileStamp, bool) {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fileStamp{}, false
	}
	return fileStamp{
		Dev: uint64(st.Dev), Ino: st.Ino, Size: st.Size,
		Mtime: st.Mtim.Nano(), Ctime: st.Ctim.Nano(), Mode: uint32(fi.Mode()),
	}, true
}

// sameFile reports whether two stamps describe the same unchanged file.
func (s fileStamp) sameFile(o fileStamp) bool {
	return s.Dev == o.Dev && s.Ino == o.Ino && s.Size == o.Size && s.Mtime == o.Mtime && s.Ctime == o.Ctime && s.Mode == o.Mode
}

// hashRecord remembers the hashes of installed files so that a converged node's
// check does not read ~150 MB of binaries on every reconcile. A recorded hash is
// used only while the file's stamp is unchanged and the hash younger than the
// full-check interval.
type hashRecord struct {
	mu      sync.Mutex
	loaded  bool
	dirty   bool
	entries map[string]fileStamp // by path as opened
	hashes  int                  // files read and hashed, for tests and benchmarks
}

func (i *Installer) recordPath() string { return filepath.Join(i.cacheDir(), hashRecordName) }

func (i *Installer) now() time.Time {
	if i.Now != nil {
		return i.Now()
	}
	return time.Now()
}

func (i *Installer) fullCheckEvery() time.Duration {
	if i.FullCheckEvery != 0 {
		return i.FullCheckEvery
	}
	return DefaultFullCheckEvery
}

// load reads the record once; a missing or unreadable one is an empty record
// (everything gets hashed), never an error: it only saves work.
func (r *hashRecord) load(path string, log func(msg string, args ...any)) {
	if r.loaded {
		return
	}
	r.loaded = true
	r.entries = map[string]fileStamp{}
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return
	}
	if err == nil {
		err = json.Unmarshal(b, &r.entries)
	}
	if err != nil {
		log("installed files' hash record unreadable, hashing every file", "path", path, "err", err)
		r.entries = map[string]fileStamp{}
	}
}

// installedSum is hashFile for installed files: the recorded hash when the file
// is unchanged since it was hashed and the hash is recent enough, else a fresh
// hash (recorded in memory; saveRecord writes it).
func (i *Installer) installedSum(path string) (sum string, mode fs.FileMode, exists bool, err error) {
	r := &i.record
	r.mu.Lock()
	defer r.mu.Unlock()
	r.load(i.recordPath(), i.logger().Warn)
	fi, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		if _, ok := r.entries[path]; ok {
			delete(r.entries, path)
			r.dirty = true
		}
		return "", 0, false, nil
	}
	if err != nil {
		return "", 0, false, fmt.Errorf("read %s: %w", path, err)
	}
	stamp, ok := stampOf(fi)
	if old, found := r.entries[path]; ok && found && fi.Mode().IsRegular() && old.sameFile(stamp) &&
		i.now().Sub(old.Hashed) < i.fullCheckEvery() && !old.Hashed.After(i.now()) {
		return old.SHA256, fi.Mode(), true, nil
	}
	sum, mode, exists, stamp, err = hashStamped(path)
	if err != nil || !exists {
		return sum, mode, exists, err
	}
	r.hashes++
	if sum == "" || stamp.Ino == 0 {
		return sum, mode, exists, nil
	}
	stamp.SHA256, stamp.Hashed = sum, i.now()
	r.entries[path] = stamp
	r.dirty = true
	return sum, mode, exists, nil
}

// hashStamped hashes a file and returns the stamp it had (fstat of the open
// file) before it was read: a change during the read moves its ctime, so the
// next check hashes it again.
func hashStamped(path string) (sum string, mode fs.FileMode, exists bool, stamp fileStamp, err error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return "", 0, false, stamp, nil
	}
	if err != nil {
		return "", 0, false, stamp, fmt.Errorf("read %s: %w", path, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return "", 0, false, stamp, fmt.Errorf("read %s: %w", path, err)
	}
	stamp, _ = stampOf(fi)
	if !fi.Mode().IsRegular() {
		return "", fi.Mode(), true, stamp, nil
	}
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", 0, false, stamp, fmt.Errorf("hash %s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), fi.Mode(), true, stamp, nil
}

// saveRecord writes the record when it changed. Only the phase's Verify calls it,
// so `plan` (Check alone) writes nothing.
func (i *Installer) saveRecord() error {
	r := &i.record
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.dirty {
		return nil
	}
	b, err := json.Marshal(r.entries)
	if err != nil {
		return fmt.Errorf("installed files' hash record: %w", err)
	}
	if err := fsutil.WriteFileAtomic(i.recordPath(), b, 0o600); err != nil {
		return fmt.Errorf("installed files' hash record: %w", err)
	}
	r.dirty = false
	return nil
}
