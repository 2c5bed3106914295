package agent

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nodeagent/nodeagent/internal/fsutil"
)

// The instance identity is read while the config inputs are; inputs that cannot
// be read end the run at once, and the identity read still waiting on IMDS is
// cancelled rather than waited for (it may wait minutes on a real instance).
func TestLoadNodeUnreadableConfigCancelsTheIdentityRead(t *testing.T) {
	imdsSrv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-r.Context().Done() // an IMDS that never answers
	}))
	t.Cleanup(imdsSrv.Close)
	t.Setenv("AWS_ACCESS_KEY_ID", "AKIAIOSFODNN7EXAMPLE")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "secret")
	t.Setenv("AWS_REGION", "us-east-1")
	t.Setenv("AWS_CONFIG_FILE", "/dev/null")
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
	t.Setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", imdsSrv.URL)
	o := Options{Root: fsutil.Root(t.TempDir()), StateDir: DefaultStateDir, Log: quietLog(),
		ConfigFile: filepath.Join(t.TempDir(), "missing.yaml")}

	// Far shorter than the identity's own deadline (identityTimeout: 2 min) and
	// than the SDK's own retries of an IMDS that does not answer (~10 s).
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := LoadNode(ctx, o, needIdentity)
	if err == nil || !strings.Contains(err.Error(), "read config") {
		t.Fatalf("LoadNode with a missing config file: %v; want the read error", err)
	}
	if errors.Is(err, context.DeadlineExceeded) || ctx.Err() != nil {
		t.Fatalf("LoadNode waited for the identity read: %v", err)
	}
}
