//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/nodeagent/nodeagent/addons"
	nodeagent "github.com/nodeagent/nodeagent/agent"
	"github.com/nodeagent/nodeagent/config"
)

const haDNSProbeImage = "nodeagent.test/dnsprobe:1"

// TestClusterAddons: the cluster is usable, not just up. One HA cluster (three
// masters started at once, a worker) serves all three points:
//
//  1. the masters apply the bootstrap add-ons: CoreDNS runs on the worker, and a
//     pod resolves kubernetes.default.svc and a Service's name through the
//     cluster DNS IP;
//  2. `nodeagent validate` fails, naming why, while the worker is NotReady and
//     CoreDNS is not running, and passes once both are fixed (--wait returns
//     when it does);
//  3. the master applying add-ons is killed mid-apply: another master takes the
//     lease and finishes; nothing already applied is changed again; a user's edit
//     of fields the applier does not own survives a re-apply.
func TestClusterAddons(t *testing.T) {
	h := newHALab(t)
	ctx := context.Background()
	began := time.Now()
	masters := h.bootMastersAtOnce(ctx, "i-0ad0master")
	worker := h.boot(ctx, "i-0ad0worker0000001", config.RoleNode, "us-east-1a")
	if _, stderr, code := h.agent(ctx, worker, "bootstrap"); code != 0 {
		t.Fatalf("worker bootstrap: exit %d\n%s", code, lastLines(stderr, 20))
	}
	api := h.apiClient(masters[0], masters[0].IP)
	workerName := workerNode(t, ctx, api, worker).Metadata.Name

	// 1. CoreDNS on the worker, answering at the cluster DNS IP.
	t.Run("CoreDNS resolves cluster names for pods", func(t *testing.T) {
		eventually(t, 5*time.Minute, "CoreDNS running and ready on the worker", func() (bool, string) {
			return corednsRunningOn(ctx, api, workerName)
		})
		t.Logf("FIGURE cluster booted → CoreDNS ready on the worker: %s", time.Since(began).Round(time.Second))
		var svc struct {
			Spec struct {
				ClusterIP string `json:"clusterIP"`
			} `json:"spec"`
		}
		if code, body, err := apiSend(ctx, api, http.MethodPost, "/api/v1/namespaces/default/services",
			[]byte(`{"apiVersion":"v1","kind":"Service","metadata":{"name":"web"},"spec":{"selector":{"app":"web"},"ports":[{"port":80}]}}`)); err != nil || code != http.StatusCreated {
			t.Fatalf("create Service web: %d %v %s", code, err, body)
		} else if err := json.Unmarshal(body, &svc); err != nil {
			t.Fatal(err)
		}
		out := runDNSProbe(t, ctx, api, workerName, "kubernetes.default.svc", "web.default.svc")
		for _, want := range []string{
			"nameserver " + config.DefaultClusterDNS + ":53",
			"kubernetes.default.svc -> 100.64.0.1",
			"web.default.svc -> " + svc.Spec.ClusterIP,
		} {
			if !strings.Contains(out, want) {
				t.Errorf("the DNS probe pod says:\n%s\nwant a line %q", out, want)
			}
		}
	})

	// 2. validate: healthy; then the worker down and CoreDNS not running; fixed.
	t.Run("validate names what is wrong and passes once fixed", func(t *testing.T) {
		if out, code := validate(t, ctx, h, masters[0], "--wait", "3m"); code != nodeagent.ValidateHealthy {
			t.Fatalf("validate --wait 3m on a converged cluster: exit %d\n%s", code, out)
		}
		if out, code := validate(t, ctx, h, worker, "-o", "json"); code != nodeagent.ValidateHealthy {
			t.Errorf("validate on the worker (its own credentials): exit %d\n%s", code, out)
		}
		if _, _, err := worker.M.Exec(ctx, nil, "systemctl", "stop", "nodeagent.service", "kubelet.service"); err != nil {
			t.Fatal(err)
		}
		var v nodeagent.Validation
		eventually(t, 3*time.Minute, "validate fails naming the NotReady worker", func() (bool, string) {
			out, code := validate(t, ctx, h, masters[0], "-o", "json")
			v = nodeagent.Validation{}
			_ = json.Unmarshal([]byte(out), &v)
			return code == nodeagent.ValidateUnhealthy && hasFailure(v, "Node", workerName, "NotReady"), fmt.Sprintf("exit %d: %v", code, v.Failures)
		})
		if code, body, err := apiDelete(ctx, api, "/api/v1/namespaces/kube-system/pods?labelSelector=k8s-app%3Dkube-dns"); err != nil || code != http.StatusOK {
			t.Fatalf("delete the CoreDNS pods: %d %v %s", code, err, body)
		}
		eventually(t, 2*time.Minute, "validate fails naming CoreDNS not running", func() (bool, string) {
			out, code := validate(t, ctx, h, masters[0], "-o", "json")
			v = nodeagent.Validation{}
			_ = json.Unmarshal([]byte(out), &v)
			return code == nodeagent.ValidateUnhealthy && hasFailure(v, "Pod", "kube-system/coredns-", "pending") &&
				hasFailure(v, "Node", workerName, "NotReady"), fmt.Sprintf("exit %d: %v", code, v.Failures)
		})
		out, _ := validate(t, ctx, h, masters[0])
		t.Logf("validate while broken:\n%s", out)

		type result struct {
			out  string
			code int
			took time.Duration
		}
		done := make(chan result, 1)
		waitStart := time.Now()
		go func() {
			out, code := validate(t, ctx, h, masters[0], "--wait", "6m")
			done <- result{out, code, time.Since(waitStart)}
		}()
		if _, _, err := worker.M.Exec(ctx, nil, "systemctl", "start", "kubelet.service", "nodeagent.service"); err != nil {
			t.Fatal(err)
		}
		// The test's own judge: when does the cluster become healthy again?
		select {
		case r := <-done:
			t.Fatalf("validate --wait returned before the cluster could be fixed: exit %d\n%s", r.code, r.out)
		default:
		}
		eventually(t, 6*time.Minute, "CoreDNS running again on the worker", func() (bool, string) {
			return corednsRunningOn(ctx, api, workerName)
		})
		healthyAt := time.Since(waitStart)
		r := <-done
		if r.code != nodeagent.ValidateHealthy {
			t.Fatalf("validate --wait 6m after the fix: exit %d\n%s", r.code, r.out)
		}
		t.Logf("FIGURE worker and CoreDNS restarted → validate --wait returned healthy: %s (CoreDNS ready after %s)", r.took.Round(time.Second), healthyAt.Round(time.Second))
		if r.took > 5*time.Minute {
			t.Errorf("validate --wait took %s: it must return as soon as the cluster passes", r.took)
		}
	})

	// 3. The applier killed mid-apply; a successor finishes; no fights.
	t.Run("a master killed while applying: another finishes, edits survive", func(t *testing.T) {
		holder := leaseHolder(t, ctx, api)
		var leader *haNode
		var survivors []*haNode
		for _, m := range masters {
			if strings.Contains(holder, strings.ReplaceAll(m.IP, ".", "-")) {
				leader = m
			} else {
				survivors = append(survivors, m)
			}
		}
		if leader == nil {
			t.Fatalf("lease %s held by %q, none of the masters", addons.LeaseName, holder)
		}
		sapi := h.apiClient(survivors[0], survivors[0].IP)
		// A user scales CoreDNS and annotates it: fields the applier does not set.
		if code, body, err := apiPatch(ctx, sapi, "/apis/apps/v1/namespaces/kube-system/deployments/coredns?fieldManager=dns-team",
			`{"metadata":{"annotations":{"team.example/owner":"dns-team"}},"spec":{"replicas":2}}`); err != nil || code != http.StatusOK {
			t.Fatalf("user edit of the CoreDNS Deployment: %d %v %s", code, err, body)
		}
		before := versions(t, ctx, sapi)
		// A user's add-on whose second object cannot be applied yet (its
		// namespace does not exist): the applier is caught mid-apply.
		h.env.Emu.PutObject(haStateBkt, haCluster+"/addons/team.yaml", []byte(`apiVersion: v1
kind: ConfigMap
metadata: {name: team-a, namespace: default}
data: {owner: team}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: team-b, namespace: team}
data: {owner: team}
`))
		var teamA string
		eventually(t, 2*time.Minute, "the leader applying the user's add-on", func() (bool, string) {
			rec := record(t, ctx, sapi)
			e, ok := rec["team"]
			teamA = resourceVersion(ctx, sapi, "/api/v1/namespaces/default/configmaps/team-a")
			return ok && e.By == holder && e.State != addons.StateApplied && teamA != "", fmt.Sprintf("record %+v, team-a %q", e, teamA)
		})
		h.kill(ctx, leader)
		killed := time.Now()
		// The killed master may have led etcd: until a new leader is elected a
		// write can time out (500), and a timed-out create may still have
		// happened (409 on the retry).
		eventually(t, time.Minute, "namespace team created", func() (bool, string) {
			code, body, err := apiSend(ctx, sapi, http.MethodPost, "/api/v1/namespaces", []byte(`{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"team"}}`))
			return err == nil && (code == http.StatusCreated || code == http.StatusConflict), fmt.Sprintf("%d %v %s", code, err, body)
		})
		eventually(t, 3*time.Minute, "another master finishes the add-on", func() (bool, string) {
			e := record(t, ctx, sapi)["team"]
			return e.State == addons.StateApplied && e.By != holder && e.By != "", fmt.Sprintf("record %+v", e)
		})
		t.Logf("FIGURE applier killed → another master finished the add-on: %s", time.Since(killed).Round(time.Second))
		if got := resourceVersion(ctx, sapi, "/api/v1/namespaces/default/configmaps/team-a"); got != teamA {
			t.Errorf("team-a applied again with a change: resourceVersion %s → %s", teamA, got)
		}
		// Force a re-apply of CoreDNS: drop its record entry.
		if code, body, err := apiPatch(ctx, sapi, "/api/v1/namespaces/kube-system/configmaps/"+addons.RecordName,
			`{"data":{"coredns":null}}`); err != nil || code != http.StatusOK {
			t.Fatalf("drop coredns from the record: %d %v %s", code, err, body)
		}
		eventually(t, 2*time.Minute, "CoreDNS re-applied by the new applier", func() (bool, string) {
			e, ok := record(t, ctx, sapi)["coredns"]
			return ok && e.State == addons.StateApplied, fmt.Sprintf("record %+v", e)
		})
		after := versions(t, ctx, sapi)
		for k, v := range before {
			if after[k] != v {
				t.Errorf("%s changed by the re-apply: %s → %s", k, v, after[k])
			}
		}
		var dep struct {
			Metadata struct {
				Annotations map[string]string `json:"annotations"`
			} `json:"metadata"`
			Spec struct {
				Replicas int `json:"replicas"`
			} `json:"spec"`
		}
		if code, err := apiGet(ctx, sapi, "/apis/apps/v1/namespaces/kube-system/deployments/coredns", &dep); err != nil || code != http.StatusOK {
			t.Fatalf("get CoreDNS Deployment: %d %v", code, err)
		}
		if dep.Spec.Replicas != 2 || dep.Metadata.Annotations["team.example/owner"] != "dns-team" {
			t.Errorf("the user's edit did not survive the re-apply: replicas %d, annotations %v", dep.Spec.Replicas, dep.Metadata.Annotations)
		}
	})
}

