package otlp

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetricgrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetrichttp"
	"go.opentelemetry.io/otel/sdk/instrumentation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/flowmap/flowmap/model"
	"github.com/flowmap/flowmap/topology"
)

// Edges hands out the edge series: topology.Metrics.
type Edges interface {
	Each(fn func(e *topology.EdgeSeries))
}

// L7Edges hands out the L7 series: topology.L7Metrics.
type L7Edges interface {
	Each(fn func(s *topology.L7Series))
}

// DefaultMetricsInterval is how often Metrics sends the edge series.
const DefaultMetricsInterval = 30 * time.Second

// Metrics sends the edge series (the flow series of /metrics, with their
// cap) as OTLP metrics through the SDK's periodic reader: cumulative sums
// flowmap.flow.bytes, flowmap.flow.packets and flowmap.tcp.connections, each
// point with its series' start time, and the histogram
// flowmap.tcp.handshake_rtt. Their attributes are the Prometheus labels
// (src_kind, src_namespace, src, dst_kind, dst_namespace, dst, proto, port,
// reporter, direction), so that a collector's Prometheus exporter makes the
// same series; the node is the resource's k8s.node.name. The L7 series
// (flowmap_http_requests_total and the rest, with their cap) go alongside:
// cumulative sums flowmap.http.requests (status_class) and
// flowmap.dns.requests (rcode), histograms flowmap.http.request.duration
// and flowmap.dns.request.duration in seconds with the Prometheus
// histograms' bounds, attributes the edge's and reporter. The series being
// cumulative, an export the collector misses is made good by the next:
// they need no queue, and the SDK's own retries are on.
type Metrics struct {
	provider *sdkmetric.MeterProvider
}

// NewMetrics returns an exporter of the edges' series, and of the L7
// series l7 if not nil, to opts.URL every interval (0:
// DefaultMetricsInterval). Run sends them a last time as it ends.
func NewMetrics(ctx context.Context, opts Options, edges Edges, l7 L7Edges, interval time.Duration) (*Metrics, error) {
	ep, err := parseURL(opts.URL)
	if err != nil {
		return nil, err
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 10 * time.Second
	}
	if interval <= 0 {
		interval = DefaultMetricsInterval
	}
	gz, err := gzip(opts.Compression)
	if err != nil {
		return nil, err
	}
	var exp sdkmetric.Exporter
	if ep.grpc {
		o := []otlpmetricgrpc.Option{otlpmetricgrpc.WithEndpoint(ep.host), otlpmetricgrpc.WithTimeout(opts.Timeout)}
		if !ep.secure {
			o = append(o, otlpmetricgrpc.WithInsecure())
		}
		if gz {
			o = append(o, otlpmetricgrpc.WithCompressor("gzip"))
		}
		exp, err = otlpmetricgrpc.New(ctx, o...)
	} else {
		o := []otlpmetrichttp.Option{otlpmetrichttp.WithEndpointURL(ep.base + "/v1/metrics"), otlpmetrichttp.WithTimeout(opts.Timeout)}
		if gz {
			o = append(o, otlpmetrichttp.WithCompression(otlpmetrichttp.GzipCompression))
		}
		exp, err = otlpmetrichttp.New(ctx, o...)
	}
	if err != nil {
		return nil, fmt.Errorf("make otlp metric exporter for %s: %w", opts.URL, err)
	}
	r := sdkmetric.NewPeriodicReader(exp, sdkmetric.WithInterval(interval), sdkmetric.WithProducer(producer{edges, l7}))
	return &Metrics{provider: sdkmetric.NewMeterProvider(sdkmetric.WithResource(Resource(opts.Node)), sdkmetric.WithReader(r))}, nil
}

// Run sends the series every interval until ctx is done, then once more.
func (m *Metrics) Run(ctx context.Context) error {
	<-ctx.Done()
	stop, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := m.provider.Shutdown(stop); err != nil {
		return fmt.Errorf("send the edge series a last time: %w", err)
	}
	return nil
}

// producer turns the edge series into the SDK's metric data.
type producer struct {
	edges Edges
	l7    L7Edges
}

