package imagearchive_test

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nodeagent/nodeagent/internal/imagearchive"
)

// sample is an image using every kind of entry: a host file, in-memory data, a
// symlink, an explicit directory with the sticky bit, and implied parents.
func sample(t *testing.T) imagearchive.Image {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "tool")
	if err := os.WriteFile(bin, []byte("#!/bin/true\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return imagearchive.Image{
		Refs: []string{"registry.k8s.io/kube-apiserver:v1.34.4", "nodeagent.test/extra/name:1"},
		Files: []imagearchive.File{
			imagearchive.HostFile(bin, "/usr/local/bin/tool", 0),
			imagearchive.Bytes("/etc/passwd", []byte("root:x:0:0:root:/root:/sbin/nologin\n"), 0o644),
			imagearchive.Symlink("/usr/bin/tool", "../local/bin/tool"),
			imagearchive.Dir("/tmp", 0o777|fs.ModeSticky),
		},
		Config: imagearchive.Config{Entrypoint: []string{"/usr/local/bin/tool"}, Cmd: []string{"--flag"}, Env: []string{"FOO=bar"}},
		Gzip:   true,
	}
}

func writeFile(t *testing.T, file string, img imagearchive.Image) imagearchive.Result {
	t.Helper()
	res, err := imagearchive.WriteFile(file, img)
	if err != nil {
		t.Fatalf("WriteFile: %v", err)
	}
	return res
}

