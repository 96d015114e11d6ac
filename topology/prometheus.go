package topology

import (
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/flowmap/flowmap/model"
)

// Defaults of MetricsOptions.
const (
	DefaultMetricsLevel    = LevelWorkload
	DefaultMetricsMaxEdges = 500
	DefaultMetricsIdle     = time.Hour
)

// RTTBuckets are the upper bounds, in seconds, of the handshake RTT
// histogram: from a veth pair's tens of microseconds to a far region's
// hundreds of milliseconds.
var RTTBuckets = []float64{50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 1}

// MetricsOptions configures Metrics.
type MetricsOptions struct {
	// Level is the level of the src and dst labels; "" is
	// DefaultMetricsLevel.
	Level Level
	// MaxEdges caps the label sets (src, dst, protocol, port): flows of
	// further ones are counted in the series whose labels are all
	// "overflow". Each edge has 2+2 byte and packet series, and a TCP
	// edge 1 connection series (outcome="attempted") and len(RTTBuckets)+3
	// handshake RTT series; health adds, where it happened, up to 6
	// outcome series, a zero-window and a retransmit-timeout series, up to
	// MaxDropReasons+1 drop series and
	// len(RTTBuckets)+3 smoothed RTT series. Zero is
	// DefaultMetricsMaxEdges.
	MaxEdges int
	// Idle is how long an edge's series stay after its last flow; then they
	// go, and make room under MaxEdges. Zero is DefaultMetricsIdle.
	Idle time.Duration
	// Node is the name of the node the agent runs on, the node label of
	// every flow series.
	Node string
	// Ends says where the ends of a flow run, for the reporting rule (see
	// the package comment). Nil takes every flow as this node's: the client
	// as here when the flow has its interface (SrcIf), the server else.
	// Metrics calls it outside its lock; L7Metrics under its own.
	Ends func(f *model.Flow) Ends
}

// Ends is where the ends of a flow run, as the agent that counted it sees
// them.
type Ends struct {
	// ClientHere and ServerHere: the end runs on this node, behind one of
	// its watched interfaces other than an uplink, or is the node itself.
	ClientHere, ServerHere bool
	// ClientElsewhere: the client runs on another node of the cluster,
	// whose agent reports the flow.
	ClientElsewhere bool
}

// Reporter is the side whose node reports a flow in the series: "client",
// "server", or "" for a flow this node does not report.
func (e Ends) Reporter() string {
	switch {
	case e.ClientHere:
		return "client"
	case e.ServerHere && !e.ClientElsewhere:
		return "server"
	}
	return ""
}

func defaultEnds(f *model.Flow) Ends {
	here := f.SrcIf.Index != 0
	return Ends{ClientHere: here, ServerHere: !here}
}

// Metrics counts flows by edge at one level, for Prometheus. It is a
// prometheus.Collector; its methods are safe for concurrent use.
//
// # Reporting once
//
// In a cluster, a flow between pods on two nodes is counted by the agents
// of both (flows counts it once per host), so the flow series of the
// agents, summed, would double it. Each agent therefore reports in its
// series only the flows it is the one to report, by this rule:
//
//   - The client's node reports the flow when the client runs there: it is
//     behind a watched interface of the node that is not an uplink (a pod or
//     container on the node), or it is the node itself. reporter="client".
//   - Otherwise the server's node reports it, when the server runs there and
//     the client does not run on another node whose agent reports it (a pod,
//     container or node of the cluster). reporter="server". So a flow from
//     outside the cluster, or from a client no agent watches, is reported
//     by the server's node.
//   - A flow neither end of which runs on the node (routed through it) is not
//     reported by it.
//
// Every series carries the reporting agent's node in the label node, and
// flowmap_endpoint_info{node, kind, namespace, name} says on which node
// each end of the series runs: one series per endpoint (at the metrics
// level) that runs on the node and was in a reported flow. Where a
// client's agent is down its flows go unreported until it is back: the
// server's node does not stand in for it. The [Graph] and the agent's
// own API keep every flow the host saw; the rule is only for the series,
// which are summed across nodes.
type Metrics struct {
	mu sync.Mutex
	seriesBase
	series        idleTable[seriesKey, series]
	overflow      *series
	overflowFlows uint64
	local         idleTable[nodeLabels, struct{}] // endpoints running here
	skipped       uint64                          // flows another node reports
}

