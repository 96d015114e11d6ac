// Package deploy holds flowmap's manifests; its test decodes them strictly.
package deploy

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"

	"github.com/flowmap/flowmap/internal/testenv"
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
			BearerTokenFile string `json:"bearerTokenFile,omitempty"`
			Authorization   *struct {
				Type        string                    `json:"type,omitempty"`
				Credentials *corev1.SecretKeySelector `json:"credentials,omitempty"`
			} `json:"authorization,omitempty"`
			TLSConfig *struct {
				CA *struct {
					Secret    *corev1.SecretKeySelector    `json:"secret,omitempty"`
					ConfigMap *corev1.ConfigMapKeySelector `json:"configMap,omitempty"`
				} `json:"ca,omitempty"`
				CAFile             string `json:"caFile,omitempty"`
				ServerName         string `json:"serverName,omitempty"`
				InsecureSkipVerify bool   `json:"insecureSkipVerify,omitempty"`
			} `json:"tlsConfig,omitempty"`
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
	kinds := map[string]any{} // the first of each kind
	named := map[string]any{} // by kind/name
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
		var om metav1.ObjectMeta
		if err := yaml.Unmarshal(raw, &struct {
			Metadata *metav1.ObjectMeta `json:"metadata"`
		}{&om}); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if named[tm.Kind+"/"+om.Name] != nil {
			t.Errorf("%s: a second %s %s", path, tm.Kind, om.Name)
		}
		named[tm.Kind+"/"+om.Name] = v
		if kinds[tm.Kind] == nil {
			kinds[tm.Kind] = v
		}
	}
	for _, want := range []string{"Namespace", "ServiceAccount", "Service", "ClusterRole", "ClusterRoleBinding", "DaemonSet", "ServiceMonitor"} {
		if kinds[want] == nil {
			t.Fatalf("no %s", want)
		}
	}
	ds := kinds["DaemonSet"].(*appsv1.DaemonSet)
	t.Run("DaemonSet", func(t *testing.T) { checkDaemonSet(t, ds, kinds["ServiceAccount"].(*corev1.ServiceAccount)) })
	for _, want := range []string{"ClusterRole/flowmap", "ClusterRoleBinding/flowmap", "ClusterRoleBinding/flowmap-auth-delegator",
		"ClusterRole/flowmap-reader", "ClusterRole/flowmap-metrics-reader"} {
		if named[want] == nil {
			t.Fatalf("no %s", want)
		}
	}
	sa := kinds["ServiceAccount"].(*corev1.ServiceAccount)
	t.Run("RBAC", func(t *testing.T) {
		checkRBAC(t, named["ClusterRole/flowmap"].(*rbacv1.ClusterRole), named["ClusterRoleBinding/flowmap"].(*rbacv1.ClusterRoleBinding), sa)
	})
	t.Run("API access", func(t *testing.T) {
		checkAccess(t, named, sa)
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
	// Not SYS_ADMIN: it is root on the node, and the agent runs without it.
	allowed := []corev1.Capability{"BPF", "PERFMON", "NET_ADMIN", "SYS_PTRACE", "SYS_RESOURCE"}
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
		if v.Secret != nil {
			// The API's certificate: read-only, readable by the agent alone.
			if m, ok := mounts[v.Name]; !ok || !m.ReadOnly {
				t.Errorf("secret volume %s is not mounted read-only", v.Name)
			}
			if v.Secret.DefaultMode == nil || *v.Secret.DefaultMode&0o077 != 0 {
				t.Errorf("secret volume %s: defaultMode %v, want none for group and others", v.Name, v.Secret.DefaultMode)
			}
			delete(mounts, v.Name)
			continue
		}
		if v.HostPath == nil {
			t.Errorf("volume %s is neither a hostPath nor the TLS Secret", v.Name)
			continue
		}
		if _, ok := mounts[v.Name]; !ok {
			t.Errorf("volume %s is not mounted", v.Name)
		}
		if m := mounts[v.Name]; !m.ReadOnly {
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
	for _, want := range []string{"/sys/kernel/btf"} {
		if !slices.Contains(paths, want) {
			t.Errorf("no host path %s in %v", want, paths)
		}
	}
	// Nothing pins to bpffs, and with hostPID /proc is the host's: a
	// mount of either is privilege for nothing.
	for _, unused := range []string{"/sys/fs/bpf", "/proc"} {
		if slices.Contains(paths, unused) {
			t.Errorf("host path %s mounted, which the agent does not use", unused)
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
	// The node's address: HTTPS and Kubernetes tokens only.
	for _, want := range []string{"--auth=kubernetes", "--tls-cert=", "--tls-key="} {
		if !slices.ContainsFunc(c.Args, func(s string) bool { return strings.HasPrefix(s, want) }) {
			t.Errorf("args %v: no %s", c.Args, want)
		}
	}
	if a["prometheus.io/scheme"] != "https" {
		t.Errorf("prometheus.io/scheme %q, want https", a["prometheus.io/scheme"])
	}
	for name, p := range map[string]*corev1.Probe{"readiness": c.ReadinessProbe, "liveness": c.LivenessProbe} {
		if p == nil || p.HTTPGet == nil || p.HTTPGet.Scheme != corev1.URISchemeHTTPS {
			t.Errorf("%s probe %+v, want an HTTPS GET", name, p)
		}
	}
	if e := sm.Spec.Endpoints; len(e) > 0 {
		tc := e[0].TLSConfig
		if e[0].Scheme != "https" || tc == nil || tc.InsecureSkipVerify || tc.CA == nil || tc.ServerName == "" {
			t.Errorf("ServiceMonitor endpoint scheme %q, tlsConfig %+v; want https, checked against a CA and a server name", e[0].Scheme, tc)
		}
		if e[0].BearerTokenFile == "" && e[0].Authorization == nil {
			t.Error("ServiceMonitor endpoint sends no bearer token")
		}
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

// checkAccess checks the RBAC of --auth=kubernetes: the agent may review
// tokens and access, readers get nodes/flowmap, Prometheus /metrics, and
// nothing more.
func checkAccess(t *testing.T, named map[string]any, sa *corev1.ServiceAccount) {
	crb := named["ClusterRoleBinding/flowmap-auth-delegator"].(*rbacv1.ClusterRoleBinding)
	if crb.RoleRef.Kind != "ClusterRole" || crb.RoleRef.Name != "system:auth-delegator" {
		t.Errorf("auth delegation binds %s %s, want ClusterRole system:auth-delegator", crb.RoleRef.Kind, crb.RoleRef.Name)
	}
	if len(crb.Subjects) != 1 || crb.Subjects[0].Name != sa.Name || crb.Subjects[0].Namespace != sa.Namespace {
		t.Errorf("auth delegation subjects %v, want the ServiceAccount %s/%s", crb.Subjects, sa.Namespace, sa.Name)
	}
	for _, tc := range []struct {
		role string
		want rbacv1.PolicyRule
	}{
		{"flowmap-reader", rbacv1.PolicyRule{APIGroups: []string{""}, Resources: []string{"nodes/flowmap"}, Verbs: []string{"get"}}},
		{"flowmap-metrics-reader", rbacv1.PolicyRule{NonResourceURLs: []string{"/metrics"}, Verbs: []string{"get"}}},
	} {
		cr := named["ClusterRole/"+tc.role].(*rbacv1.ClusterRole)
		if len(cr.Rules) != 1 || !reflect.DeepEqual(cr.Rules[0], tc.want) {
			t.Errorf("ClusterRole %s rules %+v, want only %+v", tc.role, cr.Rules, tc.want)
		}
	}
}

func itoa(i int32) string {
	b, _ := json.Marshal(i)
	return string(b)
}

// TestExportExamples: the collector config's pipelines use the components
// it configures, and the nfcapd manifests decode strictly.
func TestExportExamples(t *testing.T) {
	var cfg struct {
		Receivers  map[string]any `json:"receivers"`
		Processors map[string]any `json:"processors"`
		Exporters  map[string]any `json:"exporters"`
		Service    struct {
			Pipelines map[string]struct {
				Receivers  []string `json:"receivers"`
				Processors []string `json:"processors"`
				Exporters  []string `json:"exporters"`
			} `json:"pipelines"`
		} `json:"service"`
	}
	decode(t, "otelcol/collector.yaml", &cfg)
	if len(cfg.Service.Pipelines) == 0 {
		t.Error("otelcol/collector.yaml has no pipelines")
	}
	for name, p := range cfg.Service.Pipelines {
		for _, c := range []struct {
			kind string
			used []string
			have map[string]any
		}{{"receiver", p.Receivers, cfg.Receivers}, {"processor", p.Processors, cfg.Processors}, {"exporter", p.Exporters, cfg.Exporters}} {
			for _, u := range c.used {
				if _, ok := c.have[u]; !ok {
					t.Errorf("pipeline %s uses %s %s, which the config does not configure", name, c.kind, u)
				}
			}
		}
	}
	if _, ok := cfg.Receivers["otlp"]; !ok {
		t.Error("otelcol/collector.yaml has no otlp receiver")
	}

	raw, err := os.ReadFile("ipfix/nfcapd.yaml")
	if err != nil {
		t.Fatal(err)
	}
	docs := strings.Split(string(raw), "\n---\n")
	if len(docs) != 2 {
		t.Fatalf("ipfix/nfcapd.yaml has %d documents, want a Deployment and a Service", len(docs))
	}
	var d appsv1.Deployment
	if err := yaml.UnmarshalStrict([]byte(docs[0]), &d); err != nil {
		t.Errorf("decode the Deployment: %v", err)
	}
	var s corev1.Service
	if err := yaml.UnmarshalStrict([]byte(docs[1]), &s); err != nil {
		t.Errorf("decode the Service: %v", err)
	}
	if got := s.Spec.Ports[0].Protocol; got != corev1.ProtocolUDP {
		t.Errorf("nfcapd's Service port protocol = %s, want UDP", got)
	}
}

// TestPrometheusRules checks the recording and alerting rules with
// promtool, and runs their unit tests (prometheus/rules_test.yml: each
// health alert fires on made-up series of a failing edge, and not on a
// well one). Needs promtool.
func TestPrometheusRules(t *testing.T) {
	promtool := testenv.MustHaveCommand(t, "promtool")
	for _, args := range [][]string{
		{"check", "rules", "rules.yml"},
		{"test", "rules", "rules_test.yml"},
	} {
		cmd := exec.Command(promtool, args...)
		cmd.Dir = "prometheus"
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}
