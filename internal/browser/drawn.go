package browser

import (
	"sort"

	"github.com/flowmap/flowmap/topology"
)

// Drawn is what the live map holds: its nodes (not the host and namespace
// boxes) and its edges, each sorted by ID.
type Drawn struct {
	Nodes []string `json:"nodes"`
	Edges []string `json:"edges"`
}

// DrawnJS is a JavaScript expression for what the page draws, as a Drawn.
const DrawnJS = `(() => {
	const cy = flowmap.cy;
	return {nodes: cy.nodes().filter(n => !n.isParent()).map(n => n.id()).sort(),
		edges: cy.edges().filter(e => !e.hasClass('removed')).map(e => e.id()).sort()};
})()`

// SnapshotDrawn is what the page should draw for the API's snapshot s.
func SnapshotDrawn(s *topology.Snapshot) Drawn {
	var d Drawn
	for _, n := range s.Nodes {
		d.Nodes = append(d.Nodes, n.ID)
	}
	for _, e := range s.Edges {
		d.Edges = append(d.Edges, e.ID)
	}
	sort.Strings(d.Nodes)
	sort.Strings(d.Edges)
	return d
}
