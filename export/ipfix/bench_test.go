package ipfix

import (
	"context"
	"net"
	"testing"

	"github.com/flowmap/flowmap/export"
	"github.com/flowmap/flowmap/internal/benchcpu"
	"github.com/flowmap/flowmap/model"
)

// BenchmarkExport encodes and sends batches of 1024 flows over UDP to a
// local socket that discards them; records/s is per core, the benchmark
// running on one.
func BenchmarkExport(b *testing.B) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer pc.Close()
	go func() {
		buf := make([]byte, 65536)
		for {
			if _, _, err := pc.ReadFrom(buf); err != nil {
				return
			}
		}
	}()
	e, err := New(Options{URL: "udp://" + pc.LocalAddr().String()})
	if err != nil {
		b.Fatal(err)
	}
	defer e.Close(context.Background())
	fs := make([]model.Flow, 1024)
	base := testFlows()
	for i := range fs {
		fs[i] = base[i%len(base)]
		fs[i].SrcPort = uint16(i)
	}
	batch := export.Batch{Flows: fs, SampleRate: 1}
	b.ReportAllocs()
	report := benchcpu.Start(b, "records")
	for b.Loop() {
		if err := e.Export(context.Background(), batch); err != nil {
			b.Fatal(err)
		}
	}
	report(b.N * len(batch.Flows))
	b.ReportMetric(float64(b.N*len(fs))/b.Elapsed().Seconds(), "records/s")
}