// corednsRunningOn: every CoreDNS pod runs, ready, on node.
func corednsRunningOn(ctx context.Context, api *http.Client, node string) (bool, string) {
	var pods struct {
		Items []struct {
			Metadata struct {
				Name              string  `json:"name"`
				DeletionTimestamp *string `json:"deletionTimestamp"`
			} `json:"metadata"`
			Spec struct {
				NodeName string `json:"nodeName"`
			} `json:"spec"`
			Status struct {
				Phase      string `json:"phase"`
				Conditions []struct {
					Type   string `json:"type"`
					Status string `json:"status"`
				} `json:"conditions"`
			} `json:"status"`
		} `json:"items"`
	}
	code, err := apiGet(ctx, api, "/api/v1/namespaces/kube-system/pods?labelSelector=k8s-app%3Dkube-dns", &pods)
	if err != nil || code != http.StatusOK {
		return false, fmt.Sprintf("list CoreDNS pods: %d %v", code, err)
	}
	if len(pods.Items) == 0 {
		return false, "no CoreDNS pod yet"
	}
	for _, p := range pods.Items {
		ready := false
		for _, c := range p.Status.Conditions {
			ready = ready || (c.Type == "Ready" && c.Status == "True")
		}
		if p.Metadata.DeletionTimestamp != nil || p.Status.Phase != "Running" || !ready || p.Spec.NodeName != node {
			return false, fmt.Sprintf("%s: %s on %q, ready %v", p.Metadata.Name, p.Status.Phase, p.Spec.NodeName, ready)
		}
	}
	return true, ""
}

