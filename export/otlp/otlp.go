// Package otlp exports flows to an OpenTelemetry Collector (or any OTLP
// receiver) over gRPC or HTTP, with the OpenTelemetry Go SDK's exporters:
// each flow as a log record, the edge series as metrics.
//
// A flow's log record carries OpenTelemetry's semantic-convention
// attributes where they exist (source.address, destination.port,
// network.transport, network.type, network.protocol.name) and flowmap's
// own under flowmap.: the counts of each direction, TCP flags, the
// handshake RTT, L7 counts, the sampling rate. The convention's resource
// attributes (k8s.pod.name, k8s.namespace.name, container.id,
// cloud.availability_zone, …) each name one entity, and a flow has two: a
// flow's ends carry them under source. and destination., as the convention
// puts the addresses (source.k8s.pod.name, destination.container.id).
// The resource is the agent: service.name=flowmap, host.name and
// k8s.node.name.
package otlp

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"strings"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlplog/otlploggrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlplog/otlploghttp"
	"go.opentelemetry.io/otel/log"
	sdklog "go.opentelemetry.io/otel/sdk/log"
	"go.opentelemetry.io/otel/sdk/resource"

	"github.com/flowmap/flowmap/export"
	"github.com/flowmap/flowmap/model"
)

// Options configures an Exporter.
type Options struct {
	// URL is the collector's OTLP endpoint: grpc://HOST:PORT (plain),
	// grpcs://HOST:PORT (TLS), or http(s)://HOST:PORT[/PATH], to which
	// /v1/logs and /v1/metrics are added.
	URL string
	// Node is the name of the node the agent runs on (k8s.node.name).
	Node string
	// Timeout bounds each export request; the default is 10s.
	Timeout time.Duration
}

// ScopeName is the instrumentation scope of flowmap's records.
const ScopeName = "github.com/flowmap/flowmap/export/otlp"

// EventName is the event name of a flow's log record.
const EventName = "flowmap.flow"

// endpoint is a parsed Options.URL.
type endpoint struct {
	grpc   bool
	secure bool
	host   string // HOST:PORT
	base   string // http(s)://HOST:PORT/PATH without the signal's path
}

func parseURL(s string) (endpoint, error) {
	u, err := url.Parse(s)
	if err != nil {
		return endpoint{}, fmt.Errorf("parse otlp url %q: %w", s, err)
	}
	if u.Host == "" {
		return endpoint{}, fmt.Errorf("parse otlp url %q: want grpc://HOST:PORT, grpcs://HOST:PORT or http(s)://HOST:PORT", s)
	}
	switch u.Scheme {
	case "grpc", "grpcs":
		if u.Path != "" && u.Path != "/" {
			return endpoint{}, fmt.Errorf("parse otlp url %q: a gRPC endpoint has no path", s)
		}
		return endpoint{grpc: true, secure: u.Scheme == "grpcs", host: u.Host}, nil
	case "http", "https":
		return endpoint{secure: u.Scheme == "https", host: u.Host, base: strings.TrimSuffix(s, "/")}, nil
	}
	return endpoint{}, fmt.Errorf("parse otlp url %q: scheme %q: want grpc, grpcs, http or https", s, u.Scheme)
}

// CheckURL returns the error New would return for the endpoint url.
func CheckURL(url string) error {
	_, err := parseURL(url)
	return err
}

// Resource returns the agent's resource: service.name=flowmap, host.name
// and k8s.node.name.
func Resource(node string) *resource.Resource {
	host, _ := os.Hostname()
	attrs := []attribute.KeyValue{attribute.String("service.name", "flowmap"), attribute.String("host.name", host)}
	if node != "" {
		attrs = append(attrs, attribute.String("k8s.node.name", node))
	}
	return resource.NewSchemaless(attrs...)
}

// Exporter sends flows as OTLP log records. It is an export.Exporter:
// the queue in front of it retries, so the SDK exporter's own retries are
// off and each Export is one request (or several of at most
// maxRequestRecords records).
type Exporter struct {
	exp      sdklog.Exporter
	provider *sdklog.LoggerProvider
	// template is a record the SDK's logger made, with the resource and
	// scope, which each flow's record copies.
	template sdklog.Record
	recs     []sdklog.Record
	attrs    []attribute.KeyValue
}

// collect is the processor that keeps the records the logger emits.
type collect struct{ recs []sdklog.Record }

