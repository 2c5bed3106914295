package addons

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/rest"
)

// Mapper finds the resource (and its scope) of a kind in one of versions.
// A meta.RESTMapper is one; NewApplier's asks the API server.
type Mapper interface {
	RESTMapping(gk schema.GroupKind, versions ...string) (*meta.RESTMapping, error)
}

// resetter is a Mapper with a cache to forget (a CRD applied since).
type resetter interface{ Reset() }

// apiMapper maps a kind through the API server's discovery document of that
// kind's group-version alone (GET /api/v1, /apis/<group>/<version>), cached
// until Reset: an add-on names a handful of group-versions, so reading all of
// discovery (client-go's discovery client, whose scheme registers every API
// group) is not needed.
type apiMapper struct {
	rest  rest.Interface
	mu    sync.Mutex
	lists map[schema.GroupVersion]*metav1.APIResourceList
}

func newAPIMapper(c rest.Interface) *apiMapper {
	return &apiMapper{rest: c, lists: map[schema.GroupVersion]*metav1.APIResourceList{}}
}

// Reset forgets every discovery document read.
func (m *apiMapper) Reset() {
	m.mu.Lock()
	defer m.mu.Unlock()
	clear(m.lists)
}

// RESTMapping is the mapping of gk in the first of versions the server serves
// it in; meta.NoKindMatchError when none does.
func (m *apiMapper) RESTMapping(gk schema.GroupKind, versions ...string) (*meta.RESTMapping, error) {
	for _, v := range versions {
		gv := schema.GroupVersion{Group: gk.Group, Version: v}
		list, err := m.resources(context.TODO(), gv)
		if err != nil {
			return nil, err
		}
		if list == nil {
			continue
		}
		for _, r := range list.APIResources {
			if r.Kind != gk.Kind || strings.Contains(r.Name, "/") {
				continue // another kind, or a subresource (pods/status has kind Pod)
			}
			scope := meta.RESTScopeRoot
			if r.Namespaced {
				scope = meta.RESTScopeNamespace
			}
			return &meta.RESTMapping{Resource: gv.WithResource(r.Name), GroupVersionKind: gv.WithKind(gk.Kind), Scope: scope}, nil
		}
	}
	return nil, &meta.NoKindMatchError{GroupKind: gk, SearchedVersions: versions}
}

// resources reads (once until Reset) the discovery document of gv; nil when
// the server does not serve gv.
func (m *apiMapper) resources(ctx context.Context, gv schema.GroupVersion) (*metav1.APIResourceList, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if l, ok := m.lists[gv]; ok {
		return l, nil
	}
	path := "/apis/" + gv.Group + "/" + gv.Version
	if gv.Group == "" {
		path = "/api/" + gv.Version
	}
	b, err := m.rest.Get().AbsPath(path).DoRaw(ctx)
	if apierrors.IsNotFound(err) {
		m.lists[gv] = nil
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("discovery of %s: %w", gv, err)
	}
	l := &metav1.APIResourceList{}
	if err := json.Unmarshal(b, l); err != nil {
		return nil, fmt.Errorf("discovery of %s: %w", gv, err)
	}
	m.lists[gv] = l
	return l, nil
}
