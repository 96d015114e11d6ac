// Package otlp exports flows to an OpenTelemetry Collector (or any OTLP
// receiver) over gRPC or HTTP, with the OpenTelemetry Go SDK's exporters:
// each flow as a log record, the edge series as metrics.
//
// A flow's log record carries OpenTelemetry's semantic-convention
// attributes where they exist (source.address, destination.port,
// network.transport, network.type, network.protocol.name) and flowmap's
// own under flowmap.: the counts of each direction, TCP flags, the
// handshake RTT, L7 counts, the sampling rate, and the flow's health
// (connection outcomes, ICMP errors, drops by the kernel's reason, the
// dominant failure, the smoothed RTT; see appendHealth). The convention's resource
// attributes (k8s.pod.name, k8s.namespace.name, container.id,
// cloud.availability_zone, …) each name one entity, and a flow has two: a
// flow's ends carry them under source. and destination., as the convention
// puts the addresses (source.k8s.pod.name, destination.container.id).
// The resource is the agent: service.name=flowmap, host.name and
// k8s.node.name.
package otlp

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"reflect"
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
	// Compression is "gzip" or "none" (the default, as the SDK's): gzip
	// makes a request about a tenth of its size and costs as much CPU
	// again as the rest of the export, worth it only on a slow link.
	Compression string
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

// gzip returns whether compression (Options.Compression) is gzip.
func gzip(compression string) (bool, error) {
	switch compression {
	case "", "none":
		return false, nil
	case "gzip":
		return true, nil
	}
	return false, fmt.Errorf("otlp compression %q: want none or gzip", compression)
}

// CheckCompression returns the error New would return for compression.
func CheckCompression(compression string) error {
	_, err := gzip(compression)
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
	gz, err := gzip(opts.Compression)
	if err != nil {
		return nil, err
	}
	var exp sdklog.Exporter
	if ep.grpc {
		o := []otlploggrpc.Option{otlploggrpc.WithEndpoint(ep.host), otlploggrpc.WithTimeout(opts.Timeout),
			otlploggrpc.WithRetry(otlploggrpc.RetryConfig{Enabled: false})}
		if !ep.secure {
			o = append(o, otlploggrpc.WithInsecure())
		}
		if gz {
			o = append(o, otlploggrpc.WithCompressor("gzip"))
		}
		exp, err = otlploggrpc.New(ctx, o...)
	} else {
		o := []otlploghttp.Option{otlploghttp.WithEndpointURL(ep.base + "/v1/logs"), otlploghttp.WithTimeout(opts.Timeout),
			otlploghttp.WithRetry(otlploghttp.RetryConfig{Enabled: false})}
		if gz {
			o = append(o, otlploghttp.WithCompression(otlploghttp.GzipCompression))
		}
		exp, err = otlploghttp.New(ctx, o...)
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
		err = fmt.Errorf("export %d flow records over otlp: %w", len(e.recs), err)
		if n, ok := rejected(err); ok {
			return export.PartlySent(int(min(n, int64(len(e.recs)))), err)
		}
		return err
	}
	return nil
}

