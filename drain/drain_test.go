package drain

import (
	"context"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Which pods a drain leaves in place, as kubectl drain does: kubelet's mirror
// pods and DaemonSet pods; everything else is evicted (a bare pod too: the
// node goes away regardless).
func TestSkipReason(t *testing.T) {
	yes := true
	owned := func(kind string) []metav1.OwnerReference {
		return []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: kind, Name: "x", UID: "u", Controller: &yes}}
	}
	for _, tc := range []struct {
		name string
		pod  corev1.Pod
		want string
	}{
		{"mirror", corev1.Pod{ObjectMeta: metav1.ObjectMeta{Annotations: map[string]string{corev1.MirrorPodAnnotationKey: "h"}}}, "mirror pod"},
		{"daemonset", corev1.Pod{ObjectMeta: metav1.ObjectMeta{OwnerReferences: owned("DaemonSet")}}, "DaemonSet"},
		{"replicaset", corev1.Pod{ObjectMeta: metav1.ObjectMeta{OwnerReferences: owned("ReplicaSet")}}, ""},
		{"bare", corev1.Pod{}, ""},
	} {
		if got := skipReason(&tc.pod); got != tc.want {
			t.Errorf("%s: skip %q, want %q", tc.name, got, tc.want)
		}
	}
}

func TestDrainNeedsANode(t *testing.T) {
	if _, err := Drain(context.Background(), nil, Options{}); err == nil {
		t.Fatal("a drain without a node name was accepted")
	}
}
