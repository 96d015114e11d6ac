package otlp

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	collogs "go.opentelemetry.io/proto/otlp/collector/logs/v1"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	"github.com/flowmap/flowmap/export"
	"github.com/flowmap/flowmap/internal/collector"
	"github.com/flowmap/flowmap/model"
)

func testFlows(n int) []model.Flow {
	t0 := time.Date(2026, 12, 2, 9, 0, 0, 0, time.UTC)
	fs := make([]model.Flow, n)
	for i := range fs {
		f := &fs[i]
		f.Src, f.Dst = netip.MustParseAddr("192.0.2.10"), netip.MustParseAddr("192.0.2.20")
		f.Proto, f.SrcPort, f.DstPort = model.ProtoTCP, uint16(40000+i), 5432
		f.Forward = model.Direction{Bytes: uint64(1000 + i), Packets: 10, TCPFlags: 0x02 | 0x10 | model.FlagSYNOnly, Retransmits: 1}
		f.Reverse = model.Direction{Bytes: 5_000_000_000, Packets: 3, TCPFlags: 0x12}
		f.FirstSeen, f.LastSeen = t0, t0.Add(time.Second)
		f.HandshakeRTT = 250 * time.Microsecond
		f.SrcEndpoint = model.Endpoint{Kind: model.KindPod, ID: "uid-1", Name: "client-7d9", Namespace: "shop", Node: "n1",
			Workload: "client", WorkloadKind: "Deployment", Image: "registry.example/client:1",
			Labels: map[string]string{"topology.kubernetes.io/zone": "eu-west-1a"}}
		f.DstEndpoint = model.Endpoint{Kind: model.KindContainer, ID: "c0ffee", Name: "db", Image: "postgres:17"}
		f.L7 = &model.L7{Protocol: model.L7Postgres}
	}
	return fs
}

func TestParseURL(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want endpoint
		err  bool
	}{
		{in: "grpc://127.0.0.1:4317", want: endpoint{grpc: true, host: "127.0.0.1:4317"}},
		{in: "grpcs://otel:4317", want: endpoint{grpc: true, secure: true, host: "otel:4317"}},
		{in: "http://otel:4318", want: endpoint{host: "otel:4318", base: "http://otel:4318"}},
		{in: "https://otel:4318/otlp/", want: endpoint{secure: true, host: "otel:4318", base: "https://otel:4318/otlp"}},
		{in: "grpc://otel:4317/x", err: true},
		{in: "udp://otel:4317", err: true},
		{in: "otel:4317", err: true},
	} {
		got, err := parseURL(tc.in)
		if (err != nil) != tc.err || (!tc.err && got != tc.want) {
			t.Errorf("parseURL(%q) = %+v, %v; want %+v, error %v", tc.in, got, err, tc.want, tc.err)
		}
	}
}