type seriesKey struct {
	edge     edgeLabels
	proto    model.Proto
	port     uint16
	reporter string
}

type series struct {
	traffic [2]Traffic // forward, reverse
	conns   uint64
	rtt     []uint64 // per bucket of RTTBuckets, not cumulative, the last above them all
	rttN    uint64
	rttSum  float64
	// health: the outcomes of its connections past "attempted" (by
	// outcomes' order), drops by reason and smoothed RTTs, each collected
	// only once non-zero (see lazy).
	outcomes [len(outcomes)]lazy
	drops    []reasonCount // at most MaxDropReasons, in the order they came
	other    lazy          // drops of further reasons
	zeroWin  lazy          // segments advertising a zero window
	rtos     lazy          // retransmission timeouts
	srtt     lazyHist
	// start is when the series began counting: its first flow's first
	// packet.
	start time.Time
	// shown: the series were collected once. They are first collected at
	// zero, so that increase() and rate() count what a new edge carried
	// before its first scrape (they take a series' first sample as its
	// start, not zero).
	shown bool
}

// NewMetrics returns a collector of flow series.
func NewMetrics(opts MetricsOptions) *Metrics {
	b := newSeriesBase(opts, DefaultMetricsMaxEdges)
	return &Metrics{seriesBase: b, series: newIdleTable[seriesKey, series](b.maxEdges, b.idle),
		local: newIdleTable[nodeLabels, struct{}](2*b.maxEdges, b.idle)}
}

