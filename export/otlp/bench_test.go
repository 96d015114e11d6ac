package otlp

import (
	"context"
	"net"
	"net/netip"
	"testing"

	collogs "go.opentelemetry.io/proto/otlp/collector/logs/v1"
	"google.golang.org/grpc"

	"github.com/flowmap/flowmap/export"
	"github.com/flowmap/flowmap/internal/benchcpu"
	"github.com/flowmap/flowmap/model"
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

// startSink starts a sink and returns its address.
func startSink(b *testing.B) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	srv := grpc.NewServer(grpc.ForceServerCodec(discard{}))
	collogs.RegisterLogsServiceServer(srv, sink{})
	go srv.Serve(ln)
	b.Cleanup(srv.Stop)
	return ln.Addr().String()
}

// bareFlows are testFlows whose ends are bare addresses, as a flow to or
// from outside the cluster: no names, no Kubernetes or cloud attributes.
func bareFlows(n int) []model.Flow {
	fs := testFlows(n)
	for i := range fs {
		fs[i].SrcEndpoint = model.Endpoint{Kind: model.KindExternal, ID: "192.0.2.10"}
		fs[i].DstEndpoint = model.Endpoint{Kind: model.KindExternal, ID: "192.0.2.20"}
		fs[i].Dst = netip.MustParseAddr("192.0.2.20")
		fs[i].L7 = nil
		fs[i].Forward.Retransmits = 0
	}
	return fs
}

// BenchmarkExport encodes and sends batches of 1024 flows over gRPC to a
// local receiver that discards them: flows whose two ends are named
// Kubernetes pods and containers (30 attributes a record), flows between
// bare addresses (17), and the former gzipped.
func BenchmarkExport(b *testing.B) {
	for _, bc := range []struct {
		name        string
		flows       []model.Flow
		compression string
	}{
		{"named", testFlows(1024), ""},
		{"bare", bareFlows(1024), ""},
		{"named-gzip", testFlows(1024), "gzip"},
	} {
		b.Run(bc.name, func(b *testing.B) {
			e, err := New(context.Background(), Options{URL: "grpc://" + startSink(b), Compression: bc.compression})
			if err != nil {
				b.Fatal(err)
			}
			defer e.Close(context.Background())
			batch := export.Batch{Flows: bc.flows, SampleRate: 1}
			b.ReportAllocs()
			report := benchcpu.Start(b, "records")
			for b.Loop() {
				if err := e.Export(context.Background(), batch); err != nil {
					b.Fatal(err)
				}
			}
			report(b.N * len(batch.Flows))
			b.ReportMetric(float64(b.N*len(batch.Flows))/b.Elapsed().Seconds(), "records/s")
		})
	}
}
