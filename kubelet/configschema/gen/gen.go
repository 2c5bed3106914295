// Package gen derives kubelet/configschema.json from k8s.io/kubelet's types.
// Only the generator (hack/kubeletschema) and tests import it: the agent
// itself never links k8s.io/kubelet/config/v1beta1.
package gen

import (
	"encoding/json"
	"reflect"

	"github.com/nodeagent/nodeagent/kubelet/configschema"
	kubeletv1beta1 "k8s.io/kubelet/config/v1beta1"
)

// Custom are the types in KubeletConfiguration that decode themselves, by the
// JSON they read.
var Custom = configschema.Custom{
	"k8s.io/apimachinery/pkg/apis/meta/v1.Duration":        configschema.KindDuration,
	"k8s.io/apimachinery/pkg/apis/meta/v1.Time":            configschema.KindTime,
	"k8s.io/component-base/logs/api/v1.TimeOrMetaDuration": configschema.KindDurationOrNanos,
	"k8s.io/apimachinery/pkg/api/resource.QuantityValue":   configschema.KindQuantity,
	"k8s.io/apimachinery/pkg/api/resource.Quantity":        configschema.KindQuantity,
}

// Generate is the schema file's content.
func Generate() ([]byte, error) {
	n, err := configschema.FromType(reflect.TypeFor[kubeletv1beta1.KubeletConfiguration](), Custom)
	if err != nil {
		return nil, err
	}
	b, err := json.MarshalIndent(n, "", " ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}