// Add counts flows seen at time t.
func (m *Metrics) Add(t time.Time, fs ...model.Flow) {
	// The rule is the caller's and may look at the host: not under m.mu,
	// which scrapes wait for.
	var buf [64]Ends
	all := buf[:0]
	if len(fs) > len(buf) {
		all = make([]Ends, 0, len(fs))
	}
	for i := range fs {
		all = append(all, m.ends(&fs[i]))
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.sweepDue(t) {
		m.series.sweep(t)
		m.local.sweep(t)
	}
	for i := range fs {
		f := &fs[i]
		ends := all[i]
		rep := ends.Reporter()
		if rep == "" {
			m.skipped++
			continue
		}
		h, ok := backendHop(f)
		if !ok {
			m.add(t, f, ends, rep)
			continue
		}
		// The Service (what was dialled) runs nowhere: where the server
		// runs here, it is the backend.
		m.add(t, f, Ends{ClientHere: ends.ClientHere}, rep)
		m.add(t, &h, Ends{ServerHere: ends.ServerHere}, rep)
	}
}

// add counts f in its edge's series, reported by rep; ends says which of
// its ends run here.
func (m *Metrics) add(t time.Time, f *model.Flow, ends Ends, rep string) {
	k := seriesKey{edge: m.edge(f), proto: f.Proto, port: f.DstPort, reporter: rep}
	// The endpoints that run here, bounded as the series are.
	if ends.ClientHere {
		m.local.use(k.edge.src, t)
	}
	if ends.ServerHere {
		m.local.use(k.edge.dst, t)
	}
	s := m.series.use(k, t)
	if s == nil {
		m.overflowFlows++
		if m.overflow == nil {
			m.overflow = &series{}
		}
		s = m.overflow
	}
	if s.rtt == nil {
		s.rtt = make([]uint64, len(RTTBuckets)+1)
		s.start = t
		if !f.FirstSeen.IsZero() && f.FirstSeen.Before(t) {
			s.start = f.FirstSeen
		}
	}
	s.traffic[0].Add(trafficOf(f.Forward))
	s.traffic[1].Add(trafficOf(f.Reverse))
	if opened(&f.Record) {
		s.conns++
	}
	if f.HandshakeRTT > 0 {
		s.rttN++
		s.rttSum += f.HandshakeRTT.Seconds()
		s.rtt[bucketOf(f.HandshakeRTT.Seconds())]++
	}
	if f.Health != nil {
		s.addHealth(f.Health)
	}
}

// bucketOf returns the index of the bucket of RTTBuckets that holds v
// seconds, len(RTTBuckets) above them all.
func bucketOf(v float64) int {
	for j, ub := range RTTBuckets {
		if v <= ub {
			return j
		}
	}
	return len(RTTBuckets)
}

// MaxDropReasons bounds the reason label of flowmap_drops_total: an edge's
// first MaxDropReasons reasons (the commonest first, of those that came in
// one interval) have series of their own, its drops of any further reason
// count in reason="other". A reason's series, once there, stays (a counter
// cannot move to another label), so the named ones are the first to come,
// not a ranking redone at each scrape; on an edge the first drops are
// nearly always of its commonest reasons.
const MaxDropReasons = 3

// outcomes are the values of the outcome label of
// flowmap_tcp_connections_total after "attempted", with what counts them.
var outcomes = [...]struct {
	name  string
	count func(h *model.Health) uint64
}{
	{"established", func(h *model.Health) uint64 { return h.Established }},
	{"refused", func(h *model.Health) uint64 { return h.Refused }},
	{"timed_out", func(h *model.Health) uint64 { return h.TimedOut }},
	{"reset_client", func(h *model.Health) uint64 { return h.ResetByClient }},
	{"reset_server", func(h *model.Health) uint64 { return h.ResetByServer }},
	{"closed", func(h *model.Health) uint64 { return h.Closed }},
}

// lazy is a counter whose series appears only once it is non-zero: at
// zero at its first scrape, so that increase() counts its first events, as
// the series of a new edge.
type lazy struct {
	n     uint64
	shown bool
}

// value returns what to collect of c, and false where it has no series
// yet.
func (c *lazy) value() (float64, bool) {
	if c.n == 0 {
		return 0, false
	}
	if !c.shown {
		c.shown = true
		return 0, true
	}
	return float64(c.n), true
}

type reasonCount struct {
	reason string
	lazy
}

// lazyHist is a histogram of RTTBuckets collected only once it has
// samples, as lazy.
type lazyHist struct {
	buckets []uint64 // per bucket, not cumulative, the last above them all
	n       uint64
	sum     float64
	shown   bool
}

func (s *series) addHealth(h *model.Health) {
	for i, o := range outcomes {
		s.outcomes[i].n += o.count(h)
	}
	s.zeroWin.n += h.ZeroWindows
	s.rtos.n += h.RTOs
	if len(h.Drops) > 0 {
		reasons := make([]string, 0, len(h.Drops))
		for r := range h.Drops {
			reasons = append(reasons, r)
		}
		sort.Slice(reasons, func(i, j int) bool {
			a, b := reasons[i], reasons[j]
			return h.Drops[a] > h.Drops[b] || h.Drops[a] == h.Drops[b] && a < b
		})
	next:
		for _, r := range reasons {
			n := h.Drops[r]
			for i := range s.drops {
				if s.drops[i].reason == r {
					s.drops[i].n += n
					continue next
				}
			}
			if len(s.drops) < MaxDropReasons && r != "other" {
				s.drops = append(s.drops, reasonCount{reason: r, lazy: lazy{n: n}})
				continue
			}
			s.other.n += n
		}
	}
	if h.RTTSamples > 0 {
		// Each sample at the flow's mean: the sum is that of the samples,
		// the count theirs (a socket is sampled at most every 100 ms, so
		// this weighs sockets by how long they carried data).
		if s.srtt.buckets == nil {
			s.srtt.buckets = make([]uint64, len(RTTBuckets)+1)
		}
		s.srtt.n += h.RTTSamples
		s.srtt.sum += h.RTTSum.Seconds()
		s.srtt.buckets[bucketOf(h.RTT().Seconds())] += h.RTTSamples
	}
}

var (
	// flowEdgeLabels tell the edges of the flow series apart.
	flowEdgeLabels = append(edgeLabelNames[:len(edgeLabelNames):len(edgeLabelNames)], "proto", "port")
	flowLabels     = append(flowEdgeLabels[:len(flowEdgeLabels):len(flowEdgeLabels)], "node", "reporter")
	bytesDesc      = prometheus.NewDesc("flowmap_flow_bytes_total",
		"Wire bytes of the flows from src (the client) to dst (the server) on the server's port: direction forward is client to server, reverse server to client.",
		append(flowLabels[:len(flowLabels):len(flowLabels)], "direction"), nil)
	packetsDesc = prometheus.NewDesc("flowmap_flow_packets_total",
		"Packets of the flows from src (the client) to dst (the server) on the server's port, by direction.",
		append(flowLabels[:len(flowLabels):len(flowLabels)], "direction"), nil)
	connsDesc = prometheus.NewDesc("flowmap_tcp_connections_total",
		"TCP connections from src to dst by outcome: attempted (SYNs seen, every connection), then established, refused (RST to the SYN), timed_out (SYNs unanswered), reset_client and reset_server (RST after the handshake, by the side that sent it), closed (FIN); the outcomes past attempted have series once they happened.",
		append(flowLabels[:len(flowLabels):len(flowLabels)], "outcome"), nil)
	rttDesc = prometheus.NewDesc("flowmap_tcp_handshake_rtt_seconds",
		"Round-trip time of TCP handshakes from src to dst, SYN to SYN-ACK.", flowLabels, nil)
	srttDesc = prometheus.NewDesc("flowmap_tcp_rtt_seconds",
		"Smoothed RTT of the local TCP sockets of the flows from src to dst (tcp_probe), sampled at most every 100 ms a socket.", flowLabels, nil)
	zeroWinDesc = prometheus.NewDesc("flowmap_tcp_zero_windows_total",
		"Answered zero-window probes of the local TCP sockets of the flows from src to dst: one each retransmission timeout (backed off) that the peer's window stayed zero, its application not reading; a series once one was sent.",
		flowLabels, nil)
	rtoDesc = prometheus.NewDesc("flowmap_tcp_retransmit_timeouts_total",
		"Loss recoveries that a retransmission timeout began on the local TCP sockets of the flows from src to dst, past the handshake (timeouts backed off within one are not counted); a series once one happened.",
		flowLabels, nil)
	dropsDesc = prometheus.NewDesc("flowmap_drops_total",
		"Packets of the flows from src to dst that the kernel dropped, by reason (enum skb_drop_reason, as NETFILTER_DROP): an edge's first 3 reasons, further ones summed as other.",
		append(flowLabels[:len(flowLabels):len(flowLabels)], "reason"), nil)
	seriesEdgesDesc = prometheus.NewDesc("flowmap_flow_series_edges",
		"Edges (label sets src, dst, proto, port) with flow series, at most the cap.", nil, nil)
	seriesCapDesc = prometheus.NewDesc("flowmap_flow_series_max_edges",
		"The cap on edges with flow series: flows past it count in the series labelled overflow.", nil, nil)
	overflowDesc = prometheus.NewDesc("flowmap_flow_overflow_flows_total",
		"Flows counted in the overflow series, for their edge was past the cap.", nil, nil)
	skippedDesc = prometheus.NewDesc("flowmap_flow_other_reporter_flows_total",
		"Flows this node counted but leaves to the client's node to report in the flow series (a client on another node of the cluster), or that neither end of runs here.", nil, nil)
	endpointDesc = prometheus.NewDesc("flowmap_endpoint_info",
		"Endpoints (at the level of the flow series) that run on this node and were in flows it reported within the idle time: 1 each.",
		[]string{"kind", "namespace", "name", "node"}, nil)
)

// Describe implements prometheus.Collector.
func (m *Metrics) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{bytesDesc, packetsDesc, connsDesc, rttDesc, srttDesc, dropsDesc, zeroWinDesc, rtoDesc, seriesEdgesDesc, seriesCapDesc, overflowDesc, skippedDesc, endpointDesc} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (m *Metrics) Collect(ch chan<- prometheus.Metric) {
	m.mu.Lock()
	defer m.mu.Unlock()
	ch <- prometheus.MustNewConstMetric(seriesEdgesDesc, prometheus.GaugeValue, float64(len(m.series.rows)))
	ch <- prometheus.MustNewConstMetric(seriesCapDesc, prometheus.GaugeValue, float64(m.maxEdges))
	ch <- prometheus.MustNewConstMetric(overflowDesc, prometheus.CounterValue, float64(m.overflowFlows))
	ch <- prometheus.MustNewConstMetric(skippedDesc, prometheus.CounterValue, float64(m.skipped))
	for k := range m.local.rows {
		ch <- prometheus.MustNewConstMetric(endpointDesc, prometheus.GaugeValue, 1, k.kind, k.namespace, k.name, m.node)
	}
	for k, r := range m.series.rows {
		collectSeries(ch, &r.v, k.edge.values(k.proto.String(), strconv.Itoa(int(k.port)), m.node, k.reporter))
	}
	if m.overflow != nil {
		// Past the cap, one series whatever the protocol, port and reporter.
		collectSeries(ch, m.overflow, overflowEdge.values("overflow", "overflow", m.node, "overflow"))
	}
}

func collectSeries(ch chan<- prometheus.Metric, s *series, lv []string) {
	with := func(v string) []string { return append(lv[:len(lv):len(lv)], v) }
	// Drops and the outcomes past attempted go lazily, from their first
	// events, whatever the edge's other series.
	for i := range s.drops {
		if v, ok := s.drops[i].value(); ok {
			ch <- prometheus.MustNewConstMetric(dropsDesc, prometheus.CounterValue, v, with(s.drops[i].reason)...)
		}
	}
	if v, ok := s.other.value(); ok {
		ch <- prometheus.MustNewConstMetric(dropsDesc, prometheus.CounterValue, v, with("other")...)
	}
	tcp := true
	if proto := lv[len(edgeLabelNames)]; proto != model.ProtoTCP.String() && proto != "overflow" {
		tcp = false
	}
	if tcp {
		for i := range s.outcomes {
			if v, ok := s.outcomes[i].value(); ok {
				ch <- prometheus.MustNewConstMetric(connsDesc, prometheus.CounterValue, v, with(outcomes[i].name)...)
			}
		}
		if v, ok := s.zeroWin.value(); ok {
			ch <- prometheus.MustNewConstMetric(zeroWinDesc, prometheus.CounterValue, v, lv...)
		}
		if v, ok := s.rtos.value(); ok {
			ch <- prometheus.MustNewConstMetric(rtoDesc, prometheus.CounterValue, v, lv...)
		}
		if h := &s.srtt; h.n > 0 {
			z := lazyHist{buckets: make([]uint64, len(RTTBuckets)+1)}
			if !h.shown {
				h.shown = true
				h = &z
			}
			ch <- constHistogram(srttDesc, h.buckets, h.n, h.sum, lv)
		}
	}
	if !s.shown {
		s.shown = true
		s = &series{rtt: make([]uint64, len(RTTBuckets)+1)}
	}
	ch <- prometheus.MustNewConstMetric(bytesDesc, prometheus.CounterValue, float64(s.traffic[0].Bytes), with("forward")...)
	ch <- prometheus.MustNewConstMetric(bytesDesc, prometheus.CounterValue, float64(s.traffic[1].Bytes), with("reverse")...)
	ch <- prometheus.MustNewConstMetric(packetsDesc, prometheus.CounterValue, float64(s.traffic[0].Packets), with("forward")...)
	ch <- prometheus.MustNewConstMetric(packetsDesc, prometheus.CounterValue, float64(s.traffic[1].Packets), with("reverse")...)
	if !tcp {
		return
	}
	ch <- prometheus.MustNewConstMetric(connsDesc, prometheus.CounterValue, float64(s.conns), with("attempted")...)
	ch <- constHistogram(rttDesc, s.rtt, s.rttN, s.rttSum, lv)
}

// constHistogram returns the histogram of RTTBuckets with per-bucket (not
// cumulative) counts c.
func constHistogram(d *prometheus.Desc, c []uint64, n uint64, sum float64, lv []string) prometheus.Metric {
	buckets := make(map[float64]uint64, len(RTTBuckets))
	var cum uint64
	for j, ub := range RTTBuckets {
		cum += c[j]
		buckets[ub] = cum
	}
	return prometheus.MustNewConstHistogram(d, n, sum, buckets, lv...)
}

// GraphCollector exports a graph's size.
type GraphCollector struct{ g *Graph }

// NewGraphCollector returns a collector of g's size.
func NewGraphCollector(g *Graph) *GraphCollector { return &GraphCollector{g} }

var (
	graphEndpointsDesc = prometheus.NewDesc("flowmap_graph_endpoints", "Endpoints in the graph.", nil, nil)
	graphEdgesDesc     = prometheus.NewDesc("flowmap_graph_edges", "Edges in the graph, at the finest level, with the overflow edge.", nil, nil)
	graphEntriesDesc   = prometheus.NewDesc("flowmap_graph_bucket_entries", "Edges' counts in the graph's time buckets.", nil, nil)
	graphBytesDesc     = prometheus.NewDesc("flowmap_graph_memory_bytes", "Estimate of the memory the graph holds.", nil, nil)
	graphFlowsDesc     = prometheus.NewDesc("flowmap_graph_flows_total", "Flows folded into the graph.", nil, nil)
	graphOverflowDesc  = prometheus.NewDesc("flowmap_graph_overflow_flows_total", "Flows folded into the graph's overflow edge, past its edge cap.", nil, nil)
)

// Describe implements prometheus.Collector.
func (c *GraphCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{graphEndpointsDesc, graphEdgesDesc, graphEntriesDesc, graphBytesDesc, graphFlowsDesc, graphOverflowDesc} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *GraphCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.g.Stats()
	ch <- prometheus.MustNewConstMetric(graphEndpointsDesc, prometheus.GaugeValue, float64(s.Endpoints))
	ch <- prometheus.MustNewConstMetric(graphEdgesDesc, prometheus.GaugeValue, float64(s.Edges))
	ch <- prometheus.MustNewConstMetric(graphEntriesDesc, prometheus.GaugeValue, float64(s.Entries))
	ch <- prometheus.MustNewConstMetric(graphBytesDesc, prometheus.GaugeValue, float64(s.Bytes))
	ch <- prometheus.MustNewConstMetric(graphFlowsDesc, prometheus.CounterValue, float64(s.Flows))
	ch <- prometheus.MustNewConstMetric(graphOverflowDesc, prometheus.CounterValue, float64(s.OverflowFlows))
}

// Usage is the flow series' estimated memory, bounded by the edge cap
// (see idleTable.usage): each edge's series with its RTT histograms, and
// the endpoints running here, at most twice the edges. Dropped counts the
// flows past the cap, in the overflow series.
func (m *Metrics) Usage() model.StoreUsage {
	m.mu.Lock()
	defer m.mu.Unlock()
	hists := 2 * (len(RTTBuckets) + 1) * 8
	n, b, limit := m.series.usage(func(k *seriesKey) int { return k.edge.labelBytes() + len(k.reporter) }, hists, 2)
	_, lb, llimit := m.local.usage(func(k *nodeLabels) int { return k.labelBytes() }, 0, 1)
	return model.StoreUsage{Entries: n, Bytes: b + lb, LimitBytes: limit + llimit, Dropped: m.overflowFlows}
}
