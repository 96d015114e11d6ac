package otlp

import (
	"context"
	"testing"

	collogs "go.opentelemetry.io/proto/otlp/collector/logs/v1"
	cpb "go.opentelemetry.io/proto/otlp/common/v1"
	lpb "go.opentelemetry.io/proto/otlp/logs/v1"
	"google.golang.org/protobuf/proto"

	"github.com/flowmap/flowmap/export"
	"github.com/flowmap/flowmap/internal/benchcpu"
)

// The floor of BenchmarkExport/named, what no change of ours can go
// below: the SDK's exporter alone on records built once
// (BenchmarkFloorSDKExporter), and below it the protobuf encoding alone
// of an equivalent request (BenchmarkFloorMarshal), which the SDK's
// exporter does after turning each record and attribute into protobuf
// messages, three allocations an attribute.

func BenchmarkFloorSDKExporter(b *testing.B) {
	e, err := New(context.Background(), Options{URL: "grpc://" + startSink(b)})
	if err != nil {
		b.Fatal(err)
	}
	defer e.Close(context.Background())
	batch := export.Batch{Flows: testFlows(1024), SampleRate: 1}
	if err := e.Export(context.Background(), batch); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	report := benchcpu.Start(b, "records")
	for b.Loop() {
		if err := e.exp.Export(context.Background(), e.recs); err != nil {
			b.Fatal(err)
		}
	}
	report(b.N * len(batch.Flows))
}

func BenchmarkFloorMarshal(b *testing.B) {
	fs := testFlows(1024)
	req := &collogs.ExportLogsServiceRequest{ResourceLogs: []*lpb.ResourceLogs{{ScopeLogs: []*lpb.ScopeLogs{{}}}}}
	sl := req.ResourceLogs[0].ScopeLogs[0]
	for i := range fs {
		r := &lpb.LogRecord{TimeUnixNano: 1, ObservedTimeUnixNano: 2, EventName: EventName, SeverityNumber: 9}
		for _, kv := range appendAttrs(nil, &fs[i], 1) {
			av := &cpb.AnyValue{}
			switch v := kv.Value.AsInterface().(type) {
			case string:
				av.Value = &cpb.AnyValue_StringValue{StringValue: v}
			case int64:
				av.Value = &cpb.AnyValue_IntValue{IntValue: v}
			case float64:
				av.Value = &cpb.AnyValue_DoubleValue{DoubleValue: v}
			}
			r.Attributes = append(r.Attributes, &cpb.KeyValue{Key: string(kv.Key), Value: av})
		}
		sl.LogRecords = append(sl.LogRecords, r)
	}
	b.ReportAllocs()
	report := benchcpu.Start(b, "records")
	var buf []byte
	for b.Loop() {
		var err error
		buf, err = proto.MarshalOptions{}.MarshalAppend(buf[:0], req)
		if err != nil {
			b.Fatal(err)
		}
	}
	report(b.N * len(fs))
}
