package enrich

import (
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestSlimTransforms: the informers keep no env values, specs or
// annotations, only what kubeRecords reads.
func TestSlimTransforms(t *testing.T) {
	env := []corev1.EnvVar{{Name: "DB_PASSWORD", Value: "hunter2"}}
	meta := metav1.ObjectMeta{Name: "web-0", Namespace: "prod", UID: "u1", Labels: map[string]string{"app": "web"},
		Annotations:   map[string]string{"kubectl.kubernetes.io/last-applied-configuration": "{}"},
		ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "kubectl"}}}
	pod := &corev1.Pod{ObjectMeta: meta, Spec: corev1.PodSpec{NodeName: "n1",
		Containers: []corev1.Container{{Name: "web", Image: "web:1", Env: env, Args: []string{"--token=x"}}}}}
	got, _ := slimPod(pod)
	p := got.(*corev1.Pod)
	if p.Name != "web-0" || p.Spec.NodeName != "n1" || p.Spec.Containers[0].Image != "web:1" || p.Labels["app"] != "web" {
		t.Errorf("slimPod lost what kubeRecords reads: %+v", p)
	}
	if p.Spec.Containers[0].Env != nil || p.Spec.Containers[0].Args != nil || p.Annotations != nil || p.ManagedFields != nil {
		t.Errorf("slimPod kept env, args, annotations or managed fields: %+v", p)
	}
	rs := &appsv1.ReplicaSet{ObjectMeta: meta, Spec: appsv1.ReplicaSetSpec{Template: corev1.PodTemplateSpec{
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Env: env}}}}}}
	got, _ = slimOwned(rs)
	if r := got.(*appsv1.ReplicaSet); r.Spec.Template.Spec.Containers != nil || r.Name != "web-0" {
		t.Errorf("slimOwned kept the pod template, or lost the name: %+v", r)
	}
}
