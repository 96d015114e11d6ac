package enrich_test

import (
	"bufio"
	"bytes"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/flowmap/flowmap/enrich"
	"github.com/flowmap/flowmap/model"
)

// apiServer answers as the Kubernetes API server does, from API responses
// in testdata/kube: a list of each resource, then watch sessions for it,
// one file each (watch-<resource>-<n>.jsonl, an event a line). After its
// events a session breaks the connection, as a restarting API server or a
// load balancer does, except the last, which stays open. Watch-list
// requests (sendInitialEvents) are refused as a server without the
// feature refuses them, so clients list, then watch.
type apiServer struct {
	t    *testing.T
	dir  string
	stop chan struct{}

	mu       sync.Mutex
	requests []string // method path?query, in order
	watches  map[string]int
}

var apiResources = map[string]string{
	"/api/v1/pods":                             "pods",
	"/api/v1/services":                         "services",
	"/api/v1/nodes":                            "nodes",
	"/apis/apps/v1/replicasets":                "replicasets",
	"/apis/batch/v1/jobs":                      "jobs",
	"/apis/discovery.k8s.io/v1/endpointslices": "endpointslices",
}

func (s *apiServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	s.mu.Lock()
	s.requests = append(s.requests, r.URL.Path+"?"+r.URL.RawQuery)
	s.mu.Unlock()
	res, ok := apiResources[r.URL.Path]
	if !ok {
		http.Error(w, `{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"NotFound","code":404}`, http.StatusNotFound)
		return
	}
	if q.Get("watch") != "true" {
		b, err := os.ReadFile(filepath.Join(s.dir, res+".json"))
		if err != nil {
			s.t.Errorf("api server: %v", err)
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Write(b)
		return
	}
	if q.Get("sendInitialEvents") == "true" {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusUnprocessableEntity)
		fmt.Fprint(w, `{"kind":"Status","apiVersion":"v1","status":"Failure","message":"sendInitialEvents is forbidden for watch unless the WatchList feature gate is enabled","reason":"Invalid","code":422}`)
		return
	}
	s.mu.Lock()
	s.watches[res]++
	n := s.watches[res]
	s.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	w.(http.Flusher).Flush()
	events, err := os.ReadFile(filepath.Join(s.dir, fmt.Sprintf("watch-%s-%d.jsonl", res, n)))
	if err != nil {
		// No more sessions: an open, quiet watch.
		select {
		case <-r.Context().Done():
		case <-s.stop:
		}
		return
	}
	sc := bufio.NewScanner(bytes.NewReader(events))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		w.Write(append(sc.Bytes(), '\n'))
		w.(http.Flusher).Flush()
	}
	// Break the connection mid-stream: no end of the chunked body.
	conn, _, err := w.(http.Hijacker).Hijack()
	if err != nil {
		s.t.Errorf("api server: hijack: %v", err)
		return
	}
	conn.Close()
}

func (s *apiServer) log() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.requests...)
}

// startAPIServer serves testdata/kube and returns a kubeconfig for it.
func startAPIServer(t *testing.T) (*apiServer, string) { return startAPIServerOf(t, "testdata/kube") }

// startAPIServerOf serves the API responses in dir.
func startAPIServerOf(t *testing.T, dir string) (*apiServer, string) {
	s := &apiServer{t: t, dir: dir, stop: make(chan struct{}), watches: make(map[string]int)}
	srv := httptest.NewServer(s)
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(s.stop) }) // runs first: quiet watches end
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	cfg := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: test
  cluster:
    server: %s
contexts:
- name: test
  context:
    cluster: test
    user: test
current-context: test
users:
- name: test
  user: {}
