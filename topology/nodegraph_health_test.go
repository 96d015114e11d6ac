package topology

import (
	"testing"
	"time"

	"github.com/flowmap/flowmap/model"
)

// TestNodeGraphArcsHealth checks the node graph's arcs and edge colours by
// connection outcomes: a server's arcs split what its clients asked into
// connections refused or timed out, established but with failed responses,
// and the rest; its edges are coloured by the same product of shares.
func TestNodeGraphArcsHealth(t *testing.T) {
	t0 := time.Date(2026, 1, 2, 3, 4, 0, 0, time.UTC)
	for _, tc := range []struct {
		name      string
		ok, fail  uint64 // L7 responses
		h         *model.Health
		want      [3]float64 // success, errors, connections failed
		wantColor string
	}{
		{"refused, no L7", 0, 0, &model.Health{Attempts: 4, Established: 1, Refused: 3}, [3]float64{0.25, 0, 0.75}, "red"},
		{"timed out and failed responses", 9, 1, &model.Health{Attempts: 5, Established: 4, TimedOut: 1}, [3]float64{0.72, 0.08, 0.2}, "red"},
		{"all well", 100, 0, &model.Health{Attempts: 3, Established: 3, Closed: 3}, [3]float64{1, 0, 0}, "green"},
		{"one failure in twenty", 0, 0, &model.Health{Attempts: 20, Established: 19, TimedOut: 1}, [3]float64{0.95, 0, 0.05}, "orange"},
		{"L7 only", 95, 5, nil, [3]float64{0.95, 0.05, 0}, "orange"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := New(Options{})
			f := l7Flow(tc.ok, tc.fail)
			if tc.ok+tc.fail == 0 {
				f.L7 = nil
			}
			f.Forward.Bytes, f.Reverse.Bytes = 300, 100
			f.Health = tc.h
			g.Add(t0, f)
			ng := ToNodeGraph(g.Snapshot(t0.Add(30*time.Second), LevelContainer, time.Minute))
			for _, n := range ng.Nodes {
				if n.Title != "api.example.com" {
					if n.ArcSent != 0.75 || n.ArcReceived != 0.25 {
						t.Errorf("client %s: arcs sent %v received %v, want 0.75 0.25", n.Title, n.ArcSent, n.ArcReceived)
					}
					continue
				}
				got := [3]float64{n.ArcSuccess, n.ArcErrors, n.ArcConnFailed}
				if got != tc.want || n.ArcSent+n.ArcReceived != 0 {
					t.Errorf("server arcs (success, errors, connections failed) = %v, sent+received %v; want %v, 0",
						got, n.ArcSent+n.ArcReceived, tc.want)
				}
			}
			if len(ng.Edges) != 1 || ng.Edges[0].Color != tc.wantColor {
				t.Fatalf("edges %+v, want one coloured %s", ng.Edges, tc.wantColor)
			}
		})
	}
}