// rejected returns the records the collector refused in a partial success
// if err is that answer and nothing else. The SDK's exporters return it as
// an error of their internal type PartialSuccess (its RejectedItems, from
// ExportLogsPartialSuccess.rejected_log_records) whose only exported part
// is its fields: it is found by name, and TestPartialSuccess fails if an
// SDK upgrade renames it.
func rejected(err error) (n int64, ok bool) {
	if u, isJoin := err.(interface{ Unwrap() []error }); isJoin {
		errs := u.Unwrap()
		for _, e := range errs {
			m, ok := rejected(e)
			if !ok {
				return 0, false
			}
			n += m
		}
		return n, len(errs) > 0
	}
	if v := reflect.ValueOf(err); v.Kind() == reflect.Struct && v.Type().Name() == "PartialSuccess" &&
		strings.HasPrefix(v.Type().PkgPath(), "go.opentelemetry.io/otel/exporters/otlp/") {
		if f := v.FieldByName("RejectedItems"); f.Kind() == reflect.Int64 {
			return f.Int(), true
		}
	}
	if e := errors.Unwrap(err); e != nil {
		return rejected(e)
	}
	return 0, false
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

// Attribute keys, built once: a key made per flow by concatenation is an
// allocation per attribute.
const (
	keySrcAddr      = attribute.Key("source.address")
	keyDstAddr      = attribute.Key("destination.address")
	keySrcPort      = attribute.Key("source.port")
	keyDstPort      = attribute.Key("destination.port")
	keyTransport    = attribute.Key("network.transport")
	keyNetType      = attribute.Key("network.type")
	keyProtoName    = attribute.Key("network.protocol.name")
	keyFwdBytes     = attribute.Key("flowmap.forward.bytes")
	keyFwdPackets   = attribute.Key("flowmap.forward.packets")
	keyRevBytes     = attribute.Key("flowmap.reverse.bytes")
	keyRevPackets   = attribute.Key("flowmap.reverse.packets")
	keySampling     = attribute.Key("flowmap.sampling.rate")
	keyStart        = attribute.Key("flowmap.flow.start_unix_nano")
	keyEnd          = attribute.Key("flowmap.flow.end_unix_nano")
	keyICMPType     = attribute.Key("flowmap.icmp.type")
	keyICMPCode     = attribute.Key("flowmap.icmp.code")
	keyFwdFlags     = attribute.Key("flowmap.forward.tcp_flags")
	keyRevFlags     = attribute.Key("flowmap.reverse.tcp_flags")
	keyFwdRetrans   = attribute.Key("flowmap.forward.retransmits")
	keyRevRetrans   = attribute.Key("flowmap.reverse.retransmits")
	keyRTT          = attribute.Key("flowmap.tcp.handshake_rtt")
	keyVLAN         = attribute.Key("flowmap.vlan")
	keyL7Requests   = attribute.Key("flowmap.l7.requests")
	keyL7Responses  = attribute.Key("flowmap.l7.responses")
	keyL7Errors     = attribute.Key("flowmap.l7.errors")
	keyL7Unmatched  = attribute.Key("flowmap.l7.unmatched")
	keyL7LatencyN   = attribute.Key("flowmap.l7.latency.count")
	keyL7LatencySum = attribute.Key("flowmap.l7.latency.sum")

	// Health: outcome names as flowmap_tcp_connections_total's.
	keyAttempted    = attribute.Key("flowmap.tcp.connections.attempted")
	keySYNRetries   = attribute.Key("flowmap.tcp.syn_retries")
	keyEstablished  = attribute.Key("flowmap.tcp.connections.established")
	keyRefused      = attribute.Key("flowmap.tcp.connections.refused")
	keyTimedOut     = attribute.Key("flowmap.tcp.connections.timed_out")
	keyResetClient  = attribute.Key("flowmap.tcp.connections.reset_client")
	keyResetServer  = attribute.Key("flowmap.tcp.connections.reset_server")
	keyClosed       = attribute.Key("flowmap.tcp.connections.closed")
	keyUnreachable  = attribute.Key("flowmap.icmp.errors.unreachable")
	keyTimeExceeded = attribute.Key("flowmap.icmp.errors.time_exceeded")
	keyZeroWindows  = attribute.Key("flowmap.tcp.zero_windows")
	keyRTOs         = attribute.Key("flowmap.tcp.retransmit_timeouts")
	keyDrops        = attribute.Key("flowmap.drop.count")
	keyFailure      = attribute.Key("flowmap.health.failure")
	keySRTT         = attribute.Key("flowmap.tcp.rtt")
	keySRTTSamples  = attribute.Key("flowmap.tcp.rtt.samples")
)

// dropKeyPrefix starts the key of a drop reason's count:
// flowmap.drop.reasons.netfilter_drop.
const dropKeyPrefix = "flowmap.drop.reasons."

// endKeys are the keys of one end's attributes, under source. or
// destination.
type endKeys struct {
	kind, name, id, ifc, workload                     attribute.Key
	namespace, node, pod, podUID, image, zone, region attribute.Key
	containerID, containerName, host, service         attribute.Key
	workloads                                         map[string]attribute.Key // by lower-case workload kind
}

func newEndKeys(prefix string) *endKeys {
	k := func(s string) attribute.Key { return attribute.Key(s) }
	e := &endKeys{
		kind: k("flowmap." + prefix + "kind"), name: k("flowmap." + prefix + "name"), id: k("flowmap." + prefix + "id"),
		ifc: k("flowmap." + prefix + "interface"), workload: k("flowmap." + prefix + "workload"),
		namespace: k(prefix + "k8s.namespace.name"), node: k(prefix + "k8s.node.name"),
		pod: k(prefix + "k8s.pod.name"), podUID: k(prefix + "k8s.pod.uid"), image: k(prefix + "container.image.name"),
		zone: k(prefix + "cloud.availability_zone"), region: k(prefix + "cloud.region"),
		containerID: k(prefix + "container.id"), containerName: k(prefix + "container.name"),
		host: k(prefix + "host.name"), service: k(prefix + "k8s.service.name"),
		workloads: map[string]attribute.Key{},
	}
	for _, w := range []string{"deployment", "statefulset", "daemonset", "job", "cronjob", "replicaset"} {
		e.workloads[w] = k(prefix + "k8s." + w + ".name")
	}
	return e
}

var srcKeys, dstKeys = newEndKeys("source."), newEndKeys("destination.")

// appendAttrs appends a flow's attributes. Counts that are zero and
// names that are empty are left out (a consumer reads an absent count as
// 0): each attribute is about a tenth of the record's cost to encode and
// send.
func appendAttrs(a []attribute.KeyValue, f *model.Flow, rate uint32) []attribute.KeyValue {
	netType := "ipv4"
	if !f.Src.Unmap().Is4() {
		netType = "ipv6"
	}
	a = append(a,
		keySrcAddr.String(f.Src.Unmap().String()),
		keyDstAddr.String(f.Dst.Unmap().String()),
		keyTransport.String(transport(f.Proto)),
		keyNetType.String(netType),
		keyFwdBytes.Int64(int64(f.Forward.Bytes)),
		keyFwdPackets.Int64(int64(f.Forward.Packets)),
		keyRevBytes.Int64(int64(f.Reverse.Bytes)),
		keyRevPackets.Int64(int64(f.Reverse.Packets)),
		keySampling.Int64(int64(max(rate, 1))),
		keyStart.Int64(f.FirstSeen.UnixNano()),
		keyEnd.Int64(f.LastSeen.UnixNano()),
	)
	n := func(k attribute.Key, v int64) {
		if v != 0 {
			a = append(a, k.Int64(v))
		}
	}
	switch f.Proto {
	case model.ProtoICMP, model.ProtoICMPv6:
		a = append(a, keyICMPType.Int(int(f.SrcPort)), keyICMPCode.Int(int(f.DstPort)))
	default:
		a = append(a, keySrcPort.Int(int(f.SrcPort)), keyDstPort.Int(int(f.DstPort)))
	}
	if f.Proto == model.ProtoTCP {
		a = append(a, keyFwdFlags.Int(int(f.Forward.TCPFlags&0x1ff)), keyRevFlags.Int(int(f.Reverse.TCPFlags&0x1ff)))
		n(keyFwdRetrans, int64(f.Forward.Retransmits))
		n(keyRevRetrans, int64(f.Reverse.Retransmits))
		if f.HandshakeRTT > 0 {
			a = append(a, keyRTT.Float64(f.HandshakeRTT.Seconds()))
		}
	}
	n(keyVLAN, int64(f.VLAN))
	if l := f.L7; l != nil {
		if l.Protocol != model.L7None {
			a = append(a, keyProtoName.String(l.Protocol.String()))
		}
		n(keyL7Requests, int64(l.Requests()))
		n(keyL7Responses, int64(l.Responses()))
		n(keyL7Errors, int64(l.Errors()))
		n(keyL7Unmatched, int64(l.Unmatched))
		if c := l.Latency.Count(); c > 0 {
			a = append(a, keyL7LatencyN.Int64(int64(c)), keyL7LatencySum.Float64(l.Latency.Sum.Seconds()))
		}
	}
	if h := f.Health; h != nil {
		a = appendHealth(a, h)
	}
	a = appendEnd(a, srcKeys, &f.SrcEndpoint, f.SrcIf)
	a = appendEnd(a, dstKeys, &f.DstEndpoint, f.DstIf)
	return a
}

// appendHealth appends a flow's health: its connection outcomes and ICMP
// errors, its drops, in all and by the kernel's reason (one attribute a
// reason, as flowmap.drop.reasons.netfilter_drop, so that a query selects
// a reason by its key), the dominant failure, and the smoothed RTT of its
// local sockets in seconds. Zero counts are left out, as above.
func appendHealth(a []attribute.KeyValue, h *model.Health) []attribute.KeyValue {
	n := func(k attribute.Key, v uint64) {
		if v != 0 {
			a = append(a, k.Int64(int64(v)))
		}
	}
	n(keyAttempted, h.Attempts)
	n(keySYNRetries, h.SYNRetries)
	n(keyEstablished, h.Established)
	n(keyRefused, h.Refused)
	n(keyTimedOut, h.TimedOut)
	n(keyResetClient, h.ResetByClient)
	n(keyResetServer, h.ResetByServer)
	n(keyClosed, h.Closed)
	n(keyUnreachable, h.Unreachable)
	n(keyTimeExceeded, h.TimeExceeded)
	n(keyZeroWindows, h.ZeroWindows)
	n(keyRTOs, h.RTOs)
	if len(h.Drops) > 0 {
		n(keyDrops, h.Dropped())
		for r, c := range h.Drops {
			n(attribute.Key(dropKeyPrefix+strings.ToLower(r)), c)
		}
	}
	if f := h.Failure(); f != "" {
		a = append(a, keyFailure.String(f))
	}
	if h.RTTSamples > 0 {
		a = append(a, keySRTT.Float64(h.RTT().Seconds()), keySRTTSamples.Int64(int64(h.RTTSamples)))
	}
	return a
}

// appendEnd appends the attributes of one end: the semantic conventions'
// names of what it is, and flowmap's kind, and its name and id where no
// convention's attribute carries them.
func appendEnd(a []attribute.KeyValue, k *endKeys, ep *model.Endpoint, ifc model.Interface) []attribute.KeyValue {
	s := func(k attribute.Key, v string) {
		if v != "" {
			a = append(a, k.String(v))
		}
	}
	s(k.kind, string(ep.Kind))
	s(k.ifc, ifc.Name)
	s(k.namespace, ep.Namespace)
	s(k.node, ep.Node)
	switch ep.Kind {
	case model.KindPod:
		s(k.pod, ep.Name)
		s(k.podUID, ep.ID)
	case model.KindContainer:
		s(k.containerID, ep.ID)
		s(k.containerName, ep.Name)
	case model.KindHost:
		s(k.host, ep.Name)
		s(k.id, ep.ID)
	case model.KindService:
		s(k.service, ep.Name)
		s(k.id, ep.ID)
	default:
		s(k.name, ep.Name)
		s(k.id, ep.ID)
	}
	s(k.image, ep.Image)
	if ep.Workload != "" {
		if wk, ok := k.workloads[strings.ToLower(ep.WorkloadKind)]; ok {
			s(wk, ep.Workload)
		} else {
			s(k.workload, ep.Workload)
		}
	}
	if len(ep.Labels) > 0 {
		zone := ep.Labels["cloud.availability_zone"]
		if zone == "" {
			zone = ep.Labels["topology.kubernetes.io/zone"]
		}
		s(k.zone, zone)
		s(k.region, ep.Labels["cloud.region"])
	}
	return a
}