// runDNSProbe runs the DNS probe pod on node and returns what it reported.
func runDNSProbe(t *testing.T, ctx context.Context, api *http.Client, node string, names ...string) string {
	t.Helper()
	args, _ := json.Marshal(names)
	pod := fmt.Sprintf(`{"apiVersion":"v1","kind":"Pod","metadata":{"name":"dnsprobe"},"spec":{
"nodeSelector":{"kubernetes.io/hostname":%q},"restartPolicy":"Never",
"containers":[{"name":"probe","image":%q,"imagePullPolicy":"Never","args":%s}]}}`, node, haDNSProbeImage, args)
	if code, body, err := apiSend(ctx, api, http.MethodPost, "/api/v1/namespaces/default/pods", []byte(pod)); err != nil || code != http.StatusCreated {
		t.Fatalf("create the DNS probe pod: %d %v %s", code, err, body)
	}
	var msg string
	eventually(t, 3*time.Minute, "the DNS probe pod finished", func() (bool, string) {
		var p struct {
			Status struct {
				Phase             string `json:"phase"`
				ContainerStatuses []struct {
					State struct {
						Terminated *struct {
							ExitCode int    `json:"exitCode"`
							Message  string `json:"message"`
						} `json:"terminated"`
					} `json:"state"`
				} `json:"containerStatuses"`
			} `json:"status"`
		}
		code, err := apiGet(ctx, api, "/api/v1/namespaces/default/pods/dnsprobe", &p)
		if err != nil || code != http.StatusOK {
			return false, fmt.Sprintf("get pod: %d %v", code, err)
		}
		if len(p.Status.ContainerStatuses) > 0 && p.Status.ContainerStatuses[0].State.Terminated != nil {
			msg = p.Status.ContainerStatuses[0].State.Terminated.Message
		}
		return p.Status.Phase == "Succeeded" || p.Status.Phase == "Failed", "phase " + p.Status.Phase
	})
	return msg
}

