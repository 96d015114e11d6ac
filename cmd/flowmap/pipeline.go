package main

import (
	"flag"
	"log/slog"
	"net"
	"net/netip"
	"os"

	"github.com/flowmap/flowmap/enrich"
	"github.com/flowmap/flowmap/flows"
	"github.com/flowmap/flowmap/server"
	"github.com/flowmap/flowmap/topology"
	"github.com/prometheus/client_golang/prometheus"
)

// graphFlags are the settings of the graph and its flow series.
type graphFlags struct {
	maxEdges        int
	metricsLevel    topology.Level
	metricsMaxEdges int
}

func (g *graphFlags) register(fs *flag.FlagSet) {
	g.metricsLevel = topology.DefaultMetricsLevel
	fs.IntVar(&g.maxEdges, "graph-max-edges", topology.DefaultMaxEdges,
		"edges the graph keeps (endpoint pair, protocol, server port); flows of more count in one overflow edge")
	fs.Var(&g.metricsLevel, "metrics-level", "level of the src and dst labels of the flow series on /metrics: container, pod, workload, namespace or host")
	fs.IntVar(&g.metricsMaxEdges, "metrics-max-edges", topology.DefaultMetricsMaxEdges,
		"edges with flow series on /metrics (each 4 byte and packet series, and for TCP 17 connection and RTT series); flows of more count in the series labelled overflow")
}

// namer names the ends of a flow record.
type namer func(r *flows.Record) enrich.Flow

// pipeline folds each batch of flows, named, into the graph and the flow
// series, and serves the graph's exports.
type pipeline struct {
	name    namer
	graph   *topology.Graph
	metrics *topology.Metrics
	log     *slog.Logger
}

// newPipeline returns a pipeline that names flows with name (nil: by
// address alone, see addrNamer) and registers its collectors in reg.
func newPipeline(gf graphFlags, name namer, reg prometheus.Registerer, log *slog.Logger) *pipeline {
	if name == nil {
		name = addrNamer()
	}
	p := &pipeline{
		name:    name,
		graph:   topology.New(topology.Options{MaxEdges: gf.maxEdges}),
		metrics: topology.NewMetrics(topology.MetricsOptions{Level: gf.metricsLevel, MaxEdges: gf.metricsMaxEdges}),
		log:     log,
	}
	reg.MustRegister(p.metrics, topology.NewGraphCollector(p.graph))
	return p
}

// add folds a batch in, at the time it ends.
func (p *pipeline) add(b flows.Batch) {
	fs := make([]enrich.Flow, len(b.Records))
	for i := range b.Records {
		fs[i] = p.name(&b.Records[i])
	}
	p.graph.Add(b.End, fs...)
	p.metrics.Add(b.End, fs...)
	p.log.Debug("folded", "flows", len(fs))
}

// mount serves the graph's exports from srv.
func (p *pipeline) mount(srv *server.Server) {
	g := topology.Handler(p.graph, p.log)
	srv.Handle("/api/v1/graph", g)
	srv.Handle("/api/v1/nodegraph/", g)
}

// addrNamer names each end by its address alone until the inventory does:
// this machine's own addresses are the host, others unknown.
func addrNamer() namer {
	hostname, _ := os.Hostname()
	own := map[netip.Addr]bool{}
	if addrs, err := net.InterfaceAddrs(); err == nil {
		for _, a := range addrs {
			if p, err := netip.ParsePrefix(a.String()); err == nil {
				own[p.Addr()] = true
			}
		}
	}
	host := enrich.Endpoint{Kind: enrich.KindHost, ID: hostname, Name: hostname, Node: hostname}
	end := func(a netip.Addr) enrich.Endpoint {
		if own[a] {
			return host
		}
		s := a.String()
		return enrich.Endpoint{Kind: enrich.KindUnknown, ID: s, Name: s}
	}
	return func(r *flows.Record) enrich.Flow {
		return enrich.Flow{Record: *r, SrcEndpoint: end(r.Src), DstEndpoint: end(r.Dst)}
	}
}
