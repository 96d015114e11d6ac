package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime/pprof"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"golang.org/x/sync/errgroup"
	"k8s.io/klog/v2"

	"github.com/flowmap/flowmap/enrich"
	"github.com/flowmap/flowmap/flows"
	"github.com/flowmap/flowmap/model"
	"github.com/flowmap/flowmap/pipeline"
	"github.com/flowmap/flowmap/server"
)

// globs is a comma-separated list of interface name globs.
type globs []string

func (g *globs) String() string { return strings.Join(*g, ",") }

func (g *globs) Set(s string) error {
	*g = nil
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			*g = append(*g, p)
		}
	}
	return nil
}

// agentFlags are the agent's settings, shared with the demo.
type agentFlags struct {
	cfg       flows.Config
	listen    string
	serve     serveFlags
	keep      int
	keepBytes uint64
	logLevel  slog.Level
	graph     graphFlags
	inv       inventoryFlags
	export    exportFlags
	// Profiles written when the agent stops, for make bench.
	cpuProfile, heapProfile string
	// namer names the ends of flows; nil: the inventory, or with
	// --no-inventory the address alone.
	namer pipeline.Namer
}

func (a *agentFlags) register(fs *flag.FlagSet) {
	a.cfg.Attach = flows.AttachAuto
	fs.Var((*globs)(&a.cfg.Interfaces), "interfaces",
		"comma-separated name globs of the interfaces to watch (default: veths with a peer in another namespace, bridges (through their ports), vxlan and geneve devices, and the default routes' interfaces)")
	fs.Var((*globs)(&a.cfg.XDP), "xdp",
		"comma-separated name globs of watched interfaces whose ingress XDP counts instead of TC: native mode where the driver has it, generic otherwise (for NICs; on veths TC is faster)")
	a.cfg.XDPMode = flows.XDPAuto
	fs.Var(&a.cfg.XDPMode, "xdp-mode", "where the XDP program of --xdp runs: native (in the driver), generic, or auto (native where the driver has it)")
	fs.Var(&a.cfg.Attach, "attach", "how to attach TC programs: tcx, clsact or auto (TCX where the kernel has it)")
	fs.DurationVar(&a.cfg.Interval, "interval", flows.DefaultInterval, "how often to drain the flow map")
	fs.IntVar(&a.cfg.MaxFlows, "max-flows", flows.DefaultMaxFlows, "flow directions the flow maps hold between two drains; more are counted as map-full")
	fs.IntVar(&a.cfg.MaxL7Flows, "max-l7-flows", 0, "client-to-server flows with L7 messages the L7 maps hold between two drains (0: a quarter of --max-flows); the messages of more are counted as lost (map full)")
	a.listen = "127.0.0.1:9477"
	fs.Var((*hostPort)(&a.listen), "listen",
		"address to serve the HTTP API and /metrics on, host:port (an IPv6 host as [addr]:port or addr:port); other than loopback, only with --tls-cert, --tls-key and --auth")
	a.serve.register(fs)
	fs.Func("health", "on or off: connection outcomes, ICMP errors, drops by kernel reason (tracepoint kfree_skb), RTT and zero-window probes of local sockets (tracepoint tcp_probe) and their retransmission timeouts (tracepoint tcp_cong_state_set); off attaches none of the tracepoints", func(v string) error {
		switch v {
		case "on":
			a.cfg.HealthOff = false
		case "off":
			a.cfg.HealthOff = true
		default:
			return fmt.Errorf("health %q: want on or off", v)
		}
		return nil
	})
	fs.IntVar(&a.keep, "keep", 12, "intervals of flows kept for /api/v1/flows?last=N")
	fs.Uint64Var(&a.keepBytes, "keep-bytes", server.DefaultHistoryBytes,
		"bound on the memory of the intervals kept for /api/v1/flows, in bytes (a record is 352 B, 1,504 with L7); past it the oldest intervals go, counted")
	fs.TextVar(&a.logLevel, "log-level", slog.LevelInfo, "log level: debug, info, warn or error")
	fs.StringVar(&a.cpuProfile, "cpu-profile", "", "write a pprof CPU profile of the agent's run to this file when it stops (for profiling)")
	fs.StringVar(&a.heapProfile, "heap-profile", "", "write a pprof heap profile to this file when the agent stops (for profiling)")
	a.graph.register(fs)
	a.inv.register(fs)
	a.export.register(fs)
}