// validate runs `nodeagent validate args...` on a node.
func validate(t *testing.T, ctx context.Context, h *haLab, n *haNode, args ...string) (string, int) {
	t.Helper()
	vctx, cancel := context.WithTimeout(ctx, 8*time.Minute)
	defer cancel()
	out, stderr, code, err := n.Agent(vctx, append([]string{"validate"}, args...)...)
	if err != nil {
		t.Errorf("validate on %s: %v", n.InstanceID, err)
	}
	if code == nodeagent.ValidateUnknown {
		t.Logf("validate on %s: exit 2: %s", n.InstanceID, lastLines(stderr, 5))
	}
	return string(out), code
}

func hasFailure(v nodeagent.Validation, kind, name, words string) bool {
	for _, f := range v.Failures {
		if f.Kind == kind && strings.Contains(f.Name, name) && strings.Contains(strings.ToLower(f.Message), strings.ToLower(words)) {
			return true
		}
	}
	return false
}

func leaseHolder(t *testing.T, ctx context.Context, api *http.Client) string {
	t.Helper()
	var holder string
	eventually(t, 2*time.Minute, "the add-on lease held", func() (bool, string) {
		var l struct {
			Spec struct {
				HolderIdentity string `json:"holderIdentity"`
			} `json:"spec"`
		}
		code, err := apiGet(ctx, api, "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/"+addons.LeaseName, &l)
		holder = l.Spec.HolderIdentity
		return err == nil && code == http.StatusOK && holder != "", fmt.Sprintf("%d %v %q", code, err, holder)
	})
	return holder
}

func record(t *testing.T, ctx context.Context, api *http.Client) map[string]addons.RecordEntry {
	t.Helper()
	var cm struct {
		Data map[string]string `json:"data"`
	}
	out := map[string]addons.RecordEntry{}
	if code, err := apiGet(ctx, api, "/api/v1/namespaces/kube-system/configmaps/"+addons.RecordName, &cm); err != nil || code != http.StatusOK {
		return out
	}
	for k, v := range cm.Data {
		var e addons.RecordEntry
		if json.Unmarshal([]byte(v), &e) == nil {
			out[k] = e
		}
	}
	return out
}

func resourceVersion(ctx context.Context, api *http.Client, path string) string {
	var o struct {
		Metadata struct {
			ResourceVersion string `json:"resourceVersion"`
			Generation      int    `json:"generation"`
		} `json:"metadata"`
	}
	if code, err := apiGet(ctx, api, path, &o); err != nil || code != http.StatusOK {
		return ""
	}
	if o.Metadata.Generation > 0 {
		// Workloads' status moves their resourceVersion; a change by an apply moves the generation.
		return fmt.Sprintf("generation %d", o.Metadata.Generation)
	}
	return o.Metadata.ResourceVersion
}

// versions of the built-in add-ons' objects: what an apply that changes them moves.
func versions(t *testing.T, ctx context.Context, api *http.Client) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, p := range []string{
		"/apis/apps/v1/namespaces/kube-system/deployments/coredns",
		"/api/v1/namespaces/kube-system/services/kube-dns",
		"/api/v1/namespaces/kube-system/configmaps/coredns",
		"/api/v1/namespaces/kube-system/serviceaccounts/coredns",
		"/apis/rbac.authorization.k8s.io/v1/clusterroles/system:coredns",
		"/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/nodeagent:validate",
		"/apis/storage.k8s.io/v1/storageclasses/kops-csi-1-21",
	} {
		v := resourceVersion(ctx, api, p)
		if v == "" {
			t.Errorf("%s: not found", p)
		}
		out[p] = v
	}
	return out
}

func apiPatch(ctx context.Context, c *http.Client, path, body string) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPatch, "https://"+config.APIInternalName(haCluster)+path, strings.NewReader(body))
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Content-Type", "application/merge-patch+json")
	resp, err := c.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, b, err
}

func apiDelete(ctx context.Context, c *http.Client, path string) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodDelete, "https://"+config.APIInternalName(haCluster)+path, nil)
	if err != nil {
		return 0, nil, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, b, err
}
