package addons

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/util/retry"
)

const (
	// FieldManager is the server-side apply manager of every field the applier
	// sets; fields set by anyone else are left alone.
	FieldManager = "nodeagent"
	// RecordNamespace and RecordName locate the record of applied add-ons: one
	// data key per add-on holding a RecordEntry as JSON.
	RecordNamespace = "kube-system"
	RecordName      = "nodeagent-addons"
)

// Record states.
const (
	StateApplying = "applying"
	StateApplied  = "applied"
	StateFailed   = "failed"
)

// RecordEntry is what the record says about one add-on.
type RecordEntry struct {
	Version string    `json:"version"`
	Hash    string    `json:"hash"`
	Source  string    `json:"source"`
	State   string    `json:"state"`
	Error   string    `json:"error,omitempty"`
	By      string    `json:"by"` // the node whose daemon applied it
	At      time.Time `json:"at"`
}

// Applier applies add-ons through the API server.
type Applier struct {
	Client dynamic.Interface
	Mapper Mapper
	// Node names the applying node in the record.
	Node string
	Log  *slog.Logger
	// Now is the clock of the record; time.Now when nil.
	Now func() time.Time
}

// Result is what one Apply did per add-on.
type Result struct {
	Applied   []string // applied now
	Unchanged []string // the record already had this version and hash
	Failed    map[string]error
}

// Err joins the failures, nil when there were none.
func (r Result) Err() error {
	var errs []error
	names := make([]string, 0, len(r.Failed))
	for n := range r.Failed {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		errs = append(errs, fmt.Errorf("add-on %s: %w", n, r.Failed[n]))
	}
	return errors.Join(errs...)
}

var configMapsGVR = corev1.SchemeGroupVersion.WithResource("configmaps")

// Apply applies every add-on whose version or hash differs from the record, or
// that the record does not show applied, one after the other; the record
// says "applying" while an add-on is under way, so that a successor that
// finds it so applies it again (server-side apply of the same objects changes
// nothing that was already applied). One add-on's failure does not stop the
// others.
func (a *Applier) Apply(ctx context.Context, set []Addon) Result {
	res := Result{Failed: map[string]error{}}
	rec, err := a.Record(ctx)
	if err != nil {
		for _, ad := range set {
			res.Failed[ad.Name] = err
		}
		return res
	}
	for _, ad := range set {
		if e, ok := rec[ad.Name]; ok && e.State == StateApplied && e.Version == ad.Version && e.Hash == ad.Hash {
			res.Unchanged = append(res.Unchanged, ad.Name)
			continue
		}
		if err := a.applyOne(ctx, ad); err != nil {
			res.Failed[ad.Name] = err
			continue
		}
		res.Applied = append(res.Applied, ad.Name)
	}
	return res
}

func (a *Applier) applyOne(ctx context.Context, ad Addon) error {
	entry := RecordEntry{Version: ad.Version, Hash: ad.Hash, Source: ad.Source, State: StateApplying, By: a.Node}
	if err := a.record(ctx, ad.Name, entry); err != nil {
		return err
	}
	log := a.log().With("addon", ad.Name, "version", ad.Version)
	log.Info("applying add-on", "objects", len(ad.Objects))
	for _, obj := range ad.Objects {
		if err := a.applyObject(ctx, obj); err != nil {
			entry.State, entry.Error = StateFailed, err.Error()
			if rerr := a.record(ctx, ad.Name, entry); rerr != nil {
				log.Warn("record the failure", "err", rerr)
			}
			return err
		}
	}
	entry.State = StateApplied
	if err := a.record(ctx, ad.Name, entry); err != nil {
		return err
	}
	log.Info("add-on applied")
	return nil
}