func read(t *testing.T, file string) []byte {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestSameInputsGiveTheSameBytes(t *testing.T) {
	for _, gz := range []bool{false, true} {
		dir := t.TempDir()
		img := sample(t)
		img.Gzip = gz
		first := writeFile(t, filepath.Join(dir, "a.tar"), img)

		// The files listed in another order, the source touched (a new mtime),
		// and the archive written to a stream instead of a file.
		slices.Reverse(img.Files)
		later := time.Now().Add(time.Hour)
		if err := os.Chtimes(img.Files[3].Source, later, later); err != nil {
			t.Fatal(err)
		}
		second := writeFile(t, filepath.Join(dir, "b.tar"), img)
		var buf bytes.Buffer
		third, err := imagearchive.Write(&buf, img)
		if err != nil {
			t.Fatalf("Write: %v", err)
		}

		a, b := read(t, filepath.Join(dir, "a.tar")), read(t, filepath.Join(dir, "b.tar"))
		if !bytes.Equal(a, b) || !bytes.Equal(a, buf.Bytes()) {
			t.Fatalf("gzip=%v: the same inputs gave different archives", gz)
		}
		if first != second || first != third {
			t.Fatalf("gzip=%v: results differ: %+v, %+v, %+v", gz, first, second, third)
		}
		if sum, err := imagearchive.SHA256File(filepath.Join(dir, "a.tar")); err != nil || sum != first.SHA256 || first.Size != int64(len(a)) {
			t.Fatalf("gzip=%v: Result says sha256 %s size %d; the file has %s (%v) and %d bytes", gz, first.SHA256, first.Size, sum, err, len(a))
		}
	}
}

func TestTheFingerprintChangesExactlyWithTheInputs(t *testing.T) {
	img := sample(t)
	fp := func(img imagearchive.Image) string {
		t.Helper()
		s, err := img.Fingerprint()
		if err != nil {
			t.Fatalf("Fingerprint: %v", err)
		}
		return s
	}
	base := fp(img)
	reordered := img
	reordered.Files = slices.Clone(img.Files)
	slices.Reverse(reordered.Files)
	if fp(reordered) != base {
		t.Errorf("the order of files changed the fingerprint")
	}

	changes := map[string]func(*imagearchive.Image){
		"source content": func(img *imagearchive.Image) {
			if err := os.WriteFile(img.Files[0].Source, []byte("other"), 0o755); err != nil {
				t.Fatal(err)
			}
		},
		"mode":        func(img *imagearchive.Image) { img.Files[1].Mode = 0o600 },
		"link target": func(img *imagearchive.Image) { img.Files[2].Link = "/elsewhere" },
		"reference":   func(img *imagearchive.Image) { img.Refs = img.Refs[:1] },
		"config":      func(img *imagearchive.Image) { img.Config.Cmd = nil },
		"compression": func(img *imagearchive.Image) { img.Gzip = false },
	}
	for name, change := range changes {
		changed := sample(t)
		change(&changed)
		if fp(changed) == fp(sample(t)) {
			t.Errorf("changing the %s left the fingerprint as it was", name)
		}
	}
}

func TestTheArchiveIsAnOCILayoutNamingTheImageInFull(t *testing.T) {
	file := filepath.Join(t.TempDir(), "img.tar")
	res := writeFile(t, file, sample(t))

	// The outer tar holds exactly the layout: sorted, dated at the epoch, owned by root.
	var names []string
	var idxJSON []byte
	tr := tar.NewReader(bytes.NewReader(read(t, file)))
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, hdr.Name)
		if hdr.ModTime.Unix() != 0 || hdr.Uid != 0 || hdr.Gid != 0 {
			t.Errorf("%s: mtime %v uid %d gid %d, want the epoch and 0:0", hdr.Name, hdr.ModTime, hdr.Uid, hdr.Gid)
		}
		if hdr.Name == "index.json" {
			idxJSON, _ = io.ReadAll(tr)
		}
	}
	blob := func(d string) string { return "blobs/sha256/" + strings.TrimPrefix(d, "sha256:") }
	want := []string{"blobs/", "blobs/sha256/", blob(res.Config), blob(res.Layer), blob(res.Manifest), "index.json", "oci-layout"}
	slices.Sort(want[2:5])
	if !slices.Equal(names, want) {
		t.Errorf("archive entries:\n%q\nwant\n%q", names, want)
	}

	// index.json: one descriptor per reference, each carrying the full reference
	// under both annotations and the platform, so `ctr import` needs no --base-name.
	var idx struct {
		Manifests []struct {
			Digest      string            `json:"digest"`
			Annotations map[string]string `json:"annotations"`
			Platform    map[string]string `json:"platform"`
		} `json:"manifests"`
	}
	if err := json.Unmarshal(idxJSON, &idx); err != nil {
		t.Fatalf("index.json: %v", err)
	}
	if len(idx.Manifests) != 2 {
		t.Fatalf("index.json has %d manifests, want one per reference (2)", len(idx.Manifests))
	}
	for i, ref := range []string{"nodeagent.test/extra/name:1", "registry.k8s.io/kube-apiserver:v1.34.4"} {
		m := idx.Manifests[i]
		if m.Digest != res.Manifest || m.Annotations["io.containerd.image.name"] != ref ||
			m.Annotations["org.opencontainers.image.ref.name"] != ref || m.Platform["os"] != "linux" || m.Platform["architecture"] != "amd64" {
			t.Errorf("index.json manifest %d = %+v, want digest %s, both names %s, linux/amd64", i, m, res.Manifest, ref)
		}
	}

	// Read back and checked by Inspect: digests, sizes, diff_ids, config, files.
	insp, err := imagearchive.Inspect(file)
	if err != nil {
		t.Fatalf("Inspect: %v", err)
	}
	if insp.Manifest != res.Manifest || insp.Platform != "linux/amd64" ||
		!slices.Equal(insp.Refs, []string{"nodeagent.test/extra/name:1", "registry.k8s.io/kube-apiserver:v1.34.4"}) {
		t.Errorf("Inspect = manifest %s platform %s refs %v", insp.Manifest, insp.Platform, insp.Refs)
	}
	wantCfg := imagearchive.Config{
		Entrypoint: []string{"/usr/local/bin/tool"}, Cmd: []string{"--flag"},
		Env: []string{"PATH=/usr/local/bin:/usr/bin:/bin", "FOO=bar"}, WorkingDir: "/",
	}
	if !slices.Equal(insp.Config.Entrypoint, wantCfg.Entrypoint) || !slices.Equal(insp.Config.Cmd, wantCfg.Cmd) ||
		!slices.Equal(insp.Config.Env, wantCfg.Env) || insp.Config.WorkingDir != wantCfg.WorkingDir {
		t.Errorf("config read back = %+v, want %+v", insp.Config, wantCfg)
	}
	wantFiles := []imagearchive.FileInfo{
		{Path: "/etc", Mode: fs.ModeDir | 0o755},
		{Path: "/etc/passwd", Mode: 0o644, Size: 36},
		{Path: "/tmp", Mode: fs.ModeDir | fs.ModeSticky | 0o777},
		{Path: "/usr", Mode: fs.ModeDir | 0o755},
		{Path: "/usr/bin", Mode: fs.ModeDir | 0o755},
		{Path: "/usr/bin/tool", Mode: fs.ModeSymlink | 0o777, Link: "../local/bin/tool"},
		{Path: "/usr/local", Mode: fs.ModeDir | 0o755},
		{Path: "/usr/local/bin", Mode: fs.ModeDir | 0o755},
		{Path: "/usr/local/bin/tool", Mode: 0o755, Size: 12},
	}
	if !slices.Equal(insp.Files, wantFiles) {
		t.Errorf("layer entries:\n%+v\nwant\n%+v", insp.Files, wantFiles)
	}
}

