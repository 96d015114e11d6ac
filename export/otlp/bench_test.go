package otlp

import (
	"context"
	"net"
	"testing"

	collogs "go.opentelemetry.io/proto/otlp/collector/logs/v1"
	"google.golang.org/grpc"

	"github.com/flowmap/flowmap/export"
	"github.com/flowmap/flowmap/internal/benchcpu"
)

// sink is an OTLP/gRPC logs receiver that discards what it gets
// undecoded, so that the benchmark times the exporter alone.
type sink struct {
	collogs.UnimplementedLogsServiceServer
}

func (sink) Export(context.Context, *collogs.ExportLogsServiceRequest) (*collogs.ExportLogsServiceResponse, error) {
	return &collogs.ExportLogsServiceResponse{}, nil
}

// discard is the sink's codec: requests are not decoded, and the response
// is the empty message.
type discard struct{}

func (discard) Marshal(any) ([]byte, error) { return nil, nil }
func (discard) Unmarshal([]byte, any) error { return nil }
func (discard) Name() string                { return "proto" }

// BenchmarkExport encodes and sends batches of 1024 flows over gRPC to a
// local receiver that discards them.
func BenchmarkExport(b *testing.B) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	srv := grpc.NewServer(grpc.ForceServerCodec(discard{}))
	collogs.RegisterLogsServiceServer(srv, sink{})
	go srv.Serve(ln)
	defer srv.Stop()
	e, err := New(context.Background(), Options{URL: "grpc://" + ln.Addr().String()})
	if err != nil {
		b.Fatal(err)
	}
	defer e.Close(context.Background())
	batch := export.Batch{Flows: testFlows(1024), SampleRate: 1}
	b.ReportAllocs()
	report := benchcpu.Start(b, "records")
	for b.Loop() {
		if err := e.Export(context.Background(), batch); err != nil {
			b.Fatal(err)
		}
	}
	report(b.N * len(batch.Flows))
	b.ReportMetric(float64(b.N*len(batch.Flows))/b.Elapsed().Seconds(), "records/s")
}
