package topology

import (
	"bytes"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/flowmap/flowmap/model"
)

// synth is a snapshot of a 100 s window with the edges given, and the
// nodes they name.
func synth(edges ...Edge) *Snapshot {
	s := &Snapshot{Version: Version, Level: LevelWorkload,
		Window: Window{Name: "1m", Start: t0.Add(-100 * time.Second), End: t0}}
	seen := map[string]bool{}
	for _, e := range edges {
		for _, id := range []string{e.Source, e.Target} {
			if !seen[id] {
				seen[id] = true
				s.Nodes = append(s.Nodes, Node{ID: id, Kind: KindWorkload, Name: id})
			}
		}
		e.Protocol, e.Port = model.ProtoTCP, 80
		e.ID = edgeID(&e)
		s.Edges = append(s.Edges, e)
	}
	return s
}

// synthEdge is an edge of bytes (a rate of bytes/100 B/s) and, if
// requests > 0, of L7 requests of which errors failed.
func synthEdge(src, dst string, bytes, requests, errors uint64) Edge {
	e := Edge{Source: src, Target: dst, Forward: Traffic{Bytes: bytes / 2}, Reverse: Traffic{Bytes: bytes - bytes/2}}
	if requests > 0 {
		e.L7 = &L7{Protocol: "http", Requests: requests, Errors: errors}
	}
	return e
}

func TestCompare(t *testing.T) {
	for _, tc := range []struct {
		name        string
		base, after *Snapshot
		factor      float64
		nodes       []string // "id change"
		edges       []string // "id changes"
	}{
		{name: "same",
			base:  synth(synthEdge("a", "b", 10000, 0, 0)),
			after: synth(synthEdge("a", "b", 10000, 0, 0))},
		{name: "new edge and node",
			base:  synth(synthEdge("a", "b", 10000, 0, 0)),
			after: synth(synthEdge("a", "b", 10000, 0, 0), synthEdge("a", "c", 500, 0, 0)),
			nodes: []string{"c added"}, edges: []string{"a -> c tcp/80 added"}},
		{name: "vanished edge and node",
			base:  synth(synthEdge("a", "b", 10000, 0, 0), synthEdge("c", "b", 500, 0, 0)),
			after: synth(synthEdge("a", "b", 10000, 0, 0)),
			nodes: []string{"c removed"}, edges: []string{"c -> b tcp/80 removed"}},
		{name: "rate up past the factor",
			base:  synth(synthEdge("a", "b", 10000, 0, 0)),
			after: synth(synthEdge("a", "b", 20001, 0, 0)),
			edges: []string{"a -> b tcp/80 rate"}},
		{name: "rate up to the factor",
			base:  synth(synthEdge("a", "b", 10000, 0, 0)),
			after: synth(synthEdge("a", "b", 20000, 0, 0))},
		{name: "rate down past the factor",
			base:  synth(synthEdge("a", "b", 10000, 0, 0)),
			after: synth(synthEdge("a", "b", 4000, 0, 0)),
			edges: []string{"a -> b tcp/80 rate"}},
		{name: "rate down within a larger factor",
			base:   synth(synthEdge("a", "b", 10000, 0, 0)),
			after:  synth(synthEdge("a", "b", 4000, 0, 0)),
			factor: 3},
		{name: "rates under the floor",
			base:  synth(synthEdge("a", "b", 10, 0, 0)),
			after: synth(synthEdge("a", "b", 90, 0, 0))},
		{name: "errors appear",
			base:  synth(synthEdge("a", "b", 10000, 100, 0)),
			after: synth(synthEdge("a", "b", 10000, 100, 10)),
			edges: []string{"a -> b tcp/80 errors"}},
		{name: "errors under the floor",
			base:  synth(synthEdge("a", "b", 10000, 1000, 0)),
			after: synth(synthEdge("a", "b", 10000, 1000, 5))},
		{name: "rate and errors",
			base:  synth(synthEdge("a", "b", 10000, 100, 50)),
			after: synth(synthEdge("a", "b", 100000, 100, 5)),
			edges: []string{"a -> b tcp/80 rate,errors"}},
		{name: "from nothing",
			base:  synth(),
			after: synth(synthEdge("a", "b", 10000, 0, 0)),
			nodes: []string{"a added", "b added"}, edges: []string{"a -> b tcp/80 added"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := Compare(tc.base, tc.after, tc.factor)
			var nodes, edges []string
			for _, n := range d.Nodes {
				nodes = append(nodes, n.ID+" "+n.Change)
			}
			for _, e := range d.Edges {
				edges = append(edges, e.ID+" "+strings.Join(e.Changes, ","))
			}
			if !slices.Equal(nodes, tc.nodes) {
				t.Errorf("node changes %q, want %q", nodes, tc.nodes)
			}
			if !slices.Equal(edges, tc.edges) {
				t.Errorf("edge changes %q, want %q", edges, tc.edges)
			}
			want := tc.factor
			if want == 0 {
				want = DefaultFactor
			}
			if d.Factor != want {
				t.Errorf("factor %g, want %g", d.Factor, want)
			}
		})
	}
}

