package topology

import (
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/flowmap/flowmap/model"
)

// DefaultL7MaxEdges bounds the edges with L7 series.
const DefaultL7MaxEdges = 1000

// L7Metrics exports the L7 parsers' counts as Prometheus series, summed
// since start by edge (client and server ends, labelled at the level the
// flow series use, as they are) with the node and reporter labels of the
// flow series: flowmap_http_requests_total{status_class},
// flowmap_http_request_duration_seconds, flowmap_dns_requests_total{rcode},
// flowmap_dns_request_duration_seconds. The agents of a cluster report each
// flow once, by the rule of [Metrics]: the node that reports a flow's
// bytes reports its requests. A flow to a Service counts on two edges, as
// in the flow series: its client's to the Service, and the Service's to the
// backend that answered, so the Service's requests split by backend.
// Edges past MaxEdges count under an edge whose
// labels are all "overflow"; an edge without requests for longer than Idle
// leaves the series, and makes room under MaxEdges. Its methods are safe
// for concurrent use.
type L7Metrics struct {
	mu sync.Mutex
	seriesBase
	edges idleTable[l7Key, model.L7]
	// overflow are the edges past the cap, by protocol and reporter.
	overflow map[l7Key]*idleRow[model.L7]
	// overflowFlows counts the flows counted in the overflow series.
	overflowFlows uint64
}

type l7Key struct {
	edge            edgeLabels
	proto, reporter string
}

// NewL7Metrics returns a collector of L7 series at opts.Level, on node
// opts.Node, reporting by opts.Ends, with at most opts.MaxEdges edges
// (DefaultL7MaxEdges if <= 0), each kept for opts.Idle after its last
// requests.
func NewL7Metrics(opts MetricsOptions) *L7Metrics {
	b := newSeriesBase(opts, DefaultL7MaxEdges)
	return &L7Metrics{seriesBase: b, edges: newIdleTable[l7Key, model.L7](b.maxEdges, b.idle), overflow: map[l7Key]*idleRow[model.L7]{}}
}

// Add folds in the L7 counts of fs, seen at time t.
func (m *L7Metrics) Add(t time.Time, fs ...model.Flow) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.sweepDue(t) {
		m.edges.sweep(t)
	}
	for i := range fs {
		f := &fs[i]
		if f.L7 == nil || (f.L7.Requests() == 0 && f.L7.Responses() == 0) {
			continue
		}
		rep := m.ends(f).Reporter()
		if rep == "" {
			continue
		}
		proto := f.L7.Protocol.String()
		m.add(t, l7Key{m.edge(f), proto, rep}, f.L7)
		// A flow to a Service is also the Service's to the backend that
		// answered (service.go), with the flow's requests: the split by
		// backend, as in the flow series.
		if h, ok := backendHop(f); ok {
			m.add(t, l7Key{m.edge(&h), proto, rep}, f.L7)
		}
	}
}

// add counts l in k's series, or in the overflow edge's past the cap.
// The caller holds m.mu.
func (m *L7Metrics) add(t time.Time, k l7Key, l *model.L7) {
	if row := m.edges.use(k, t); row != nil {
		row.Add(l)
		return
	}
	k.edge = overflowEdge
	m.overflowFlows++
	o := m.overflow[k]
	if o == nil {
		o = &idleRow[model.L7]{first: t}
		m.overflow[k] = o
	}
	o.last = t
	o.v.Add(l)
}

var (
	// l7Labels are the labels of every L7 series: those of the flow series
	// but the protocol and port.
	l7Labels         = append(edgeLabelNames[:len(edgeLabelNames):len(edgeLabelNames)], "node", "reporter")
	descHTTPRequests = prometheus.NewDesc("flowmap_http_requests_total",
		"HTTP/1.x responses seen in the kernel, by edge and status class (1xx to 5xx).",
		append(l7Labels[:len(l7Labels):len(l7Labels)], "status_class"), nil)
	descHTTPDuration = prometheus.NewDesc("flowmap_http_request_duration_seconds",
		"HTTP/1.x time from a request's first byte to its response's, as the host saw them.",
		l7Labels, nil)
	descDNSRequests = prometheus.NewDesc("flowmap_dns_requests_total",
		"DNS responses seen in the kernel, by edge and response code.",
		append(l7Labels[:len(l7Labels):len(l7Labels)], "rcode"), nil)
	descDNSDuration = prometheus.NewDesc("flowmap_dns_request_duration_seconds",
		"DNS time from a query to its response, as the host saw them.",
		l7Labels, nil)
)

// l7PromBuckets are the upper bounds exported, every other octave of the
// kernel's buckets (4^k µs, from 16 µs): the kernel's have four to an
// octave, too many series for Prometheus.
var l7PromBuckets = func() []int {
	var out []int
	for i := 4 * 4; i < model.LatencyBuckets-1; i += 8 {
		out = append(out, i) // the bucket whose lower bound is the bound
	}
	return out
}()

// Describe implements prometheus.Collector.
func (m *L7Metrics) Describe(ch chan<- *prometheus.Desc) {
	ch <- descHTTPRequests
	ch <- descHTTPDuration
	ch <- descDNSRequests
	ch <- descDNSDuration
}

