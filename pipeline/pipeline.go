// Package pipeline is the agent's stages wired together: it takes the
// datapath's batches, hands each to the API as drained, names its flows'
// ends, and folds them into the graph, the flow series, the L7 series and
// the store of the names that batches carry. It keeps the cluster's
// reporting rule (see Reporting), whose view of the host (HostView) it
// looks at again on a timer, never under the series' locks.
package pipeline

import (
	"context"
	"log/slog"
	"net/http"
	"net/netip"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/vishvananda/netlink"

	"github.com/flowmap/flowmap/enrich"
	"github.com/flowmap/flowmap/host"
	"github.com/flowmap/flowmap/model"
	"github.com/flowmap/flowmap/topology"
)

// DefaultRefresh is how often Run looks at the host's routes and
// addresses again.
const DefaultRefresh = 30 * time.Second

// Namer names the ends of a flow record: the inventory's Enrich, or a
// HostView's Namer.
type Namer func(r *model.Record) model.Flow

// Sink takes each batch as the datapath drained it, unnamed: the API's
// recent flows (server.Server).
type Sink interface {
	Add(b model.Batch)
}

// Exporter takes each batch's flows, named, to send them off the host: an
// export.Queue. Offer must not block.
type Exporter interface {
	Offer(fs []model.Flow)
}

// Options configures a Pipeline.
type Options struct {
	// Node is the name of this node in the cluster: the node label of the
	// series and the host the fallback namer names. "" is host.Name().
	Node string
	// GraphMaxEdges and GraphMaxBytes bound the graph
	// (topology.Options).
	GraphMaxEdges int
	GraphMaxBytes int64
	// NamesMaxBytes bounds the names from traffic (enrich.Names.SetMaxBytes).
	NamesMaxBytes int
	// MetricsLevel and MetricsMaxEdges are those of the flow and L7
	// series (topology.MetricsOptions).
	MetricsLevel    topology.Level
	MetricsMaxEdges int
	// Uplinks and ClusterCIDRs are those of the reporting rule (see
	// Reporting).
	Uplinks      []string
	ClusterCIDRs []netip.Prefix
	// Namer names the flows' ends; nil names them by address alone (see
	// HostView.Namer).
	Namer Namer
	// API receives each batch before it is named; nil: none.
	API Sink
	// Exports receive each batch's flows once named and folded in.
	Exports []Exporter
	// Routes and Addrs list the host's routes and addresses for the
	// reporting rule; nil: host.Routes and host.Addrs.
	Routes func() ([]netlink.Route, error)
	Addrs  func() ([]netip.Addr, error)
	// Refresh is how often Run looks at the routes and addresses again;
	// 0 is DefaultRefresh.
	Refresh time.Duration
	// Log receives a line per batch (debug) and the host's look-up
	// errors; nil discards them.
	Log *slog.Logger
}

// Pipeline folds batches into the stages that keep them. Its methods are
// safe for concurrent use, if its Namer and API are.
type Pipeline struct {
	namer     Namer
	api       Sink
	exports   []Exporter
	host      *HostView
	reporting *Reporting
	refresh   time.Duration
	graph     *topology.Graph
	metrics   *topology.Metrics
	l7        *topology.L7Metrics
	// l7Names are the DNS answers and TLS server names that batches carry,
	// which name the ends the namer did not.
	l7Names *enrich.Names
	// namesRefused counts the names Add did not keep, by reason.
	namesRefused *prometheus.CounterVec
	log          *slog.Logger
}

// New returns a pipeline, having looked at the host once.
func New(opts Options) *Pipeline {
	if opts.Node == "" {
		opts.Node = host.Name()
	}
	if opts.Refresh <= 0 {
		opts.Refresh = DefaultRefresh
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	hv := NewHostView(opts.Node, opts.Routes, opts.Addrs)
	p := &Pipeline{
		namer:     opts.Namer,
		api:       opts.API,
		exports:   opts.Exports,
		host:      hv,
		reporting: &Reporting{Host: hv, Uplinks: opts.Uplinks, ClusterCIDRs: opts.ClusterCIDRs},
		refresh:   opts.Refresh,
		graph:     topology.New(topology.Options{MaxEdges: opts.GraphMaxEdges, MaxBytes: opts.GraphMaxBytes}),
		l7Names:   enrich.NewNames(enrich.DefaultMaxNames),
		namesRefused: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "flowmap_names_refused_total",
			Help: "DNS names from traffic not kept, by reason: client_not_local, an answer to a client that is outside or on another node."},
			[]string{"reason"}),
		log: opts.Log,
	}
	p.l7Names.SetMaxBytes(opts.NamesMaxBytes)
	p.refreshHost()
	if p.namer == nil {
		p.namer = hv.Namer()
	}
	mo := topology.MetricsOptions{Level: opts.MetricsLevel, MaxEdges: opts.MetricsMaxEdges, Node: opts.Node,
		Ends: p.reporting.Ends}
	p.metrics = topology.NewMetrics(mo)
	p.l7 = topology.NewL7Metrics(mo)
	return p
}

