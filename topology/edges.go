package topology

import (
	"time"

	"github.com/flowmap/flowmap/model"
)

// EdgeSeries is one edge's flow series as Metrics counts them, for
// exporters other than Prometheus (OTLP): the same edges, under the same
// cap, with the same labels.
type EdgeSeries struct {
	// The ends, at the metrics level, as the labels src_kind,
	// src_namespace, src, dst_kind, dst_namespace and dst; all "overflow"
	// for the overflow series.
	SrcKind, SrcNamespace, Src string
	DstKind, DstNamespace, Dst string
	// Proto and Port are the flows' protocol and server port; zero in the
	// overflow series.
	Proto model.Proto
	Port  uint16
	// Reporter is "client" or "server" (see Metrics), "overflow" for the
	// overflow series.
	Reporter string
	Overflow bool
	// Start is when the series began counting; the counts are cumulative
	// since.
	Start time.Time
	// Bytes and Packets: [0] forward (client to server), [1] reverse.
	Bytes, Packets [2]uint64
	// Connections counts the TCP connections opened (SYNs seen).
	Connections uint64
	// RTT is the handshake RTT histogram: RTTCounts[i] the handshakes of
	// at most RTTBuckets[i] seconds and above the bucket before (not
	// cumulative), and a last count for those above every bound.
	RTTCounts []uint64
	RTTCount  uint64
	RTTSum    float64 // seconds
}

// Each calls fn with each edge's series, and the overflow series if any
// flow counted in it, in no order. fn runs under m's lock: it must not
// call m, nor keep e's RTTCounts.
func (m *Metrics) Each(fn func(e *EdgeSeries)) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var e EdgeSeries
	fill := func(s *series) {
		e.Start = s.start
		e.Bytes = [2]uint64{s.traffic[0].Bytes, s.traffic[1].Bytes}
		e.Packets = [2]uint64{s.traffic[0].Packets, s.traffic[1].Packets}
		e.Connections = s.conns
		e.RTTCounts = append(e.RTTCounts[:0], s.rtt...) // with the last, above every bound
		e.RTTCount, e.RTTSum = s.rttN, s.rttSum
	}
	for k, r := range m.series.rows {
		e = EdgeSeries{SrcKind: k.edge.src.kind, SrcNamespace: k.edge.src.namespace, Src: k.edge.src.name,
			DstKind: k.edge.dst.kind, DstNamespace: k.edge.dst.namespace, Dst: k.edge.dst.name,
			Proto: k.proto, Port: k.port, Reporter: k.reporter, RTTCounts: e.RTTCounts}
		fill(&r.v)
		fn(&e)
	}
	if m.overflow != nil {
		o := overflowEdge
		e = EdgeSeries{SrcKind: o.src.kind, SrcNamespace: o.src.namespace, Src: o.src.name,
			DstKind: o.dst.kind, DstNamespace: o.dst.namespace, Dst: o.dst.name,
			Reporter: "overflow", Overflow: true, RTTCounts: e.RTTCounts}
		fill(m.overflow)
		fn(&e)
	}
}
