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

// DefaultMetricsInterval is how often Metrics sends the edge series.
const DefaultMetricsInterval = 30 * time.Second

// Metrics sends the edge series (the flow series of /metrics, with their
// cap) as OTLP metrics through the SDK's periodic reader: cumulative sums
// flowmap.flow.bytes, flowmap.flow.packets and flowmap.tcp.connections, each
// point with its series' start time, and the histogram
// flowmap.tcp.handshake_rtt. Their attributes are the Prometheus labels
// (src_kind, src_namespace, src, dst_kind, dst_namespace, dst, proto, port,
// reporter, direction), so that a collector's Prometheus exporter makes the
// same series; the node is the resource's k8s.node.name. The series being
// cumulative, an export the collector misses is made good by the next:
// they need no queue, and the SDK's own retries are on.
type Metrics struct {
	provider *sdkmetric.MeterProvider
}

// NewMetrics returns an exporter of the edges' series to opts.URL every
// interval (0: DefaultMetricsInterval). Close sends them a last time.
func NewMetrics(ctx context.Context, opts Options, edges Edges, interval time.Duration) (*Metrics, error) {
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
	r := sdkmetric.NewPeriodicReader(exp, sdkmetric.WithInterval(interval), sdkmetric.WithProducer(producer{edges}))
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
type producer struct{ edges Edges }

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
	sum := func(name, desc, unit string, dps []metricdata.DataPoint[int64]) metricdata.Metrics {
		return metricdata.Metrics{Name: name, Description: desc, Unit: unit,
			Data: metricdata.Sum[int64]{Temporality: metricdata.CumulativeTemporality, IsMonotonic: true, DataPoints: dps}}
	}
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
		return nil, nil
	}
	return []metricdata.ScopeMetrics{{Scope: instrumentation.Scope{Name: ScopeName}, Metrics: ms}}, nil
}
