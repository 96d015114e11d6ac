package topology

import (
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"
)

// DefaultFactor is the factor by which an edge's rate or error ratio must
// move for a diff to call it changed.
const DefaultFactor = 2

// Floors under which a diff calls a rate or an error ratio nothing: an edge
// going from 0.1 B/s to 1 B/s, or from no errors to one in a thousand, is
// noise, not a change.
const (
	rateFloor  = 1    // bytes per second
	ratioFloor = 0.01 // errors per request
)

// The changes a diff reports.
const (
	ChangeAdded   = "added"   // in the snapshot, not in the baseline
	ChangeRemoved = "removed" // in the baseline, not in the snapshot
	ChangeRate    = "rate"    // its bytes per second moved by more than the factor
	ChangeErrors  = "errors"  // its L7 error ratio moved by more than the factor
)

// Diff is what changed from a baseline snapshot to a newer one of the same
// level: the JSON document of GET /api/v1/graph/diff.
type Diff struct {
	Version int   `json:"version"`
	Level   Level `json:"level"`
	// Window is the newer snapshot's span, Baseline the older one's.
	Window   Window  `json:"window"`
	Baseline Window  `json:"baseline"`
	Factor   float64 `json:"factor"`
	// Nodes are the nodes added or removed, Edges the edges added, removed
	// or changed, each sorted by ID.
	Nodes []NodeChange `json:"nodes"`
	Edges []EdgeChange `json:"edges"`
}

// NodeChange is a node that appeared or vanished.
type NodeChange struct {
	ID string `json:"id"`
	// Change is added or removed.
	Change string `json:"change"`
	Node   Node   `json:"node"`
}

// EdgeChange is an edge that appeared, vanished or moved.
type EdgeChange struct {
	ID     string `json:"id"`
	Source string `json:"source"`
	Target string `json:"target"`
	// Changes are added, removed, or one or both of rate and errors.
	Changes []string `json:"changes"`
	// Rate is bytes per second both ways, ErrorRatio L7 errors per request
	// (0 without L7), before (in the baseline) and after.
	RateBefore       float64 `json:"rate_before"`
	RateAfter        float64 `json:"rate_after"`
	ErrorRatioBefore float64 `json:"error_ratio_before"`
	ErrorRatioAfter  float64 `json:"error_ratio_after"`
}

// errorRatio returns an edge's L7 errors per request, 0 without L7.
func errorRatio(e *Edge) float64 {
	if e.L7 == nil || e.L7.Requests == 0 {
		return 0
	}
	return float64(e.L7.Errors) / float64(e.L7.Requests)
}

// moved reports whether a and b, each floored, differ by more than factor.
func moved(a, b, floor, factor float64) bool {
	a, b = max(a, floor), max(b, floor)
	return a > b*factor || b > a*factor
}

// Compare returns what changed from base to s, which should be of the same
// level: edges are told by their IDs, which name their nodes. A factor
// below 1 is DefaultFactor.
func Compare(base, s *Snapshot, factor float64) *Diff {
	if factor <= 1 {
		factor = DefaultFactor
	}
	d := &Diff{Version: Version, Level: s.Level, Window: s.Window, Baseline: base.Window, Factor: factor,
		Nodes: []NodeChange{}, Edges: []EdgeChange{}}
	nodes := func(ns []Node) map[string]*Node {
		m := make(map[string]*Node, len(ns))
		for i := range ns {
			m[ns[i].ID] = &ns[i]
		}
		return m
	}
	before, after := nodes(base.Nodes), nodes(s.Nodes)
	for id, n := range after {
		if before[id] == nil {
			d.Nodes = append(d.Nodes, NodeChange{ID: id, Change: ChangeAdded, Node: *n})
		}
	}
	for id, n := range before {
		if after[id] == nil {
			d.Nodes = append(d.Nodes, NodeChange{ID: id, Change: ChangeRemoved, Node: *n})
		}
	}

	edges := func(es []Edge) map[string]*Edge {
		m := make(map[string]*Edge, len(es))
		for i := range es {
			m[es[i].ID] = &es[i]
		}
		return m
	}
	eb, ea := edges(base.Edges), edges(s.Edges)
	bs, as := base.Window.Seconds(), s.Window.Seconds()
	for id, e := range ea {
		c := EdgeChange{ID: id, Source: e.Source, Target: e.Target,
			RateAfter: float64(e.Bytes()) / as, ErrorRatioAfter: errorRatio(e)}
		o := eb[id]
		if o == nil {
			c.Changes = []string{ChangeAdded}
			d.Edges = append(d.Edges, c)
			continue
		}
		c.RateBefore, c.ErrorRatioBefore = float64(o.Bytes())/bs, errorRatio(o)
		if moved(c.RateBefore, c.RateAfter, rateFloor, factor) {
			c.Changes = append(c.Changes, ChangeRate)
		}
		if moved(c.ErrorRatioBefore, c.ErrorRatioAfter, ratioFloor, factor) {
			c.Changes = append(c.Changes, ChangeErrors)
		}
		if c.Changes != nil {
			d.Edges = append(d.Edges, c)
		}
	}
	for id, o := range eb {
		if ea[id] == nil {
			d.Edges = append(d.Edges, EdgeChange{ID: id, Source: o.Source, Target: o.Target, Changes: []string{ChangeRemoved},
				RateBefore: float64(o.Bytes()) / bs, ErrorRatioBefore: errorRatio(o)})
		}
	}
	sort.Slice(d.Nodes, func(i, j int) bool { return d.Nodes[i].ID < d.Nodes[j].ID })
	sort.Slice(d.Edges, func(i, j int) bool { return d.Edges[i].ID < d.Edges[j].ID })
	return d
}

