package topology

import (
	"fmt"
	"io"
	"math"
	"strings"
)

// NodeGraph is a snapshot as the two data frames that Grafana's node graph
// panel reads, one row an object: Nodes (id, title, subtitle, mainstat,
// secondarystat, arc__*, detail__*) and Edges (id, source, target, mainstat,
// secondarystat, thickness, detail__*). See
// https://grafana.com/docs/grafana/latest/panels-visualizations/visualizations/node-graph/#data-api
//
// The Infinity data source reads each array as a frame (format "Nodes -
// Node Graph" and "Edges - Node Graph"); the Node Graph API data source
// reads the whole document, with NodeGraphFields.
type NodeGraph struct {
	Nodes []NodeGraphNode `json:"nodes"`
	Edges []NodeGraphEdge `json:"edges"`
}

// NodeGraphNode is a row of the nodes frame.
type NodeGraphNode struct {
	ID       string `json:"id"`
	Title    string `json:"title"`
	Subtitle string `json:"subtitle"`
	// MainStat is the bytes per second the node sent and received.
	MainStat float64 `json:"mainstat"`
	// SecondaryStat is the TCP connections per second it opened or took.
	SecondaryStat float64 `json:"secondarystat"`
	// The arcs around the node add up to 1. A node that answered, as a
	// server (its incoming edges have L7 responses, or TCP handshakes that
	// ended, established, refused or timed out), shows how what its
	// clients asked ended: ArcConnFailed the share of their connections
	// that were refused or timed out, ArcErrors the share that were
	// established but whose responses failed (the share of established
	// connections times that of failed responses, see L7.Errors), and
	// ArcSuccess the rest; with zero sent and received. Any other node
	// shows ArcSent and ArcReceived, the shares of its bytes it sent and
	// received (an idle node's are 0 and 1), and zero success and
	// failures.
	ArcSuccess      float64 `json:"arc__success"`
	ArcErrors       float64 `json:"arc__errors"`
	ArcConnFailed   float64 `json:"arc__connections_failed"`
	ArcSent         float64 `json:"arc__sent"`
	ArcReceived     float64 `json:"arc__received"`
	DetailKind      string  `json:"detail__kind"`
	DetailNamespace string  `json:"detail__namespace"`
	DetailHost      string  `json:"detail__host"`
	DetailAddrs     string  `json:"detail__addrs"`
}

// NodeGraphEdge is a row of the edges frame.
type NodeGraphEdge struct {
	ID     string `json:"id"`
	Source string `json:"source"`
	Target string `json:"target"`
	// MainStat is the bytes per second both ways.
	MainStat float64 `json:"mainstat"`
	// SecondaryStat is the TCP connections opened per second.
	SecondaryStat float64 `json:"secondarystat"`
	// Thickness is 1 to 6, by the log of the edge's bytes to the most any
	// edge has.
	Thickness          float64 `json:"thickness"`
	DetailProtocol     string  `json:"detail__protocol"`
	DetailPort         int     `json:"detail__port"`
	DetailBytesForward uint64  `json:"detail__bytes_forward"`
	DetailBytesReverse uint64  `json:"detail__bytes_reverse"`
	DetailConnections  uint64  `json:"detail__connections"`
	DetailRTTMean      float64 `json:"detail__rtt_mean_seconds"`
	// L7 (topology/l7.go): the edge's application protocol, requests per
	// second, share of failed responses and latency; Color is green to
	// red by the share of responses that succeeded.
	DetailL7Protocol string  `json:"detail__l7_protocol"`
	DetailRequests   float64 `json:"detail__requests_per_second"`
	DetailErrorRatio float64 `json:"detail__error_ratio"`
	DetailP50        float64 `json:"detail__latency_p50_seconds"`
	DetailP99        float64 `json:"detail__latency_p99_seconds"`
	// Health (topology/health.go): the share of the connections that
	// ended their handshake that were established, the dominant failure,
	// packets dropped and the mean smoothed RTT of local sockets; 1, "",
	// 0, 0 without health.
	DetailConnSuccess float64 `json:"detail__connection_success_ratio"`
	DetailFailure     string  `json:"detail__failure"`
	DetailDrops       uint64  `json:"detail__drops"`
	DetailSRTT        float64 `json:"detail__srtt_mean_seconds"`
	// Color is green to red by the share of what the client asked that
	// succeeded: of its connections established, times that of its L7
	// responses; "" where there was neither.
	Color string `json:"color"`
}

// Field is a node graph frame's field as the Node Graph API data source
// lists it on /api/graph/fields.
type Field struct {
	Name        string `json:"field_name"`
	Type        string `json:"type"` // string or number
	DisplayName string `json:"displayName,omitempty"`
	Color       string `json:"color,omitempty"`
}

// NodeGraphFields are the fields of the nodes and edges frames, in the
// Node Graph API data source's form.
type NodeGraphFields struct {
	Nodes []Field `json:"nodes_fields"`
	Edges []Field `json:"edges_fields"`
}

