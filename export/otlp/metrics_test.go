package otlp

import (
	"context"
	"encoding/json"
	"strconv"
	"testing"
	"time"

	"github.com/flowmap/flowmap/internal/collector"
	"github.com/flowmap/flowmap/model"
	"github.com/flowmap/flowmap/topology"
)

// otlpMetrics is the part of an OTLP JSON ExportMetricsServiceRequest the
// test reads.
type otlpMetrics struct {
	ResourceMetrics []struct {
		Resource struct {
			Attributes []struct {
				Key   string `json:"key"`
				Value struct {
					StringValue string `json:"stringValue"`
				} `json:"value"`
			} `json:"attributes"`
		} `json:"resource"`
		ScopeMetrics []struct {
			Metrics []struct {
				Name string `json:"name"`
				Unit string `json:"unit"`
				Sum  *struct {
					AggregationTemporality int         `json:"aggregationTemporality"`
					IsMonotonic            bool        `json:"isMonotonic"`
					DataPoints             []otlpPoint `json:"dataPoints"`
				} `json:"sum"`
				Histogram *struct {
					AggregationTemporality int         `json:"aggregationTemporality"`
					DataPoints             []otlpPoint `json:"dataPoints"`
				} `json:"histogram"`
			} `json:"metrics"`
		} `json:"scopeMetrics"`
	} `json:"resourceMetrics"`
}

type otlpPoint struct {
	Attributes []struct {
		Key   string `json:"key"`
		Value struct {
			StringValue string `json:"stringValue"`
		} `json:"value"`
	} `json:"attributes"`
	StartTimeUnixNano string    `json:"startTimeUnixNano"`
	TimeUnixNano      string    `json:"timeUnixNano"`
	AsInt             string    `json:"asInt"`
	Count             string    `json:"count"`
	BucketCounts      []string  `json:"bucketCounts"`
	ExplicitBounds    []float64 `json:"explicitBounds"`
}

func (p otlpPoint) attr(k string) string {
	for _, a := range p.Attributes {
		if a.Key == k {
			return a.Value.StringValue
		}
	}
	return ""
}