func (c *collect) OnEmit(_ context.Context, r *sdklog.Record) error {
	c.recs = append(c.recs, r.Clone())
	return nil
}
func (c *collect) Enabled(context.Context, sdklog.EnabledParameters) bool { return true }
func (c *collect) Shutdown(context.Context) error                         { return nil }
func (c *collect) ForceFlush(context.Context) error                       { return nil }

// New returns an exporter of flow records to opts.URL. It connects lazily:
// a collector that is not up yet is not an error here.
func New(ctx context.Context, opts Options) (*Exporter, error) {
	ep, err := parseURL(opts.URL)
	if err != nil {
		return nil, err
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 10 * time.Second
	}
	var exp sdklog.Exporter
	if ep.grpc {
		o := []otlploggrpc.Option{otlploggrpc.WithEndpoint(ep.host), otlploggrpc.WithTimeout(opts.Timeout),
			otlploggrpc.WithRetry(otlploggrpc.RetryConfig{Enabled: false})}
		if !ep.secure {
			o = append(o, otlploggrpc.WithInsecure())
		}
		exp, err = otlploggrpc.New(ctx, o...)
	} else {
		exp, err = otlploghttp.New(ctx, otlploghttp.WithEndpointURL(ep.base+"/v1/logs"), otlploghttp.WithTimeout(opts.Timeout),
			otlploghttp.WithRetry(otlploghttp.RetryConfig{Enabled: false}))
	}
	if err != nil {
		return nil, fmt.Errorf("make otlp log exporter for %s: %w", opts.URL, err)
	}
	c := &collect{}
	p := sdklog.NewLoggerProvider(sdklog.WithResource(Resource(opts.Node)), sdklog.WithProcessor(c),
		// appendAttrs writes each key once: the SDK's check for duplicates
		// costs more than the rest of the export.
		sdklog.WithAttributeCountLimit(-1), sdklog.WithAllowKeyDuplication())
	// The logger's Emit adds a record's attributes one by one, which costs
	// ten times the rest of the export: it makes one record, and each flow's
	// is a copy of it with its attributes set at once.
	var tmpl log.Record
	tmpl.SetEventName(EventName)
	tmpl.SetSeverity(log.SeverityInfo)
	p.Logger(ScopeName).Emit(ctx, tmpl)
	return &Exporter{exp: exp, provider: p, template: c.recs[0]}, nil
}

// Export implements export.Exporter. Its calls are not to overlap.
func (e *Exporter) Export(ctx context.Context, b export.Batch) error {
	now := time.Now()
	e.recs = e.recs[:0]
	for i := range b.Flows {
		f := &b.Flows[i]
		r := e.template
		r.SetTimestamp(f.LastSeen)
		r.SetObservedTimestamp(now)
		e.attrs = appendAttrs(e.attrs[:0], f, b.SampleRate)
		r.SetAttributes(e.attrs...)
		e.recs = append(e.recs, r)
	}
	if err := e.exp.Export(ctx, e.recs); err != nil {
		return fmt.Errorf("export %d flow records over otlp: %w", len(e.recs), err)
	}
	return nil
}

// Close shuts the exporter down.
func (e *Exporter) Close(ctx context.Context) error {
	e.provider.Shutdown(ctx)
	return e.exp.Shutdown(ctx)
}

func transport(p model.Proto) string {
	switch p {
	case model.ProtoTCP:
		return "tcp"
	case model.ProtoUDP:
		return "udp"
	}
	return p.String()
}

