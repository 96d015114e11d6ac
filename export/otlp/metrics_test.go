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

	e, err := NewMetrics(t.Context(), Options{URL: "grpc://" + c.GRPC, Node: "n1"}, m, time.Hour)
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