// TestMetricsCollector sends the edge series of a capped topology.Metrics
// to a real collector: cumulative monotonic sums with their series' start
// times, the overflow series past the cap, the RTT histogram with the
// series' buckets, and the agent's resource.
func TestMetricsCollector(t *testing.T) {
	c := collector.Start(t)
	ep := func(n string) model.Endpoint {
		return model.Endpoint{Kind: model.KindPod, ID: n, Name: n, Namespace: "shop"}
	}
	m := topology.NewMetrics(topology.MetricsOptions{Level: topology.LevelPod, MaxEdges: 2, Node: "n1",
		Ends: func(*model.Flow) topology.Ends { return topology.Ends{ClientHere: true} }})
	t0 := time.Date(2026, 12, 2, 9, 0, 0, 0, time.UTC)
	mk := func(dst string, proto model.Proto, port uint16, fwd uint64) model.Flow {
		var f model.Flow
		f.SrcEndpoint, f.DstEndpoint = ep("a"), ep(dst)
		f.Proto, f.SrcPort, f.DstPort = proto, 40000, port
		f.Forward = model.Direction{Bytes: fwd, Packets: 1, TCPFlags: model.FlagSYNOnly}
		f.Reverse = model.Direction{Bytes: 2 * fwd, Packets: 1, TCPFlags: model.FlagSYNACK}
		f.HandshakeRTT = 300 * time.Microsecond
		f.FirstSeen = t0.Add(-time.Second)
		return f
	}
	m.Add(t0, mk("b", model.ProtoTCP, 80, 1000), mk("c", model.ProtoUDP, 53, 70), mk("d", model.ProtoTCP, 443, 5))

	e, err := NewMetrics(t.Context(), Options{URL: "grpc://" + c.GRPC, Node: "n1"}, m, nil, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel() // Run sends once, as the agent stops
	if err := e.Run(ctx); err != nil {
		t.Fatalf("Run: %v", err)
	}
	c.Stop(t)
	lines := c.MetricsJSON(t)
	if len(lines) == 0 {
		t.Fatal("the collector wrote no metrics")
	}
	var req otlpMetrics
	if err := json.Unmarshal(lines[len(lines)-1], &req); err != nil {
		t.Fatal(err)
	}
	if len(req.ResourceMetrics) != 1 {
		t.Fatalf("%d resources, want 1", len(req.ResourceMetrics))
	}
	rm := req.ResourceMetrics[0]
	res := map[string]string{}
	for _, a := range rm.Resource.Attributes {
		res[a.Key] = a.Value.StringValue
	}
	if res["service.name"] != "flowmap" || res["k8s.node.name"] != "n1" {
		t.Errorf("resource = %v, want service.name flowmap and k8s.node.name n1", res)
	}
	start := strconv.FormatInt(t0.Add(-time.Second).UnixNano(), 10)
	seen := map[string]bool{}
	for _, sm := range rm.ScopeMetrics {
		for _, mt := range sm.Metrics {
			seen[mt.Name] = true
			switch mt.Name {
			case "flowmap.flow.bytes":
				if mt.Sum == nil || !mt.Sum.IsMonotonic || mt.Sum.AggregationTemporality != 2 || mt.Unit != "By" {
					t.Fatalf("flowmap.flow.bytes is not a cumulative monotonic sum in By: %+v", mt)
				}
				// Two edges and the overflow, each way.
				if n := len(mt.Sum.DataPoints); n != 6 {
					t.Errorf("flowmap.flow.bytes has %d points, want 6", n)
				}
				var overflow bool
				for _, p := range mt.Sum.DataPoints {
					if p.attr("dst") == "b" && p.attr("direction") == "reverse" {
						if p.AsInt != "2000" || p.StartTimeUnixNano != start || p.attr("proto") != "tcp" || p.attr("port") != "80" || p.attr("src_namespace") != "shop" {
							t.Errorf("a→b reverse point = %+v, want 2000 bytes since %s, tcp port 80", p, start)
						}
					}
					overflow = overflow || p.attr("dst") == "overflow"
				}
				if !overflow {
					t.Error("no overflow series past the cap of 2 edges")
				}
			case "flowmap.tcp.handshake_rtt":
				if mt.Histogram == nil || mt.Histogram.AggregationTemporality != 2 || len(mt.Histogram.DataPoints) == 0 {
					t.Fatalf("flowmap.tcp.handshake_rtt is not a cumulative histogram: %+v", mt)
				}
				p := mt.Histogram.DataPoints[0]
				if len(p.ExplicitBounds) != len(topology.RTTBuckets) || len(p.BucketCounts) != len(topology.RTTBuckets)+1 || p.Count != "1" {
					t.Errorf("RTT point has %d bounds, %d buckets, count %s; want %d, %d, 1", len(p.ExplicitBounds), len(p.BucketCounts), p.Count,
						len(topology.RTTBuckets), len(topology.RTTBuckets)+1)
				}
			}
		}
	}
	for _, n := range []string{"flowmap.flow.bytes", "flowmap.flow.packets", "flowmap.tcp.connections", "flowmap.tcp.handshake_rtt"} {
		if !seen[n] {
			t.Errorf("metric %s not received", n)
		}
	}
}

// TestL7MetricsCollector sends the L7 series of a capped
// topology.L7Metrics to a real collector alongside the edge series: the
// HTTP requests by status class and the DNS requests by rcode as
// cumulative sums from their series' start, the overflow series past the
// cap, and the latency histograms with the Prometheus histograms' bounds.
func TestL7MetricsCollector(t *testing.T) {
	c := collector.Start(t)
	ep := func(n string) model.Endpoint { return model.Endpoint{Kind: model.KindContainer, ID: n, Name: n} }
	l7 := topology.NewL7Metrics(topology.MetricsOptions{Level: topology.LevelContainer, MaxEdges: 1, Node: "n1",
		Ends: func(*model.Flow) topology.Ends { return topology.Ends{ClientHere: true} }})
	t0 := time.Date(2026, 12, 2, 9, 0, 0, 0, time.UTC)
	http := &model.L7{Protocol: model.L7HTTP}
	http.Methods[model.MethodGET], http.Statuses[2], http.Statuses[5] = 4, 3, 1
	http.Latency.Counts[20], http.Latency.Counts[30] = 3, 1
	http.Latency.Sum = 5 * time.Millisecond
	dns := &model.L7{Protocol: model.L7DNS, Queries: 1}
	dns.Rcodes[3] = 1
	dns.Latency.Counts[10] = 1
	l7.Add(t0,
		model.Flow{Record: model.Record{Proto: model.ProtoTCP, DstPort: 80, L7: http}, SrcEndpoint: ep("web"), DstEndpoint: ep("api")},
		model.Flow{Record: model.Record{Proto: model.ProtoUDP, DstPort: 53, L7: dns}, SrcEndpoint: ep("web"), DstEndpoint: ep("dns")})
	edges := topology.NewMetrics(topology.MetricsOptions{Level: topology.LevelContainer})

	e, err := NewMetrics(t.Context(), Options{URL: "grpc://" + c.GRPC, Node: "n1"}, edges, l7, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := e.Run(ctx); err != nil {
		t.Fatalf("Run: %v", err)
	}
	c.Stop(t)
	lines := c.MetricsJSON(t)
	if len(lines) == 0 {
		t.Fatal("the collector wrote no metrics")
	}
	var req otlpMetrics
	if err := json.Unmarshal(lines[len(lines)-1], &req); err != nil {
		t.Fatal(err)
	}
	start := strconv.FormatInt(t0.UnixNano(), 10)
	got := map[string]string{}
	var hist otlpPoint
	for _, rm := range req.ResourceMetrics {
		for _, sm := range rm.ScopeMetrics {
			for _, mt := range sm.Metrics {
				switch {
				case mt.Sum != nil:
					if !mt.Sum.IsMonotonic || mt.Sum.AggregationTemporality != 2 {
						t.Errorf("%s is not a cumulative monotonic sum", mt.Name)
					}
					for _, p := range mt.Sum.DataPoints {
						if p.StartTimeUnixNano != start {
							t.Errorf("%s point %+v starts at %s, want %s", mt.Name, p, p.StartTimeUnixNano, start)
						}
						got[mt.Name+" "+p.attr("src")+">"+p.attr("dst")+" "+p.attr("status_class")+p.attr("rcode")] = p.AsInt
					}
				case mt.Histogram != nil:
					if mt.Unit != "s" || mt.Histogram.AggregationTemporality != 2 {
						t.Errorf("%s is not a cumulative histogram in s", mt.Name)
					}
					for _, p := range mt.Histogram.DataPoints {
						got[mt.Name+" "+p.attr("src")+">"+p.attr("dst")] = p.Count
						if mt.Name == "flowmap.http.request.duration" {
							hist = p
						}
					}
				}
			}
		}
	}
	want := map[string]string{
		"flowmap.http.requests web>api 1xx":               "0",
		"flowmap.http.requests web>api 2xx":               "3",
		"flowmap.http.requests web>api 3xx":               "0",
		"flowmap.http.requests web>api 4xx":               "0",
		"flowmap.http.requests web>api 5xx":               "1",
		"flowmap.http.request.duration web>api":           "4",
		"flowmap.dns.requests overflow>overflow NXDOMAIN": "1",
		"flowmap.dns.request.duration overflow>overflow":  "1",
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %q, want %q", k, got[k], v)
		}
	}
	for k := range got {
		if _, ok := want[k]; !ok {
			t.Errorf("unexpected point %s = %s", k, got[k])
		}
	}
	bounds, counts := topology.L7Buckets(&http.Latency)
	if len(hist.ExplicitBounds) != len(bounds) || len(hist.BucketCounts) != len(counts) {
		t.Fatalf("HTTP duration point has %d bounds, %d buckets; want %d, %d", len(hist.ExplicitBounds), len(hist.BucketCounts), len(bounds), len(counts))
	}
	for i, c := range counts {
		if hist.BucketCounts[i] != strconv.FormatUint(c, 10) {
			t.Errorf("HTTP duration bucket %d = %s, want %d", i, hist.BucketCounts[i], c)
		}
	}
}
