package topology

import (
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	"github.com/flowmap/flowmap/model"
)

func TestL7Metrics(t *testing.T) {
	ep := func(name string) model.Endpoint {
		return model.Endpoint{Kind: model.KindContainer, ID: name, Name: name}
	}
	httpFlow := func(client, server string, clientHere bool, ok, notFound, failed uint64) model.Flow {
		l := &model.L7{Protocol: model.L7HTTP}
		l.Methods[0] = ok + notFound + failed
		l.Statuses[2], l.Statuses[4], l.Statuses[5] = ok, notFound, failed
		f := model.Flow{Record: model.Record{Proto: model.ProtoTCP, DstPort: 80, L7: l},
			SrcEndpoint: ep(client), DstEndpoint: ep(server)}
		if clientHere {
			f.SrcIf = model.Interface{Index: 7, Name: "veth7"}
		}
		return f
	}
	dns := &model.L7{Protocol: model.L7DNS, Queries: 3}
	dns.Rcodes[0], dns.Rcodes[3] = 2, 1
	// "elsewhere" is a client on another node: neither end runs here.
	ends := func(f *model.Flow) Ends {
		if f.SrcEndpoint.Name == "elsewhere" {
			return Ends{ServerHere: true, ClientElsewhere: true}
		}
		return defaultEnds(f)
	}
	m := NewL7Metrics(MetricsOptions{Level: LevelContainer, Node: "n1", Ends: ends})
	m.Add(t0,
		httpFlow("web", "api", true, 20, 7, 5),
		httpFlow("web", "api", true, 1, 0, 0), // adds up
		httpFlow("lb", "web", false, 4, 0, 0), // server's node reports
		httpFlow("elsewhere", "web", false, 9, 9, 9),
		model.Flow{Record: model.Record{Proto: model.ProtoUDP, DstPort: 53, L7: dns, SrcIf: model.Interface{Index: 7}},
			SrcEndpoint: ep("web"), DstEndpoint: ep("dns")},
		model.Flow{Record: model.Record{Proto: model.ProtoTCP, DstPort: 22}, SrcEndpoint: ep("a"), DstEndpoint: ep("b")}, // no L7
	)
	want := `
# HELP flowmap_dns_requests_total DNS responses seen in the kernel, by edge and response code.
# TYPE flowmap_dns_requests_total counter
flowmap_dns_requests_total{dst="dns",dst_kind="container",dst_namespace="",node="n1",rcode="NOERROR",reporter="client",src="web",src_kind="container",src_namespace=""} 2
flowmap_dns_requests_total{dst="dns",dst_kind="container",dst_namespace="",node="n1",rcode="NXDOMAIN",reporter="client",src="web",src_kind="container",src_namespace=""} 1
# HELP flowmap_http_requests_total HTTP/1.x responses seen in the kernel, by edge and status class (1xx to 5xx).
# TYPE flowmap_http_requests_total counter
flowmap_http_requests_total{dst="api",dst_kind="container",dst_namespace="",node="n1",reporter="client",src="web",src_kind="container",src_namespace="",status_class="1xx"} 0
flowmap_http_requests_total{dst="api",dst_kind="container",dst_namespace="",node="n1",reporter="client",src="web",src_kind="container",src_namespace="",status_class="2xx"} 21
flowmap_http_requests_total{dst="api",dst_kind="container",dst_namespace="",node="n1",reporter="client",src="web",src_kind="container",src_namespace="",status_class="3xx"} 0
flowmap_http_requests_total{dst="api",dst_kind="container",dst_namespace="",node="n1",reporter="client",src="web",src_kind="container",src_namespace="",status_class="4xx"} 7
flowmap_http_requests_total{dst="api",dst_kind="container",dst_namespace="",node="n1",reporter="client",src="web",src_kind="container",src_namespace="",status_class="5xx"} 5
flowmap_http_requests_total{dst="web",dst_kind="container",dst_namespace="",node="n1",reporter="server",src="lb",src_kind="container",src_namespace="",status_class="1xx"} 0
flowmap_http_requests_total{dst="web",dst_kind="container",dst_namespace="",node="n1",reporter="server",src="lb",src_kind="container",src_namespace="",status_class="2xx"} 4
flowmap_http_requests_total{dst="web",dst_kind="container",dst_namespace="",node="n1",reporter="server",src="lb",src_kind="container",src_namespace="",status_class="3xx"} 0
flowmap_http_requests_total{dst="web",dst_kind="container",dst_namespace="",node="n1",reporter="server",src="lb",src_kind="container",src_namespace="",status_class="4xx"} 0
flowmap_http_requests_total{dst="web",dst_kind="container",dst_namespace="",node="n1",reporter="server",src="lb",src_kind="container",src_namespace="",status_class="5xx"} 0
`
	if err := testutil.CollectAndCompare(m, strings.NewReader(want), "flowmap_http_requests_total", "flowmap_dns_requests_total"); err != nil {
		t.Error(err)
	}
}

// l7Series returns the label sets of the flowmap_http_requests_total
// series of class 2xx that m collects, each as its labels joined.
func l7Series(t *testing.T, m *L7Metrics) []string {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(m)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, mf := range mfs {
		if mf.GetName() != "flowmap_http_requests_total" {
			continue
		}
		for _, mt := range mf.Metric {
			var ls []string
			class := ""
			for _, lp := range mt.Label {
				if lp.GetName() == "status_class" {
					class = lp.GetValue()
					continue
				}
				ls = append(ls, lp.GetName()+"="+lp.GetValue())
			}
			if class == "2xx" {
				out = append(out, strings.Join(ls, ","))
			}
		}
	}
	return sorted(out)
}