func (p producer) Produce(context.Context) ([]metricdata.ScopeMetrics, error) {
	now := time.Now()
	var bytes, packets, conns []metricdata.DataPoint[int64]
	var rtt []metricdata.HistogramDataPoint[float64]
	p.edges.Each(func(e *topology.EdgeSeries) {
		proto, port := e.Proto.String(), strconv.Itoa(int(e.Port))
		if e.Overflow {
			proto, port = "overflow", "overflow"
		}
		attrs := []attribute.KeyValue{
			attribute.String("src_kind", e.SrcKind), attribute.String("src_namespace", e.SrcNamespace), attribute.String("src", e.Src),
			attribute.String("dst_kind", e.DstKind), attribute.String("dst_namespace", e.DstNamespace), attribute.String("dst", e.Dst),
			attribute.String("proto", proto), attribute.String("port", port), attribute.String("reporter", e.Reporter),
		}
		set := attribute.NewSet(attrs...)
		for i, dir := range []string{"forward", "reverse"} {
			d := attribute.NewSet(append(attrs, attribute.String("direction", dir))...)
			bytes = append(bytes, metricdata.DataPoint[int64]{Attributes: d, StartTime: e.Start, Time: now, Value: int64(e.Bytes[i])})
			packets = append(packets, metricdata.DataPoint[int64]{Attributes: d, StartTime: e.Start, Time: now, Value: int64(e.Packets[i])})
		}
		if e.Proto != model.ProtoTCP && !e.Overflow {
			return
		}
		conns = append(conns, metricdata.DataPoint[int64]{Attributes: set, StartTime: e.Start, Time: now, Value: int64(e.Connections)})
		rtt = append(rtt, metricdata.HistogramDataPoint[float64]{Attributes: set, StartTime: e.Start, Time: now,
			Count: e.RTTCount, Sum: e.RTTSum, Bounds: topology.RTTBuckets, BucketCounts: append([]uint64(nil), e.RTTCounts...)})
	})
	ms := []metricdata.Metrics{
		sum("flowmap.flow.bytes", "Wire bytes of the flows from src (the client) to dst (the server) on the server's port, by direction.", "By", bytes),
		sum("flowmap.flow.packets", "Packets of the flows from src to dst on the server's port, by direction.", "{packet}", packets),
	}
	if len(conns) > 0 {
		ms = append(ms,
			sum("flowmap.tcp.connections", "TCP connections src opened to dst (SYNs seen).", "{connection}", conns),
			metricdata.Metrics{Name: "flowmap.tcp.handshake_rtt", Description: "Round-trip time of TCP handshakes from src to dst, SYN to SYN-ACK.", Unit: "s",
				Data: metricdata.Histogram[float64]{Temporality: metricdata.CumulativeTemporality, DataPoints: rtt}})
	}
	if len(bytes) == 0 {
		ms = nil
	}
	if p.l7 != nil {
		ms = append(ms, l7Metrics(p.l7, now)...)
	}
	if len(ms) == 0 {
		return nil, nil
	}
	return []metricdata.ScopeMetrics{{Scope: instrumentation.Scope{Name: ScopeName}, Metrics: ms}}, nil
}

// l7Metrics returns the L7 series of l7 at now.
func l7Metrics(l7 L7Edges, now time.Time) []metricdata.Metrics {
	var httpReqs, dnsReqs []metricdata.DataPoint[int64]
	var httpDur, dnsDur []metricdata.HistogramDataPoint[float64]
	l7.Each(func(s *topology.L7Series) {
		attrs := []attribute.KeyValue{
			attribute.String("src_kind", s.SrcKind), attribute.String("src_namespace", s.SrcNamespace), attribute.String("src", s.Src),
			attribute.String("dst_kind", s.DstKind), attribute.String("dst_namespace", s.DstNamespace), attribute.String("dst", s.Dst),
			attribute.String("reporter", s.Reporter),
		}
		point := func(k, v string, n uint64) metricdata.DataPoint[int64] {
			return metricdata.DataPoint[int64]{Attributes: attribute.NewSet(append(attrs, attribute.String(k, v))...),
				StartTime: s.Start, Time: now, Value: int64(n)}
		}
		bounds, counts := topology.L7Buckets(&s.L7.Latency)
		dur := metricdata.HistogramDataPoint[float64]{Attributes: attribute.NewSet(attrs...), StartTime: s.Start, Time: now,
			Count: s.L7.Latency.Count(), Sum: s.L7.Latency.Sum.Seconds(), Bounds: bounds, BucketCounts: counts}
		switch s.L7.Protocol {
		case model.L7HTTP:
			for c := 1; c <= 5; c++ {
				httpReqs = append(httpReqs, point("status_class", strconv.Itoa(c)+"xx", s.L7.Statuses[c]))
			}
			httpDur = append(httpDur, dur)
		case model.L7DNS:
			for c := range model.NumRcodes {
				if s.L7.Rcodes[c] > 0 {
					dnsReqs = append(dnsReqs, point("rcode", model.RcodeName(c), s.L7.Rcodes[c]))
				}
			}
			dnsDur = append(dnsDur, dur)
		}
	})
	var ms []metricdata.Metrics
	hist := func(name, desc string, dps []metricdata.HistogramDataPoint[float64]) metricdata.Metrics {
		return metricdata.Metrics{Name: name, Description: desc, Unit: "s",
			Data: metricdata.Histogram[float64]{Temporality: metricdata.CumulativeTemporality, DataPoints: dps}}
	}
	if len(httpDur) > 0 {
		ms = append(ms, sum("flowmap.http.requests", "HTTP/1.x responses seen in the kernel, by edge and status class (1xx to 5xx).", "{request}", httpReqs),
			hist("flowmap.http.request.duration", "HTTP/1.x time from a request's first byte to its response's, as the host saw them.", httpDur))
	}
	if len(dnsDur) > 0 {
		ms = append(ms, sum("flowmap.dns.requests", "DNS responses seen in the kernel, by edge and response code.", "{request}", dnsReqs),
			hist("flowmap.dns.request.duration", "DNS time from a query to its response, as the host saw them.", dnsDur))
	}
	return ms
}

// sum is a cumulative monotonic sum.
func sum(name, desc, unit string, dps []metricdata.DataPoint[int64]) metricdata.Metrics {
	return metricdata.Metrics{Name: name, Description: desc, Unit: unit,
		Data: metricdata.Sum[int64]{Temporality: metricdata.CumulativeTemporality, IsMonotonic: true, DataPoints: dps}}
}
