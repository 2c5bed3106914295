package assets

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nodeagent/nodeagent/bootstrap"
	"github.com/nodeagent/nodeagent/config"
	"github.com/nodeagent/nodeagent/internal/fsutil"
)

// fastRetry keeps the real backoff shape but in milliseconds.
var fastRetry = RetryPolicy{Attempts: 4, BaseDelay: time.Millisecond, MaxDelay: 4 * time.Millisecond}

func randomBytes(t testing.TB, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

func sumOf(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// mirror is an httptest server whose i-th request (from 1) is answered by
// respond(i); it counts requests.
type mirror struct {
	srv  *httptest.Server
	hits atomic.Int32
}

func newMirror(t *testing.T, respond func(n int, w http.ResponseWriter)) *mirror {
	m := &mirror{}
	m.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		respond(int(m.hits.Add(1)), w)
	}))
	t.Cleanup(m.srv.Close)
	return m
}

func (m *mirror) url(name string) string { return m.srv.URL + "/dl/" + name }

func serve(body []byte) func(int, http.ResponseWriter) {
	return func(_ int, w http.ResponseWriter) { w.Write(body) }
}

func status(code int) func(int, http.ResponseWriter) {
	return func(_ int, w http.ResponseWriter) { http.Error(w, http.StatusText(code), code) }
}

// failFirst answers code to the first n requests, then body.
func failFirst(n, code int, body []byte) func(int, http.ResponseWriter) {
	return func(i int, w http.ResponseWriter) {
		if i <= n {
			http.Error(w, http.StatusText(code), code)
			return
		}
		w.Write(body)
	}
}

// logBuffer captures the installer's logs so tests can check what was said.
type logBuffer struct{ bytes.Buffer }