// TestCollector sends flows over gRPC and HTTP to a real collector: each
// arrives as a log record with its attributes and the agent's resource.
func TestCollector(t *testing.T) {
	c := collector.Start(t)
	for _, url := range []string{"grpc://" + c.GRPC, "http://" + c.HTTP} {
		e, err := New(t.Context(), Options{URL: url, Node: "n1"})
		if err != nil {
			t.Fatal(err)
		}
		fs := testFlows(3)
		if url[0] == 'h' {
			fs = fs[:1]
			fs[0].SrcPort = 50000
			fs[0].Health = testHealth()
		}
		if err := e.Export(t.Context(), export.Batch{Flows: fs, SampleRate: 4}); err != nil {
			t.Fatalf("Export to %s: %v", url, err)
		}
		if err := e.Close(t.Context()); err != nil {
			t.Errorf("Close: %v", err)
		}
	}
	c.Stop(t)
	recs := c.Logs(t)
	if len(recs) != 4 {
		t.Fatalf("collector got %d records, want 4", len(recs))
	}
	r := recs[0]
	want := map[string]any{
		"source.address":                   "192.0.2.10",
		"source.port":                      int64(40000),
		"destination.address":              "192.0.2.20",
		"destination.port":                 int64(5432),
		"network.transport":                "tcp",
		"network.type":                     "ipv4",
		"network.protocol.name":            "postgresql",
		"source.k8s.pod.name":              "client-7d9",
		"source.k8s.pod.uid":               "uid-1",
		"source.k8s.namespace.name":        "shop",
		"source.k8s.node.name":             "n1",
		"source.k8s.deployment.name":       "client",
		"source.container.image.name":      "registry.example/client:1",
		"source.cloud.availability_zone":   "eu-west-1a",
		"destination.container.id":         "c0ffee",
		"destination.container.name":       "db",
		"destination.container.image.name": "postgres:17",
		"flowmap.source.kind":              "pod",
		"flowmap.destination.kind":         "container",
		"flowmap.forward.bytes":            int64(1000),
		"flowmap.forward.packets":          int64(10),
		"flowmap.reverse.bytes":            int64(5_000_000_000),
		"flowmap.reverse.packets":          int64(3),
		"flowmap.forward.tcp_flags":        int64(0x12),
		"flowmap.forward.retransmits":      int64(1),
		"flowmap.tcp.handshake_rtt":        250e-6,
		"flowmap.sampling.rate":            int64(4),
		"flowmap.flow.start_unix_nano":     testFlows(1)[0].FirstSeen.UnixNano(),
		"flowmap.flow.end_unix_nano":       testFlows(1)[0].LastSeen.UnixNano(),
	}
	for k, v := range want {
		if got := r.Attrs[k]; got != v {
			t.Errorf("attribute %s = %v (%T), want %v (%T)", k, got, got, v, v)
		}
	}
	// Zero counts are left out, and so are flowmap's name and id of an
	// end whose convention attributes carry them (k8s.pod.name,
	// container.id).
	for _, k := range []string{"flowmap.l7.requests", "flowmap.l7.errors", "flowmap.reverse.retransmits",
		"flowmap.source.name", "flowmap.source.id", "flowmap.destination.name", "flowmap.destination.id"} {
		if got, ok := r.Attrs[k]; ok {
			t.Errorf("attribute %s = %v, want none", k, got)
		}
	}
	if len(r.Attrs) != len(want)+1 { // and flowmap.reverse.tcp_flags
		t.Errorf("%d attributes, want %d: %v", len(r.Attrs), len(want)+1, r.Attrs)
	}
	for k, v := range map[string]any{"service.name": "flowmap", "k8s.node.name": "n1"} {
		if got := r.Resource[k]; got != v {
			t.Errorf("resource attribute %s = %v, want %v", k, got, v)
		}
	}
	if r.EventName != EventName || r.Scope != ScopeName || !r.Time.Equal(testFlows(1)[0].LastSeen) {
		t.Errorf("record event %q scope %q time %v, want %q, %q, %v", r.EventName, r.Scope, r.Time, EventName, ScopeName, testFlows(1)[0].LastSeen)
	}
	if got := recs[3].Attrs["source.port"]; got != int64(50000) {
		t.Errorf("the HTTP exporter's record has source.port %v, want 50000", got)
	}
	// The HTTP exporter's flow has health; the others have none, and no
	// attribute of it (counted above).
	for k, v := range map[string]any{
		"flowmap.tcp.connections.attempted":   int64(5),
		"flowmap.tcp.syn_retries":             int64(4),
		"flowmap.tcp.connections.refused":     int64(1),
		"flowmap.tcp.connections.timed_out":   int64(2),
		"flowmap.tcp.connections.closed":      int64(2),
		"flowmap.icmp.errors.unreachable":     int64(1),
		"flowmap.drop.count":                  int64(7),
		"flowmap.drop.reasons.netfilter_drop": int64(6),
		"flowmap.drop.reasons.no_socket":      int64(1),
		"flowmap.health.failure":              "drop:NETFILTER_DROP",
		"flowmap.tcp.rtt":                     0.02,
		"flowmap.tcp.rtt.samples":             int64(2),
	} {
		if got := recs[3].Attrs[k]; got != v {
			t.Errorf("health attribute %s = %v (%T), want %v (%T)", k, got, got, v, v)
		}
	}
	if got, ok := recs[3].Attrs["flowmap.tcp.connections.established"]; ok {
		t.Errorf("flowmap.tcp.connections.established = %v, want none (zero)", got)
	}
}

// testHealth is a flow's health with a refusal, timeouts, an ICMP error,
// drops of two reasons and two RTT samples.
func testHealth() *model.Health {
	return &model.Health{Attempts: 5, SYNRetries: 4, Refused: 1, TimedOut: 2, Closed: 2, Unreachable: 1,
		Drops:  map[string]uint64{"NETFILTER_DROP": 6, "NO_SOCKET": 1},
		RTTSum: 40 * time.Millisecond, RTTSamples: 2}
}

