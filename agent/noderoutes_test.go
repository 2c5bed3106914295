package agent

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nodeagent/nodeagent/awsemu"
	"github.com/nodeagent/nodeagent/bootstrap"
	"github.com/nodeagent/nodeagent/cloud"
	"github.com/nodeagent/nodeagent/gossip"
	"github.com/nodeagent/nodeagent/internal/fsutil"
	"github.com/nodeagent/nodeagent/kubelet"
	"github.com/nodeagent/nodeagent/podroutes"
)

// The Node object's readiness is the last condition of a node's (DESIGN.md,
// Readiness upward): Auto Scaling hears CONTINUE only once the API server says the
// Node is Ready, and exactly once, whatever re-runs and restarts follow.
func TestLifecycleContinuesOnceTheNodeIsReady(t *testing.T) {
	const id, hook, name = "i-0ready", "nodeagent-ready", "ip-10-0-1-5.ec2.internal"
	emu, awsCfg := launchingInstance(t, id, "nodes", hook)
	ctx := context.Background()
	api := startFakeAPIServer(t, name)
	root := fsutil.Root(t.TempDir())
	api.writeKubeconfig(t, root)
	store := bootstrap.StateStore{Dir: t.TempDir()}
	if _, err := store.Update(func(st *bootstrap.State) {
		st.Phases = []bootstrap.PhaseStatus{{Name: "kubelet", State: bootstrap.PhaseDone}}
	}); err != nil {
		t.Fatal(err)
	}
	// A readiness phase as buildPhases makes it; a restarted daemon makes a new one.
	newPhase := func() *readinessPhase {
		p := &readinessPhase{store: store, hook: hook, instanceID: id, log: quietLog(),
			asg:    func() (cloud.AutoScalingAPI, error) { return cloud.NewAutoScaling(awsCfg), nil },
			checks: []readyCheck{{name: "phases", fn: phasesDone(store)}}}
		ps := &phaseSet{readiness: p}
		ps.addNodeCheck(Options{Root: root}, &Node{Name: name}, kubelet.ClientCert{})
		return p
	}
	continues := func() int { return emu.E.Calls(awsemu.ServiceAutoScaling, "CompleteLifecycleAction") }

	api.answer(http.StatusOK, nodeJSON(name, "False", "KubeletNotReady", "container runtime network not ready: NetworkReady=false reason:NetworkPluginNotReady", "100.96.1.0/24"))
	p := newPhase()
	actCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	acted := make(chan error, 1)
	go func() { acted <- p.Act(actCtx) }()

	waitFor(t, func() bool { return api.gets.Load() >= 2 })
	if n := continues(); n != 0 {
		t.Fatalf("lifecycle completed %d times while the Node was NotReady", n)
	}

	api.answer(http.StatusOK, nodeJSON(name, "True", "KubeletReady", "kubelet is posting ready status", "100.96.1.0/24"))
	if err := <-acted; err != nil {
		t.Fatalf("readiness: %v", err)
	}
	if n, got := continues(), emu.E.LifecycleResults()[id]; n != 1 || got != awsemu.LifecycleContinue {
		t.Fatalf("after Ready: %d completions, result %q; want one CONTINUE", n, got)
	}

	// The daemon's reports, a re-run, and a restarted daemon re-run: none sends it again.
	p.refresh(ctx)
	if changes, err := p.Check(ctx); err != nil || slices.ContainsFunc(changes, func(c bootstrap.Change) bool { return c.Kind == "lifecycle" }) {
		t.Errorf("a re-run plans %v (err %v), want no lifecycle change", changes, err)
	}
	if err := p.Act(ctx); err != nil {
		t.Fatal(err)
	}
	if err := newPhase().Act(ctx); err != nil {
		t.Fatal(err)
	}
	if n := continues(); n != 1 {
		t.Errorf("lifecycle completed %d times, want exactly once", n)
	}
	if st, _ := store.Load(); !st.Readiness.Ready || st.Readiness.Lifecycle != cloud.LifecycleContinue {
		t.Errorf("recorded readiness %+v", st.Readiness)
	}
}

