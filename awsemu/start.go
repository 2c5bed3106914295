package awsemu

import (
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
)

// Running is an emulator served over loopback HTTP for a test.
type Running struct {
	// URL is the one endpoint for EC2, S3 and Auto Scaling (AWS_ENDPOINT_URL).
	URL string
	E   *Emulator

	region, akid, secret string

	mu   sync.Mutex
	imds map[string]*httptest.Server
	tb   testing.TB
}

// Start serves a new emulator on httptest servers; everything is closed (and every
// loop device detached) when the test ends.
func Start(tb testing.TB, w *World, o Options) *Running {
	tb.Helper()
	e, err := New(w, o)
	if err != nil {
		tb.Fatalf("awsemu: %v", err)
	}
	srv := httptest.NewServer(e.Handler())
	r := &Running{URL: srv.URL, E: e, region: e.region, akid: e.accessKeyID, secret: e.secretKey, imds: map[string]*httptest.Server{}, tb: tb}
	tb.Cleanup(func() {
		srv.Close()
		r.mu.Lock()
		for _, s := range r.imds {
			s.Close()
		}
		r.mu.Unlock()
		if err := e.Close(); err != nil {
			tb.Errorf("awsemu: %v", err)
		}
	})
	return r
}

// IMDSURL is the metadata endpoint of one instance (AWS_EC2_METADATA_SERVICE_ENDPOINT),
// started on first use so instances added later get one too.
func (r *Running) IMDSURL(instanceID string) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	s, ok := r.imds[instanceID]
	if !ok {
		s = httptest.NewServer(r.E.IMDSHandler(instanceID))
		r.imds[instanceID] = s
	}
	return s.URL
}

// Env is the environment that points an SDK process, running as instanceID, at
// the emulator through the SDK's own settings. Shared config files are disabled so
// the host's ~/.aws cannot leak in.
func (r *Running) Env(instanceID string) []string {
	env := []string{
		"AWS_ENDPOINT_URL=" + r.URL,
		"AWS_REGION=" + r.region,
		"AWS_ACCESS_KEY_ID=" + r.akid,
		"AWS_SECRET_ACCESS_KEY=" + r.secret,
		"AWS_CONFIG_FILE=/dev/null",
		"AWS_SHARED_CREDENTIALS_FILE=/dev/null",
		"AWS_EC2_METADATA_DISABLED=false",
	}
	if instanceID != "" {
		env = append(env, "AWS_EC2_METADATA_SERVICE_ENDPOINT="+r.IMDSURL(instanceID))
	}
	return env
}

// Setenv sets Env(instanceID) on the test's process environment (t.Setenv), so
// cloud.LoadConfig in the test process talks to the emulator.
func (r *Running) Setenv(t testing.TB, instanceID string) {
	for _, kv := range r.Env(instanceID) {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
}
