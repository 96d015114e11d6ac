package topology

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

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
	m.Add(
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
flowmap_dns_requests_total{dst="dns",node="n1",rcode="NOERROR",reporter="client",src="web"} 2
flowmap_dns_requests_total{dst="dns",node="n1",rcode="NXDOMAIN",reporter="client",src="web"} 1
# HELP flowmap_http_requests_total HTTP/1.x responses seen in the kernel, by edge and status class (1xx to 5xx).
# TYPE flowmap_http_requests_total counter
flowmap_http_requests_total{dst="api",node="n1",reporter="client",src="web",status_class="1xx"} 0
flowmap_http_requests_total{dst="api",node="n1",reporter="client",src="web",status_class="2xx"} 21
flowmap_http_requests_total{dst="api",node="n1",reporter="client",src="web",status_class="3xx"} 0
flowmap_http_requests_total{dst="api",node="n1",reporter="client",src="web",status_class="4xx"} 7
flowmap_http_requests_total{dst="api",node="n1",reporter="client",src="web",status_class="5xx"} 5
flowmap_http_requests_total{dst="web",node="n1",reporter="server",src="lb",status_class="1xx"} 0
flowmap_http_requests_total{dst="web",node="n1",reporter="server",src="lb",status_class="2xx"} 4
flowmap_http_requests_total{dst="web",node="n1",reporter="server",src="lb",status_class="3xx"} 0
flowmap_http_requests_total{dst="web",node="n1",reporter="server",src="lb",status_class="4xx"} 0
flowmap_http_requests_total{dst="web",node="n1",reporter="server",src="lb",status_class="5xx"} 0
`
	if err := testutil.CollectAndCompare(m, strings.NewReader(want), "flowmap_http_requests_total", "flowmap_dns_requests_total"); err != nil {
		t.Error(err)
	}
}
