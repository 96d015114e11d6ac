package topology

import (
	"bytes"
	"net/netip"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/flowmap/flowmap/model"
)

// shopSvc is the Service web's clients dial; web1 and web2 are behind it.
var shopSvc = model.Endpoint{Kind: model.KindService, ID: "svc-uid", Name: "web", Namespace: "shop",
	Addrs: []netip.Addr{netip.MustParseAddr("198.51.101.10")}}

// serviceFlows are api-1's connections to the Service, answered by web-1
// (twice) and web-2 (once).
func serviceFlows() []model.Flow {
	var fs []model.Flow
	for i, b := range []model.Endpoint{web1, web2, web1} {
		f := flow(api1, shopSvc, model.ProtoTCP, 80, uint64(1000*(i+1)), 10000, 0)
		f.SrcPort += uint16(i)
		f.Backend = netip.AddrPortFrom(b.Addrs[0], 8080)
		f.BackendEndpoint = b
		fs = append(fs, f)
	}
	return fs
}

// TestServiceEdges checks that a flow to a Service is the client's edge to
// the Service and the Service's edge to the backend that answered, with
// bytes per backend, at every level; and that a Service stays a node of
// its own.
func TestServiceEdges(t *testing.T) {
	g := New(Options{})
	g.Add(t0, serviceFlows()...)
	for _, tc := range []struct {
		level      Level
		client     string
		backends   map[string]uint64 // forward bytes by backend node
		wantEdges  int
		wantClient uint64
	}{
		{LevelContainer, "container:c-api-1", map[string]uint64{"container:c-web-1": 4000, "container:c-web-2": 2000}, 3, 6000},
		{LevelPod, "pod:uid-api-1", map[string]uint64{"pod:uid-web-1": 4000, "pod:uid-web-2": 2000}, 3, 6000},
		{LevelWorkload, "workload:shop/api", map[string]uint64{"workload:shop/web": 6000}, 2, 6000},
		{LevelNamespace, "namespace:shop", map[string]uint64{"namespace:shop": 6000}, 2, 6000},
		{LevelHost, "host:n1", map[string]uint64{"host:n1": 4000, "host:n2": 2000}, 3, 6000},
	} {
		t.Run(string(tc.level), func(t *testing.T) {
			s := g.Snapshot(t0, tc.level, Windows[0])
			if len(s.Edges) != tc.wantEdges {
				t.Errorf("%d edges, want %d: %+v", len(s.Edges), tc.wantEdges, s.Edges)
			}
			svc := "service:svc-uid"
			if n := findNode(s, svc); n == nil || n.Kind != model.KindService || n.Name != "web" || n.Namespace != "shop" {
				t.Errorf("service node %+v, want the Service web in shop", n)
			}
			if e := findEdge(s, tc.client, svc, 80); e == nil || e.Forward.Bytes != tc.wantClient || e.Connections != 3 {
				t.Errorf("client edge %+v, want %d bytes in 3 connections", e, tc.wantClient)
			}
			for b, want := range tc.backends {
				e := findEdge(s, svc, b, 8080)
				if e == nil || e.Forward.Bytes != want {
					t.Errorf("edge %s → %s: %+v, want %d bytes", svc, b, e, want)
				}
			}
			var buf bytes.Buffer
			if err := WriteDOT(&buf, s); err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(buf.String(), `"service:svc-uid"`) {
				t.Errorf("DOT has no Service node:\n%s", buf.String())
			}
		})
	}
	// A backend the inventory names as what was dialled (the Service's
	// address unknown, both the pod behind the veth): one edge.
	g = New(Options{})
	f := flow(api1, web1, model.ProtoTCP, 80, 1000, 1000, 0)
	f.Backend, f.BackendEndpoint = netip.MustParseAddrPort("198.51.100.11:8080"), web1
	g.Add(t0, f)
	if s := g.Snapshot(t0, LevelContainer, Windows[0]); len(s.Edges) != 1 {
		t.Errorf("backend named as the dialled end: %d edges, want 1: %+v", len(s.Edges), s.Edges)
	}
}

