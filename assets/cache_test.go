package assets

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nodeagent/nodeagent/bootstrap"
	"github.com/nodeagent/nodeagent/config"
	"github.com/nodeagent/nodeagent/internal/fsutil"
)

// noNetwork is a mirror that fails the test if anything calls it.
func noNetwork(t *testing.T) string {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		t.Errorf("network touched: %s %s", r.Method, r.URL)
		http.Error(w, "no", 500)
	}))
	t.Cleanup(srv.Close)
	return srv.URL + "/kubelet"
}

func TestCacheHitTouchesNoNetwork(t *testing.T) {
	inst, _ := newInstaller(t)
	body := randomBytes(t, 1<<20)
	a := config.Asset{Name: "kubelet", URLs: []string{noNetwork(t)}, SHA256: sumOf(body)}
	cp := filepath.Join(inst.cacheDir(), sumOf(body))
	if err := fsutil.WriteFileAtomic(cp, body, 0o644); err != nil {
		t.Fatal(err)
	}
	got, src, err := inst.Fetch(context.Background(), a)
	if err != nil || got != cp || src != SourceCache {
		t.Fatalf("Fetch = %q, %q, %v; want %q, cache", got, src, err, cp)
	}
	ph := inst.Phase([]config.Asset{a})
	if _, err := runPhase(context.Background(), ph); err != nil {
		t.Fatal(err)
	}
	var st bootstrap.State
	ph.Report(&st)
	if len(st.Assets) != 1 || st.Assets[0].Source != SourceCache {
		t.Errorf("report %+v, want source cache", st.Assets)
	}
}

func TestCorruptCacheEntryIsRepaired(t *testing.T) {
	for _, tc := range []struct {
		name    string
		corrupt func(path string) error
	}{
		{"flipped byte", func(p string) error {
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			b[len(b)/2] ^= 0xff
			return os.WriteFile(p, b, 0o644)
		}},
		{"truncated", func(p string) error { return os.Truncate(p, 10) }},
		{"a directory in its place", func(p string) error {
			if err := os.Remove(p); err != nil {
				return err
			}
			return os.MkdirAll(filepath.Join(p, "x"), 0o755)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			inst, logs := newInstaller(t)
			body := randomBytes(t, 256<<10)
			m := newMirror(t, serve(body))
			a := config.Asset{Name: "containerd", URLs: []string{m.url("containerd")}, SHA256: sumOf(body)}
			cp := filepath.Join(inst.cacheDir(), sumOf(body))
			if err := fsutil.WriteFileAtomic(cp, body, 0o644); err != nil {
				t.Fatal(err)
			}
			if err := tc.corrupt(cp); err != nil {
				t.Fatal(err)
			}
			_, src, err := inst.Fetch(context.Background(), a)
			if err != nil || src != m.url("containerd") {
				t.Fatalf("Fetch source %q, err %v; want the mirror", src, err)
			}
			if b, _ := os.ReadFile(cp); !bytes.Equal(b, body) {
				t.Error("cache entry not repaired")
			}
			if m.hits.Load() != 1 {
				t.Errorf("mirror hit %d times, want 1", m.hits.Load())
			}
			if !strings.Contains(logs.String(), "corrupt cache entry removed") {
				t.Errorf("repair not logged:\n%s", logs.String())
			}
		})
	}
}

// A re-run after success changes nothing and fetches nothing; so does Install.
func TestIdempotentRerun(t *testing.T) {
	inst, _ := newInstaller(t)
	body := randomBytes(t, 128<<10)
	m := newMirror(t, serve(body))
	list := []config.Asset{
		{Name: "kubelet", URLs: []string{m.url("kubelet")}, SHA256: sumOf(body)},
		{Name: "kubelet-copy", URLs: []string{m.url("kubelet")}, SHA256: sumOf(body), Path: "/opt/bin/kubelet"},
	}
	cs, err := runPhase(context.Background(), inst.Phase(list))
	if err != nil {
		t.Fatal(err)
	}
	if len(cs) != 2 {
		t.Errorf("first run changes %v, want 2 creates", cs)
	}
	// Both share one hash: the second came from the cache.
	if m.hits.Load() != 1 {
		t.Errorf("mirror hit %d times, want 1", m.hits.Load())
	}
	again := inst.Phase(list)
	cs, err = again.Check(context.Background())
	if err != nil || len(cs) != 0 {
		t.Fatalf("re-run Check = %v, %v; want no changes", cs, err)
	}
	for _, a := range list {
		if changed, err := inst.Install(context.Background(), a); changed || err != nil {
			t.Errorf("Install(%s) again = %v, %v", a.Name, changed, err)
		}
	}
	if m.hits.Load() != 1 {
		t.Errorf("re-run touched the network")
	}
	if err := again.Verify(context.Background()); err != nil {
		t.Fatal(err)
	}
	var st bootstrap.State
	again.Report(&st)
	if len(st.Assets) != 2 || st.Assets[1].Path != "/opt/bin/kubelet" || st.Assets[1].Source != "" {
		t.Errorf("report %+v", st.Assets)
	}
}