func (l *logBuffer) logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(&l.Buffer, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func newInstaller(t *testing.T) (*Installer, *logBuffer) {
	lb := &logBuffer{}
	return &Installer{Root: fsutil.Root(t.TempDir()), HTTP: &http.Client{Timeout: 5 * time.Second}, Log: lb.logger(), Retry: fastRetry}, lb
}

func runPhase(ctx context.Context, p bootstrap.Phase) ([]bootstrap.Change, error) {
	cs, err := p.Check(ctx)
	if err != nil {
		return nil, err
	}
	if len(cs) > 0 {
		if err := p.Act(ctx); err != nil {
			return cs, err
		}
	}
	return cs, p.Verify(ctx)
}

// leftovers lists temporary files a failed or finished run left behind.
func leftovers(t *testing.T, dirs ...string) []string {
	var out []string
	for _, d := range dirs {
		ents, _ := os.ReadDir(d)
		for _, e := range ents {
			if strings.HasPrefix(e.Name(), ".") {
				out = append(out, filepath.Join(d, e.Name()))
			}
		}
	}
	return out
}

func TestMirrors(t *testing.T) {
	good := randomBytes(t, 300<<10)
	wrong := randomBytes(t, 300<<10)
	old := []byte("#!/bin/sh\necho previously installed kubelet\n")

	tests := []struct {
		name string
		// mirrors answer in order; the asset lists them in this order.
		mirrors []func(int, http.ResponseWriter)
		// installed, when set, is on disk (0755) before the run.
		installed []byte
		wantHits  []int
		// wantSource is the index of the mirror the bytes came from; -1 for failure.
		wantSource int
		wantErr    []string
	}{
		{
			name:       "first mirror answers 500 twice, then serves",
			mirrors:    []func(int, http.ResponseWriter){failFirst(2, 500, good)},
			wantHits:   []int{3},
			wantSource: 0,
		},
		{
			name:       "429 is retried like a 5xx",
			mirrors:    []func(int, http.ResponseWriter){failFirst(1, 429, good)},
			wantHits:   []int{2},
			wantSource: 0,
		},
		{
			name:       "404 is not retried; the second mirror serves",
			mirrors:    []func(int, http.ResponseWriter){status(404), serve(good)},
			wantHits:   []int{1, 1},
			wantSource: 1,
		},
		{
			name:       "403 is not retried either",
			mirrors:    []func(int, http.ResponseWriter){status(403), serve(good)},
			wantHits:   []int{1, 1},
			wantSource: 1,
		},
		{
			name:       "wrong content is a mismatch, not retried; next mirror",
			mirrors:    []func(int, http.ResponseWriter){serve(wrong), serve(good)},
			installed:  old,
			wantHits:   []int{1, 1},
			wantSource: 1,
		},
		{
			name:       "a mirror that keeps failing is given up after 4 attempts",
			mirrors:    []func(int, http.ResponseWriter){status(503), serve(good)},
			wantHits:   []int{4, 1},
			wantSource: 1,
		},
		{
			name:       "a truncated body is retried",
			mirrors:    []func(int, http.ResponseWriter){truncateFirst(good)},
			wantHits:   []int{2},
			wantSource: 0,
		},
		{
			name:       "every mirror wrong: phase fails, installed file untouched",
			mirrors:    []func(int, http.ResponseWriter){serve(wrong), serve(wrong[:1000]), status(500)},
			installed:  old,
			wantHits:   []int{1, 1, 4},
			wantSource: -1,
			wantErr: []string{
				"every mirror failed",
				"sha256 mismatch for kubelet from {0}: expected " + sumOf(good) + ", got " + sumOf(wrong),
				"sha256 mismatch for kubelet from {1}: expected " + sumOf(good) + ", got " + sumOf(wrong[:1000]),
				"GET {2}: 500 Internal Server Error (gave up after 4 attempts)",
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			inst, logs := newInstaller(t)
			var ms []*mirror
			a := config.Asset{Name: "kubelet", SHA256: strings.ToUpper(sumOf(good))}
			for _, respond := range tc.mirrors {
				m := newMirror(t, respond)
				ms = append(ms, m)
				a.URLs = append(a.URLs, m.url("kubelet"))
			}
			dest := inst.Root.Path("/usr/local/bin/kubelet")
			if tc.installed != nil {
				if err := fsutil.WriteFileAtomic(dest, tc.installed, 0o755); err != nil {
					t.Fatal(err)
				}
			}
			ph := inst.Phase([]config.Asset{a})
			_, err := runPhase(context.Background(), ph)

			for i, m := range ms {
				if got := int(m.hits.Load()); got != tc.wantHits[i] {
					t.Errorf("mirror %d: %d requests, want %d", i, got, tc.wantHits[i])
				}
			}
			var st bootstrap.State
			ph.Report(&st)
			if tc.wantSource < 0 {
				if err == nil {
					t.Fatal("phase succeeded")
				}
				for _, w := range tc.wantErr {
					for i, m := range ms {
						w = strings.ReplaceAll(w, "{"+string(rune('0'+i))+"}", m.url("kubelet"))
					}
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error %q\nlacks %q", err, w)
					}
				}
				got, rerr := os.ReadFile(dest)
				if rerr != nil || !bytes.Equal(got, tc.installed) {
					t.Errorf("installed file changed by a failed run (%v)", rerr)
				}
				if len(st.Assets) != 0 {
					t.Errorf("failed asset reported installed: %+v", st.Assets)
				}
			} else {
				if err != nil {
					t.Fatalf("phase: %v", err)
				}
				got, rerr := os.ReadFile(dest)
				if rerr != nil || !bytes.Equal(got, good) {
					t.Fatalf("installed file is not the asset (%v)", rerr)
				}
				if fi, _ := os.Stat(dest); fi.Mode().Perm() != 0o755 {
					t.Errorf("mode %v, want 0755", fi.Mode().Perm())
				}
				want := bootstrap.AssetStatus{Name: "kubelet", Path: "/usr/local/bin/kubelet", SHA256: sumOf(good), Source: ms[tc.wantSource].url("kubelet")}
				if len(st.Assets) != 1 || st.Assets[0] != want {
					t.Errorf("report = %+v, want %+v", st.Assets, want)
				}
				cached, _ := os.ReadFile(filepath.Join(inst.cacheDir(), sumOf(good)))
				if !bytes.Equal(cached, good) {
					t.Error("cache does not hold the verified asset under its hash")
				}
			}
			if l := leftovers(t, inst.cacheDir(), filepath.Dir(dest)); len(l) > 0 {
				t.Errorf("temporary files left behind: %q", l)
			}
			if !strings.Contains(logs.String(), "url=") {
				t.Errorf("nothing logged about URLs:\n%s", logs.String())
			}
		})
	}
}

// truncateFirst promises the whole body but sends half of it the first time.
func truncateFirst(body []byte) func(int, http.ResponseWriter) {
	return func(i int, w http.ResponseWriter) {
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		if i == 1 {
			w.Write(body[:len(body)/2])
			return
		}
		w.Write(body)
	}
}