// Collectors are the pipeline's Prometheus collectors: the flow series,
// the graph's size and the L7 series.
func (p *Pipeline) Collectors() []prometheus.Collector {
	return []prometheus.Collector{p.metrics, topology.NewGraphCollector(p.graph), p.l7, p.namesRefused}
}

// FlowSeries returns the flow series, for exporters other than
// Prometheus to read (topology.Metrics.Each).
func (p *Pipeline) FlowSeries() *topology.Metrics { return p.metrics }

// L7Series returns the HTTP and DNS series, for exporters other than
// Prometheus to read (topology.L7Metrics.Each).
func (p *Pipeline) L7Series() *topology.L7Metrics { return p.l7 }

// Mount serves the graph's exports (/api/v1/graph, /api/v1/nodegraph/)
// from mux, a server.Server or an http.ServeMux.
func (p *Pipeline) Mount(mux interface{ Handle(string, http.Handler) }) {
	g := topology.Handler(p.graph, p.log)
	mux.Handle("/api/v1/graph", g)
	mux.Handle("/api/v1/graph/", g)
	mux.Handle("/api/v1/nodegraph/", g)
}

// Add hands b to the API, names its flows and folds them in at the time b
// ends.
func (p *Pipeline) Add(b model.Batch) {
	if p.api != nil {
		p.api.Add(b)
	}
	for _, n := range b.Names {
		if n.Source == model.NameDNS && !p.localClient(n) {
			p.namesRefused.WithLabelValues("client_not_local").Inc()
			continue
		}
		p.l7Names.Add(n, b.End)
	}
	// Named flows are 976 B each: a flood's batch of 65,536 would be
	// 64 MB at once. They are named and folded a chunk at a time, in one
	// buffer, which none of the stages keeps (each copies what it keeps).
	fs := make([]model.Flow, min(len(b.Records), foldChunk))
	for start := 0; start < len(b.Records); start += foldChunk {
		chunk := fs[:min(len(b.Records)-start, foldChunk)]
		for i := range chunk {
			chunk[i] = p.namer(&b.Records[start+i])
			p.l7Names.Name(&chunk[i].SrcEndpoint, chunk[i].Src, b.End)
			p.l7Names.Name(&chunk[i].DstEndpoint, chunk[i].Dst, b.End)
		}
		p.graph.Add(b.End, chunk...)
		p.metrics.Add(b.End, chunk...)
		p.l7.Add(b.End, chunk...)
		for _, e := range p.exports {
			e.Offer(chunk)
		}
	}
	p.log.Debug("folded", "flows", len(b.Records))
}

// foldChunk is how many named flows Add holds at once.
const foldChunk = 4096

// localClient reports whether the client that a DNS answer went to is one
// of this node's: a DNS name counts only as the answer to a query of a
// local endpoint. The datapath sends answers whose query it saw leave;
// this is the user-space half, on what the event carries (the client's
// address): a client that the namer calls external, or places on another
// node, did not ask here. A namer that knows only the host (no inventory)
// calls every other address unknown, not external, and so refuses
// nothing.
func (p *Pipeline) localClient(n model.Name) bool {
	if !n.Client.IsValid() {
		return false
	}
	ep := p.namer(&model.Record{Src: n.Client, Dst: n.Addr}).SrcEndpoint
	if ep.Kind == model.KindExternal {
		return false
	}
	return ep.Node == "" || ep.Node == p.host.Name()
}

// Run adds each batch from in, and looks at the host again every Refresh
// meanwhile, until ctx is done (it returns ctx's error) or in is closed
// (nil).
func (p *Pipeline) Run(ctx context.Context, in <-chan model.Batch) error {
	tick := time.NewTicker(p.refresh)
	defer tick.Stop()
	for {
		select {
		case b, ok := <-in:
			if !ok {
				return nil
			}
			p.Add(b)
		case <-tick.C:
			p.refreshHost()
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (p *Pipeline) refreshHost() {
	if err := p.host.Refresh(); err != nil {
		p.log.Warn("look at the host's routes and addresses", "err", err)
	}
}
