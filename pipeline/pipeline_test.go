package pipeline

import (
	"context"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/vishvananda/netlink"

	"github.com/flowmap/flowmap/model"
	"github.com/flowmap/flowmap/topology"
)

// sink is the API: it keeps what it was given.
type sink struct{ batches []model.Batch }

func (s *sink) Add(b model.Batch) { s.batches = append(s.batches, b) }

// exporter keeps the flows it was offered.
type exporter struct{ flows []model.Flow }

func (e *exporter) Offer(fs []model.Flow) { e.flows = append(e.flows, fs...) }

// countedRoutes is routes, counting its calls.
type countedRoutes struct{ calls atomic.Int64 }

func (c *countedRoutes) routes() ([]netlink.Route, error) {
	c.calls.Add(1)
	return routes()
}

// series returns the label sets of the series named name in reg, each as
// "k=v,k=v" sorted by label name, without node.
func series(t *testing.T, reg *prometheus.Registry, name string) []string {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	var out []string
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			var ls []string
			for _, l := range m.GetLabel() {
				if l.GetName() != "node" {
					ls = append(ls, l.GetName()+"="+l.GetValue())
				}
			}
			out = append(out, strings.Join(ls, ","))
		}
	}
	return out
}

// TestAdd folds one batch in and finds it in each stage: the API's as
// drained, the graph's and the series' named, with the name the batch
// carried for the outside end, and the series only with the flows this
// node reports.
func TestAdd(t *testing.T) {
	end := time.Now()
	b := model.Batch{Start: end.Add(-5 * time.Second), End: end,
		Names: []model.Name{{Addr: outside, Name: "api.example", TTL: time.Minute, Source: model.NameDNS, Client: podHere, Seen: end}},
		Records: []model.Record{
			// A pod here asks the outside over HTTP: its node reports it.
			{Src: podHere, Dst: outside, Proto: model.ProtoTCP, SrcPort: 40000, DstPort: 80, SrcIf: veth, DstIf: eth0,
				Forward: model.Direction{Bytes: 100, Packets: 2}, Reverse: model.Direction{Bytes: 1000, Packets: 2},
				L7: &model.L7{Protocol: model.L7HTTP, Methods: [model.NumMethods]uint64{1}, Statuses: [6]uint64{2: 1}}},
			// Routed through: not this node's to report.
			{Src: outside, Dst: podThere, Proto: model.ProtoTCP, SrcPort: 40001, DstPort: 443, SrcIf: eth0, DstIf: vxlan,
				Forward: model.Direction{Bytes: 10, Packets: 1}},
		}}
	api := &sink{}
	exp := &exporter{}
	rc := &countedRoutes{}
	p := New(Options{Node: "n1", MetricsLevel: topology.LevelContainer, API: api, Exports: []Exporter{exp}, Routes: rc.routes, Addrs: addrs})
	reg := prometheus.NewRegistry()
	reg.MustRegister(p.Collectors()...)
	lookups := rc.calls.Load()
	p.Add(b)

	t.Run("api", func(t *testing.T) {
		if len(api.batches) != 1 || len(api.batches[0].Records) != 2 {
			t.Fatalf("API got %d batches, want 1 of 2 records", len(api.batches))
		}
	})
	t.Run("exports", func(t *testing.T) {
		// Every flow, reported here or not, named.
		if len(exp.flows) != 2 {
			t.Fatalf("exporter got %d flows, want 2", len(exp.flows))
		}
		if got := exp.flows[0].DstEndpoint.Name; got != "api.example" {
			t.Errorf("exported flow's destination = %q, want api.example, named by the batch's DNS name", got)
		}
	})
	t.Run("graph", func(t *testing.T) {
		mux := http.NewServeMux()
		p.Mount(mux)
		rec := httptest.NewRecorder()
		mux.ServeHTTP(rec, httptest.NewRequest("GET", "/api/v1/graph?level=container&window=5m&format=json", nil))
		if rec.Code != http.StatusOK {
			t.Fatalf("GET /api/v1/graph = %d %s, want 200", rec.Code, rec.Body)
		}
		s, err := topology.ReadJSON(rec.Body)
		if err != nil {
			t.Fatalf("read graph: %v", err)
		}
		var ids []string
		for _, e := range s.Edges {
			ids = append(ids, e.ID)
		}
		// Both flows, the outside end named by the batch's DNS name.
		if len(s.Edges) != 2 {
			t.Errorf("graph edges = %q, want 2", ids)
		}
		var names []string
		for _, n := range s.Nodes {
			names = append(names, n.Name)
		}
		if !slices.Contains(names, "api.example") {
			t.Errorf("graph nodes = %q, want one named api.example by the batch's DNS name", names)
		}
	})
	t.Run("flow series", func(t *testing.T) {
		got := series(t, reg, "flowmap_flow_packets_total")
		want := []string{
			"direction=forward,dst=api.example,dst_kind=external,dst_namespace=,port=80,proto=tcp,reporter=client,src=10.1.0.5,src_kind=unknown,src_namespace=",
			"direction=reverse,dst=api.example,dst_kind=external,dst_namespace=,port=80,proto=tcp,reporter=client,src=10.1.0.5,src_kind=unknown,src_namespace=",
		}
		slices.Sort(got)
		if !slices.Equal(got, want) {
			t.Errorf("flow packet series:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
	})
	t.Run("L7 series", func(t *testing.T) {
		got := series(t, reg, "flowmap_http_requests_total")
		if want := "dst=api.example,dst_kind=external,dst_namespace=,reporter=client,src=10.1.0.5,src_kind=unknown,src_namespace=,status_class=2xx"; !slices.Contains(got, want) {
			t.Errorf("HTTP request series:\n%s\nwant one of %s", strings.Join(got, "\n"), want)
		}
	})
	t.Run("no route lookup in Add", func(t *testing.T) {
		if n := rc.calls.Load(); n != lookups {
			t.Errorf("routes listed %d times in Add, want 0: the rule reads the last look", n-lookups)
		}
	})
}

// TestRun hands batches to Run and waits for the route source to be asked
// again on the timer.
func TestRun(t *testing.T) {
	rc := &countedRoutes{}
	asked := make(chan struct{}, 1)
	routes := func() ([]netlink.Route, error) {
		select {
		case asked <- struct{}{}:
		default:
		}
		return rc.routes()
	}
	api := &sink{}
	p := New(Options{Node: "n1", API: api, Routes: routes, Addrs: addrs, Refresh: time.Millisecond})
	<-asked // New's look
	if got := rc.calls.Load(); got != 1 {
		t.Fatalf("routes listed %d times by New, want 1", got)
	}
	in := make(chan model.Batch)
	done := make(chan error, 1)
	go func() { done <- p.Run(context.Background(), in) }()
	<-asked // the timer's
	rec := model.Record{Src: podHere, Dst: outside, Proto: model.ProtoUDP, DstPort: 53, SrcIf: veth}
	for range 3 {
		in <- model.Batch{End: time.Now(), Records: []model.Record{rec}}
	}
	close(in)
	if err := <-done; err != nil {
		t.Errorf("Run() = %v after its input closed, want nil", err)
	}
	if len(api.batches) != 3 {
		t.Errorf("API got %d batches, want 3", len(api.batches))
	}

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := p.Run(ctx, make(chan model.Batch)); err != context.Canceled {
		t.Errorf("Run() = %v after ctx is done, want %v", err, context.Canceled)
	}
}

// TestNewNode checks that the node given names the host the fallback
// namer names, and that a named end on the host's address is the host.
func TestNewNode(t *testing.T) {
	p := New(Options{Node: "n7", Routes: routes, Addrs: addrs})
	f := p.namer(&model.Record{Src: hostAddr, Dst: netip.MustParseAddr("192.0.2.99")})
	if f.SrcEndpoint.Kind != model.KindHost || f.SrcEndpoint.Name != "n7" {
		t.Errorf("fallback namer's source = %s %q, want host n7", f.SrcEndpoint.Kind, f.SrcEndpoint.Name)
	}
}

// TestAddRefusesNamesOfOtherClients plays DNS answers seen going to a
// client that is not this node's (one outside, a pod on another node):
// they name nothing, and are counted; the answer to a pod here names.
func TestAddRefusesNamesOfOtherClients(t *testing.T) {
	end := time.Now()
	// An inventory's view: podHere on n1, podThere on n2, the rest outside.
	namer := func(r *model.Record) model.Flow {
		end := func(a netip.Addr) model.Endpoint {
			switch a {
			case podHere:
				return model.Endpoint{Kind: model.KindPod, ID: "here", Name: "here", Node: "n1"}
			case podThere:
				return model.Endpoint{Kind: model.KindPod, ID: "there", Name: "there", Node: "n2"}
			}
			return model.Endpoint{Kind: model.KindExternal, ID: a.String(), Name: a.String()}
		}
		return model.Flow{Record: *r, SrcEndpoint: end(r.Src), DstEndpoint: end(r.Dst)}
	}
	named := netip.MustParseAddr("203.0.113.20")
	forgedOutside := netip.MustParseAddr("203.0.113.21")
	forgedThere := netip.MustParseAddr("203.0.113.22")
	b := model.Batch{Start: end.Add(-5 * time.Second), End: end, Names: []model.Name{
		{Addr: named, Name: "api.example", TTL: time.Minute, Source: model.NameDNS, Client: podHere, Seen: end},
		{Addr: forgedOutside, Name: "s3.amazonaws.com", TTL: time.Minute, Source: model.NameDNS, Client: netip.MustParseAddr("198.51.100.1"), Seen: end},
		{Addr: forgedThere, Name: "s3.amazonaws.com", TTL: time.Minute, Source: model.NameDNS, Client: podThere, Seen: end},
		{Addr: forgedThere, Name: "s3.amazonaws.com", TTL: time.Minute, Source: model.NameDNS, Seen: end},
	}}
	p := New(Options{Node: "n1", Namer: namer, Routes: routes, Addrs: addrs})
	reg := prometheus.NewRegistry()
	reg.MustRegister(p.Collectors()...)
	p.Add(b)
	for _, tc := range []struct {
		addr   netip.Addr
		wantOK bool
	}{{named, true}, {forgedOutside, false}, {forgedThere, false}} {
		if _, ok := p.l7Names.Lookup(tc.addr, end); ok != tc.wantOK {
			t.Errorf("Lookup(%v) found %v, want %v", tc.addr, ok, tc.wantOK)
		}
	}
	if got, want := series(t, reg, "flowmap_names_refused_total"), []string{"reason=client_not_local"}; !slices.Equal(got, want) {
		t.Fatalf("flowmap_names_refused_total series = %q, want %q", got, want)
	}
	mfs, _ := reg.Gather()
	for _, mf := range mfs {
		if mf.GetName() == "flowmap_names_refused_total" {
			if got := mf.GetMetric()[0].GetCounter().GetValue(); got != 3 {
				t.Errorf("flowmap_names_refused_total = %v, want 3", got)
			}
		}
	}
}