// Collect implements prometheus.Collector.
func (m *L7Metrics) Collect(ch chan<- prometheus.Metric) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for k, r := range m.edges.rows {
		collectL7(ch, &r.v, k.edge.values(m.node, k.reporter))
	}
	for k, o := range m.overflow {
		collectL7(ch, &o.v, k.edge.values(m.node, k.reporter))
	}
}

// L7Series is one edge's L7 series as L7Metrics counts them, for
// exporters other than Prometheus (OTLP): the same edges, under the same
// cap, with the same labels.
type L7Series struct {
	// The ends, at the metrics level, as the labels src_kind,
	// src_namespace, src, dst_kind, dst_namespace and dst; all "overflow"
	// for the overflow series.
	SrcKind, SrcNamespace, Src string
	DstKind, DstNamespace, Dst string
	// Reporter is "client" or "server" (see Metrics).
	Reporter string
	Overflow bool
	// Start is when the series began counting; L7 counts since.
	Start time.Time
	// L7 are the counts: L7.Protocol is model.L7HTTP or model.L7DNS (the
	// protocols with series), Statuses and Rcodes the requests by status
	// class and response code, Latency their durations (L7Buckets gives
	// the buckets the series export).
	L7 *model.L7
}

// Each calls fn with each edge's L7 series of HTTP and DNS, and the
// overflow series, in no order. fn runs under m's lock: it must not call
// m, nor keep s.L7.
func (m *L7Metrics) Each(fn func(s *L7Series)) {
	m.mu.Lock()
	defer m.mu.Unlock()
	each := func(k l7Key, r *idleRow[model.L7]) {
		if r.v.Protocol != model.L7HTTP && r.v.Protocol != model.L7DNS {
			return
		}
		e := k.edge
		fn(&L7Series{SrcKind: e.src.kind, SrcNamespace: e.src.namespace, Src: e.src.name,
			DstKind: e.dst.kind, DstNamespace: e.dst.namespace, Dst: e.dst.name,
			Reporter: k.reporter, Overflow: e == overflowEdge, Start: r.first, L7: &r.v})
	}
	for k, r := range m.edges.rows {
		each(k, r)
	}
	for k, o := range m.overflow {
		each(k, o)
	}
}

// L7Buckets returns the buckets of a latency histogram as the L7 series
// export them: the upper bounds in seconds (those of
// flowmap_http_request_duration_seconds), and the samples in each bucket,
// not cumulative, with a last one for the samples above every bound.
func L7Buckets(h *model.Histogram) (bounds []float64, counts []uint64) {
	bounds = make([]float64, len(l7PromBuckets))
	counts = make([]uint64, len(l7PromBuckets)+1)
	next := 0
	for i, c := range h.Counts {
		for next < len(l7PromBuckets) && l7PromBuckets[next] == i {
			bounds[next] = model.BucketLower(i).Seconds()
			next++
		}
		counts[next] += c
	}
	return bounds, counts
}

// collectL7 sends the series of one edge's counts l, labelled lv (the
// values of l7Labels).
func collectL7(ch chan<- prometheus.Metric, l *model.L7, lv []string) {
	with := func(v string) []string { return append(lv[:len(lv):len(lv)], v) }
	switch l.Protocol {
	case model.L7HTTP:
		for c := 1; c <= 5; c++ {
			ch <- prometheus.MustNewConstMetric(descHTTPRequests, prometheus.CounterValue, float64(l.Statuses[c]),
				with(strconv.Itoa(c)+"xx")...)
		}
		ch <- histogram(descHTTPDuration, &l.Latency, lv...)
	case model.L7DNS:
		for c := range model.NumRcodes {
			if l.Rcodes[c] > 0 {
				ch <- prometheus.MustNewConstMetric(descDNSRequests, prometheus.CounterValue, float64(l.Rcodes[c]),
					with(model.RcodeName(c))...)
			}
		}
		ch <- histogram(descDNSDuration, &l.Latency, lv...)
	}
}

func histogram(d *prometheus.Desc, h *model.Histogram, labels ...string) prometheus.Metric {
	buckets := make(map[float64]uint64, len(l7PromBuckets))
	var cum uint64
	next := 0
	for i, c := range h.Counts {
		for next < len(l7PromBuckets) && l7PromBuckets[next] == i {
			buckets[model.BucketLower(i).Seconds()] = cum
			next++
		}
		cum += c
	}
	return prometheus.MustNewConstHistogram(d, cum, h.Sum.Seconds(), buckets, labels...)
}

// Usage is the L7 series' estimated memory, bounded by the edge cap (see
// idleTable.usage); Dropped counts the flows past it, in the overflow
// series.
func (m *L7Metrics) Usage() model.StoreUsage {
	m.mu.Lock()
	defer m.mu.Unlock()
	n, b, limit := m.edges.usage(func(k *l7Key) int { return k.edge.labelBytes() + len(k.reporter) }, 0, 2)
	return model.StoreUsage{Entries: n, Bytes: b, LimitBytes: limit, Dropped: m.overflowFlows}
}
