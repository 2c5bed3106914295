package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/nodeagent/nodeagent/bootstrap"
)

// DefaultSocket is the status API's unix socket.
const DefaultSocket = "/run/nodeagent/nodeagent.sock"

// ClusterMember is one node as the gossip ring sees it (`status --cluster`).
type ClusterMember struct {
	Name  string   `json:"name"`
	IP    string   `json:"ip"`
	Role  string   `json:"role"`
	State string   `json:"state"`
	Ready bool     `json:"ready"`
	Names []string `json:"names,omitempty"`
	// PodCIDR is the pod CIDR the member publishes (its Node's spec.podCIDR).
	PodCIDR string `json:"podCIDR,omitempty"`
	// Since is this node's last news of the member; LastSeen its own last
	// answered probe of it, RTTMillis that probe's round trip.
	Since     time.Time `json:"since,omitzero"`
	LastSeen  time.Time `json:"lastSeen,omitzero"`
	RTTMillis float64   `json:"rttMillis,omitempty"`
	// KeyGeneration is the gossip key generation the member sends with (0:
	// the single key, no keyring document).
	KeyGeneration uint64 `json:"keyGeneration,omitempty"`
	// Incarnation is the version of the member's record this node holds
	// (gossip.Member.Incarnation): it counts the member's published changes
	// from 1; 0 (omitted) from a member whose agent does not send it.
	Incarnation uint64 `json:"incarnation,omitempty"`
}

// statusAPI serves /healthz, /readyz, /status, /cluster and /metrics over a root-only
// unix socket: the state file is the source of truth, so a restarted daemon answers
// with what happened before it.
type statusAPI struct {
	store   bootstrap.StateStore
	metrics *metrics
	cluster func() []ClusterMember // nil when gossip is off
	// exit runs the graceful exit (`nodeagent drain`) and returns its record.
	exit func(ctx context.Context) (*bootstrap.ExitStatus, error)
	log  *slog.Logger
}

func (a *statusAPI) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		st, err := a.store.Load()
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		if !st.Readiness.Ready {
			reason := st.Readiness.Reason
			if reason == "" {
				reason = "not ready"
			}
			http.Error(w, reason, http.StatusServiceUnavailable)
			return
		}
		io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		st, err := a.store.Load()
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		writeJSON(w, st)
	})
	mux.HandleFunc("GET /cluster", func(w http.ResponseWriter, r *http.Request) {
		if a.cluster == nil {
			http.Error(w, "gossip is not running on this node", http.StatusNotFound)
			return
		}
		writeJSON(w, a.cluster())
	})
	mux.HandleFunc("POST /exit", func(w http.ResponseWriter, r *http.Request) {
		if a.exit == nil {
			http.Error(w, "this daemon cannot exit gracefully", http.StatusNotFound)
			return
		}
		st, err := a.exit(r.Context())
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		writeJSON(w, st)
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(a.metrics.reg, promhttp.HandlerOpts{}))
	return mux
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// serve listens on the unix socket (mode 0600 in a 0700 directory) until ctx ends.
func (a *statusAPI) serve(ctx context.Context, socket string) error {
	if err := os.MkdirAll(filepath.Dir(socket), 0o700); err != nil {
		return fmt.Errorf("status API: %w", err)
	}
	if err := os.Remove(socket); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("status API: remove stale socket: %w", err)
	}
	ln, err := net.Listen("unix", socket)
	if err != nil {
		return fmt.Errorf("status API: %w", err)
	}
	if err := os.Chmod(socket, 0o600); err != nil {
		ln.Close()
		return fmt.Errorf("status API: %w", err)
	}
	srv := &http.Server{Handler: a.handler(), ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		shut, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(shut)
	}()
	a.log.Info("status API listening", "socket", socket)
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("status API: %w", err)
	}
	return nil
}

// queryAPI GETs path from the daemon's status API.
func queryAPI(ctx context.Context, socket, path string, out any) error {
	return callAPI(ctx, socket, http.MethodGet, path, 10*time.Second, out)
}

// callAPI sends method path to the daemon's status API and decodes its JSON
// answer into out. A zero timeout leaves the bound to ctx (an exit's drain
// takes minutes).
func callAPI(ctx context.Context, socket, method, path string, timeout time.Duration, out any) error {
	client := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
	}, Timeout: timeout}
	req, err := http.NewRequestWithContext(ctx, method, "http://nodeagent"+path, nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("status API at %s: %w (is nodeagent.service running?)", socket, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return fmt.Errorf("status API %s: %s: %s", path, resp.Status, strings.TrimSpace(string(msg)))
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("status API %s: %w", path, err)
	}
	return nil
}