// Fields returns the frames' fields.
func Fields() NodeGraphFields {
	return NodeGraphFields{
		Nodes: []Field{
			{Name: "id", Type: "string"},
			{Name: "title", Type: "string"},
			{Name: "subtitle", Type: "string"},
			{Name: "mainstat", Type: "number", DisplayName: "bytes/s"},
			{Name: "secondarystat", Type: "number", DisplayName: "connections/s"},
			{Name: "arc__success", Type: "number", DisplayName: "responses succeeded", Color: "green"},
			{Name: "arc__errors", Type: "number", DisplayName: "responses failed", Color: "red"},
			{Name: "arc__connections_failed", Type: "number", DisplayName: "connections refused or timed out", Color: "orange"},
			{Name: "arc__sent", Type: "number", DisplayName: "sent", Color: "blue"},
			{Name: "arc__received", Type: "number", DisplayName: "received", Color: "purple"},
			{Name: "detail__kind", Type: "string", DisplayName: "kind"},
			{Name: "detail__namespace", Type: "string", DisplayName: "namespace"},
			{Name: "detail__host", Type: "string", DisplayName: "host"},
			{Name: "detail__addrs", Type: "string", DisplayName: "addresses"},
		},
		Edges: []Field{
			{Name: "id", Type: "string"},
			{Name: "source", Type: "string"},
			{Name: "target", Type: "string"},
			{Name: "mainstat", Type: "number", DisplayName: "bytes/s"},
			{Name: "secondarystat", Type: "number", DisplayName: "connections/s"},
			{Name: "thickness", Type: "number"},
			{Name: "detail__protocol", Type: "string", DisplayName: "protocol"},
			{Name: "detail__port", Type: "number", DisplayName: "port"},
			{Name: "detail__bytes_forward", Type: "number", DisplayName: "bytes client to server"},
			{Name: "detail__bytes_reverse", Type: "number", DisplayName: "bytes server to client"},
			{Name: "detail__connections", Type: "number", DisplayName: "connections"},
			{Name: "detail__rtt_mean_seconds", Type: "number", DisplayName: "handshake RTT (mean, s)"},
			{Name: "detail__l7_protocol", Type: "string", DisplayName: "application protocol"},
			{Name: "detail__requests_per_second", Type: "number", DisplayName: "requests/s"},
			{Name: "detail__error_ratio", Type: "number", DisplayName: "failed responses (share)"},
			{Name: "detail__latency_p50_seconds", Type: "number", DisplayName: "latency p50 (s)"},
			{Name: "detail__latency_p99_seconds", Type: "number", DisplayName: "latency p99 (s)"},
			{Name: "detail__connection_success_ratio", Type: "number", DisplayName: "connections established (share)"},
			{Name: "detail__failure", Type: "string", DisplayName: "failure"},
			{Name: "detail__drops", Type: "number", DisplayName: "packets dropped"},
			{Name: "detail__srtt_mean_seconds", Type: "number", DisplayName: "smoothed RTT (mean, s)"},
			{Name: "color", Type: "string"},
		},
	}
}