// What the API server says about the Node reaches `nodeagent status` as the
// reason the node is not ready.
func TestStatusShowsWhyTheNodeIsNotReady(t *testing.T) {
	const name = "ip-10-0-1-5.ec2.internal"
	root := fsutil.Root(t.TempDir())
	o := Options{Root: root, Log: quietLog()}
	p := &readinessPhase{store: o.store(), log: quietLog()}
	ps := &phaseSet{readiness: p}
	ps.addNodeCheck(o, &Node{Name: name}, kubelet.Bootstrap{})
	api := startFakeAPIServer(t, name)

	steps := []struct {
		stage  string
		before func()
		want   string
	}{
		{"kubelet has not finished TLS bootstrap", func() {},
			"Ready:     no (node: kubelet has no kubeconfig at /var/lib/kubelet/kubeconfig yet)"},
		{"the Node is not registered yet", func() {
			api.writeKubeconfig(t, root)
			api.answer(http.StatusNotFound, `{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"nodes \"`+name+`\" not found","reason":"NotFound","details":{"name":"`+name+`","kind":"nodes"},"code":404}`)
		}, "Ready:     no (node: Node " + name + " not registered yet)"},
		{"the Node has no network plugin yet", func() {
			api.answer(http.StatusOK, nodeJSON(name, "False", "KubeletNotReady", "container runtime network not ready: NetworkReady=false reason:NetworkPluginNotReady message:Network plugin returns error: cni plugin not initialized", "100.96.1.0/24"))
		}, "Ready:     no (node: Node " + name + " NotReady (KubeletNotReady): container runtime network not ready: NetworkReady=false reason:NetworkPluginNotReady message:Network plugin returns error: cni plugin not initialized)"},
		{"the Node is Ready", func() {
			api.answer(http.StatusOK, nodeJSON(name, "True", "KubeletReady", "kubelet is posting ready status", "100.96.1.0/24"))
		}, "Ready:     yes"},
	}
	for _, s := range steps {
		t.Run(s.stage, func(t *testing.T) {
			s.before()
			p.refresh(context.Background())
			var out bytes.Buffer
			if _, err := Status(o, &out, "table"); err != nil {
				t.Fatal(err)
			}
			if line := statusLine(out.String(), "Ready:"); line != s.want {
				t.Errorf("status shows\n%s\nwant\n%s", line, s.want)
			}
		})
	}
	if got := ps.node.PodCIDR(); got != netip.MustParsePrefix("100.96.1.0/24") {
		t.Errorf("pod CIDR learned from the Node: %v", got)
	}
}

// A worker that joins a cluster (CA or bootstrap token) and every control plane
// ask the API server about their Node; a standalone worker has none to ask.
func TestNodeCheckOnlyWithAnAPIServer(t *testing.T) {
	emu := awsemu.Start(t, &awsemu.World{Instances: []awsemu.Instance{{
		ID: "i-0check", Type: "m5.large", AvailabilityZone: "us-east-1a", PrivateIP: "10.0.1.5", State: "running",
	}}}, awsemu.Options{})
	emu.Setenv(t, "i-0check")
	for _, tt := range []struct {
		name  string
		extra string
		want  []string
	}{
		{"standalone worker", "", []string{"phases", "units", "kubelet"}},
		{"worker joining with a bootstrap token", "  kubelet: {bootstrapToken: abcdef.0123456789abcdef}\n", []string{"phases", "units", "kubelet", "node"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cfg := filepath.Join(t.TempDir(), "node.yaml")
			if err := os.WriteFile(cfg, []byte(workerConfig+tt.extra), 0o600); err != nil {
				t.Fatal(err)
			}
			o := Options{Root: fsutil.Root(t.TempDir()), ConfigFile: cfg, Log: quietLog()}
			n, err := LoadNode(context.Background(), o, needIdentity)
			if err != nil {
				t.Fatal(err)
			}
			ps, err := buildPhases(context.Background(), o, n)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, c := range ps.readiness.checks {
				got = append(got, c.name)
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("readiness checks %v, want %v", got, tt.want)
			}
		})
	}
}

