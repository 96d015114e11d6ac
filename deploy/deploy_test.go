// Package deploy holds flowmap's manifests; its test decodes them strictly.
package deploy

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"
)

// serviceMonitor is monitoring.coreos.com/v1 ServiceMonitor, the fields of
// its schema that flowmap sets or might, with the operator's JSON names.
type serviceMonitor struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		JobLabel          string               `json:"jobLabel,omitempty"`
		TargetLabels      []string             `json:"targetLabels,omitempty"`
		PodTargetLabels   []string             `json:"podTargetLabels,omitempty"`
		Selector          metav1.LabelSelector `json:"selector"`
		NamespaceSelector struct {
			Any        bool     `json:"any,omitempty"`
			MatchNames []string `json:"matchNames,omitempty"`
		} `json:"namespaceSelector,omitempty"`
		Endpoints []struct {
			Port            string `json:"port,omitempty"`
			TargetPort      any    `json:"targetPort,omitempty"`
			Path            string `json:"path,omitempty"`
			Scheme          string `json:"scheme,omitempty"`
			Interval        string `json:"interval,omitempty"`
			ScrapeTimeout   string `json:"scrapeTimeout,omitempty"`
			HonorLabels     bool   `json:"honorLabels,omitempty"`
			HonorTimestamps *bool  `json:"honorTimestamps,omitempty"`
		} `json:"endpoints"`
	} `json:"spec"`
}

type kustomization struct {
	APIVersion string   `json:"apiVersion"`
	Kind       string   `json:"kind"`
	Namespace  string   `json:"namespace"`
	Resources  []string `json:"resources"`
}

// decode reads YAML into v, failing on a field v has not or a duplicate.
func decode(t *testing.T, path string, v any) {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	j, err := yaml.YAMLToJSONStrict(raw)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	// Case-sensitive, as the API server is: encoding/json would take
	// readOnlyRootFileSystem for readOnlyRootFilesystem.
	strict, err := kjson.UnmarshalStrict(j, v)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	for _, e := range strict {
		t.Errorf("%s: %v", path, e)
	}
}

// TestKubernetes decodes every manifest of the kustomize base into its
// Kubernetes API type, so that a misspelt field fails, and checks the
// agent's privileges.
func TestKubernetes(t *testing.T) {
	dir := "kubernetes"
	var k kustomization
	decode(t, filepath.Join(dir, "kustomization.yaml"), &k)
	files, _ := filepath.Glob(filepath.Join(dir, "*.yaml"))
	for _, f := range files {
		if b := filepath.Base(f); b != "kustomization.yaml" && !slices.Contains(k.Resources, b) {
			t.Errorf("%s is not in kustomization.yaml's resources", f)
		}
	}
	kinds := map[string]any{}
	for _, r := range k.Resources {
		path := filepath.Join(dir, r)
		var tm metav1.TypeMeta
		raw, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if err := yaml.Unmarshal(raw, &tm); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		var v any
		switch tm.APIVersion + " " + tm.Kind {
		case "v1 Namespace":
			v = &corev1.Namespace{}
		case "v1 ServiceAccount":
			v = &corev1.ServiceAccount{}
		case "v1 Service":
			v = &corev1.Service{}
		case "rbac.authorization.k8s.io/v1 ClusterRole":
			v = &rbacv1.ClusterRole{}
		case "rbac.authorization.k8s.io/v1 ClusterRoleBinding":
			v = &rbacv1.ClusterRoleBinding{}
		case "apps/v1 DaemonSet":
			v = &appsv1.DaemonSet{}
		case "monitoring.coreos.com/v1 ServiceMonitor":
			v = &serviceMonitor{}
		default:
			t.Fatalf("%s: unknown kind %s %s", path, tm.APIVersion, tm.Kind)
		}
		decode(t, path, v)
		kinds[tm.Kind] = v
	}
	for _, want := range []string{"Namespace", "ServiceAccount", "Service", "ClusterRole", "ClusterRoleBinding", "DaemonSet", "ServiceMonitor"} {
		if kinds[want] == nil {
			t.Fatalf("no %s", want)
		}
	}
	ds := kinds["DaemonSet"].(*appsv1.DaemonSet)
	t.Run("DaemonSet", func(t *testing.T) { checkDaemonSet(t, ds, kinds["ServiceAccount"].(*corev1.ServiceAccount)) })
	t.Run("RBAC", func(t *testing.T) {
		checkRBAC(t, kinds["ClusterRole"].(*rbacv1.ClusterRole), kinds["ClusterRoleBinding"].(*rbacv1.ClusterRoleBinding), kinds["ServiceAccount"].(*corev1.ServiceAccount))
	})
	t.Run("scrape", func(t *testing.T) {
		sm := kinds["ServiceMonitor"].(*serviceMonitor)
		svc := kinds["Service"].(*corev1.Service)
		checkScrape(t, ds, svc, sm)
	})
}

