//go:build k8s

package k8sbox

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flowmap/flowmap/model"
	"github.com/flowmap/flowmap/topology"
)

// prometheusImage is the Prometheus server BuildPrometheus makes.
const prometheusImage = "fmk8s-prometheus:1"

// prometheusPod runs Prometheus in the namespace monitoring as a plain
// in-cluster Prometheus would: its own ServiceAccount, allowed to list and
// watch pods (discovery) and bound to flowmap-metrics-reader as the
// ClusterRole's comment says; deploy/prometheus/kubernetes.yml and
// rules.yml as they are in a ConfigMap, the agents' CA beside them.
const prometheusPod = `apiVersion: v1
kind: ServiceAccount
metadata: {name: prometheus, namespace: monitoring}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: fmk8s-prometheus-discovery}
rules:
  - apiGroups: [""]
    resources: [pods]
    verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: fmk8s-prometheus-discovery}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: fmk8s-prometheus-discovery}
subjects: [{kind: ServiceAccount, name: prometheus, namespace: monitoring}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: flowmap-prometheus}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: flowmap-metrics-reader}
subjects: [{kind: ServiceAccount, name: prometheus, namespace: monitoring}]
---
apiVersion: v1
kind: Pod
metadata: {name: prometheus, namespace: monitoring, labels: {app: prometheus}}
spec:
  serviceAccountName: prometheus
  terminationGracePeriodSeconds: 1
  containers:
    - name: prometheus
      image: ` + prometheusImage + `
      imagePullPolicy: Never
      args: [--config.file=/etc/prometheus/kubernetes.yml, --storage.tsdb.path=/data, --web.listen-address=:9090]
      volumeMounts:
        - {name: config, mountPath: /etc/prometheus}
        - {name: data, mountPath: /data}
  volumes:
    - name: config
      configMap:
        name: prometheus
        items:
          - {key: kubernetes.yml, path: kubernetes.yml}
          - {key: rules.yml, path: rules.yml}
          - {key: ca.crt, path: flowmap/ca.crt}
    - name: data
      emptyDir: {}
`