// ParseSince returns the end of a diff's baseline window from since, a
// duration before now ("10m") or a time (RFC 3339).
func ParseSince(since string, now time.Time) (time.Time, error) {
	if d, err := time.ParseDuration(since); err == nil {
		if d <= 0 {
			return time.Time{}, fmt.Errorf("since %q: want a positive duration", since)
		}
		return now.Add(-d), nil
	}
	t, err := time.Parse(time.RFC3339, since)
	if err != nil {
		return time.Time{}, fmt.Errorf("since %q: want a duration (10m) or an RFC 3339 time", since)
	}
	if t.After(now) {
		return time.Time{}, fmt.Errorf("since %q: in the future", since)
	}
	return t, nil
}

// WriteDiffJSON writes the diff as JSON.
func WriteDiffJSON(w io.Writer, d *Diff) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(d); err != nil {
		return fmt.Errorf("write diff json: %w", err)
	}
	return nil
}

// ReadDiffJSON reads what WriteDiffJSON wrote. It fails on a document of
// another version.
func ReadDiffJSON(r io.Reader) (*Diff, error) {
	var d Diff
	if err := json.NewDecoder(r).Decode(&d); err != nil {
		return nil, fmt.Errorf("read diff json: %w", err)
	}
	if d.Version != Version {
		return nil, fmt.Errorf("read diff json: version %d, want %d", d.Version, Version)
	}
	return &d, nil
}

// WriteDiffTable writes the diff as a text table for a terminal: nodes,
// then edges, each in ID order.
func WriteDiffTable(w io.Writer, d *Diff) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "%s level, last %s (%s to %s UTC) against %s to %s UTC, factor %g:\n\n", d.Level, d.Window.Name,
		d.Window.Start.UTC().Format(time.TimeOnly), d.Window.End.UTC().Format(time.TimeOnly),
		d.Baseline.Start.UTC().Format(time.TimeOnly), d.Baseline.End.UTC().Format(time.TimeOnly), d.Factor)
	if len(d.Nodes)+len(d.Edges) == 0 {
		fmt.Fprintln(tw, "no change")
	}
	if len(d.Nodes) > 0 {
		fmt.Fprintln(tw, "NODE\tKIND\tCHANGE")
		for _, n := range d.Nodes {
			fmt.Fprintf(tw, "%s\t%s\t%s\n", n.ID, n.Node.Kind, n.Change)
		}
		fmt.Fprintln(tw)
	}
	if len(d.Edges) > 0 {
		fmt.Fprintln(tw, "EDGE\tCHANGE\tRATE BEFORE\tRATE AFTER\tERRORS BEFORE\tERRORS AFTER")
		for _, e := range d.Edges {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%.1f%%\t%.1f%%\n", e.ID, strings.Join(e.Changes, ","),
				Rate(e.RateBefore), Rate(e.RateAfter), 100*e.ErrorRatioBefore, 100*e.ErrorRatioAfter)
		}
	}
	if err := tw.Flush(); err != nil {
		return fmt.Errorf("write diff table: %w", err)
	}
	return nil
}
