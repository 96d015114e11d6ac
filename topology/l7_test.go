package topology

import (
	"bytes"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/flowmap/flowmap/model"
)

// l7Flow is a flow from web to api with HTTP messages: ok 2xx and failed
// 5xx responses, each 2 ms after its request.
func l7Flow(ok, failed uint64) model.Flow {
	l := &model.L7{Protocol: model.L7HTTP}
	l.Methods[model.MethodGET] = ok + failed
	l.Statuses[2], l.Statuses[5] = ok, failed
	for range ok + failed {
		l.Latency.Counts[latencyBucket(2*time.Millisecond)]++
		l.Latency.Sum += 2 * time.Millisecond
	}
	return model.Flow{
		Record: model.Record{Src: netip.MustParseAddr("2001:db8::1"), Dst: netip.MustParseAddr("2001:db8::2"),
			Proto: model.ProtoTCP, SrcPort: 40000, DstPort: 80, L7: l},
		SrcEndpoint: model.Endpoint{Kind: model.KindContainer, ID: "web", Name: "web"},
		DstEndpoint: model.Endpoint{Kind: model.KindExternal, ID: "2001:db8::2", Name: "api.example.com"},
	}
}

// latencyBucket is the histogram bucket of d, as the programs sort it (bpf/headers/l7/stats.h).
func latencyBucket(d time.Duration) int {
	for i := range model.LatencyBuckets {
		if d < model.BucketUpper(i) {
			return i
		}
	}
	return model.LatencyBuckets - 1
}

func TestGraphL7(t *testing.T) {
	t0 := time.Date(2026, 1, 2, 3, 4, 0, 0, time.UTC)
	g := New(Options{})
	g.Add(t0, l7Flow(90, 5))
	g.Add(t0.Add(20*time.Second), l7Flow(5, 0))
	s := g.Snapshot(t0.Add(30*time.Second), LevelContainer, time.Minute)
	if len(s.Edges) != 1 {
		t.Fatalf("%d edges, want 1", len(s.Edges))
	}
	l := s.Edges[0].L7
	if l == nil {
		t.Fatal("edge has no L7")
	}
	if l.Protocol != "http" || l.Requests != 100 || l.Responses != 100 || l.Errors != 5 ||
		l.Statuses["2xx"] != 95 || l.Statuses["5xx"] != 5 || l.Methods["GET"] != 100 {
		t.Errorf("L7 = %+v, want http, 100 GET, 95 2xx, 5 5xx", l)
	}
	if l.Latency == nil || l.Latency.Samples != 100 {
		t.Fatalf("latency %+v, want 100 samples", l.Latency)
	}
	// One bucket holds every sample: its width bounds the error.
	lo, hi := model.BucketLower(latencyBucket(2*time.Millisecond)), model.BucketUpper(latencyBucket(2*time.Millisecond))
	for _, q := range []time.Duration{l.Latency.P50, l.Latency.P90, l.Latency.P99} {
		if q < lo || q > hi {
			t.Errorf("quantile %v, want within [%v, %v]", q, lo, hi)
		}
	}
	if want := 100 / s.Window.Seconds(); l.RequestRate != want {
		t.Errorf("request rate %v, want %v", l.RequestRate, want)
	}
	if c := successColor(l); c != "orange" {
		t.Errorf("colour of 95%% success = %q, want orange", c)
	}
	var dot bytes.Buffer
	if err := WriteDOT(&dot, s); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(dot.String(), `color="orange"`) || !strings.Contains(dot.String(), "5.0% err") {
		t.Errorf("dot has no L7 colour or errors:\n%s", dot.String())
	}
	ng := ToNodeGraph(s)
	if e := ng.Edges[0]; e.DetailL7Protocol != "http" || e.Color != "orange" || e.DetailErrorRatio != 0.05 {
		t.Errorf("node graph edge %+v, want http, orange, error ratio 0.05", e)
	}
}

func TestHistogramQuantile(t *testing.T) {
	cases := []struct {
		name    string
		samples []time.Duration
		q       float64
		want    time.Duration
		tol     float64
	}{
		{"none", nil, 0.5, 0, 0},
		{"spread", []time.Duration{time.Millisecond, 2 * time.Millisecond, 3 * time.Millisecond, 4 * time.Millisecond, 5 * time.Millisecond}, 0.5, 3 * time.Millisecond, 0.2},
		{"all alike", []time.Duration{10 * time.Millisecond, 10 * time.Millisecond}, 0.99, 10 * time.Millisecond, 0.2},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var h model.Histogram
			for _, d := range tc.samples {
				h.Counts[latencyBucket(d)]++
			}
			got := h.Quantile(tc.q)
			if d := float64(got - tc.want); d > tc.tol*float64(tc.want) || -d > tc.tol*float64(tc.want) {
				t.Errorf("Quantile(%v) = %v, want %v ± %.0f%%", tc.q, got, tc.want, 100*tc.tol)
			}
		})
	}
}