func TestPeersOfTheRing(t *testing.T) {
	cidr := netip.MustParsePrefix
	members := []gossip.Member{
		{Name: "self", IP: net.ParseIP("10.0.1.5"), State: gossip.StateAlive, PodCIDR: cidr("100.96.0.0/24")},
		{Name: "alive", IP: net.ParseIP("10.0.1.6"), State: gossip.StateAlive, PodCIDR: cidr("100.96.1.0/24")},
		{Name: "no-cidr-yet", IP: net.ParseIP("10.0.1.7"), State: gossip.StateAlive},
		{Name: "dead", IP: net.ParseIP("10.0.1.8"), State: gossip.StateDead, PodCIDR: cidr("100.96.3.0/24")},
		{Name: "left", IP: net.ParseIP("10.0.1.9"), State: gossip.StateLeft, PodCIDR: cidr("100.96.4.0/24")},
	}
	want := []podroutes.Peer{
		{Name: "alive", IP: netip.MustParseAddr("10.0.1.6"), PodCIDR: cidr("100.96.1.0/24")},
		{Name: "no-cidr-yet", IP: netip.MustParseAddr("10.0.1.7")},
	}
	if got := peersOf(members, "self"); !slices.Equal(got, want) {
		t.Errorf("peers %+v\nwant  %+v", got, want)
	}
}

func statusLine(out, prefix string) string {
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, prefix) {
			return l
		}
	}
	return ""
}

// fakeAPIServer answers GET /api/v1/nodes/<name> as kube-apiserver would (the
// kube package's tests check client-go against the full shapes; the end-to-end
// tests run the real API server).
type fakeAPIServer struct {
	srv  *httptest.Server
	name string
	gets atomic.Int64
	mu   sync.Mutex
	code int
	body string
}

func startFakeAPIServer(t *testing.T, name string) *fakeAPIServer {
	a := &fakeAPIServer{name: name, code: http.StatusServiceUnavailable}
	a.srv = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/api/v1/nodes/"+a.name {
			http.NotFound(w, r)
			return
		}
		a.gets.Add(1)
		a.mu.Lock()
		code, body := a.code, a.body
		a.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		fmt.Fprint(w, body)
	}))
	t.Cleanup(a.srv.Close)
	return a
}

func (a *fakeAPIServer) answer(code int, body string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.code, a.body = code, body
}

// writeKubeconfig puts a kubeconfig for the server where kubelet keeps its own.
func (a *fakeAPIServer) writeKubeconfig(t *testing.T, root fsutil.Root) {
	t.Helper()
	kc := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: %q, insecure-skip-tls-verify: true}}]
users: [{name: kubelet, user: {}}]
contexts: [{name: kubelet@c, context: {cluster: c, user: kubelet}}]
current-context: kubelet@c
`, a.srv.URL)
	path := root.Path(kubelet.KubeconfigPath)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(kc), 0o600); err != nil {
		t.Fatal(err)
	}
}

func nodeJSON(name, ready, reason, message, podCIDR string) string {
	return fmt.Sprintf(`{"kind":"Node","apiVersion":"v1","metadata":{"name":%q},"spec":{"podCIDR":%q,"podCIDRs":[%q]},`+
		`"status":{"conditions":[{"type":"Ready","status":%q,"lastHeartbeatTime":"2026-11-25T10:00:14Z","lastTransitionTime":"2026-11-25T10:00:04Z","reason":%q,"message":%q}]}}`,
		name, podCIDR, podCIDR, ready, reason, message)
}