func runAgent(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("flowmap agent", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var a agentFlags
	a.register(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("agent: unexpected argument %q", fs.Arg(0))
	}
	if a.cfg.Interval < 100*time.Millisecond {
		return fmt.Errorf("agent: --interval=%s: want at least 100ms", a.cfg.Interval)
	}
	if err := a.export.check(); err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: a.logLevel}))
	if a.cpuProfile != "" {
		f, err := os.Create(a.cpuProfile)
		if err != nil {
			return fmt.Errorf("create cpu profile: %w", err)
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return fmt.Errorf("start cpu profile: %w", err)
		}
		defer pprof.StopCPUProfile()
	}
	err := agent(ctx, a, log)
	if a.heapProfile != "" {
		if perr := writeHeapProfile(a.heapProfile); perr != nil {
			err = errors.Join(err, perr)
		}
	}
	return err
}

// writeHeapProfile writes the heap's allocations to file.
func writeHeapProfile(file string) error {
	f, err := os.Create(file)
	if err != nil {
		return fmt.Errorf("create heap profile: %w", err)
	}
	if err := pprof.Lookup("allocs").WriteTo(f, 0); err != nil {
		f.Close()
		return fmt.Errorf("write heap profile: %w", err)
	}
	return f.Close()
}

// agent runs the datapath, the pipeline and the HTTP server until ctx is
// done.
func agent(ctx context.Context, a agentFlags, log *slog.Logger) error {
	serveCfg, err := a.serve.config(a.listen, a.inv.cfg, a.graph.node)
	if err != nil {
		return err
	}
	a.cfg.Logger = log.With("component", "flows")
	dp, err := flows.New(a.cfg)
	if err != nil {
		return err
	}
	defer func() {
		if err := dp.Close(); err != nil {
			log.Error("detach", "err", err)
		}
		log.Info("detached")
	}()

	reg := prometheus.NewRegistry()
	reg.MustRegister(flows.NewCollector(dp), collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	srv := server.New(a.keep, dp.Ready, reg, log.With("component", "server"))
	srv.SetMaxBytes(a.keepBytes)
	srv.ReportDatapath(func() any {
		if b := dp.Bypassed(); len(b) > 0 {
			return map[string]any{"bypassable": b}
		}
		return nil
	})
	g, ctx := errgroup.WithContext(ctx)
	namer := a.namer
	var inventory *enrich.Inventory
	if namer == nil && !a.inv.off {
		a.inv.cfg.Logger = log // enrich names its components itself
		a.inv.cfg.Node = a.graph.node
		// client-go logs through klog, to stderr unless told otherwise.
		klog.SetSlogLogger(log.With("component", "client-go"))
		inv, err := enrich.New(a.inv.cfg)
		if err != nil {
			return err
		}
		reg.MustRegister(enrich.NewCollector(inv))
		srv.ReportStatus(func() any { return inv.Status() })
		namer = func(r *model.Record) model.Flow { return inv.Enrich(*r) }
		inventory = inv
		g.Go(func() error { return inv.Run(ctx) })
	}
	// The exporters' queues send until the agent stops, then flush.
	queues, err := a.export.exporters(ctx, a.graph.node, reg, log)
	if err != nil {
		return err
	}
	for _, q := range queues {
		g.Go(func() error { return q.Run(ctx) })
	}
	opts := a.graph.options(namer, srv, log.With("component", "topology"))
	for _, q := range queues {
		opts.Exports = append(opts.Exports, q)
	}
	pipe := pipeline.New(opts)
	reg.MustRegister(pipe.Collectors()...)
	stores := append(pipe.Stores(), pipeline.Store{Name: "api_history", Usage: srv.Usage})
	if inventory != nil {
		stores = append(stores, pipeline.Store{Name: "owner_history", Usage: inventory.HistoryUsage})
	}
	for _, q := range queues {
		stores = append(stores, pipeline.Store{Name: "export_" + q.Name(), Usage: q.Usage})
	}
	reg.MustRegister(pipeline.StoreCollector(stores))
	om, err := a.export.metrics(ctx, a.graph.node, pipe.FlowSeries(), pipe.L7Series())
	if err != nil {
		return err
	}
	if om != nil {
		g.Go(func() error { return om.Run(ctx) })
	}
	pipe.Mount(srv)
	mountPage(srv, a.cfg.Interval)

	batches := make(chan model.Batch, 1)
	g.Go(func() error { return dp.Run(ctx, batches) })
	g.Go(func() error { return pipe.Run(ctx, batches) })
	g.Go(func() error {
		return srv.Serve(ctx, a.listen, serveCfg)
	})
	if err := g.Wait(); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return nil
}