func TestATamperedArchiveIsRefused(t *testing.T) {
	file := filepath.Join(t.TempDir(), "img.tar")
	img := sample(t)
	img.Gzip = false
	writeFile(t, file, img)
	b := read(t, file)
	// The symlink target sits inside the layer blob: change one byte of it.
	i := bytes.Index(b, []byte("../local/bin/tool"))
	if i < 0 {
		t.Fatal("symlink target not found in the archive")
	}
	b[i] = ','
	if err := os.WriteFile(file, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := imagearchive.Inspect(file); err == nil || !strings.Contains(err.Error(), "digest") {
		t.Fatalf("Inspect of a tampered archive = %v, want a digest mismatch", err)
	}
}

func TestBadInputIsRefusedWithoutLeavingAFile(t *testing.T) {
	ok := imagearchive.Bytes("/etc/x", nil, 0)
	cases := map[string]struct {
		img  imagearchive.Image
		want string
	}{
		"no reference":          {imagearchive.Image{Files: []imagearchive.File{ok}}, "no reference"},
		"no registry":           {imagearchive.Image{Refs: []string{"pause:3.10"}}, "no registry"},
		"no tag":                {imagearchive.Image{Refs: []string{"registry.k8s.io/pause"}}, "no tag"},
		"upper-case repository": {imagearchive.Image{Refs: []string{"registry.k8s.io/Pause:3.10"}}, "invalid repository"},
		"bad tag":               {imagearchive.Image{Refs: []string{"registry.k8s.io/pause:-x"}}, "invalid tag"},
		"reference twice":       {imagearchive.Image{Refs: []string{"r.io/a:1", "r.io/a:1"}}, "twice"},
		"relative path":         {imagearchive.Image{Refs: []string{"r.io/a:1"}, Files: []imagearchive.File{imagearchive.Bytes("etc/x", nil, 0)}}, "absolute"},
		"unclean path":          {imagearchive.Image{Refs: []string{"r.io/a:1"}, Files: []imagearchive.File{imagearchive.Bytes("/etc/../x", nil, 0)}}, "clean"},
		"the root":              {imagearchive.Image{Refs: []string{"r.io/a:1"}, Files: []imagearchive.File{imagearchive.Dir("/", 0)}}, "below /"},
		"path twice":            {imagearchive.Image{Refs: []string{"r.io/a:1"}, Files: []imagearchive.File{ok, ok}}, "listed twice"},
		"file under a file":     {imagearchive.Image{Refs: []string{"r.io/a:1"}, Files: []imagearchive.File{ok, imagearchive.Bytes("/etc/x/y", nil, 0)}}, "not a directory"},
		"file under a symlink":  {imagearchive.Image{Refs: []string{"r.io/a:1"}, Files: []imagearchive.File{imagearchive.Symlink("/lib", "usr/lib"), imagearchive.Bytes("/lib/y", nil, 0)}}, "not a directory"},
		"two kinds":             {imagearchive.Image{Refs: []string{"r.io/a:1"}, Files: []imagearchive.File{{Path: "/x", Link: "y", Dir: true}}}, "more than one"},
		"file type in mode":     {imagearchive.Image{Refs: []string{"r.io/a:1"}, Files: []imagearchive.File{imagearchive.Bytes("/x", nil, fs.ModeDevice|0o644)}}, "mode"},
		"missing source":        {imagearchive.Image{Refs: []string{"r.io/a:1"}, Files: []imagearchive.File{imagearchive.HostFile("/nonexistent/bin", "/x", 0)}}, "/nonexistent/bin"},
		"source is a directory": {imagearchive.Image{Refs: []string{"r.io/a:1"}, Files: []imagearchive.File{imagearchive.HostFile("/etc", "/x", 0)}}, "not a regular file"},
		"env without =":         {imagearchive.Image{Refs: []string{"r.io/a:1"}, Config: imagearchive.Config{Env: []string{"PATH"}}}, "KEY=value"},
		"relative working dir":  {imagearchive.Image{Refs: []string{"r.io/a:1"}, Config: imagearchive.Config{WorkingDir: "srv"}}, "working dir"},
	}
	for name, c := range cases {
		dir := t.TempDir()
		_, err := imagearchive.WriteFile(filepath.Join(dir, "img.tar"), c.img)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: WriteFile = %v, want an error about %q", name, err, c.want)
		}
		if left, _ := os.ReadDir(dir); len(left) != 0 {
			t.Errorf("%s: left %v behind", name, left)
		}
	}
}

func TestFileNameIsTheLastComponentAndTag(t *testing.T) {
	for ref, want := range map[string]string{
		"registry.k8s.io/kube-apiserver:v1.34.4": "kube-apiserver-v1.34.4.tar",
		"registry.k8s.io/etcd:3.5.35-0":          "etcd-3.5.35-0.tar",
		"localhost:5000/a/b/pause:3.10":          "pause-3.10.tar",
	} {
		if got, err := imagearchive.FileName(ref); err != nil || got != want {
			t.Errorf("FileName(%s) = %q, %v; want %q", ref, got, err, want)
		}
	}
}