// waitEmpty waits until q has sent all it holds.
func waitEmpty(t *testing.T, q *export.Queue) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for q.Len() > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("queue still holds %d records after 30s", q.Len())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestCollectorDownRestarts: behind a queue, flows offered while the
// collector is down are held up to the queue's capacity, the rest counted
// as dropped, and the offers do not wait; once the collector is back every
// record the queue held arrives, once.
func TestCollectorDownRestarts(t *testing.T) {
	c := collector.Start(t)
	e, err := New(t.Context(), Options{URL: "grpc://" + c.GRPC, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	q := export.NewQueue(e, export.Options{Name: "otlp", Capacity: 300, BatchSize: 100,
		RetryInitial: 10 * time.Millisecond, RetryMax: 100 * time.Millisecond})
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { q.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()

	fs := testFlows(1000)
	q.Offer(fs[:50])
	waitEmpty(t, q)
	c.Stop(t)
	start := time.Now()
	for i := 50; i < 1000; i += 50 {
		q.Offer(fs[i : i+50])
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("offers took %v while the collector was down", d)
	}
	if got := q.Len(); got != 300 {
		t.Errorf("queue holds %d records, want its capacity, 300", got)
	}
	c.Restart(t)
	waitEmpty(t, q)
	c.Stop(t)

	const want = `
# HELP flowmap_export_records_total Flow records offered to the exporter, by result: sent, failed (the collector refused them for good), dropped_queue_full, dropped_shutdown (still queued when the agent stopped), filtered, sampled_out.
# TYPE flowmap_export_records_total counter
flowmap_export_records_total{exporter="otlp",result="dropped_queue_full"} 650
flowmap_export_records_total{exporter="otlp",result="dropped_shutdown"} 0
flowmap_export_records_total{exporter="otlp",result="failed"} 0
flowmap_export_records_total{exporter="otlp",result="filtered"} 0
flowmap_export_records_total{exporter="otlp",result="sampled_out"} 0
flowmap_export_records_total{exporter="otlp",result="sent"} 350
`
	if err := testutil.CollectAndCompare(q, strings.NewReader(want), "flowmap_export_records_total"); err != nil {
		t.Error(err)
	}
	got := map[int64]int{}
	for _, r := range c.Logs(t) {
		got[r.Attrs["source.port"].(int64)]++
	}
	// The first 50, and the 300 the queue held while the collector was
	// down: the oldest, as the queue drops the newest.
	for i := range 350 {
		if n := got[int64(40000+i)]; n != 1 {
			t.Errorf("flow with source port %d arrived %d times, want once", 40000+i, n)
		}
	}
	if len(got) != 350 {
		t.Errorf("collector got %d distinct flows, want 350", len(got))
	}
}

// partialReceiver is an OTLP logs receiver, over gRPC and HTTP, that
// takes every request but for two of its records, as a collector that
// finds them too old: a partial success.
type partialReceiver struct {
	collogs.UnimplementedLogsServiceServer
	mu       sync.Mutex
	requests int
	records  int
}

var partial = &collogs.ExportLogsServiceResponse{PartialSuccess: &collogs.ExportLogsPartialSuccess{
	RejectedLogRecords: 2, ErrorMessage: "2 records too old"}}

func (p *partialReceiver) Export(_ context.Context, req *collogs.ExportLogsServiceRequest) (*collogs.ExportLogsServiceResponse, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.requests++
	for _, rl := range req.ResourceLogs {
		for _, sl := range rl.ScopeLogs {
			p.records += len(sl.LogRecords)
		}
	}
	return partial, nil
}

func (p *partialReceiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	var req collogs.ExportLogsServiceRequest
	if err := proto.Unmarshal(body, &req); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	resp, _ := p.Export(r.Context(), &req)
	b, _ := proto.Marshal(resp)
	w.Header().Set("Content-Type", "application/x-protobuf")
	w.Write(b)
}

// TestPartialSuccess: a batch the collector takes but for some records
// (OTLP's partial success, which a client must not retry) is sent once;
// the queue counts the rejected records as failed and the rest as sent.
func TestPartialSuccess(t *testing.T) {
	for _, transport := range []string{"grpc", "http"} {
		t.Run(transport, func(t *testing.T) {
			p := &partialReceiver{}
			var url string
			if transport == "grpc" {
				ln, err := net.Listen("tcp", "127.0.0.1:0")
				if err != nil {
					t.Fatal(err)
				}
				srv := grpc.NewServer()
				collogs.RegisterLogsServiceServer(srv, p)
				go srv.Serve(ln)
				defer srv.Stop()
				url = "grpc://" + ln.Addr().String()
			} else {
				srv := httptest.NewServer(p)
				defer srv.Close()
				url = srv.URL
			}
			e, err := New(t.Context(), Options{URL: url})
			if err != nil {
				t.Fatal(err)
			}
			q := export.NewQueue(e, export.Options{Name: "otlp", RetryInitial: time.Millisecond})
			ctx, cancel := context.WithCancel(t.Context())
			done := make(chan struct{})
			go func() { q.Run(ctx); close(done) }()
			q.Offer(testFlows(5))
			waitEmpty(t, q)
			cancel()
			<-done
			const want = `
# HELP flowmap_export_records_total Flow records offered to the exporter, by result: sent, failed (the collector refused them for good), dropped_queue_full, dropped_shutdown (still queued when the agent stopped), filtered, sampled_out.
# TYPE flowmap_export_records_total counter
flowmap_export_records_total{exporter="otlp",result="dropped_queue_full"} 0
flowmap_export_records_total{exporter="otlp",result="dropped_shutdown"} 0
flowmap_export_records_total{exporter="otlp",result="failed"} 2
flowmap_export_records_total{exporter="otlp",result="filtered"} 0
flowmap_export_records_total{exporter="otlp",result="sampled_out"} 0
flowmap_export_records_total{exporter="otlp",result="sent"} 3
# HELP flowmap_export_retries_total Batches tried again after an error.
# TYPE flowmap_export_retries_total counter
flowmap_export_retries_total{exporter="otlp"} 0
`
			if err := testutil.CollectAndCompare(q, strings.NewReader(want), "flowmap_export_records_total", "flowmap_export_retries_total"); err != nil {
				t.Error(err)
			}
			p.mu.Lock()
			defer p.mu.Unlock()
			if p.requests != 1 || p.records != 5 {
				t.Errorf("receiver got %d requests of %d records, want 1 of 5", p.requests, p.records)
			}
		})
	}
}
