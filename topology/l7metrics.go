package topology

import (
	"strconv"
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/flowmap/flowmap/model"
)

// DefaultL7MaxEdges bounds the edges with L7 series.
const DefaultL7MaxEdges = 1000

// L7Metrics exports the L7 parsers' counts as Prometheus series, summed
// since start by edge (client and server endpoint names, at the level the
// flow series use) with the node and reporter labels of the flow series:
// flowmap_http_requests_total{status_class},
// flowmap_http_request_duration_seconds, flowmap_dns_requests_total{rcode},
// flowmap_dns_request_duration_seconds. The agents of a cluster report each
// flow once, by the rule of [Metrics]: the node that reports a flow's
// bytes reports its requests. Edges past MaxEdges count under src and dst
// "overflow". Its methods are safe for concurrent use.
type L7Metrics struct {
	mu       sync.Mutex
	level    Level
	maxEdges int
	node     string
	ends     func(f *model.Flow) Ends
	edges    map[l7Key]*model.L7
}

type l7Key struct{ src, dst, proto, reporter string }

// NewL7Metrics returns a collector of L7 series at opts.Level, on node
// opts.Node, reporting by opts.Ends, with at most opts.MaxEdges edges
// (DefaultL7MaxEdges if <= 0). opts.Idle is not used: the series stay.
func NewL7Metrics(opts MetricsOptions) *L7Metrics {
	if opts.Level == "" {
		opts.Level = DefaultMetricsLevel
	}
	if opts.MaxEdges <= 0 {
		opts.MaxEdges = DefaultL7MaxEdges
	}
	if opts.Ends == nil {
		opts.Ends = defaultEnds
	}
	return &L7Metrics{level: opts.Level, maxEdges: opts.MaxEdges, node: opts.Node, ends: opts.Ends, edges: map[l7Key]*model.L7{}}
}

// Add folds the L7 counts of fs in.
func (m *L7Metrics) Add(fs ...model.Flow) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for i := range fs {
		f := &fs[i]
		if f.L7 == nil || (f.L7.Requests() == 0 && f.L7.Responses() == 0) {
			continue
		}
		rep := m.ends(f).Reporter()
		if rep == "" {
			continue
		}
		src, dst := nodeOf(&f.SrcEndpoint, m.level), nodeOf(&f.DstEndpoint, m.level)
		k := l7Key{src.Name, dst.Name, f.L7.Protocol.String(), rep}
		if _, ok := m.edges[k]; !ok && len(m.edges) >= m.maxEdges {
			k.src, k.dst = "overflow", "overflow"
		}
		m.edges[k] = addL7(m.edges[k], f.L7)
	}
}

var (
	descHTTPRequests = prometheus.NewDesc("flowmap_http_requests_total",
		"HTTP/1.x responses seen in the kernel, by edge and status class (1xx to 5xx).",
		[]string{"src", "dst", "node", "reporter", "status_class"}, nil)
	descHTTPDuration = prometheus.NewDesc("flowmap_http_request_duration_seconds",
		"HTTP/1.x time from a request's first byte to its response's, as the host saw them.",
		[]string{"src", "dst", "node", "reporter"}, nil)
	descDNSRequests = prometheus.NewDesc("flowmap_dns_requests_total",
		"DNS responses seen in the kernel, by edge and response code.",
		[]string{"src", "dst", "node", "reporter", "rcode"}, nil)
	descDNSDuration = prometheus.NewDesc("flowmap_dns_request_duration_seconds",
		"DNS time from a query to its response, as the host saw them.",
		[]string{"src", "dst", "node", "reporter"}, nil)
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
	for k, l := range m.edges {
		switch l.Protocol {
		case model.L7HTTP:
			for c := 1; c <= 5; c++ {
				ch <- prometheus.MustNewConstMetric(descHTTPRequests, prometheus.CounterValue, float64(l.Statuses[c]),
					k.src, k.dst, m.node, k.reporter, strconv.Itoa(c)+"xx")
			}
			ch <- histogram(descHTTPDuration, &l.Latency, k.src, k.dst, m.node, k.reporter)
		case model.L7DNS:
			for c := range model.NumRcodes {
				if l.Rcodes[c] > 0 {
					ch <- prometheus.MustNewConstMetric(descDNSRequests, prometheus.CounterValue, float64(l.Rcodes[c]),
						k.src, k.dst, m.node, k.reporter, model.RcodeName(c))
				}
			}
			ch <- histogram(descDNSDuration, &l.Latency, k.src, k.dst, m.node, k.reporter)
		}
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
