package main

import (
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/vishvananda/netlink"

	"github.com/flowmap/flowmap/enrich"
	"github.com/flowmap/flowmap/model"
	"github.com/flowmap/flowmap/server"
	"github.com/flowmap/flowmap/topology"
)

// graphFlags are the settings of the graph and its flow series.
type graphFlags struct {
	maxEdges        int
	metricsLevel    topology.Level
	metricsMaxEdges int
	// node is the name of this node in the cluster.
	node string
	// uplinks are globs of the interfaces that lead to other nodes and the
	// outside; nil: see isUplink.
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
	fs.Var(&g.metricsLevel, "metrics-level", "level of the src and dst labels of the flow series on /metrics: container, pod, workload, namespace or host")
	fs.IntVar(&g.metricsMaxEdges, "metrics-max-edges", topology.DefaultMetricsMaxEdges,
		"edges with flow series on /metrics (each 4 byte and packet series, and for TCP 17 connection and RTT series); flows of more count in the series labelled overflow")
	g.node = os.Getenv("NODE_NAME")
	if g.node == "" {
		g.node, _ = os.Hostname()
	}
	fs.StringVar(&g.node, "node-name", g.node, "name of this node: the node label of the flow series (default: $NODE_NAME, else the host name)")
	fs.Var(&g.uplinks, "uplinks",
		"comma-separated name globs of the interfaces that lead to other nodes and the outside, behind which no end runs on this node (default: the default routes' interfaces, and vxlan, geneve and physical devices)")
	fs.Var(&g.clusterCIDRs, "cluster-cidrs",
		"comma-separated CIDRs of the cluster's pods and nodes: a flow whose client is in them but not on this node is left to the client's node to report in the flow series (besides the pods and nodes the inventory places on other nodes)")
}

// namer names the ends of a flow record.
type namer func(r *model.Record) model.Flow

// pipeline folds each batch of flows, named, into the graph and the flow
// series, and serves the graph's exports.
type pipeline struct {
	name    namer
	graph   *topology.Graph
	metrics *topology.Metrics
	// names are the DNS answers and TLS server names that batches carry,
	// which name the ends nothing else named; l7 the L7 series.
	names *enrich.Names
	l7    *topology.L7Metrics
	log   *slog.Logger
}

// newPipeline returns a pipeline that names flows with name (nil: by
// address alone, see addrNamer) and registers its collectors in reg.
func newPipeline(gf graphFlags, name namer, reg prometheus.Registerer, log *slog.Logger) *pipeline {
	if name == nil {
		name = nodeNamer(gf.node)
	}
	mo := topology.MetricsOptions{Level: gf.metricsLevel, MaxEdges: gf.metricsMaxEdges, Node: gf.node,
		Ends: clusterEnds(gf, ownAddrs())}
	p := &pipeline{
		name:    name,
		graph:   topology.New(topology.Options{MaxEdges: gf.maxEdges}),
		metrics: topology.NewMetrics(mo),
		names:   enrich.NewNames(enrich.DefaultMaxNames),
		l7:      topology.NewL7Metrics(mo),
		log:     log,
	}
	reg.MustRegister(p.metrics, topology.NewGraphCollector(p.graph), p.l7)
	return p
}

// add folds a batch in, at the time it ends.
func (p *pipeline) add(b model.Batch) {
	for _, n := range b.Names {
		p.names.Add(n, b.End)
	}
	fs := make([]model.Flow, len(b.Records))
	for i := range b.Records {
		fs[i] = p.name(&b.Records[i])
		p.names.Name(&fs[i].SrcEndpoint, fs[i].Src, b.End)
		p.names.Name(&fs[i].DstEndpoint, fs[i].Dst, b.End)
	}
	p.graph.Add(b.End, fs...)
	p.metrics.Add(b.End, fs...)
	p.l7.Add(b.End, fs...)
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
	return nodeNamer(hostname)
}

// nodeNamer is addrNamer with this machine named node.
func nodeNamer(node string) namer {
	own := ownAddrs()
	host := model.Endpoint{Kind: model.KindHost, ID: node, Name: node, Node: node}
	end := func(a netip.Addr) model.Endpoint {
		if own[a] {
			return host
		}
		s := a.String()
		return model.Endpoint{Kind: model.KindUnknown, ID: s, Name: s}
	}
	return func(r *model.Record) model.Flow {
		return model.Flow{Record: *r, SrcEndpoint: end(r.Src), DstEndpoint: end(r.Dst)}
	}
}

// ownAddrs returns this host's addresses, as they are now.
func ownAddrs() map[netip.Addr]bool {
	own := map[netip.Addr]bool{}
	if addrs, err := net.InterfaceAddrs(); err == nil {
		for _, a := range addrs {
			if p, err := netip.ParsePrefix(a.String()); err == nil {
				own[p.Addr()] = true
			}
		}
	}
	return own
}

// clusterEnds tells where the ends of a flow run, for the reporting rule
// of the flow series (see package topology): an end runs here when it is
// behind a watched interface that is not an uplink, or is one of this
// host's addresses; a client runs elsewhere when the inventory places it
// on another node or it is in --cluster-cidrs.
func clusterEnds(gf graphFlags, own map[netip.Addr]bool) func(*model.Flow) topology.Ends {
	up := uplinks{globs: gf.uplinks}
	return func(f *model.Flow) topology.Ends {
		e := topology.Ends{
			ClientHere: (f.SrcIf.Index != 0 && !up.is(f.SrcIf)) || own[f.Src],
			ServerHere: (f.DstIf.Index != 0 && !up.is(f.DstIf)) || own[f.Dst],
		}
		if e.ClientHere {
			return e
		}
		for _, p := range gf.clusterCIDRs {
			if p.Contains(f.Src) {
				e.ClientElsewhere = true
				return e
			}
		}
		switch ep := &f.SrcEndpoint; ep.Kind {
		case model.KindPod, model.KindContainer, model.KindHost:
			e.ClientElsewhere = ep.Node != "" && ep.Node != gf.node
		}
		return e
	}
}

// uplinks tells the interfaces that lead to other nodes and the outside:
// those named by globs, or without globs vxlan, geneve and physical
// devices and the interfaces of the default routes, looked up again every
// 30s.
type uplinks struct {
	globs []string

	mu       sync.Mutex
	defaults map[int]bool
	looked   time.Time
}

func (u *uplinks) is(i model.Interface) bool {
	if len(u.globs) > 0 {
		for _, g := range u.globs {
			if ok, _ := path.Match(g, i.Name); ok {
				return true
			}
		}
		return false
	}
	switch i.Kind {
	case "vxlan", "geneve", "device":
		return true
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	if time.Since(u.looked) > 30*time.Second {
		u.looked = time.Now()
		u.defaults = map[int]bool{}
		routes, _ := netlink.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Table: 254}, netlink.RT_FILTER_TABLE)
		for _, r := range routes {
			if r.Dst == nil || r.Dst.IP.IsUnspecified() {
				u.defaults[r.LinkIndex] = true
				for _, nh := range r.MultiPath {
					u.defaults[nh.LinkIndex] = true
				}
			}
		}
	}
	return u.defaults[i.Index]
}