// ToNodeGraph returns the snapshot as node graph frames. Rates are per
// second of the span the snapshot covers.
func ToNodeGraph(s *Snapshot) *NodeGraph {
	secs := s.Window.Seconds()
	ng := &NodeGraph{Nodes: make([]NodeGraphNode, len(s.Nodes)), Edges: make([]NodeGraphEdge, len(s.Edges))}
	type sums struct {
		sent, received, conns uint64
		// responses and errors are the L7 ones of the incoming edges;
		// ended and failed their TCP handshakes that ended, and of those
		// refused or timed out.
		responses, errors uint64
		ended, failed     uint64
	}
	byNode := make(map[string]*sums, len(s.Nodes))
	for i := range s.Nodes {
		byNode[s.Nodes[i].ID] = &sums{}
	}
	var most uint64
	for i := range s.Edges {
		most = max(most, s.Edges[i].Bytes())
	}
	for i := range s.Edges {
		e := &s.Edges[i]
		if src := byNode[e.Source]; src != nil {
			src.sent += e.Forward.Bytes
			src.received += e.Reverse.Bytes
			src.conns += e.Connections
		}
		if dst := byNode[e.Target]; dst != nil && e.Target != e.Source {
			dst.sent += e.Reverse.Bytes
			dst.received += e.Forward.Bytes
			dst.conns += e.Connections
		}
		if dst := byNode[e.Target]; dst != nil && e.L7 != nil {
			dst.responses += e.L7.Responses
			dst.errors += e.L7.Errors
		}
		if dst := byNode[e.Target]; dst != nil && e.Health != nil {
			dst.ended += e.Health.Established + e.Health.Refused + e.Health.TimedOut
			dst.failed += e.Health.Refused + e.Health.TimedOut
		}
		thick := 1.0
		if most > 0 {
			thick += 5 * math.Log1p(float64(e.Bytes())) / math.Log1p(float64(most))
		}
		ge := NodeGraphEdge{
			ID: e.ID, Source: e.Source, Target: e.Target,
			MainStat:           round(float64(e.Bytes()) / secs),
			SecondaryStat:      round(float64(e.Connections) / secs),
			Thickness:          round(thick),
			DetailProtocol:     e.Protocol.String(),
			DetailPort:         int(e.Port),
			DetailBytesForward: e.Forward.Bytes,
			DetailBytesReverse: e.Reverse.Bytes,
			DetailConnections:  e.Connections,
		}
		if e.RTT != nil {
			ge.DetailRTTMean = e.RTT.Mean.Seconds()
		}
		if l := e.L7; l != nil {
			ge.DetailL7Protocol = l.Protocol
			ge.DetailRequests = round(float64(l.Requests) / secs)
			if ok, has := l.SuccessRatio(); has {
				ge.DetailErrorRatio = round(1 - ok)
			}
			if l.Latency != nil {
				ge.DetailP50 = l.Latency.P50.Seconds()
				ge.DetailP99 = l.Latency.P99.Seconds()
			}
		}
		ge.DetailConnSuccess = 1
		if h := e.Health; h != nil {
			ge.DetailConnSuccess = round(h.SuccessRatio)
			ge.DetailFailure = h.Failure
			ge.DetailDrops = h.Dropped()
			ge.DetailSRTT = h.SRTT.Seconds()
		}
		ge.Color = edgeColor(e)
		ng.Edges[i] = ge
	}
	for i := range s.Nodes {
		n := &s.Nodes[i]
		m := byNode[n.ID]
		gn := NodeGraphNode{
			ID: n.ID, Title: n.Name, Subtitle: subtitle(n),
			MainStat:      round(float64(m.sent+m.received) / secs),
			SecondaryStat: round(float64(m.conns) / secs),
			ArcReceived:   1,
			DetailKind:    string(n.Kind), DetailNamespace: n.Namespace, DetailHost: n.Host,
		}
		switch t := m.sent + m.received; {
		case m.responses > 0 || m.ended > 0:
			connOK, reqErr := 1.0, 0.0
			if m.ended > 0 {
				connOK = float64(m.ended-min(m.failed, m.ended)) / float64(m.ended)
			}
			if m.responses > 0 {
				reqErr = float64(min(m.errors, m.responses)) / float64(m.responses)
			}
			gn.ArcReceived = 0
			gn.ArcConnFailed = round(1 - connOK)
			gn.ArcErrors = round(connOK * reqErr)
			gn.ArcSuccess = round(1 - gn.ArcConnFailed - gn.ArcErrors)
		case t > 0:
			gn.ArcSent = round(float64(m.sent) / float64(t))
			gn.ArcReceived = round(1 - gn.ArcSent)
		}
		addrs := make([]string, len(n.Addrs))
		for j, a := range n.Addrs {
			addrs[j] = a.String()
		}
		gn.DetailAddrs = strings.Join(addrs, " ")
		ng.Nodes[i] = gn
	}
	return ng
}

// edgeColor is an edge's color: green where at least 99% of what its
// clients asked succeeded (connections established, times L7 responses
// that did not fail), orange from 90%, red below; where it had neither
// handshakes that ended nor L7 responses, red if it failed otherwise (ICMP
// errors, drops), else "".
func edgeColor(e *Edge) string {
	ok, has := 1.0, false
	if e.L7 != nil {
		if r, h := e.L7.SuccessRatio(); h {
			ok, has = r, true
		}
	}
	if h := e.Health; h != nil && h.Established+h.Refused+h.TimedOut > 0 {
		ok, has = ok*h.SuccessRatio, true
	}
	switch {
	case !has && e.Health.Failing():
		return "red" // ICMP errors or drops, on an edge with no handshake
	case !has:
		return ""
	case ok >= 0.99:
		return "green"
	case ok >= 0.9:
		return "orange"
	}
	return "red"
}

// subtitle says what a node is and where.
func subtitle(n *Node) string {
	s := string(n.Kind)
	if n.Namespace != "" && n.Kind != KindNamespace {
		s += " in " + n.Namespace
	}
	return s
}

// round keeps 4 decimals, so that documents do not differ in the last
// bits of a division.
func round(f float64) float64 { return math.Round(f*1e4) / 1e4 }

// WriteNodeGraph writes the snapshot's node graph frames as JSON.
// It writes a node or an edge at a time, never the whole document at once.
func WriteNodeGraph(w io.Writer, s *Snapshot) error {
	if err := writeNodeGraph(newJSONStream(w, "  "), ToNodeGraph(s)); err != nil {
		return fmt.Errorf("write node graph: %w", err)
	}
	return nil
}

func writeNodeGraph(j *jsonStream, ng *NodeGraph) error {
	return j.object(struct{}{}, []string{"nodes", "edges"},
		func() { array(j, ng.Nodes, 1) }, func() { array(j, ng.Edges, 1) })
}
