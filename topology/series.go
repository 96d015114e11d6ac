package topology

import (
	"time"
	"unsafe"

	"github.com/flowmap/flowmap/model"
)

// This file holds what the Prometheus collectors, Metrics and L7Metrics,
// share: the labels of an edge, and a table of series bounded by a cap and
// swept of idle ones.

// edgeLabelNames are the labels of an edge in every series, as
// edgeLabels.values writes them: each end as the node that stands for it at
// the series' level, by kind, namespace and name, so that two workloads of
// one name in two namespaces are two ends.
var edgeLabelNames = []string{"src_kind", "src_namespace", "src", "dst_kind", "dst_namespace", "dst"}

// nodeLabels are the labels of one end of an edge.
type nodeLabels struct{ kind, namespace, name string }

// edgeLabels are the labels of an edge: its client end and its server end.
type edgeLabels struct{ src, dst nodeLabels }

// overflowEdge is the edge of the series past a cap.
var overflowEdge = edgeLabels{
	src: nodeLabels{kind: "overflow", namespace: "overflow", name: "overflow"},
	dst: nodeLabels{kind: "overflow", namespace: "overflow", name: "overflow"},
}

// values returns the values of edgeLabelNames, then more.
func (e edgeLabels) values(more ...string) []string {
	return append([]string{e.src.kind, e.src.namespace, e.src.name, e.dst.kind, e.dst.namespace, e.dst.name}, more...)
}

// parseEdgeLabels reads back what values wrote, from a series whose label
// name has the value label(name).
func parseEdgeLabels(label func(name string) string) edgeLabels {
	end := func(prefix string) nodeLabels {
		return nodeLabels{kind: label(prefix + "_kind"), namespace: label(prefix + "_namespace"), name: label(prefix)}
	}
	return edgeLabels{src: end("src"), dst: end("dst")}
}

// seriesBase is the state a collector of edge series keeps beside its
// series: where and how it reports, the labels of its ends, and when it
// last swept its idle series.
type seriesBase struct {
	maxEdges int
	idle     time.Duration
	node     string
	ends     func(*model.Flow) Ends

	level Level
	// labels caches the labels of endpoints, at most 4*maxEdges of them.
	labels map[epKey]nodeLabels
	swept  time.Time
}

// newSeriesBase applies opts, with maxEdges where opts.MaxEdges is zero.
func newSeriesBase(opts MetricsOptions, maxEdges int) seriesBase {
	if opts.Level == "" {
		opts.Level = DefaultMetricsLevel
	}
	if opts.MaxEdges <= 0 {
		opts.MaxEdges = maxEdges
	}
	if opts.Idle <= 0 {
		opts.Idle = DefaultMetricsIdle
	}
	if opts.Ends == nil {
		opts.Ends = defaultEnds
	}
	return seriesBase{maxEdges: opts.MaxEdges, idle: opts.Idle, node: model.LabelValue(opts.Node), ends: opts.Ends,
		level: opts.Level, labels: map[epKey]nodeLabels{}}
}

// edge returns the labels of f's edge.
func (b *seriesBase) edge(f *model.Flow) edgeLabels {
	return edgeLabels{src: b.endpoint(&f.SrcEndpoint), dst: b.endpoint(&f.DstEndpoint)}
}

// endpoint returns the labels of the node ep is part of.
func (b *seriesBase) endpoint(ep *model.Endpoint) nodeLabels {
	k := epKey{ep.Kind, ep.ID}
	if l, ok := b.labels[k]; ok {
		return l
	}
	if len(b.labels) >= 4*b.maxEdges {
		clear(b.labels)
	}
	n := nodeOf(ep, b.level)
	l := nodeLabels{kind: model.LabelValue(string(n.Kind)), namespace: model.LabelValue(n.Namespace), name: model.LabelValue(n.Name)}
	b.labels[k] = l
	return l
}

// sweepDue reports whether a minute passed since the last sweep, the
// collector's cue to sweep its series at now. It then forgets the labels
// of endpoints: those may have been renamed.
func (b *seriesBase) sweepDue(now time.Time) bool {
	if now.Sub(b.swept) < time.Minute {
		return false
	}
	b.swept = now
	clear(b.labels)
	return true
}

// idleTable holds values by key, each with when it was last used: at most
// max of them, and each until sweep finds it idle for longer than idle.
type idleTable[K comparable, V any] struct {
	max  int
	idle time.Duration
	rows map[K]*idleRow[V]
}

type idleRow[V any] struct {
	v V
	// first is when the row was added: its counts are since.
	first, last time.Time
}

func newIdleTable[K comparable, V any](max int, idle time.Duration) idleTable[K, V] {
	return idleTable[K, V]{max: max, idle: idle, rows: map[K]*idleRow[V]{}}
}

// use returns k's value, last used at now, adding a zero one where the
// table has room; nil where k is new and the table full.
func (t *idleTable[K, V]) use(k K, now time.Time) *V {
	r := t.rows[k]
	if r == nil {
		if len(t.rows) >= t.max {
			return nil
		}
		r = &idleRow[V]{first: now}
		t.rows[k] = r
	}
	r.last = now
	return &r.v
}

// sweep drops the values unused since before now-idle.
func (t *idleTable[K, V]) sweep(now time.Time) {
	for k, r := range t.rows {
		if now.Sub(r.last) > t.idle {
			delete(t.rows, k)
		}
	}
}

// maxLabelBytes bounds the strings of a node's labels in the estimates of
// the series' memory: a kind, and a namespace and a name as long as
// Kubernetes allows (63 and 253 bytes).
const maxLabelBytes = 16 + 63 + 253

// labelBytes is the length of n's strings.
func (n nodeLabels) labelBytes() int { return len(n.kind) + len(n.namespace) + len(n.name) }

// edgeBytes is the length of e's strings.
func (e edgeLabels) labelBytes() int { return e.src.labelBytes() + e.dst.labelBytes() }

// usage estimates the table's memory: each row's struct and map slot,
// extra bytes it points to, and the strings of its key (strs). limit is
// the same at max rows with keys of nLabels nodes of the longest labels.
func (t *idleTable[K, V]) usage(strs func(*K) int, extra, nLabels int) (rows, bytes, limit uint64) {
	var r V
	var k K
	row := uint64(unsafe.Sizeof(idleRow[V]{v: r})) + uint64(float64(unsafe.Sizeof(k)+8+1)/mapLoad) + uint64(extra)
	for k := range t.rows {
		bytes += uint64(strs(&k))
	}
	rows = uint64(len(t.rows))
	return rows, bytes + rows*row, uint64(t.max) * (row + uint64(nLabels*maxLabelBytes))
}
