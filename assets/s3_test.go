package assets

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/nodeagent/nodeagent/bootstrap"
	"github.com/nodeagent/nodeagent/cloud"
	"github.com/nodeagent/nodeagent/config"
)

// s3Stub answers S3 GetObject path-style (GET /bucket/key) the way S3 does on the
// wire, including its XML errors, so the real SDK client from cloud.NewS3 runs
// against it end to end (endpoint resolution, SigV4 signing, error parsing).
type s3Stub struct {
	mu       sync.Mutex
	objects  map[string][]byte // "bucket/key"
	throttle int               // answer SlowDown to this many requests first
	gets     int
	auth     []string
}

func (s *s3Stub) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.gets++
	s.auth = append(s.auth, r.Header.Get("Authorization"))
	if r.Method != http.MethodGet {
		http.Error(w, "only GetObject here", http.StatusMethodNotAllowed)
		return
	}
	if s.throttle > 0 {
		s.throttle--
		s3Error(w, http.StatusServiceUnavailable, "SlowDown", "Please reduce your request rate.")
		return
	}
	body, ok := s.objects[strings.TrimPrefix(r.URL.Path, "/")]
	if !ok {
		s3Error(w, http.StatusNotFound, "NoSuchKey", "The specified key does not exist.")
		return
	}
	w.Header().Set("Content-Length", fmt.Sprint(len(body)))
	w.Header().Set("ETag", `"stub"`)
	w.Write(body)
}

func s3Error(w http.ResponseWriter, code int, errCode, msg string) {
	w.Header().Set("Content-Type", "application/xml")
	w.WriteHeader(code)
	fmt.Fprintf(w, `<?xml version="1.0" encoding="UTF-8"?><Error><Code>%s</Code><Message>%s</Message><RequestId>stub</RequestId></Error>`, errCode, msg)
}

// s3Installer points the SDK at url through its standard settings, exactly as the
// agent's own S3 client is configured.
func s3Installer(t *testing.T, url string) *Installer {
	for k, v := range map[string]string{
		"AWS_ENDPOINT_URL": url, "AWS_REGION": "us-east-1",
		"AWS_ACCESS_KEY_ID": "AKIDEXAMPLE", "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
		"AWS_CONFIG_FILE": os.DevNull, "AWS_SHARED_CREDENTIALS_FILE": os.DevNull, "AWS_EC2_METADATA_DISABLED": "true",
	} {
		t.Setenv(k, v)
	}
	cfg, err := cloud.LoadConfig(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	inst, _ := newInstaller(t)
	inst.S3 = cloud.NewS3(cfg)
	return inst
}

func TestS3Mirror(t *testing.T) {
	body := randomBytes(t, 512<<10)
	tests := []struct {
		name       string
		urls       []string
		throttle   int
		wantSource string
		wantGets   int
		wantErr    string
	}{
		{name: "object served", urls: []string{"s3://assets/k8s/v1.31.2/kubelet"}, wantSource: "s3://assets/k8s/v1.31.2/kubelet", wantGets: 1},
		// The SDK retries SlowDown itself (3 attempts); the installer's own retry
		// takes over when the SDK gives up.
		{name: "throttled past the SDK's retries", urls: []string{"s3://assets/k8s/v1.31.2/kubelet"}, throttle: 4, wantSource: "s3://assets/k8s/v1.31.2/kubelet", wantGets: 5},
		{name: "NoSuchKey is not retried; next mirror", urls: []string{"s3://assets/missing", "s3://assets/k8s/v1.31.2/kubelet"}, wantSource: "s3://assets/k8s/v1.31.2/kubelet", wantGets: 2},
		{name: "wrong object is a mismatch", urls: []string{"s3://assets/other"}, wantGets: 1, wantErr: "sha256 mismatch for kubelet from s3://assets/other: expected " + sumOf(body)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			stub := &s3Stub{objects: map[string][]byte{"assets/k8s/v1.31.2/kubelet": body, "assets/other": []byte("other")}, throttle: tc.throttle}
			srv := httptest.NewServer(stub)
			defer srv.Close()
			inst := s3Installer(t, srv.URL)
			a := config.Asset{Name: "kubelet", URLs: tc.urls, SHA256: sumOf(body)}
			ph := inst.Phase([]config.Asset{a})
			_, err := runPhase(context.Background(), ph)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
			} else {
				if err != nil {
					t.Fatal(err)
				}
				var st bootstrap.State
				ph.Report(&st)
				if st.Assets[0].Source != tc.wantSource {
					t.Errorf("source %q, want %q", st.Assets[0].Source, tc.wantSource)
				}
				if b, _ := os.ReadFile(inst.Root.Path("/usr/local/bin/kubelet")); !bytes.Equal(b, body) {
					t.Error("installed file differs")
				}
			}
			stub.mu.Lock()
			defer stub.mu.Unlock()
			if stub.gets != tc.wantGets {
				t.Errorf("%d GETs, want %d", stub.gets, tc.wantGets)
			}
			for _, a := range stub.auth {
				if !strings.HasPrefix(a, "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/") {
					t.Errorf("request not SigV4-signed: %q", a)
				}
			}
		})
	}
}
