package main

import (
	"flag"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"

	"github.com/flowmap/flowmap/enrich"
	"github.com/flowmap/flowmap/host"
	"github.com/flowmap/flowmap/pipeline"
	"github.com/flowmap/flowmap/topology"
)

// graphFlags are the settings of the graph and its flow series.
type graphFlags struct {
	maxEdges        int
	maxBytes        int64
	namesMaxBytes   int
	metricsLevel    topology.Level
	metricsMaxEdges int
	// node is the name of this node in the cluster.
	node string
	// uplinks are globs of the interfaces that lead to other nodes and the
	// outside; nil: see pipeline.Reporting.
	uplinks globs
	// clusterCIDRs hold the addresses of the cluster's pods and nodes,
	// which their own nodes' agents report.
	clusterCIDRs prefixes
}

// prefixes is a comma-separated list of CIDRs.
type prefixes []netip.Prefix

func (p *prefixes) String() string {
	s := make([]string, len(*p))
	for i, x := range *p {
		s[i] = x.String()
	}
	return strings.Join(s, ",")
}

func (p *prefixes) Set(s string) error {
	*p = nil
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		x, err := netip.ParsePrefix(f)
		if err != nil {
			return fmt.Errorf("parse cidr %q: %w", f, err)
		}
		*p = append(*p, x.Masked())
	}
	return nil
}

func (g *graphFlags) register(fs *flag.FlagSet) {
	g.metricsLevel = topology.DefaultMetricsLevel
	fs.IntVar(&g.maxEdges, "graph-max-edges", topology.DefaultMaxEdges,
		"edges the graph keeps (endpoint pair, protocol, server port); flows of more count in one overflow edge")
	fs.Int64Var(&g.maxBytes, "graph-max-bytes", topology.DefaultMaxBytes,
		"bound on the graph's memory, in bytes (flowmap_store_bytes{store=\"graph\"}); flows past it count in the overflow edge")
	fs.IntVar(&g.namesMaxBytes, "names-max-bytes", enrich.DefaultNamesBytes,
		"bound on the memory of the names from DNS answers and TLS server names, in bytes; the least recently used addresses go first")
	fs.Var(&g.metricsLevel, "metrics-level", "level of the src and dst labels of the flow series on /metrics: container, pod, workload, namespace or host")
	fs.IntVar(&g.metricsMaxEdges, "metrics-max-edges", topology.DefaultMetricsMaxEdges,
		"edges with flow series on /metrics (each 4 byte and packet series, and for TCP 17 connection and RTT series); flows of more count in the series labelled overflow")
	g.node = host.Name()
	fs.StringVar(&g.node, "node-name", g.node, "name of this node: the node label of the flow series, the host's endpoint and the Kubernetes Node that is this machine (default: $NODE_NAME, else the host name)")
	fs.Var(&g.uplinks, "uplinks",
		"comma-separated name globs of the interfaces that lead to other nodes and the outside, behind which no end runs on this node (default: the default routes' interfaces, and vxlan, geneve and physical devices)")
	fs.Var(&g.clusterCIDRs, "cluster-cidrs",
		"comma-separated CIDRs of the cluster's pods and nodes: a flow whose client is in them but not on this node is left to the client's node to report in the flow series (besides the pods and nodes the inventory places on other nodes)")
}

// options are the pipeline's options of these flags, naming flows with
// namer (nil: by address alone) and handing batches to api.
func (g *graphFlags) options(namer pipeline.Namer, api pipeline.Sink, log *slog.Logger) pipeline.Options {
	return pipeline.Options{Node: g.node, GraphMaxEdges: g.maxEdges, GraphMaxBytes: g.maxBytes, NamesMaxBytes: g.namesMaxBytes, MetricsLevel: g.metricsLevel, MetricsMaxEdges: g.metricsMaxEdges,
		Uplinks: g.uplinks, ClusterCIDRs: g.clusterCIDRs, Namer: namer, API: api, Log: log}
}