func TestWrongModeIsFixedWithoutFetching(t *testing.T) {
	inst, _ := newInstaller(t)
	body := []byte("binary")
	a := config.Asset{Name: "tool", URLs: []string{noNetwork(t)}, SHA256: sumOf(body)}
	dest := inst.Root.Path("/usr/local/bin/tool")
	if err := fsutil.WriteFileAtomic(dest, body, 0o600); err != nil {
		t.Fatal(err)
	}
	cs, err := runPhase(context.Background(), inst.Phase([]config.Asset{a}))
	if err != nil {
		t.Fatal(err)
	}
	if len(cs) != 1 || cs[0].String() != "update asset /usr/local/bin/tool (mode 0600 -> 0755)" {
		t.Errorf("changes %v", cs)
	}
}

func TestBadAssetsFailClearly(t *testing.T) {
	inst, _ := newInstaller(t)
	good := sumOf([]byte("x"))
	for _, tc := range []struct {
		a    config.Asset
		want string
	}{
		{config.Asset{Name: "a", URLs: []string{"s3://bucket/a"}, SHA256: good}, "no S3 client"},
		{config.Asset{Name: "a", URLs: []string{"ftp://host/a"}, SHA256: good}, `unsupported scheme "ftp"`},
		{config.Asset{Name: "a", URLs: []string{"file:///nonexistent/a"}, SHA256: good}, "no such file"},
		{config.Asset{Name: "a", SHA256: good}, "no URLs"},
		{config.Asset{Name: "a", URLs: []string{"http://h/a"}, SHA256: "../../etc/passwd"}, "sha256 must be 64"},
		{config.Asset{Name: "a", URLs: []string{"http://h/a"}, SHA256: strings.Repeat("g", 64)}, "not hex"},
		{config.Asset{Name: "../x", URLs: []string{"http://h/a"}, SHA256: good}, "invalid name"},
		{config.Asset{Name: "a", URLs: []string{"http://h/a"}, SHA256: good, Path: "/usr/../etc/a"}, "without '..'"},
	} {
		_, err := inst.Install(context.Background(), tc.a)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Install(%+v) = %v, want an error containing %q", tc.a, err, tc.want)
		}
	}
}

// A file:// URL names a host path, resolved under Root.
func TestFileURLUnderRoot(t *testing.T) {
	inst, _ := newInstaller(t)
	body := randomBytes(t, 4096)
	if err := fsutil.WriteFileAtomic(inst.Root.Path("/srv/assets/etcd"), body, 0o644); err != nil {
		t.Fatal(err)
	}
	a := config.Asset{Name: "etcd", URLs: []string{"file:///srv/assets/etcd"}, SHA256: sumOf(body)}
	if changed, err := inst.Install(context.Background(), a); err != nil || !changed {
		t.Fatalf("Install = %v, %v", changed, err)
	}
}

// Credentials in a URL never reach logs, errors or status.
func TestCredentialsAreNotLeaked(t *testing.T) {
	inst, logs := newInstaller(t)
	body := randomBytes(t, 1024)
	m := newMirror(t, failFirst(1, 500, body))
	bad := newMirror(t, serve([]byte("wrong")))
	secretURL := func(m *mirror) string {
		return strings.Replace(m.url("kubelet"), "http://", "http://user:hunter2@", 1) + "?X-Amz-Signature=topsecret&X-Amz-Credential=AKIDSECRET"
	}
	a := config.Asset{Name: "kubelet", URLs: []string{secretURL(bad), secretURL(m)}, SHA256: sumOf(body)}
	ph := inst.Phase([]config.Asset{a})
	if _, err := runPhase(context.Background(), ph); err != nil {
		t.Fatal(err)
	}
	var st bootstrap.State
	ph.Report(&st)
	if st.Assets[0].Source != m.url("kubelet") {
		t.Errorf("source %q, want %q", st.Assets[0].Source, m.url("kubelet"))
	}
	// A failing run, for the errors.
	err := inst.Phase([]config.Asset{{Name: "x", URLs: []string{secretURL(bad)}, SHA256: sumOf([]byte("not in cache"))}}).Act(context.Background())
	if err == nil {
		t.Fatal("mismatch not reported")
	}
	for _, secret := range []string{"hunter2", "topsecret", "AKIDSECRET"} {
		if strings.Contains(logs.String(), secret) || strings.Contains(err.Error(), secret) {
			t.Errorf("%q leaked:\nlogs: %s\nerr: %v", secret, logs.String(), err)
		}
	}
}

