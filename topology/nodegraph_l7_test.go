package topology

import (
	"testing"
	"time"
)

// TestNodeGraphArcsL7 checks the node graph's arcs: a node that answered
// L7 requests shows the shares of its responses that succeeded and failed,
// any other its bytes sent and received; each node's add up to 1.
func TestNodeGraphArcsL7(t *testing.T) {
	t0 := time.Date(2026, 1, 2, 3, 4, 0, 0, time.UTC)
	g := New(Options{})
	f := l7Flow(90, 5)
	f.Forward.Bytes, f.Reverse.Bytes = 300, 100
	g.Add(t0, f)
	g.Add(t0.Add(20*time.Second), l7Flow(5, 0))
	ng := ToNodeGraph(g.Snapshot(t0.Add(30*time.Second), LevelContainer, time.Minute))
	type arcs struct{ success, errors, sent, received float64 }
	want := map[string]arcs{
		"web":             {sent: 0.75, received: 0.25},
		"api.example.com": {success: 0.95, errors: 0.05},
	}
	if len(ng.Nodes) != len(want) {
		t.Fatalf("%d nodes, want %d", len(ng.Nodes), len(want))
	}
	for _, n := range ng.Nodes {
		got := arcs{n.ArcSuccess, n.ArcErrors, n.ArcSent, n.ArcReceived}
		if got != want[n.Title] {
			t.Errorf("node %s: arcs = %+v, want %+v", n.Title, got, want[n.Title])
		}
	}
}
