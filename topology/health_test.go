package topology

import (
	"bytes"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/flowmap/flowmap/model"
)

func healthFlow(port uint16, h *model.Health) model.Flow {
	return model.Flow{
		Record: model.Record{Src: netip.MustParseAddr("198.51.100.2"), Dst: netip.MustParseAddr("198.51.100.3"),
			Proto: model.ProtoTCP, SrcPort: 40000, DstPort: port, Health: h},
		SrcEndpoint: model.Endpoint{Kind: model.KindContainer, ID: "web", Name: "web"},
		DstEndpoint: model.Endpoint{Kind: model.KindContainer, ID: "db", Name: "db"},
	}
}

// TestHealthEdges: an edge's health is the sum of its flows', with the
// dominant failure, in the JSON document and the table.
func TestHealthEdges(t *testing.T) {
	g := New(Options{})
	now := time.Date(2026, 11, 25, 9, 0, 0, 0, time.UTC)
	in := &model.Health{Attempts: 2, Refused: 2, Drops: map[string]uint64{"NO_SOCKET": 2}}
	g.Add(now, healthFlow(5432, in), healthFlow(5432, &model.Health{Attempts: 1, Refused: 1}))
	g.Add(now, healthFlow(9, &model.Health{Attempts: 2, SYNRetries: 4, TimedOut: 2, Drops: map[string]uint64{"NETFILTER_DROP": 6}}))
	g.Add(now, healthFlow(80, &model.Health{Attempts: 1, Established: 1, Closed: 1}))
	s := g.Snapshot(now.Add(time.Second), LevelContainer, time.Minute)
	want := map[uint16]struct {
		failure string
		ratio   float64
		label   string
	}{
		5432: {"refused", 0, "refused 3/3 drop:NO_SOCKET 2"},
		9:    {"drop:NETFILTER_DROP", 0, "drop:NETFILTER_DROP 6 timeout 2/2"},
		80:   {"", 1, "ok"},
	}
	for _, e := range s.Edges {
		w := want[e.Port]
		if e.Health == nil {
			t.Fatalf("edge %s: no health", e.ID)
		}
		if e.Health.Failure != w.failure || e.Health.SuccessRatio != w.ratio {
			t.Errorf("edge %s: failure %q ratio %v, want %q %v", e.ID, e.Health.Failure, e.Health.SuccessRatio, w.failure, w.ratio)
		}
		if got := healthLabel(e.Health); got != w.label {
			t.Errorf("edge %s: label %q, want %q", e.ID, got, w.label)
		}
	}
	if in.Refused != 2 || in.Drops["NO_SOCKET"] != 2 {
		t.Errorf("the graph changed a flow's health: %+v", in)
	}
	var buf bytes.Buffer
	if err := WriteTable(&buf, s); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(buf.String(), "refused 3/3") {
		t.Errorf("table has no health column:\n%s", buf.String())
	}
	buf.Reset()
	if err := WriteDOT(&buf, s); err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(buf.String(), "\n") {
		if !strings.Contains(line, "->") {
			continue
		}
		red := strings.Contains(line, `color="#c0392b"`)
		dashed := strings.Contains(line, "style=dashed")
		switch {
		case strings.Contains(line, "tcp/5432") && (!red || dashed || !strings.Contains(line, "refused 3/3")):
			t.Errorf("refused edge: want red, solid, labelled refused: %s", line)
		case strings.Contains(line, "tcp/9") && (!red || !dashed):
			t.Errorf("timed-out edge: want red and dashed: %s", line)
		case strings.Contains(line, "tcp/80") && (red || dashed):
			t.Errorf("healthy edge: want neither red nor dashed: %s", line)
		}
	}
}