// Connection errors are retried; cancellation stops at once.
func TestUnreachableMirrorAndCancel(t *testing.T) {
	inst, _ := newInstaller(t)
	dead := httptest.NewServer(http.NotFoundHandler())
	deadURL := dead.URL + "/kubelet"
	dead.Close()
	body := randomBytes(t, 1024)
	m := newMirror(t, serve(body))
	a := config.Asset{Name: "kubelet", URLs: []string{deadURL, m.url("kubelet")}, SHA256: sumOf(body)}
	_, src, err := inst.Fetch(context.Background(), a)
	if err != nil || src != m.url("kubelet") {
		t.Fatalf("Fetch = %q, %v", src, err)
	}

	inst2, _ := newInstaller(t)
	inst2.Retry = RetryPolicy{Attempts: 10, BaseDelay: time.Hour, MaxDelay: time.Hour}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, _, err = inst2.Fetch(ctx, config.Asset{Name: "k", URLs: []string{deadURL}, SHA256: sumOf(body)})
	if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 5*time.Second {
		t.Errorf("cancelled Fetch = %v after %v", err, time.Since(start))
	}
}

func TestBackoff(t *testing.T) {
	p := RetryPolicy{}.withDefaults()
	for attempt, want := range map[int]time.Duration{1: 200 * time.Millisecond, 2: 400 * time.Millisecond, 3: 800 * time.Millisecond, 6: 5 * time.Second, 40: 5 * time.Second} {
		for range 50 {
			if d := p.backoff(attempt); d < want/2 || d > want {
				t.Fatalf("backoff(%d) = %v, want in [%v, %v]", attempt, d, want/2, want)
			}
		}
	}
}

func TestBake(t *testing.T) {
	inst, _ := newInstaller(t)
	k, c := randomBytes(t, 2048), randomBytes(t, 4096)
	m := newMirror(t, func(n int, w http.ResponseWriter) {})
	m.srv.Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		m.hits.Add(1)
		switch r.URL.Path {
		case "/kubelet":
			w.Write(k)
		case "/containerd":
			w.Write(c)
		default:
			http.NotFound(w, r)
		}
	})
	list := []config.Asset{
		{Name: "kubelet", URLs: []string{m.srv.URL + "/kubelet"}, SHA256: sumOf(k)},
		{Name: "containerd", URLs: []string{m.srv.URL + "/containerd"}, SHA256: sumOf(c), Path: "/usr/bin/containerd"},
	}
	if err := inst.Bake(context.Background(), list); err != nil {
		t.Fatal(err)
	}
	// The baked root now boots without network: a phase over it with dead mirrors
	// has nothing to do, and a lost binary is restored from the cache.
	m.srv.Close()
	if err := os.Remove(inst.Root.Path("/usr/bin/containerd")); err != nil {
		t.Fatal(err)
	}
	if _, err := runPhase(context.Background(), inst.Phase(list)); err != nil {
		t.Fatalf("boot after bake: %v", err)
	}
	if b, _ := os.ReadFile(inst.Root.Path("/usr/bin/containerd")); !bytes.Equal(b, c) {
		t.Error("containerd not restored from the cache")
	}
}

func TestProgressIsLogged(t *testing.T) {
	var lb logBuffer
	p := &progress{log: lb.logger(), every: time.Nanosecond, last: time.Now()}
	time.Sleep(time.Millisecond)
	p.Write(make([]byte, 1000))
	p.Write(make([]byte, 500))
	if got := strings.Count(lb.String(), "asset download progress"); got != 2 || !strings.Contains(lb.String(), "bytes=1500") {
		t.Errorf("progress log:\n%s", lb.String())
	}
}

// A download reports bytes, size and rate as its phase's progress, at most once
// per interval.
func TestProgressIsReported(t *testing.T) {
	var lb logBuffer
	var got []string
	start := time.Now().Add(-2 * time.Second)
	p := &progress{log: lb.logger(), every: time.Hour, last: start, total: 4 << 20,
		report: func(m string) { got = append(got, m) }, reportEvery: time.Nanosecond}
	p.Write(make([]byte, 1<<20))
	p.Write(make([]byte, 1<<20))
	if len(got) != 2 || !strings.HasPrefix(got[1], "2.0 MiB of 4.0 MiB at ") || !strings.HasSuffix(got[1], " MiB/s") {
		t.Errorf("progress reports: %q", got)
	}
	p.reportEvery = time.Hour
	p.Write(make([]byte, 1))
	if len(got) != 2 {
		t.Errorf("reported again within the interval: %q", got)
	}
}