func checkDaemonSet(t *testing.T, ds *appsv1.DaemonSet, sa *corev1.ServiceAccount) {
	p := ds.Spec.Template.Spec
	if p.ServiceAccountName != sa.Name {
		t.Errorf("serviceAccountName %q, want %q", p.ServiceAccountName, sa.Name)
	}
	if !p.HostNetwork || !p.HostPID {
		t.Errorf("hostNetwork %v, hostPID %v; want both", p.HostNetwork, p.HostPID)
	}
	if p.HostIPC {
		t.Error("hostIPC, want not")
	}
	for k, v := range ds.Spec.Selector.MatchLabels {
		if ds.Spec.Template.Labels[k] != v {
			t.Errorf("selector %s=%s does not select the template's labels %v", k, v, ds.Spec.Template.Labels)
		}
	}
	if len(p.Containers) != 1 {
		t.Fatalf("%d containers, want 1", len(p.Containers))
	}
	c := p.Containers[0]
	sc := c.SecurityContext
	if sc == nil || sc.Capabilities == nil {
		t.Fatal("no securityContext with capabilities")
	}
	if sc.Privileged == nil || *sc.Privileged {
		t.Error("privileged is not false")
	}
	if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Error("allowPrivilegeEscalation is not false")
	}
	if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		t.Error("readOnlyRootFilesystem is not true")
	}
	if !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
		t.Errorf("capabilities drop %v, want [ALL]", sc.Capabilities.Drop)
	}
	allowed := []corev1.Capability{"BPF", "PERFMON", "NET_ADMIN", "SYS_ADMIN", "SYS_PTRACE", "SYS_RESOURCE"}
	for _, c := range sc.Capabilities.Add {
		if !slices.Contains(allowed, c) {
			t.Errorf("capability %s added, want only %v", c, allowed)
		}
	}
	for _, c := range []corev1.Capability{"BPF", "PERFMON", "NET_ADMIN"} {
		if !slices.Contains(sc.Capabilities.Add, c) {
			t.Errorf("capability %s not added", c)
		}
	}
	// The image is the one `make image` tags.
	mk, err := os.ReadFile("../Makefile")
	if err != nil {
		t.Fatal(err)
	}
	if want := "IMAGE ?= " + c.Image + "\n"; !strings.Contains(string(mk), want) {
		t.Errorf("image %s: the Makefile has no %q", c.Image, want)
	}
	// Every added capability is explained in the manifest.
	raw, _ := os.ReadFile("kubernetes/daemonset.yaml")
	for _, c := range sc.Capabilities.Add {
		if !strings.Contains(string(raw), "#   "+string(c)+" ") {
			t.Errorf("capability %s has no comment that explains it", c)
		}
	}
	for _, r := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
		req, lim := c.Resources.Requests[r], c.Resources.Limits[r]
		if req.IsZero() || lim.IsZero() || req.Cmp(lim) > 0 {
			t.Errorf("%s: request %v, limit %v; want both, the request at most the limit", r, &req, &lim)
		}
	}
	mounts := map[string]corev1.VolumeMount{}
	for _, m := range c.VolumeMounts {
		mounts[m.Name] = m
	}
	for _, v := range p.Volumes {
		if v.HostPath == nil {
			t.Errorf("volume %s is not a hostPath", v.Name)
			continue
		}
		if _, ok := mounts[v.Name]; !ok {
			t.Errorf("volume %s is not mounted", v.Name)
		}
		if m := mounts[v.Name]; v.HostPath.Path != "/sys/fs/bpf" && !m.ReadOnly {
			t.Errorf("host path %s is mounted read-write", v.HostPath.Path)
		}
		delete(mounts, v.Name)
	}
	for n := range mounts {
		t.Errorf("mount %s has no volume", n)
	}
	var paths []string
	for _, v := range p.Volumes {
		if v.HostPath != nil {
			paths = append(paths, v.HostPath.Path)
		}
	}
	for _, want := range []string{"/sys/fs/bpf", "/sys/kernel/btf", "/proc"} {
		if !slices.Contains(paths, want) {
			t.Errorf("no host path %s in %v", want, paths)
		}
	}
	if !slices.ContainsFunc(paths, func(p string) bool { return strings.HasSuffix(p, ".sock") }) {
		t.Errorf("no runtime socket in %v", paths)
	}
	var nodeName bool
	for _, e := range c.Env {
		nodeName = nodeName || (e.Name == "NODE_NAME" && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "spec.nodeName")
	}
	if !nodeName {
		t.Error("no NODE_NAME from spec.nodeName: the series' node label")
	}
}