// TestServiceSeries checks the Service's edges in the flow series: the
// client's to the Service and the Service's to each backend, the backend
// (not the Service) as running here, and the cap counting hops as edges.
func TestServiceSeries(t *testing.T) {
	for _, tc := range []struct {
		name     string
		maxEdges int
		// want are the forward bytes by "src dst port".
		want     map[string]float64
		overflow float64
	}{
		{"room", 10, map[string]float64{"api-1 web 80": 6000, "web web-1 8080": 4000, "web web-2 8080": 2000}, 0},
		{"capped", 2, map[string]float64{"api-1 web 80": 6000, "web web-1 8080": 4000}, 2000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := NewMetrics(MetricsOptions{Level: LevelContainer, Node: "n1", MaxEdges: tc.maxEdges,
				Ends: func(*model.Flow) Ends { return Ends{ClientHere: true, ServerHere: true} }})
			m.Add(t0, serviceFlows()...)
			reg := prometheus.NewPedanticRegistry()
			reg.MustRegister(m)
			reg.Gather() // new series are first collected at zero
			mfs, err := reg.Gather()
			if err != nil {
				t.Fatal(err)
			}
			got := map[string]float64{}
			var overflow float64
			local := map[string]bool{}
			for _, mf := range mfs {
				for _, mt := range mf.Metric {
					l := map[string]string{}
					for _, lp := range mt.Label {
						l[lp.GetName()] = lp.GetValue()
					}
					switch {
					case mf.GetName() == "flowmap_flow_bytes_total" && l["direction"] == "forward" && l["src"] == "overflow":
						overflow += mt.GetCounter().GetValue()
					case mf.GetName() == "flowmap_flow_bytes_total" && l["direction"] == "forward":
						got[l["src"]+" "+l["dst"]+" "+l["port"]] += mt.GetCounter().GetValue()
					case mf.GetName() == "flowmap_endpoint_info":
						local[l["kind"]+"/"+l["name"]] = true
					}
				}
			}
			if len(got) != len(tc.want) {
				t.Errorf("series %v, want %v", got, tc.want)
			}
			for k, w := range tc.want {
				if got[k] != w {
					t.Errorf("series %s: %v bytes, want %v", k, got[k], w)
				}
			}
			if overflow != tc.overflow {
				t.Errorf("overflow %v bytes, want %v", overflow, tc.overflow)
			}
			if local["service/web"] {
				t.Errorf("the Service is in endpoint_info as running here: %v", local)
			}
			if !local["container/web-1"] || !local["container/api-1"] {
				t.Errorf("endpoint_info %v, want the client and the backends", local)
			}
		})
	}
}

func findNode(s *Snapshot, id string) *Node {
	for i := range s.Nodes {
		if s.Nodes[i].ID == id {
			return &s.Nodes[i]
		}
	}
	return nil
}

func findEdge(s *Snapshot, src, dst string, port uint16) *Edge {
	for i := range s.Edges {
		if e := &s.Edges[i]; e.Source == src && e.Target == dst && e.Port == port {
			return e
		}
	}
	return nil
}

// TestServiceL7Series checks the Service's edges in the L7 series: the
// client's requests to the Service, and the Service's to each backend that
// answered them, as the flow series split the bytes.
func TestServiceL7Series(t *testing.T) {
	m := NewL7Metrics(MetricsOptions{Level: LevelContainer, Node: "n1",
		Ends: func(*model.Flow) Ends { return Ends{ClientHere: true, ServerHere: true} }})
	fs := serviceFlows()
	for i := range fs {
		l := &model.L7{Protocol: model.L7HTTP}
		n := uint64(10 * (i + 1)) // web-1 10 and 30, web-2 20
		l.Methods[model.MethodGET], l.Statuses[2], l.Statuses[5] = n+1, n, 1
		fs[i].L7 = l
	}
	m.Add(t0, fs...)
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(m)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != "flowmap_http_requests_total" {
			continue
		}
		for _, mt := range mf.Metric {
			l := map[string]string{}
			for _, lp := range mt.Label {
				l[lp.GetName()] = lp.GetValue()
			}
			if v := mt.GetCounter().GetValue(); v != 0 {
				got[l["src"]+" "+l["dst"]+" "+l["status_class"]] += v
			}
		}
	}
	want := map[string]float64{
		"api-1 web 2xx": 60, "api-1 web 5xx": 3,
		"web web-1 2xx": 40, "web web-1 5xx": 2,
		"web web-2 2xx": 20, "web web-2 5xx": 1,
	}
	if len(got) != len(want) {
		t.Errorf("series %v, want %v", got, want)
	}
	for k, w := range want {
		if got[k] != w {
			t.Errorf("%s: %v requests, want %v", k, got[k], w)
		}
	}
	// The graph (the JSON, DOT and node graph exports) splits them so too.
	g := New(Options{})
	g.Add(t0, fs...)
	s := g.Snapshot(t0, LevelContainer, Windows[0])
	for _, e := range []struct {
		src, dst string
		port     uint16
		want     uint64
	}{{"container:c-api-1", "service:svc-uid", 80, 63}, {"service:svc-uid", "container:c-web-1", 8080, 42}, {"service:svc-uid", "container:c-web-2", 8080, 21}} {
		if got := findEdge(s, e.src, e.dst, e.port); got == nil || got.L7 == nil || got.L7.Requests != e.want {
			t.Errorf("graph edge %s → %s: %+v, want %d requests", e.src, e.dst, got, e.want)
		}
	}
}