func TestParseSince(t *testing.T) {
	for _, tc := range []struct {
		since string
		want  time.Time
		err   string
	}{
		{since: "10m", want: t0.Add(-10 * time.Minute)},
		{since: "2026-11-25T08:30:00Z", want: t0.Add(-30 * time.Minute)},
		{since: "-5m", err: "positive"},
		{since: "2026-11-25T10:00:00Z", err: "future"},
		{since: "yesterday", err: "RFC 3339"},
	} {
		got, err := ParseSince(tc.since, t0)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("ParseSince(%q) error %v, want one saying %q", tc.since, err, tc.err)
			}
			continue
		}
		if err != nil || !got.Equal(tc.want) {
			t.Errorf("ParseSince(%q) = %s, %v, want %s", tc.since, got, err, tc.want)
		}
	}
}

// TestHandlerDiff compares the fixed graph's last 5 minutes with the 5
// minutes before: the web to api edge stays, prometheus's scrape of web
// vanishes, the rest is new.
func TestHandlerDiff(t *testing.T) {
	h := &handler{g: fixture(), log: slog.New(slog.NewTextHandler(io.Discard, nil)), now: func() time.Time { return t0 }}
	srv := httptest.NewServer(h.routes())
	defer srv.Close()
	for _, tc := range []struct {
		query string
		code  int
		edges []string // "id changes"
	}{
		{query: "?since=5m&window=5m", code: 200, edges: []string{
			"host:n1 -> workload:shop/web tcp/8080 added",
			"unknown:198.51.100.77 -> workload:shop/web tcp/22 added",
			"workload:monitoring/prometheus -> workload:shop/web tcp/9090 removed",
			"workload:shop/api -> external:203.0.113.10 tcp/443 added",
			"workload:shop/web -> workload:shop/db tcp/5432 added",
			"workload:shop/web -> workload:shop/db udp/53 added",
		}},
		{query: "?since=" + t0.Add(-5*time.Minute).Format(time.RFC3339) + "&window=5m", code: 200, edges: []string{
			"host:n1 -> workload:shop/web tcp/8080 added",
			"unknown:198.51.100.77 -> workload:shop/web tcp/22 added",
			"workload:monitoring/prometheus -> workload:shop/web tcp/9090 removed",
			"workload:shop/api -> external:203.0.113.10 tcp/443 added",
			"workload:shop/web -> workload:shop/db tcp/5432 added",
			"workload:shop/web -> workload:shop/db udp/53 added",
		}},
		{query: "?since=1m&window=15m&level=namespace", code: 200},
		{query: "?since=1m&window=1h", code: 400},
		{query: "", code: 400},
		{query: "?since=1h&window=5m", code: 400},
		{query: "?since=5m&factor=1", code: 400},
		{query: "?since=5m&level=cluster", code: 400},
	} {
		t.Run(tc.query, func(t *testing.T) {
			resp, err := http.Get(srv.URL + "/api/v1/graph/diff" + tc.query)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tc.code {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tc.code, body)
			}
			if tc.code != 200 {
				return
			}
			d, err := ReadDiffJSON(bytes.NewReader(body))
			if err != nil {
				t.Fatal(err)
			}
			var edges []string
			for _, e := range d.Edges {
				edges = append(edges, e.ID+" "+strings.Join(e.Changes, ","))
			}
			if tc.edges != nil && !slices.Equal(edges, tc.edges) {
				t.Errorf("edge changes\n%s\nwant\n%s", strings.Join(edges, "\n"), strings.Join(tc.edges, "\n"))
			}
			if got, want := d.Baseline.End, d.Window.End.Add(-5*time.Minute); tc.edges != nil && !got.Equal(want) {
				t.Errorf("baseline ends %s, want %s", got, want)
			}
		})
	}
}
