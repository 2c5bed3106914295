package addons

import (
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"

	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
)

// The applier maps a kind to its resource from the discovery document of that
// kind's group-version alone, as the API server serves it: the resource name
// and scope, never a subresource of the same kind; a group-version the server
// does not serve is "no match" (so a CRD applied a moment ago is looked up
// again after a Reset), and a document is read once until then.
func TestMapperReadsOneGroupVersion(t *testing.T) {
	var reads atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		reads.Add(1)
		switch r.URL.Path {
		case "/api/v1":
			w.Write([]byte(`{"kind":"APIResourceList","groupVersion":"v1","resources":[
				{"name":"pods/status","namespaced":true,"kind":"Pod","verbs":["get"]},
				{"name":"pods","namespaced":true,"kind":"Pod","verbs":["get"]},
				{"name":"namespaces","namespaced":false,"kind":"Namespace","verbs":["get"]}]}`))
		case "/apis/apps/v1":
			w.Write([]byte(`{"kind":"APIResourceList","groupVersion":"apps/v1","resources":[
				{"name":"deployments","namespaced":true,"kind":"Deployment","verbs":["get"]}]}`))
		default:
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusNotFound)
			w.Write([]byte(`{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"NotFound","code":404}`))
		}
	}))
	defer srv.Close()
	rc, err := rest.UnversionedRESTClientFor(dynamic.ConfigFor(&rest.Config{Host: srv.URL}))
	if err != nil {
		t.Fatal(err)
	}
	m := newAPIMapper(rc)

	for _, tc := range []struct {
		gvk      schema.GroupVersionKind
		resource string
		scope    meta.RESTScopeName
	}{
		{schema.GroupVersionKind{Version: "v1", Kind: "Pod"}, "pods", meta.RESTScopeNameNamespace},
		{schema.GroupVersionKind{Version: "v1", Kind: "Namespace"}, "namespaces", meta.RESTScopeNameRoot},
		{schema.GroupVersionKind{Group: "apps", Version: "v1", Kind: "Deployment"}, "deployments", meta.RESTScopeNameNamespace},
	} {
		got, err := m.RESTMapping(tc.gvk.GroupKind(), tc.gvk.Version)
		if err != nil {
			t.Errorf("%s: %v", tc.gvk, err)
			continue
		}
		if got.Resource != tc.gvk.GroupVersion().WithResource(tc.resource) || got.Scope.Name() != tc.scope || got.GroupVersionKind != tc.gvk {
			t.Errorf("%s mapped to %v (%s), want %s (%s)", tc.gvk, got.Resource, got.Scope.Name(), tc.resource, tc.scope)
		}
	}
	if n := reads.Load(); n != 2 {
		t.Errorf("%d discovery reads for two group-versions, want 2 (cached)", n)
	}

	for _, gvk := range []schema.GroupVersionKind{
		{Group: "example.com", Version: "v1", Kind: "Widget"}, // group not served
		{Version: "v1", Kind: "Widget"},                       // kind not in the group
	} {
		if _, err := m.RESTMapping(gvk.GroupKind(), gvk.Version); !meta.IsNoMatchError(err) {
			t.Errorf("%s: %v, want a no-match error", gvk, err)
		}
	}
	before := reads.Load()
	m.Reset()
	if _, err := m.RESTMapping(schema.GroupKind{Kind: "Pod"}, "v1"); err != nil {
		t.Fatal(err)
	}
	if reads.Load() != before+1 {
		t.Error("discovery not read again after Reset")
	}
}