// applyObject server-side applies one object as FieldManager, forcing
// ownership of the fields the manifest sets (they are the release's to keep).
func (a *Applier) applyObject(ctx context.Context, obj *unstructured.Unstructured) error {
	gvk := obj.GroupVersionKind()
	what := fmt.Sprintf("%s %s", gvk.Kind, objName(obj))
	mapping, err := a.Mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if err != nil {
		if r, ok := a.Mapper.(resetter); ok && meta.IsNoMatchError(err) {
			// A definition applied a moment ago (a CRD) is not in the cached discovery yet.
			r.Reset()
			mapping, err = a.Mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
		}
		if err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
	}
	var ri dynamic.ResourceInterface = a.Client.Resource(mapping.Resource)
	if mapping.Scope.Name() == meta.RESTScopeNameNamespace {
		ns := obj.GetNamespace()
		if ns == "" {
			ns = metav1.NamespaceDefault
		}
		ri = a.Client.Resource(mapping.Resource).Namespace(ns)
	}
	body, err := json.Marshal(obj)
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	force := true
	if _, err := ri.Patch(ctx, obj.GetName(), types.ApplyPatchType, body, metav1.PatchOptions{FieldManager: FieldManager, Force: &force}); err != nil {
		return fmt.Errorf("apply %s: %w", what, err)
	}
	return nil
}

func objName(obj *unstructured.Unstructured) string {
	if ns := obj.GetNamespace(); ns != "" {
		return ns + "/" + obj.GetName()
	}
	return obj.GetName()
}

// Record reads what has been applied so far, by add-on name.
func (a *Applier) Record(ctx context.Context) (map[string]RecordEntry, error) {
	return ReadRecord(ctx, a.Client)
}

// ReadRecord reads the record of applied add-ons; no record is an empty one.
func ReadRecord(ctx context.Context, c dynamic.Interface) (map[string]RecordEntry, error) {
	u, err := c.Resource(configMapsGVR).Namespace(RecordNamespace).Get(ctx, RecordName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return map[string]RecordEntry{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read the add-on record %s/%s: %w", RecordNamespace, RecordName, err)
	}
	return decodeRecord(u)
}

func decodeRecord(u *unstructured.Unstructured) (map[string]RecordEntry, error) {
	var cm corev1.ConfigMap
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &cm); err != nil {
		return nil, fmt.Errorf("add-on record: %w", err)
	}
	out := map[string]RecordEntry{}
	for name, v := range cm.Data {
		var e RecordEntry
		if err := json.Unmarshal([]byte(v), &e); err != nil {
			// A damaged entry means "not known to be applied": the add-on is applied again.
			continue
		}
		out[name] = e
	}
	return out, nil
}

// record writes one add-on's entry, keeping the others (read-modify-write with
// the resource version, retried on conflict).
func (a *Applier) record(ctx context.Context, name string, e RecordEntry) error {
	e.At = a.now().UTC().Truncate(time.Second)
	b, err := json.Marshal(e)
	if err != nil {
		return err
	}
	cms := a.Client.Resource(configMapsGVR).Namespace(RecordNamespace)
	err = retry.RetryOnConflict(retry.DefaultRetry, func() error {
		u, err := cms.Get(ctx, RecordName, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			cm := &unstructured.Unstructured{Object: map[string]any{
				"apiVersion": "v1", "kind": "ConfigMap",
				"metadata": map[string]any{"name": RecordName, "namespace": RecordNamespace,
					"labels": map[string]any{"app.kubernetes.io/managed-by": FieldManager}},
				"data": map[string]any{name: string(b)},
			}}
			_, err = cms.Create(ctx, cm, metav1.CreateOptions{FieldManager: FieldManager})
			if apierrors.IsAlreadyExists(err) {
				return apierrors.NewConflict(schema.GroupResource{Resource: "configmaps"}, RecordName, err)
			}
			return err
		}
		if err != nil {
			return err
		}
		if err := unstructured.SetNestedField(u.Object, string(b), "data", name); err != nil {
			return err
		}
		_, err = cms.Update(ctx, u, metav1.UpdateOptions{FieldManager: FieldManager})
		return err
	})
	if err != nil {
		return fmt.Errorf("record add-on %s in %s/%s: %w", name, RecordNamespace, RecordName, err)
	}
	return nil
}

func (a *Applier) log() *slog.Logger {
	if a.Log != nil {
		return a.Log
	}
	return slog.Default()
}

func (a *Applier) now() time.Time {
	if a.Now != nil {
		return a.Now()
	}
	return time.Now()
}
