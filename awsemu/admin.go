package awsemu

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"time"
)

// State is a snapshot of what a run did, for tests and demos that drive the
// emulator as a separate process.
type State struct {
	Volumes   []VolumeStatus    `json:"volumes"`
	Lifecycle map[string]string `json:"lifecycle"`
	// Calls maps "service action" to the number of requests received.
	Calls map[string]int `json:"calls"`
}

// Snapshot returns the current State.
func (e *Emulator) Snapshot() State {
	e.mu.Lock()
	ids := append([]string(nil), e.volOrder...)
	calls := make(map[string]int, len(e.calls))
	for k, v := range e.calls {
		calls[k] = v
	}
	e.mu.Unlock()
	s := State{Lifecycle: e.LifecycleResults(), Calls: calls}
	for _, id := range ids {
		if v, ok := e.VolumeStatus(id); ok {
			s.Volumes = append(s.Volumes, v)
		}
	}
	return s
}

// AdminHandler is a small control API for an emulator running as its own
// process (cmd/awsemu --admin):
//
//	GET  /state                    the State as JSON
//	PUT  /faults/{service}         body: Faults as JSON ({"throttleRate":0.5,"latency":"50ms"})
//	PUT  /instances/{id}/state     body: the new state (e.g. terminated)
//	POST /instances                body: an Instance as JSON
//	PUT  /instances/{id}/target-lifecycle-state  body: InService, Warmed:Stopped, ...
//	POST /instances/{id}/terminate-in-group      a scale-in or replacement (terminate hooks run)
//	POST /instances/{id}/spot-interruption       a spot notice, terminating in two minutes
//
// It is unauthenticated: bind it to loopback only.
func (e *Emulator) AdminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /state", func(w http.ResponseWriter, r *http.Request) {
		s := e.Snapshot()
		sort.Slice(s.Volumes, func(i, j int) bool { return s.Volumes[i].ID < s.Volumes[j].ID })
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		if err := enc.Encode(s); err != nil {
			e.log.Warn("admin: write state", "err", err)
		}
	})
	mux.HandleFunc("PUT /faults/{service}", func(w http.ResponseWriter, r *http.Request) {
		var f Faults
		if err := decodeStrict(r.Body, &f); err != nil {
			http.Error(w, "faults: "+err.Error(), http.StatusBadRequest)
			return
		}
		svc := r.PathValue("service")
		if err := validFaults(svc, f); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		e.SetFaults(svc, f)
		e.log.Info("admin: faults set", "service", svc, "throttle_rate", f.ThrottleRate, "error_rate", f.ErrorRate, "reset_rate", f.ResetRate, "lose_answer_rate", f.LoseAnswerRate, "latency", f.Latency)
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("PUT /instances/{id}/state", func(w http.ResponseWriter, r *http.Request) {
		b, err := io.ReadAll(io.LimitReader(r.Body, 64))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		id, state := r.PathValue("id"), strings.TrimSpace(string(b))
		if _, ok := stateCodes[state]; !ok {
			http.Error(w, fmt.Sprintf("unknown state %q", state), http.StatusBadRequest)
			return
		}
		e.mu.Lock()
		_, ok := e.instances[id]
		e.mu.Unlock()
		if !ok {
			http.Error(w, "no instance "+id, http.StatusNotFound)
			return
		}
		e.SetInstanceState(id, state)
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("PUT /instances/{id}/target-lifecycle-state", func(w http.ResponseWriter, r *http.Request) {
		b, err := io.ReadAll(io.LimitReader(r.Body, 64))
		if err == nil {
			err = e.SetTargetLifecycleState(r.PathValue("id"), strings.TrimSpace(string(b)))
		}
		adminResult(w, err)
	})
	mux.HandleFunc("POST /instances/{id}/terminate-in-group", func(w http.ResponseWriter, r *http.Request) {
		adminResult(w, e.TerminateInGroup(r.PathValue("id")))
	})
	mux.HandleFunc("POST /instances/{id}/spot-interruption", func(w http.ResponseWriter, r *http.Request) {
		adminResult(w, e.InterruptSpot(r.PathValue("id"), e.now().Add(2*time.Minute)))
	})
	mux.HandleFunc("POST /instances", func(w http.ResponseWriter, r *http.Request) {
		var in Instance
		if err := decodeStrict(r.Body, &in); err != nil {
			http.Error(w, "instance: "+err.Error(), http.StatusBadRequest)
			return
		}
		if err := e.addInstance(in); err != nil {
			http.Error(w, err.Error(), http.StatusConflict)
			return
		}
		w.WriteHeader(http.StatusCreated)
	})
	return mux
}

func adminResult(w http.ResponseWriter, err error) {
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func decodeStrict(r io.Reader, v any) error {
	b, err := io.ReadAll(io.LimitReader(r, 1<<20))
	if err != nil {
		return err
	}
	return strictDecode(b, v)
}
