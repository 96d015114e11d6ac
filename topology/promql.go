package topology

import (
	"context"
	"fmt"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/api"
	promv1 "github.com/prometheus/client_golang/api/prometheus/v1"
	pmodel "github.com/prometheus/common/model"

	"github.com/flowmap/flowmap/model"
)

// PromQL builds snapshots of a whole cluster from the flow series that its
// agents export (see Metrics), through the HTTP API of Prometheus or of
// anything that speaks it (Thanos, Mimir, VictoriaMetrics).
//
// Each agent reports a flow only if it is the one to (see Reporting once,
// in prometheus.go), so the series of all agents are summed as they are.
// A window's count of a series is its increase over the window, exactly
// where the series was not reset in it (the value at the end less the value
// at the start, or all of it for a series born in the window), and where it
// was, as an agent that restarted, PromQL's increase(), which handles the
// reset and extrapolates to the window's ends. A series that went stale (its
// agent is down) counts what it gained while its samples are in the window,
// and then nothing: its edges leave the snapshot with the window.
type PromQL struct {
	// URL is the base URL of the API, as http://prometheus:9090.
	URL string
	// Client is the HTTP client; nil is http.DefaultClient.
	Client *http.Client
	// Selector is extra label matchers for every series, as `job="flowmap"`;
	// "" selects all.
	Selector string
}

// increase returns the PromQL of the increase of the counter name over w,
// summed by the edge labels and extra.
func (p *PromQL) increase(name, extra string, w time.Duration) string {
	sel := name + "{" + p.Selector + "}"
	d := pmodel.Duration(w).String()
	by := strings.Join(flowEdgeLabels, ", ")
	if extra != "" {
		by += ", " + extra
	}
	return fmt.Sprintf("sum by (%[3]s) ((((%[1]s - %[1]s offset %[2]s) or %[1]s) unless (resets(%[1]s[%[2]s]) > 0)) or increase(%[1]s[%[2]s]))",
		sel, d, by)
}