`, srv.URL)
	if err := os.WriteFile(kubeconfig, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return s, kubeconfig
}

// TestKubernetes runs the Kubernetes source against API responses served
// over HTTP (no API server can be had here: Debian has none), with a pods
// watch that breaks twice and a services watch that sends garbage.
func TestKubernetes(t *testing.T) {
	api, kubeconfig := startAPIServer(t)
	inv := startInventory(t, enrich.Config{Kubeconfig: kubeconfig, Logger: testLogger(t)})

	// late-2 comes on the third pods watch, after two breaks.
	late2 := netip.MustParseAddr("198.51.100.51")
	if ep, took := waitNamed(t, inv, late2, 10*time.Second, func(ep model.Endpoint) bool { return ep.Name == "late-2" }); ep.Name != "late-2" {
		t.Fatalf("pod from the watch after a break: Resolve(%v) = %s %q after %v, want pod late-2", late2, ep.Kind, ep.Name, took)
	}
	tests := []struct {
		addr string
		want model.Endpoint
	}{
		{"198.51.100.20", model.Endpoint{Kind: model.KindPod, ID: "6c1f8b2e-4a5d-4e3f-9b2a-1c0d2e3f4a5b", Name: "checkout-7d9f-abcde", Namespace: "shop",
			Workload: "checkout", WorkloadKind: "Deployment", Node: "n1", Image: "registry.example/shop/checkout:1.2"}},
		{"2001:db8:20::20", model.Endpoint{Kind: model.KindPod, Name: "checkout-7d9f-abcde", Workload: "checkout", WorkloadKind: "Deployment"}},
		{"198.51.100.30", model.Endpoint{Kind: model.KindPod, Name: "db-0", Namespace: "data", Workload: "db", WorkloadKind: "StatefulSet", Node: "n2"}},
		{"198.51.100.40", model.Endpoint{Kind: model.KindPod, Name: "report-29412345-q8w9e", Workload: "report", WorkloadKind: "CronJob"}},
		// The host-network DaemonSet pod has the node's address: the node.
		{"203.0.113.5", model.Endpoint{Kind: model.KindHost, ID: "n1", Name: "n1", Node: "n1"}},
		{"2001:db8:6::6", model.Endpoint{Kind: model.KindHost, Name: "n2"}},
		{"198.51.100.100", model.Endpoint{Kind: model.KindService, ID: "c27f4b8e-a0b3-4e95-91b8-7c6d8e9fa0b1", Name: "checkout", Namespace: "shop"}},
		// The endpoint of a selectorless service is known as the service.
		{"203.0.113.77", model.Endpoint{Kind: model.KindService, ID: "d3805c9f-b1c4-4fa6-a2c9-8d7e9fa0b1c2", Name: "legacy-db", Namespace: "data"}},
		{"198.51.100.50", model.Endpoint{Kind: model.KindPod, Name: "late-1", Namespace: "shop"}},
		// Deleted in the third watch; a finished pod's address is free.
		{"198.51.100.41", model.Endpoint{Kind: model.KindExternal, Name: "198.51.100.41"}},
		{"198.51.100.42", model.Endpoint{Kind: model.KindExternal, Name: "198.51.100.42"}},
	}
	for _, tt := range tests {
		t.Run(tt.addr, func(t *testing.T) {
			got := inv.Resolve(netip.MustParseAddr(tt.addr), model.Interface{})
			w := tt.want
			for _, c := range []struct{ field, got, want string }{
				{"Kind", string(got.Kind), string(w.Kind)}, {"ID", got.ID, w.ID}, {"Name", got.Name, w.Name},
				{"Namespace", got.Namespace, w.Namespace}, {"Workload", got.Workload, w.Workload},
				{"WorkloadKind", got.WorkloadKind, w.WorkloadKind}, {"Node", got.Node, w.Node}, {"Image", got.Image, w.Image},
			} {
				if c.want != "" && c.got != c.want {
					t.Errorf("Resolve(%s).%s = %q, want %q", tt.addr, c.field, c.got, c.want)
				}
			}
		})
	}
	if ep := inv.Resolve(netip.MustParseAddr("198.51.100.20"), model.Interface{}); ep.Labels["app"] != "checkout" {
		t.Errorf("pod labels = %v, want app=checkout", ep.Labels)
	}
	// A node's address dialled on checkout's NodePort, translated to its
	// pod, is checkout; on another port, or untranslated, the node.
	for _, tc := range []struct {
		port    uint16
		proto   model.Proto
		backend string
		want    string
	}{
		{30080, model.ProtoTCP, "198.51.100.20:8080", "checkout"},
		{30080, model.ProtoUDP, "198.51.100.20:8080", "n1"},
		{30081, model.ProtoTCP, "198.51.100.20:8080", "n1"},
		{30080, model.ProtoTCP, "", "n1"},
	} {
		r := model.Record{Src: netip.MustParseAddr("203.0.113.200"), Dst: netip.MustParseAddr("203.0.113.5"), Proto: tc.proto, SrcPort: 40000, DstPort: tc.port}
		if tc.backend != "" {
			r.Backend = netip.MustParseAddrPort(tc.backend)
		}
		f := inv.Enrich(r)
		if f.DstEndpoint.Name != tc.want {
			t.Errorf("Enrich(%v to n1:%d, backend %q): dst %s %q, want %q", tc.proto, tc.port, tc.backend, f.DstEndpoint.Kind, f.DstEndpoint.Name, tc.want)
		}
		if tc.backend != "" && f.BackendEndpoint.Name != "checkout-7d9f-abcde" {
			t.Errorf("Enrich(%v to n1:%d): backend %q, want checkout-7d9f-abcde", tc.proto, tc.port, f.BackendEndpoint.Name)
		}
	}

	// The watch resumed where it broke: each new pods watch starts from
	// the resource version of the last event, and pods are listed once.
	var lists, watches []string
	for _, r := range api.log() {
		if !strings.HasPrefix(r, "/api/v1/pods?") {
			continue
		}
		if strings.Contains(r, "watch=true") && !strings.Contains(r, "sendInitialEvents=true") {
			watches = append(watches, r)
		} else if !strings.Contains(r, "watch=true") {
			lists = append(lists, r)
		}
	}
	if len(lists) != 1 {
		t.Errorf("pods listed %d times, want once (a broken watch resumes): %q", len(lists), lists)
	}
	wantRV := []string{"resourceVersion=100", "resourceVersion=105", "resourceVersion=107"}
	if len(watches) < len(wantRV) {
		t.Fatalf("pods watched %d times, want at least %d: %q", len(watches), len(wantRV), watches)
	}
	for i, rv := range wantRV {
		if !strings.Contains(watches[i], rv+"&") && !strings.HasSuffix(watches[i], rv) {
			t.Errorf("pods watch %d = %q, want it from %s", i, watches[i], rv)
		}
	}

	// The services watch sent garbage: counted, logged, and the source
	// lists services again.
	if n := errorCount(t, inv, "kubernetes", "watch"); n < 1 {
		t.Errorf("kubernetes watch errors = %v, want at least 1 after a garbage event", n)
	}
	for _, st := range inv.Status() {
		if st.Name == "kubernetes" && (st.LastSync.IsZero() || st.Endpoints < 8) {
			t.Errorf("kubernetes status %+v, want synced with at least 8 endpoints", st)
		}
	}
}

// errorCount returns flowmap_enrich_source_errors_total for source and
// reason, as the inventory's collector exports it.
func errorCount(t *testing.T, inv *enrich.Inventory, source, reason string) float64 {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	if err := reg.Register(enrich.NewCollector(inv)); err != nil {
		t.Fatalf("register collector: %v", err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "flowmap_enrich_source_errors_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["source"] == source && labels["reason"] == reason {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

// TestKubernetesClaims plays users writing addresses the platform assigned
// to others (testdata/kube-claims): a Service in dev whose externalIPs list
// a prod pod's IP, node n2's IP and an address nothing else has, whose
// load-balancer ingress is node n1's IP, and whose selectorless
// EndpointSlice lists the pod's and n1's IPs. The pod and the nodes stay
// themselves; the Service has its ClusterIP and the free address. The
// agent of node n1 watches its own node's pods only, and names a pod of n2
// from the EndpointSlice that lists it.
func TestKubernetesClaims(t *testing.T) {
	api, kubeconfig := startAPIServerOf(t, "testdata/kube-claims")
	inv := startInventory(t, enrich.Config{Kubeconfig: kubeconfig, Node: "n1", Logger: testLogger(t)})
	svc := model.Endpoint{Kind: model.KindService, ID: "0c000000-0000-4000-8000-000000000001", Name: "evil", Namespace: "dev"}
	waitNamed(t, inv, netip.MustParseAddr("192.0.2.50"), 10*time.Second, func(ep model.Endpoint) bool { return ep.Name == "evil" })
	tests := []struct {
		addr string
		want model.Endpoint
	}{
		{"10.0.1.5", model.Endpoint{Kind: model.KindPod, ID: "0a000000-0000-4000-8000-000000000001", Name: "web-0", Namespace: "prod", Node: "n1"}},
		{"10.0.0.1", model.Endpoint{Kind: model.KindHost, ID: "n1", Name: "n1", Node: "n1"}},
		{"10.0.0.2", model.Endpoint{Kind: model.KindHost, ID: "n2", Name: "n2", Node: "n2"}},
		{"10.96.0.10", svc},
		{"192.0.2.50", svc},
		{"10.0.2.7", model.Endpoint{Kind: model.KindPod, ID: "0a000000-0000-4000-8000-000000000002", Name: "api-1", Namespace: "prod", Node: "n2"}},
	}
	for _, tt := range tests {
		got := inv.Resolve(netip.MustParseAddr(tt.addr), model.Interface{})
		if got.Kind != tt.want.Kind || got.ID != tt.want.ID || got.Name != tt.want.Name || got.Namespace != tt.want.Namespace || got.Node != tt.want.Node {
			t.Errorf("Resolve(%s) = %s %q %q/%q on %q, want %s %q %q/%q on %q", tt.addr, got.Kind, got.ID, got.Namespace, got.Name, got.Node,
				tt.want.Kind, tt.want.ID, tt.want.Namespace, tt.want.Name, tt.want.Node)
		}
	}
	if ep := inv.Resolve(netip.MustParseAddr("10.0.1.5"), model.Interface{}); len(ep.Addrs) != 1 {
		t.Errorf("pod web-0 has addresses %v, want its own alone", ep.Addrs)
	}
	if got := gauge(t, inv, "flowmap_enrich_address_claims_refused"); got != 5 {
		t.Errorf("flowmap_enrich_address_claims_refused = %v, want 5 (two externalIPs, the ingress, the slice's two)", got)
	}
	for _, r := range api.log() {
		if strings.HasPrefix(r, "/api/v1/pods?") && !strings.Contains(r, "fieldSelector=spec.nodeName%3Dn1") {
			t.Errorf("pods requested as %q, want fieldSelector=spec.nodeName=n1", r)
		}
	}
}

// gauge returns the value of the unlabelled gauge name of inv's collector.
func gauge(t *testing.T, inv *enrich.Inventory, name string) float64 {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	if err := reg.Register(enrich.NewCollector(inv)); err != nil {
		t.Fatalf("register collector: %v", err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()[0].GetGauge().GetValue()
		}
	}
	t.Fatalf("no %s in the collector", name)
	return 0
}