// testPrometheus runs Prometheus in the cluster with the shipped
// kubernetes_sd_configs, waits until it scrapes the agent it discovered,
// and checks that `flowmap graph --prometheus` draws the map the agent's
// own API shows: the same workloads and Services, the same edges, bytes
// within 1 %. Everything but Prometheus' own traffic (its scrapes, its
// watch of the API server) has stopped by then.
func testPrometheus(t *testing.T, ctx context.Context, c *Cluster, api *agentAPI, bin string, caPEM []byte) {
	importBinary(t, ctx, c, bin, prometheusImage, "/prometheus", "65534:65534")
	dir := t.TempDir()
	ca := filepath.Join(dir, "ca.crt")
	if err := os.WriteFile(ca, caPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"create", "namespace", "monitoring"},
		{"-n", "monitoring", "create", "configmap", "prometheus",
			"--from-file=../../deploy/prometheus/kubernetes.yml", "--from-file=../../deploy/prometheus/rules.yml", "--from-file=ca.crt=" + ca},
	} {
		if out, err := c.Kubectl(ctx, args...); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
	}
	if out, err := c.KubectlStdin(ctx, prometheusPod, "apply", "-f", "-"); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if out, err := c.Kubectl(ctx, "-n", "monitoring", "wait", "--for=condition=Ready", "pod/prometheus", "--timeout=120s"); err != nil {
		logs, _ := c.Kubectl(ctx, "-n", "monitoring", "logs", "prometheus")
		t.Fatalf("%v: %s\n%s", err, out, logs)
	}
	ip, err := c.Kubectl(ctx, "-n", "monitoring", "get", "pod", "prometheus", "-o", "jsonpath={.status.podIP}")
	if err != nil {
		t.Fatalf("%v: %s", err, ip)
	}
	promURL := "http://" + strings.TrimSpace(ip) + ":9090"
	defer func() {
		if t.Failed() {
			logs, _ := c.Kubectl(ctx, "-n", "monitoring", "logs", "prometheus")
			t.Logf("prometheus log:\n%s", logs)
		}
	}()

	// The agent, discovered through the API server and scraped with
	// Prometheus' token and the agents' CA.
	poll(t, ctx, func() []string {
		var doc struct {
			Data struct {
				ActiveTargets []struct {
					Labels    map[string]string `json:"labels"`
					ScrapeURL string            `json:"scrapeUrl"`
					Health    string            `json:"health"`
					LastError string            `json:"lastError"`
				} `json:"activeTargets"`
			} `json:"data"`
		}
		if err := getJSON(ctx, promURL+"/api/v1/targets?state=active", &doc); err != nil {
			return []string{err.Error()}
		}
		ts := doc.Data.ActiveTargets
		if len(ts) != 1 {
			return []string{fmt.Sprintf("prometheus has %d targets, want the one agent: %+v", len(ts), ts)}
		}
		tg := ts[0]
		var ps []string
		if want := "https://" + NodeIP + ":9477/metrics"; tg.ScrapeURL != want {
			ps = append(ps, fmt.Sprintf("target %s, want %s", tg.ScrapeURL, want))
		}
		if tg.Labels["node"] != NodeName || tg.Labels["job"] != "flowmap" {
			ps = append(ps, fmt.Sprintf("target labels %v, want job flowmap, node %s", tg.Labels, NodeName))
		}
		if tg.Health != "up" {
			ps = append(ps, fmt.Sprintf("target %s: %s %s", tg.ScrapeURL, tg.Health, tg.LastError))
		}
		return ps
	})

	flowmap := filepath.Join(dir, "flowmap")
	build := exec.CommandContext(ctx, "go", "build", "-o", flowmap, "./cmd/flowmap")
	build.Dir = "../.."
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build flowmap: %v: %s", err, out)
	}
	// Edges by what they join, not by node id: the agent names a
	// Service or a bare pod by its UID, series by namespace and name.
	type edgeKey struct {
		src, dst string
		port     uint16
	}
	keys := func(s *topology.Snapshot) map[edgeKey]*topology.Edge {
		m := map[edgeKey]*topology.Edge{}
		for i := range s.Edges {
			e := &s.Edges[i]
			src, dst := findNode(s, e.Source), findNode(s, e.Target)
			if src == nil || dst == nil || e.Protocol != model.ProtoTCP {
				continue
			}
			// Prometheus' own edges grow between the two reads: its
			// scrapes, its watch of the API server (the Service
			// kubernetes, and the node behind it).
			mine := false
			for _, n := range []*topology.Node{src, dst} {
				mine = mine || n.Namespace == "monitoring" || n.Namespace == "default" && n.Name == "kubernetes"
			}
			if mine || e.Port == 6443 {
				continue
			}
			m[edgeKey{string(src.Kind) + ":" + src.Namespace + "/" + src.Name, string(dst.Kind) + ":" + dst.Namespace + "/" + dst.Name, e.Port}] = e
		}
		return m
	}
	var last []string
	poll(t, ctx, func() []string {
		out, err := exec.CommandContext(ctx, flowmap, "graph", "--prometheus", promURL, "--level", "workload",
			"--window", "15m", "--format", "json").Output()
		if err != nil {
			return []string{fmt.Sprintf("flowmap graph --prometheus: %v", err)}
		}
		pg, err := topology.ReadJSON(strings.NewReader(string(out)))
		if err != nil {
			return []string{err.Error()}
		}
		ag, err := api.graphIn(ctx, topology.LevelWorkload, "15m")
		if err != nil {
			return []string{err.Error()}
		}
		var ps []string
		for _, want := range []string{"web", "db", "ds", "batch", "nightly", "echo", "echo-cluster", "echo-local", "lone"} {
			found := false
			for _, n := range pg.Nodes {
				found = found || n.Name == want && n.Namespace == "apps"
			}
			if !found {
				ps = append(ps, fmt.Sprintf("the map from Prometheus has no apps/%s", want))
			}
		}
		am, pm := keys(ag), keys(pg)
		for k, e := range am {
			pe := pm[k]
			if pe == nil {
				ps = append(ps, fmt.Sprintf("the map from Prometheus has no edge %v", k))
				continue
			}
			if !within(pe.Forward.Bytes, e.Forward.Bytes, 0.01) || !within(pe.Reverse.Bytes, e.Reverse.Bytes, 0.01) {
				ps = append(ps, fmt.Sprintf("edge %v: %d/%d bytes from Prometheus, %d/%d from the agent", k,
					pe.Forward.Bytes, pe.Reverse.Bytes, e.Forward.Bytes, e.Reverse.Bytes))
			}
			if pe.Connections != e.Connections {
				ps = append(ps, fmt.Sprintf("edge %v: %d connections from Prometheus, %d from the agent", k, pe.Connections, e.Connections))
			}
		}
		for k := range pm {
			if am[k] == nil {
				ps = append(ps, fmt.Sprintf("the map from Prometheus has edge %v, the agent's has not", k))
			}
		}
		if len(am) < 10 {
			ps = append(ps, fmt.Sprintf("the agent's map has %d edges of the tests' traffic, want at least 10", len(am)))
		}
		last = last[:0]
		for k, e := range pm {
			last = append(last, fmt.Sprintf("%v %d/%d bytes %d conns", k, e.Forward.Bytes, e.Reverse.Bytes, e.Connections))
		}
		if len(ps) == 0 {
			t.Logf("the map from Prometheus has the agent's %d edges", len(am))
		}
		return ps
	})
	if t.Failed() {
		t.Logf("the map from Prometheus:\n%s", strings.Join(last, "\n"))
	}
}

// getJSON gets url and decodes its JSON into v.
func getJSON(ctx context.Context, url string, v any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	client := &http.Client{Timeout: 10 * time.Second}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != 200 {
		return fmt.Errorf("get %s: %s: %s", url, resp.Status, body)
	}
	return json.Unmarshal(body, v)
}