// Snapshot builds the snapshot of the cluster at level over the window
// that ends at end. It fails if Prometheus does, or the series are not
// flowmap's. The series are at the level the agents' --metrics-level set;
// a snapshot at a coarser level rolls them up as Graph.Snapshot does
// (endpoints that lack what a level groups by stay as they are), and one at
// a finer level has the series' level. Edges' FirstSeen and LastSeen are
// the window's bounds: Prometheus keeps counts, not times.
func (p *PromQL) Snapshot(ctx context.Context, end time.Time, level Level, window time.Duration) (*Snapshot, error) {
	c, err := api.NewClient(api.Config{Address: p.URL, Client: p.Client})
	if err != nil {
		return nil, fmt.Errorf("prometheus client for %s: %w", p.URL, err)
	}
	v1 := promv1.NewAPI(c)
	query := func(q string) (pmodel.Vector, error) {
		v, _, _, err := v1.Query(ctx, q, end)
		if err != nil {
			return nil, fmt.Errorf("query %s at %s: %w", p.URL, q, err)
		}
		vec, ok := v.(pmodel.Vector)
		if !ok {
			return nil, fmt.Errorf("query %s at %s: got a %s, want a vector", p.URL, q, v.Type())
		}
		return vec, nil
	}

	// Where each endpoint runs.
	info, err := query(fmt.Sprintf("max by (kind, namespace, name, node) (max_over_time(flowmap_endpoint_info{%s}[%s]))",
		p.Selector, pmodel.Duration(window)))
	if err != nil {
		return nil, err
	}
	hosts := map[nodeLabels][]string{}
	for _, s := range info {
		k := nodeLabels{kind: string(s.Metric["kind"]), namespace: string(s.Metric["namespace"]), name: string(s.Metric["name"])}
		hosts[k] = append(hosts[k], string(s.Metric["node"]))
	}

	type key struct {
		edge  edgeLabels
		proto string
		port  string
	}
	type acc struct {
		Edge
		rttSum float64
		rttN   float64
	}
	edges := map[key]*acc{}
	get := func(m pmodel.Metric) *acc {
		k := key{
			edge:  parseEdgeLabels(func(name string) string { return string(m[pmodel.LabelName(name)]) }),
			proto: string(m["proto"]), port: string(m["port"]),
		}
		e := edges[k]
		if e == nil {
			e = &acc{}
			edges[k] = e
		}
		return e
	}
	for _, q := range []struct {
		name, by string
		add      func(e *acc, m pmodel.Metric, v uint64, f float64)
	}{
		{"flowmap_flow_bytes_total", "direction", func(e *acc, m pmodel.Metric, v uint64, _ float64) {
			if m["direction"] == "reverse" {
				e.Reverse.Bytes += v
			} else {
				e.Forward.Bytes += v
			}
		}},
		{"flowmap_flow_packets_total", "direction", func(e *acc, m pmodel.Metric, v uint64, _ float64) {
			if m["direction"] == "reverse" {
				e.Reverse.Packets += v
			} else {
				e.Forward.Packets += v
			}
		}},
		{"flowmap_tcp_connections_total", "outcome", func(e *acc, m pmodel.Metric, v uint64, _ float64) {
			// Connections are those attempted; an agent older than the
			// outcome label exported only them.
			if o := m["outcome"]; o == "attempted" || o == "" {
				e.Connections += v
			}
		}},
		{"flowmap_tcp_handshake_rtt_seconds_sum", "", func(e *acc, _ pmodel.Metric, _ uint64, f float64) { e.rttSum += f }},
		{"flowmap_tcp_handshake_rtt_seconds_count", "", func(e *acc, _ pmodel.Metric, _ uint64, f float64) { e.rttN += f }},
	} {
		vec, err := query(p.increase(q.name, q.by, window))
		if err != nil {
			return nil, err
		}
		for _, s := range vec {
			f := float64(s.Value)
			if f <= 0 {
				// Only bytes and packets make an edge; zeros are an idle edge.
				if q.name == "flowmap_flow_packets_total" || q.name == "flowmap_flow_bytes_total" {
					get(s.Metric)
				}
				continue
			}
			q.add(get(s.Metric), s.Metric, uint64(f+0.5), f)
		}
	}

	s := &Snapshot{Version: Version, Level: level, Window: Window{Name: windowName(window),
		Start: end.Add(-window).UTC(), End: end.UTC()}}
	nodes := map[string]int{}
	node := func(l nodeLabels) string {
		ep := labelsEndpoint(l, hosts[l])
		n := nodeOf(&ep, level)
		if i, ok := nodes[n.ID]; ok {
			s.Nodes[i].join(&n)
		} else {
			nodes[n.ID] = len(s.Nodes)
			s.Nodes = append(s.Nodes, n)
		}
		return n.ID
	}
	rolled := map[string]*acc{}
	var ids []string
	for k, e := range edges {
		if e.Forward.Packets+e.Reverse.Packets == 0 {
			continue
		}
		port, _ := strconv.ParseUint(k.port, 10, 16)
		var proto model.Proto
		if err := proto.UnmarshalText([]byte(k.proto)); err != nil {
			// The overflow series: past the agents' caps.
			proto = 0
		}
		e.Source, e.Target, e.Protocol, e.Port = node(k.edge.src), node(k.edge.dst), proto, uint16(port)
		e.ID = edgeID(&e.Edge)
		r := rolled[e.ID]
		if r == nil {
			r = &acc{Edge: Edge{ID: e.ID, Source: e.Source, Target: e.Target, Protocol: proto, Port: e.Port,
				FirstSeen: s.Window.Start, LastSeen: s.Window.End}}
			rolled[e.ID] = r
			ids = append(ids, e.ID)
		}
		r.Forward.Add(e.Forward)
		r.Reverse.Add(e.Reverse)
		r.Connections += e.Connections
		r.rttSum += e.rttSum
		r.rttN += e.rttN
	}
	sort.Strings(ids)
	s.Edges = make([]Edge, 0, len(ids))
	for _, id := range ids {
		r := rolled[id]
		if n := uint64(r.rttN + 0.5); n > 0 {
			r.RTT = &RTT{Samples: n, Mean: time.Duration(r.rttSum / r.rttN * 1e9)}
		}
		s.Edges = append(s.Edges, r.Edge)
	}
	if s.Nodes == nil {
		s.Nodes = []Node{}
	}
	sort.Slice(s.Nodes, func(i, j int) bool { return s.Nodes[i].ID < s.Nodes[j].ID })
	return s, nil
}

// labelsEndpoint returns the endpoint that a series' labels name, running
// on the nodes given (on one, it is the endpoint's Node).
func labelsEndpoint(l nodeLabels, nodes []string) model.Endpoint {
	ep := model.Endpoint{Kind: model.EndpointKind(l.kind), ID: l.name, Name: l.name, Namespace: l.namespace}
	if l.namespace != "" {
		ep.ID = l.namespace + "/" + l.name
	}
	switch ep.Kind {
	case KindWorkload:
		ep.Workload = l.name
	case model.KindHost:
		ep.Node = l.name
	}
	// A workload or namespace on several nodes runs on none of them alone.
	if len(nodes) == 1 {
		ep.Node = nodes[0]
	}
	return ep
}