func checkRBAC(t *testing.T, cr *rbacv1.ClusterRole, crb *rbacv1.ClusterRoleBinding, sa *corev1.ServiceAccount) {
	granted := map[string]bool{}
	for _, r := range cr.Rules {
		for _, v := range r.Verbs {
			if v != "get" && v != "list" && v != "watch" {
				t.Errorf("rule %v grants %q, want only get, list, watch", r, v)
			}
		}
		for _, g := range r.APIGroups {
			for _, res := range r.Resources {
				granted[g+"/"+res] = true
			}
		}
	}
	// What enrich/kubernetes.go lists and watches.
	for _, want := range []string{"/pods", "/services", "/nodes", "discovery.k8s.io/endpointslices", "apps/replicasets", "batch/jobs"} {
		if !granted[want] {
			t.Errorf("ClusterRole does not grant %s", want)
		}
	}
	if crb.RoleRef.Kind != "ClusterRole" || crb.RoleRef.Name != cr.Name {
		t.Errorf("binding refers to %s %s, want ClusterRole %s", crb.RoleRef.Kind, crb.RoleRef.Name, cr.Name)
	}
	if len(crb.Subjects) != 1 || crb.Subjects[0].Name != sa.Name || crb.Subjects[0].Namespace != sa.Namespace {
		t.Errorf("binding subjects %v, want the ServiceAccount %s/%s", crb.Subjects, sa.Namespace, sa.Name)
	}
}

func checkScrape(t *testing.T, ds *appsv1.DaemonSet, svc *corev1.Service, sm *serviceMonitor) {
	c := ds.Spec.Template.Spec.Containers[0]
	a := ds.Spec.Template.Annotations
	var port int32
	for _, p := range c.Ports {
		if p.Name == "metrics" {
			port = p.ContainerPort
		}
	}
	if a["prometheus.io/scrape"] != "true" || a["prometheus.io/port"] == "" || a["prometheus.io/port"] != itoa(port) {
		t.Errorf("prometheus.io annotations %v, want scrape true on port %d", a, port)
	}
	if !slices.ContainsFunc(c.Args, func(s string) bool { return strings.HasPrefix(s, "--listen=") && strings.HasSuffix(s, ":"+itoa(port)) }) {
		t.Errorf("args %v: no --listen on port %d", c.Args, port)
	}
	for k, v := range sm.Spec.Selector.MatchLabels {
		if svc.Labels[k] != v {
			t.Errorf("ServiceMonitor selector %s=%s does not select the Service (labels %v)", k, v, svc.Labels)
		}
	}
	if len(sm.Spec.Endpoints) == 0 || sm.Spec.Endpoints[0].Port != svc.Spec.Ports[0].Name {
		t.Errorf("ServiceMonitor endpoints %+v, want the Service's port %q", sm.Spec.Endpoints, svc.Spec.Ports[0].Name)
	}
	if !slices.Contains(sm.Spec.NamespaceSelector.MatchNames, svc.Namespace) {
		t.Errorf("ServiceMonitor namespaces %v, want %s", sm.Spec.NamespaceSelector.MatchNames, svc.Namespace)
	}
}

func itoa(i int32) string {
	b, _ := json.Marshal(i)
	return string(b)
}
