package topology

import (
	"io"
	"runtime"
	"strconv"
	"testing"
	"time"

	"github.com/flowmap/flowmap/model"
)

// benchFlows returns n flows of n edges: clients × servers × one port, as
// a cluster's containers calling its services.
func benchFlows(n int) []model.Flow {
	const servers = 100
	clients := (n + servers - 1) / servers
	eps := make([]model.Endpoint, clients+servers)
	for i := range eps {
		name := "c" + strconv.Itoa(i)
		eps[i] = model.Endpoint{Kind: model.KindContainer, ID: "container-id-" + name, Name: name,
			Namespace: "ns" + strconv.Itoa(i%10), Workload: "w" + strconv.Itoa(i%50), Node: "node" + strconv.Itoa(i%20)}
	}
	fs := make([]model.Flow, n)
	for i := range fs {
		f := &fs[i]
		f.SrcEndpoint, f.DstEndpoint = eps[i/servers], eps[clients+i%servers]
		f.Proto, f.SrcPort, f.DstPort = model.ProtoTCP, uint16(30000+i%30000), 8080
		f.Forward = model.Direction{Bytes: 1500, Packets: 10, TCPFlags: model.FlagSYNOnly | 0x18}
		f.Reverse = model.Direction{Bytes: 15000, Packets: 12, TCPFlags: model.FlagSYNACK | 0x18}
		f.HandshakeRTT = 50 * time.Microsecond
	}
	return fs
}

// BenchmarkFold folds drain intervals of 10,000 flows (one per edge) into
// a graph, an interval every 5s of graph time, as the agent does; it
// reports flows folded per second on one core.
func BenchmarkFold(b *testing.B) {
	benchIntervals(b, New(Options{}).Add)
	b.ReportMetric(0, "ns/op") // per interval, not telling: records/s is
}

// benchIntervals hands add drain intervals of 10,000 flows, one every 5s
// of graph time, and reports the flows it took per second.
func benchIntervals(b *testing.B, add func(time.Time, ...model.Flow)) {
	fs := benchFlows(10000)
	t := t0
	b.ReportAllocs()
	n := 0
	for b.Loop() {
		add(t, fs...)
		t = t.Add(5 * time.Second)
		n += len(fs)
	}
	b.ReportMetric(float64(n)/b.Elapsed().Seconds(), "records/s")
}

// BenchmarkMemory folds 100,000 edges into a graph and reports the heap it
// holds per live edge.
func BenchmarkMemory(b *testing.B) {
	const edges = 100000
	fs := benchFlows(edges)
	b.ReportAllocs()
	var perEdge, estimate float64
	for b.Loop() {
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		g := New(Options{MaxEdges: edges})
		for i := 0; i < len(fs); i += 1000 {
			g.Add(t0, fs[i:i+1000]...)
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		st := g.Stats()
		if st.Edges != edges {
			b.Fatalf("%d edges, want %d", st.Edges, edges)
		}
		perEdge = float64(after.HeapAlloc-before.HeapAlloc) / edges
		estimate = float64(st.Bytes) / edges
		runtime.KeepAlive(g)
	}
	b.ReportMetric(perEdge, "B/edge")
	b.ReportMetric(estimate, "estimated-B/edge")
}

// BenchmarkSnapshot rolls 10,000 edges up to the workload level.
func BenchmarkSnapshot(b *testing.B) {
	g := New(Options{})
	fs := benchFlows(10000)
	for i := range 12 {
		g.Add(t0.Add(time.Duration(i)*5*time.Second), fs...)
	}
	now := t0.Add(time.Minute)
	b.ReportAllocs()
	for b.Loop() {
		g.Snapshot(now, LevelWorkload, 5*time.Minute)
	}
}

// BenchmarkExport writes each export of a snapshot of 10,000 edges at the
// container level.
func BenchmarkExport(b *testing.B) {
	g := New(Options{})
	g.Add(t0, benchFlows(10000)...)
	s := g.Snapshot(t0, LevelContainer, time.Minute)
	for _, tc := range []struct {
		name  string
		write func(io.Writer, *Snapshot) error
	}{
		{"json", WriteJSON},
		{"dot", WriteDOT},
		{"nodegraph", WriteNodeGraph},
	} {
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if err := tc.write(io.Discard, s); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkMetrics counts drain intervals of 10,000 flows in the flow
// series at the workload level.
func BenchmarkMetrics(b *testing.B) {
	benchIntervals(b, NewMetrics(MetricsOptions{}).Add)
}

// BenchmarkMemoryBusyHour folds 10,000 edges that each carry a flow in
// every 5s interval of an hour, the worst case for the buckets (an entry
// per edge in each of 6+14+9 buckets), and reports the heap per edge.
func BenchmarkMemoryBusyHour(b *testing.B) {
	const edges = 10000
	fs := benchFlows(edges)
	var perEdge float64
	for b.Loop() {
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		g := New(Options{})
		for i := range 720 {
			g.Add(t0.Add(time.Duration(i)*5*time.Second), fs...)
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		perEdge = float64(after.HeapAlloc-before.HeapAlloc) / edges
		runtime.KeepAlive(g)
	}
	b.ReportMetric(perEdge, "B/edge")
}