// appendAttrs appends a flow's attributes.
func appendAttrs(a []attribute.KeyValue, f *model.Flow, rate uint32) []attribute.KeyValue {
	netType := "ipv4"
	if !f.Src.Unmap().Is4() {
		netType = "ipv6"
	}
	a = append(a,
		attribute.String("source.address", f.Src.Unmap().String()),
		attribute.String("destination.address", f.Dst.Unmap().String()),
		attribute.String("network.transport", transport(f.Proto)),
		attribute.String("network.type", netType),
		attribute.Int64("flowmap.forward.bytes", int64(f.Forward.Bytes)),
		attribute.Int64("flowmap.forward.packets", int64(f.Forward.Packets)),
		attribute.Int64("flowmap.reverse.bytes", int64(f.Reverse.Bytes)),
		attribute.Int64("flowmap.reverse.packets", int64(f.Reverse.Packets)),
		attribute.Int64("flowmap.sampling.rate", int64(max(rate, 1))),
		attribute.Int64("flowmap.flow.start_unix_nano", f.FirstSeen.UnixNano()),
		attribute.Int64("flowmap.flow.end_unix_nano", f.LastSeen.UnixNano()),
	)
	switch f.Proto {
	case model.ProtoICMP, model.ProtoICMPv6:
		a = append(a, attribute.Int("flowmap.icmp.type", int(f.SrcPort)), attribute.Int("flowmap.icmp.code", int(f.DstPort)))
	default:
		a = append(a, attribute.Int("source.port", int(f.SrcPort)), attribute.Int("destination.port", int(f.DstPort)))
	}
	if f.Proto == model.ProtoTCP {
		a = append(a,
			attribute.Int("flowmap.forward.tcp_flags", int(f.Forward.TCPFlags&0x1ff)),
			attribute.Int("flowmap.reverse.tcp_flags", int(f.Reverse.TCPFlags&0x1ff)),
			attribute.Int("flowmap.forward.retransmits", int(f.Forward.Retransmits)),
			attribute.Int("flowmap.reverse.retransmits", int(f.Reverse.Retransmits)))
		if f.HandshakeRTT > 0 {
			a = append(a, attribute.Float64("flowmap.tcp.handshake_rtt", f.HandshakeRTT.Seconds()))
		}
	}
	if f.VLAN != 0 {
		a = append(a, attribute.Int("flowmap.vlan", int(f.VLAN)))
	}
	if l := f.L7; l != nil {
		if l.Protocol != model.L7None {
			a = append(a, attribute.String("network.protocol.name", l.Protocol.String()))
		}
		a = append(a,
			attribute.Int64("flowmap.l7.requests", int64(l.Requests())),
			attribute.Int64("flowmap.l7.responses", int64(l.Responses())),
			attribute.Int64("flowmap.l7.errors", int64(l.Errors())),
			attribute.Int64("flowmap.l7.unmatched", int64(l.Unmatched)))
		if n := l.Latency.Count(); n > 0 {
			a = append(a, attribute.Int64("flowmap.l7.latency.count", int64(n)), attribute.Float64("flowmap.l7.latency.sum", l.Latency.Sum.Seconds()))
		}
	}
	a = appendEnd(a, "source.", &f.SrcEndpoint, f.SrcIf)
	a = appendEnd(a, "destination.", &f.DstEndpoint, f.DstIf)
	return a
}

// appendEnd appends the attributes of one end, under prefix (source. or
// destination.): the semantic conventions' names of what it is, and
// flowmap's kind, name and id.
func appendEnd(a []attribute.KeyValue, prefix string, ep *model.Endpoint, ifc model.Interface) []attribute.KeyValue {
	s := func(k, v string) {
		if v != "" {
			a = append(a, attribute.String(k, v))
		}
	}
	s("flowmap."+prefix+"kind", string(ep.Kind))
	s("flowmap."+prefix+"name", ep.Name)
	s("flowmap."+prefix+"id", ep.ID)
	s("flowmap."+prefix+"interface", ifc.Name)
	s(prefix+"k8s.namespace.name", ep.Namespace)
	s(prefix+"k8s.node.name", ep.Node)
	switch ep.Kind {
	case model.KindPod:
		s(prefix+"k8s.pod.name", ep.Name)
		s(prefix+"k8s.pod.uid", ep.ID)
	case model.KindContainer:
		s(prefix+"container.id", ep.ID)
		s(prefix+"container.name", ep.Name)
	case model.KindHost:
		s(prefix+"host.name", ep.Name)
	case model.KindService:
		s(prefix+"k8s.service.name", ep.Name)
	}
	s(prefix+"container.image.name", ep.Image)
	if ep.Workload != "" {
		switch k := strings.ToLower(ep.WorkloadKind); k {
		case "deployment", "statefulset", "daemonset", "job", "cronjob", "replicaset":
			s(prefix+"k8s."+k+".name", ep.Workload)
		default:
			s("flowmap."+prefix+"workload", ep.Workload)
		}
	}
	zone := ep.Labels["cloud.availability_zone"]
	if zone == "" {
		zone = ep.Labels["topology.kubernetes.io/zone"]
	}
	s(prefix+"cloud.availability_zone", zone)
	s(prefix+"cloud.region", ep.Labels["cloud.region"])
	return a
}