// httpOKFlow is an HTTP flow of n 200s from client to server, reported by
// the client's node.
func httpOKFlow(client, server model.Endpoint, n uint64) model.Flow {
	l := &model.L7{Protocol: model.L7HTTP}
	l.Methods[model.MethodGET], l.Statuses[2] = n, n
	return model.Flow{Record: model.Record{Proto: model.ProtoTCP, DstPort: 80, L7: l, SrcIf: model.Interface{Index: 7}},
		SrcEndpoint: client, DstEndpoint: server}
}

// TestL7MetricsNamespaces checks that two workloads of one name in two
// namespaces are two ends of the L7 series, as of the flow series.
func TestL7MetricsNamespaces(t *testing.T) {
	web := container("web-1", "shop", "web", "n1", "198.51.100.11")
	shopAPI := container("api-1", "shop", "api", "n1", "198.51.100.13")
	billingAPI := container("api-2", "billing", "api", "n1", "198.51.100.16")
	m := NewL7Metrics(MetricsOptions{Level: LevelWorkload, Node: "n1"})
	m.Add(t0, httpOKFlow(web, shopAPI, 3), httpOKFlow(web, billingAPI, 5))
	got := l7Series(t, m)
	want := []string{
		"dst=api,dst_kind=workload,dst_namespace=billing,node=n1,reporter=client,src=web,src_kind=workload,src_namespace=shop",
		"dst=api,dst_kind=workload,dst_namespace=shop,node=n1,reporter=client,src=web,src_kind=workload,src_namespace=shop",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("2xx series:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// TestL7MetricsIdle checks that the edges idle for longer than Idle leave
// the L7 series, and make room under MaxEdges for new ones.
func TestL7MetricsIdle(t *testing.T) {
	ep := func(name string) model.Endpoint {
		return model.Endpoint{Kind: model.KindContainer, ID: name, Name: name}
	}
	m := NewL7Metrics(MetricsOptions{Level: LevelContainer, Node: "n1", MaxEdges: 2, Idle: 5 * time.Minute})
	m.Add(t0, httpOKFlow(ep("a"), ep("b"), 1), httpOKFlow(ep("a"), ep("c"), 1))
	m.Add(t0.Add(10*time.Minute), httpOKFlow(ep("a"), ep("d"), 1))
	got := l7Series(t, m)
	want := []string{"dst=d,dst_kind=container,dst_namespace=,node=n1,reporter=client,src=a,src_kind=container,src_namespace="}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("2xx series after the first two edges' idle time:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// TestL7MetricsEach: Each hands out the HTTP and DNS series that Collect
// exports, the overflow series past the cap, each with the time it began
// counting; L7Buckets are the buckets of the exported histogram.
func TestL7MetricsEach(t *testing.T) {
	ep := func(name string) model.Endpoint {
		return model.Endpoint{Kind: model.KindContainer, ID: name, Name: name}
	}
	m := NewL7Metrics(MetricsOptions{Level: LevelContainer, MaxEdges: 1})
	m.Add(t0, httpOKFlow(ep("web"), ep("api"), 3))
	dns := &model.L7{Protocol: model.L7DNS, Queries: 1}
	dns.Rcodes[3] = 1
	t1 := t0.Add(time.Minute)
	m.Add(t1, httpOKFlow(ep("web"), ep("api"), 2), httpOKFlow(ep("web"), ep("db"), 1),
		model.Flow{Record: model.Record{Proto: model.ProtoUDP, DstPort: 53, L7: dns, SrcIf: model.Interface{Index: 7}},
			SrcEndpoint: ep("web"), DstEndpoint: ep("dns")})
	type row struct {
		src, dst, proto string
		overflow        bool
		start           time.Time
		count           uint64
	}
	var got []row
	m.Each(func(s *L7Series) {
		n := s.L7.Statuses[2] + s.L7.Rcodes[3]
		got = append(got, row{s.Src, s.Dst, s.L7.Protocol.String(), s.Overflow, s.Start, n})
	})
	want := []row{
		{"web", "api", "http", false, t0, 5},
		{"overflow", "overflow", "http", true, t1, 1},
		{"overflow", "overflow", "dns", true, t1, 1},
	}
	if len(got) != len(want) {
		t.Fatalf("Each gave %+v, want %+v", got, want)
	}
	for _, w := range want {
		found := false
		for _, g := range got {
			found = found || g == w
		}
		if !found {
			t.Errorf("Each gave %+v, want among them %+v", got, w)
		}
	}

	var h model.Histogram
	h.Counts[0], h.Counts[16], h.Counts[17], h.Counts[40], h.Counts[model.LatencyBuckets-1] = 1, 2, 3, 4, 5
	bounds, counts := L7Buckets(&h)
	var pm dto.Metric
	if err := histogram(descHTTPDuration, &h, make([]string, len(l7Labels))...).Write(&pm); err != nil {
		t.Fatal(err)
	}
	pb := pm.GetHistogram().GetBucket()
	if len(bounds) != len(pb) || len(counts) != len(pb)+1 {
		t.Fatalf("L7Buckets: %d bounds, %d counts; want the %d of the Prometheus histogram, and one more", len(bounds), len(counts), len(pb))
	}
	var cum uint64
	for i, b := range pb {
		cum += counts[i]
		if bounds[i] != b.GetUpperBound() || cum != b.GetCumulativeCount() {
			t.Errorf("bucket %d: bound %v, %d samples up to it; want %v, %d", i, bounds[i], cum, b.GetUpperBound(), b.GetCumulativeCount())
		}
	}
	if cum+counts[len(pb)] != h.Count() {
		t.Errorf("L7Buckets count %d samples, want %d", cum+counts[len(pb)], h.Count())
	}
}
