package topology

import (
	"slices"
	"testing"
	"time"

	"github.com/flowmap/flowmap/model"
)

// TestMetricsEach: the edges Each hands out are the flow series: the same
// cap with its overflow series, the counts since each series' start, and
// the RTT histogram's buckets.
func TestMetricsEach(t *testing.T) {
	ep := func(n string) model.Endpoint {
		return model.Endpoint{Kind: model.KindPod, ID: n, Name: n, Namespace: "shop"}
	}
	m := NewMetrics(MetricsOptions{Level: LevelPod, MaxEdges: 2, Node: "n1", Ends: func(*model.Flow) Ends { return Ends{ClientHere: true} }})
	first := flow(ep("a"), ep("b"), model.ProtoTCP, 80, 1000, 2000, 300*time.Microsecond)
	first.FirstSeen = t0.Add(-3 * time.Second)
	m.Add(t0, first)
	m.Add(t0.Add(5*time.Second),
		flow(ep("a"), ep("b"), model.ProtoTCP, 80, 10, 20, 2*time.Second),
		flow(ep("a"), ep("c"), model.ProtoUDP, 53, 70, 130, 0),
		flow(ep("a"), ep("d"), model.ProtoTCP, 443, 5, 6, 0), // past the cap
	)
	got := map[string]EdgeSeries{}
	m.Each(func(e *EdgeSeries) {
		c := *e
		c.RTTCounts = slices.Clone(e.RTTCounts)
		got[e.Dst] = c
	})
	if len(got) != 3 {
		t.Fatalf("Each gave %d series, want 2 edges and the overflow", len(got))
	}
	ab := got["b"]
	if ab.Src != "a" || ab.SrcKind != "pod" || ab.SrcNamespace != "shop" || ab.Proto != model.ProtoTCP || ab.Port != 80 || ab.Reporter != "client" {
		t.Errorf("edge a→b = %+v, want pod shop/a to shop/b, tcp 80, reporter client", ab)
	}
	if !ab.Start.Equal(first.FirstSeen) {
		t.Errorf("edge a→b start = %v, want its first flow's first packet, %v", ab.Start, first.FirstSeen)
	}
	if ab.Bytes != [2]uint64{1010, 2020} || ab.Connections != 2 {
		t.Errorf("edge a→b bytes %v connections %d, want [1010 2020] and 2", ab.Bytes, ab.Connections)
	}
	if n := len(ab.RTTCounts); n != len(RTTBuckets)+1 {
		t.Fatalf("RTT counts has %d buckets, want %d and +Inf", n, len(RTTBuckets)+1)
	}
	// 300µs is in the 500µs bucket; 2s above every bound.
	if ab.RTTCounts[3] != 1 || ab.RTTCounts[len(RTTBuckets)] != 1 || ab.RTTCount != 2 {
		t.Errorf("RTT counts %v of %d, want one at ≤500µs and one above 1s", ab.RTTCounts, ab.RTTCount)
	}
	if ac := got["c"]; !ac.Start.Equal(t0.Add(5 * time.Second)) {
		t.Errorf("edge a→c start = %v, want its batch's end (no first packet time)", ac.Start)
	}
	o, ok := got["overflow"]
	if !ok || !o.Overflow || o.Reporter != "overflow" || o.Bytes != [2]uint64{5, 6} {
		t.Errorf("overflow series = %+v, want the edge past the cap", o)
	}
}
