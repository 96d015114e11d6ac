package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/flowmap/flowmap/host"
	"github.com/flowmap/flowmap/model"
	"github.com/flowmap/flowmap/pipeline"
	"github.com/flowmap/flowmap/sandbox"
	"github.com/flowmap/flowmap/topology"
)

// demoPrefix names everything the demo creates, so that a crashed demo's
// leftovers are found and removed by the next.
const demoPrefix = "fmdemo"

// The shop: each host a network namespace on the sandbox's bridge, its
// role, Kubernetes-like namespace, and the port it serves. Two of its
// dependencies are broken, so that the map shows failing edges: reviews is
// down (nothing listens on its port: web's connections are refused), and
// ratings is behind a DROP rule in its namespace (web's SYNs time out,
// the kernel counts them as netfilter drops); web renders its pages
// without either.
var shop = []struct {
	name, ns string
	port     int
	addr     string // a documentation address of its own, for the outside
	// broken: "down" (no listener) or "drop" (an iptables DROP rule on
	// the port, in the host's namespace, gone with it).
	broken string
}{
	{name: "client", ns: "shoppers"},
	{name: "web", ns: "shop", port: 80},
	{name: "catalog", ns: "shop", port: 8080},
	{name: "orders", ns: "shop", port: 8081},
	{name: "db", ns: "shop", port: 5432},
	{name: "cache", ns: "shop", port: 11211},
	{name: "payments", port: 443, addr: "203.0.113.10/24"},
	{name: "reviews", ns: "shop", port: 8082, broken: "down"},
	{name: "ratings", ns: "shop", port: 8083, broken: "drop"},
}

// demoDropTimeout is how long web waits for ratings, behind its DROP
// rule, before it renders without: less than the kernel's first SYN
// retransmission (1 s), so each call sends one SYN.
const demoDropTimeout = 300 * time.Millisecond

// demoWarmup is how long the demo drives traffic before it prints the
// table and the live map's address, when it runs until interrupted.
const demoWarmup = 10 * time.Second

// demoFlags are `flowmap demo`'s settings.
type demoFlags struct {
	duration time.Duration // 0: until interrupted
	outDir   string
	shoppers int
	agent    agentFlags
}

// parseDemoFlags parses the demo's flags. The agent drains every second
// unless --interval says otherwise, so that the demo's figures move.
func parseDemoFlags(args []string, stderr io.Writer) (demoFlags, error) {
	fs := flag.NewFlagSet("flowmap demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var d demoFlags
	fs.DurationVar(&d.duration, "duration", 0,
		"drive traffic this long, print the edges, write the files and exit (as 30s, for scripts); 0 keeps the shop running with the live map until interrupted")
	fs.StringVar(&d.outDir, "out", ".", "directory to write topology.json, topology.dot and topology.svg in")
	fs.IntVar(&d.shoppers, "shoppers", 4, "shoppers browsing at once")
	d.agent.register(fs)
	if err := fs.Parse(args); err != nil {
		return d, err
	}
	if fs.NArg() > 0 {
		return d, fmt.Errorf("demo: unexpected argument %q", fs.Arg(0))
	}
	if d.duration < 0 {
		return d, fmt.Errorf("demo: --duration=%s: want 0 (until interrupted) or more", d.duration)
	}
	interval := false
	fs.Visit(func(f *flag.Flag) { interval = interval || f.Name == "interval" })
	if !interval {
		d.agent.cfg.Interval = time.Second
	}
	if d.agent.cfg.Interval < 100*time.Millisecond {
		return d, fmt.Errorf("demo: --interval=%s: want at least 100ms", d.agent.cfg.Interval)
	}
	d.agent.cfg.Interfaces = []string{demoPrefix + "-*"}
	return d, nil
}

// runDemo builds the shop, runs the agent on it and drives traffic. With
// --duration it prints the edges and writes the graph's files at the end;
// without, it does so after demoWarmup, prints the live map's address, and
// keeps the shop running until ctx is done (Ctrl-C): then it removes
// everything it made and returns nil.
func runDemo(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	d, err := parseDemoFlags(args, stderr)
	if err != nil {
		return err
	}
	a := d.agent
	if os.Geteuid() != 0 {
		return errors.New("demo: needs root (network namespaces and BPF): run it with sudo")
	}
	if err := sandbox.Cleanup(demoPrefix); err != nil {
		return fmt.Errorf("demo: remove an earlier demo's leftovers: %w", err)
	}
	fmt.Fprintf(stdout, "building a shop of %d network namespaces on a bridge…\n", len(shop))
	sb, err := sandbox.New(sandbox.Options{Prefix: demoPrefix, Subnet: netip.MustParsePrefix("198.51.100.0/25")})
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	defer func() {
		if err := sb.Close(); err != nil {
			fmt.Fprintf(stderr, "demo: clean up: %v\n", err)
			return
		}
		fmt.Fprintf(stdout, "removed the sandbox (%s and its namespaces)\n", sb.BridgeName())
	}()
	hosts := map[string]*sandbox.Host{}
	for _, h := range shop {
		if h.addr != "" {
			hosts[h.name], err = sb.AddHostAddr(h.name, netip.MustParsePrefix(h.addr))
		} else {
			hosts[h.name], err = sb.AddHost(h.name)
		}
		if err != nil {
			return fmt.Errorf("demo: %w", err)
		}
		if h.broken == "drop" {
			// In the host's namespace: it goes with the namespace when the
			// sandbox closes, and touches nothing of the machine's.
			cmd := hosts[h.name].Command(ctx, "iptables", "-A", "INPUT", "-p", "tcp", "--dport", strconv.Itoa(h.port), "-j", "DROP")
			if out, err := cmd.CombinedOutput(); err != nil {
				return fmt.Errorf("demo: a DROP rule in %s: %w: %s", h.name, err, out)
			}
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
	if err := sb.CheckTraffic(ctx, hosts["client"], hosts["web"]); err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	for _, h := range shop {
		where := "namespace " + h.ns
		if h.ns == "" {
			where = "outside"
		}
		port := ""
		if h.port != 0 {
			port = ":" + strconv.Itoa(h.port)
		}
		switch h.broken {
		case "down":
			where += "; down: nothing listens"
		case "drop":
			where += "; behind an iptables DROP rule"
		}
		fmt.Fprintf(stdout, "  %-9s %s%s (%s, netns %s)\n", h.name, hosts[h.name].Addr, port, where, hosts[h.name].NetNS)
	}

	a.namer = demoNamer(sb, hosts)
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: max(a.logLevel, slog.LevelWarn)}))
	actx, stopAgent := context.WithCancel(ctx)
	defer stopAgent()
	g, gctx := errgroup.WithContext(actx)
	g.Go(func() error { return agent(gctx, a, log) })
	base := "http://" + a.listen
	// settle waits two more intervals, so that the last calls are drained,
	// and returns the graph the table and the files are written from.
	settle := func() (*topology.Snapshot, error) {
		select {
		case <-gctx.Done():
			return nil, gctx.Err()
		case <-time.After(2*a.cfg.Interval + 100*time.Millisecond):
		}
		return fetchGraph(gctx, base, topology.LevelWorkload, "5m")
	}
	if err := waitReady(gctx, a.listen); err != nil {
		stopAgent()
		if werr := g.Wait(); werr != nil && !errors.Is(werr, context.Canceled) {
			return fmt.Errorf("demo: %w", werr)
		}
		return errors.New("demo: interrupted")
	}
	fmt.Fprintf(stdout, "agent: watching %s-* on %s, serving %s/api/v1/graph\n", demoPrefix, a.listen, base)

	if d.duration > 0 {
		var snap *topology.Snapshot
		g.Go(func() error {
			defer stopAgent()
			if err := driveShop(gctx, hosts, d.shoppers, d.duration, d.duration, base, stdout); err != nil {
				return err
			}
			var err error
			snap, err = settle()
			return err
		})
		if err := g.Wait(); err != nil && !errors.Is(err, context.Canceled) {
			return fmt.Errorf("demo: %w", err)
		}
		if snap == nil {
			return errors.New("demo: interrupted")
		}
		if err := writeDemoGraph(ctx, snap, d.outDir, stdout); err != nil {
			return fmt.Errorf("demo: %w", err)
		}
		fmt.Fprintf(stdout, "\nOpen topology.svg in a browser. On a host of your own, run `flowmap agent` and\n"+
			"`flowmap graph --level workload --window 5m --format svg -o graph.svg` (deploy/ has a Grafana\n"+
			"dashboard and a Prometheus config).\n")
		return nil
	}

	// Until interrupted: the shop runs on; the table, the files and the
	// map's address once the graph has demoWarmup of traffic in it.
	shown := false
	g.Go(func() error { return driveShop(gctx, hosts, d.shoppers, 0, demoWarmup, base, stdout) })
	g.Go(func() error {
		select {
		case <-gctx.Done():
			return gctx.Err()
		case <-time.After(demoWarmup):
		}
		snap, err := settle()
		if err != nil {
			return err
		}
		if err := writeDemoGraph(gctx, snap, d.outDir, stdout); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "\nThe live map: %s/ (the shop keeps shopping; Ctrl-C stops it and removes the sandbox)\n", base)
		shown = true
		<-gctx.Done()
		return gctx.Err()
	})
	if err := g.Wait(); err != nil && !errors.Is(err, context.Canceled) {
		return fmt.Errorf("demo: %w", err)
	}
	if !shown {
		return errors.New("demo: interrupted")
	}
	return nil
}

// writeDemoGraph prints the snapshot's table and writes it as JSON, DOT
// and SVG (without Graphviz, no DOT nor SVG) in outDir.
func writeDemoGraph(ctx context.Context, snap *topology.Snapshot, outDir string, stdout io.Writer) error {
	fmt.Fprintln(stdout)
	if err := topology.WriteTable(stdout, snap); err != nil {
		return err
	}
	fmt.Fprintln(stdout)
	for _, f := range []struct{ name, format string }{
		{"topology.json", "json"}, {"topology.dot", "dot"}, {"topology.svg", "svg"},
	} {
		var b bytes.Buffer
		if err := writeGraph(ctx, &b, snap, f.format); err != nil {
			if errors.Is(err, topology.ErrNoGraphviz) {
				fmt.Fprintf(stdout, "skipped %s: %v\n", f.name, err)
				continue
			}
			return err
		}
		path := filepath.Join(outDir, f.name)
		if err := os.WriteFile(path, b.Bytes(), 0o644); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "wrote %s\n", path)
	}
	return nil
}

// demoNamer names the shop's hosts as an inventory would name containers:
// by role, in their namespace, on this machine.
func demoNamer(sb *sandbox.Net, hosts map[string]*sandbox.Host) pipeline.Namer {
	machine := host.Name()
	eps := map[netip.Addr]model.Endpoint{
		sb.Addr(): host.Endpoint(machine, []netip.Addr{sb.Addr()}),
	}
	for _, s := range shop {
		h := hosts[s.name]
		ep := model.Endpoint{Kind: model.KindNetNS, ID: h.NetNS, Name: s.name, Namespace: s.ns, Workload: s.name,
			WorkloadKind: "Deployment", Node: machine, NetNS: h.NetNSInode, Addrs: []netip.Addr{h.Addr}, Source: "demo"}
		if s.ns == "" {
			ep = model.Endpoint{Kind: model.KindExternal, ID: h.Addr.String(), Name: s.name + ".example",
				Addrs: []netip.Addr{h.Addr}, Source: "demo"}
		}
		eps[h.Addr] = ep
	}
	fallback := pipeline.AddrNamer(machine)
	return func(r *model.Record) model.Flow {
		f := fallback(r)
		if ep, ok := eps[r.Src]; ok {
			f.SrcEndpoint = ep
		}
		if ep, ok := eps[r.Dst]; ok {
			f.DstEndpoint = ep
		}
		return f
	}
}

// driveShop runs the shop for d, or until ctx is done if d is 0: shoppers
// browse web, which asks catalog (cache over UDP, db on a miss) and, for
// one page in three, orders (db, and payments outside); for one page in
// four, web also asks reviews (refused) and renders the page without;
// beside the pages, web asks ratings four times a second (timed out,
// after demoDropTimeout). For its first report it prints progress, with
// what the agent sees.
func driveShop(ctx context.Context, h map[string]*sandbox.Host, shoppers int, d, report time.Duration, agentURL string, stdout io.Writer) error {
	addr := func(name string) string {
		for _, s := range shop {
			if s.name == name {
				return net.JoinHostPort(h[name].Addr.String(), strconv.Itoa(s.port))
			}
		}
		panic("no host " + name)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	g, ctx := errgroup.WithContext(ctx)
	listen := func(name string) (net.Listener, error) {
		ln, err := h[name].Listen("tcp4", addr(name))
		if err != nil {
			return nil, fmt.Errorf("listen on %s: %w", name, err)
		}
		context.AfterFunc(ctx, func() { ln.Close() })
		return ln, nil
	}
	// Plain TCP servers: a request in, a response of resp bytes out.
	for name, resp := range map[string]int{"db": 8 << 10, "payments": 1500} {
		ln, err := listen(name)
		if err != nil {
			return err
		}
		g.Go(func() error { serveTCP(ln, resp); return nil })
	}
	pc, err := h["cache"].ListenPacket("udp4", addr("cache"))
	if err != nil {
		return fmt.Errorf("listen on cache: %w", err)
	}
	context.AfterFunc(ctx, func() { pc.Close() })
	g.Go(func() error { serveCache(pc); return nil })

	client := func(from string, keepAlive bool) *http.Client {
		return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
			DialContext: h[from].DialContext, DisableKeepAlives: !keepAlive, MaxIdleConnsPerHost: 4}}
	}
	webOut := client("web", true)
	handlers := map[string]http.HandlerFunc{
		"web": func(w http.ResponseWriter, r *http.Request) {
			if rand.IntN(4) == 0 {
				// A broken dependency: its failure does not fail the page.
				callTCP(r.Context(), h["web"], addr("reviews"), 100)
			}
			if err := get(r.Context(), webOut, "http://"+addr("catalog")+"/item"); err != nil {
				http.Error(w, err.Error(), http.StatusBadGateway)
				return
			}
			if rand.IntN(3) == 0 {
				if err := get(r.Context(), webOut, "http://"+addr("orders")+"/order"); err != nil {
					http.Error(w, err.Error(), http.StatusBadGateway)
					return
				}
			}
			w.Write(make([]byte, 16<<10))
		},
		"catalog": func(w http.ResponseWriter, r *http.Request) {
			hit, err := cacheGet(r.Context(), h["catalog"], addr("cache"))
			if err == nil && !hit {
				err = callTCP(r.Context(), h["catalog"], addr("db"), 200)
			}
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadGateway)
				return
			}
			w.Write(make([]byte, 2<<10))
		},
		"orders": func(w http.ResponseWriter, r *http.Request) {
			err := callTCP(r.Context(), h["orders"], addr("db"), 600)
			if err == nil {
				err = callTCP(r.Context(), h["orders"], addr("payments"), 700)
			}
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadGateway)
				return
			}
			w.Write(make([]byte, 512))
		},
	}
	for name, hf := range handlers {
		ln, err := listen(name)
		if err != nil {
			return err
		}
		srv := &http.Server{Handler: hf, ReadHeaderTimeout: 5 * time.Second}
		context.AfterFunc(ctx, func() { srv.Close() })
		g.Go(func() error { srv.Serve(ln); return nil })
	}

	var pages, failed atomic.Int64
	start := time.Now()
	// Without a duration, the shoppers shop until ctx is done.
	shopping := func() bool { return ctx.Err() == nil && (d == 0 || time.Since(start) < d) }
	// web asks ratings, behind its DROP rule, beside the pages: every
	// 250 ms, giving up after demoDropTimeout.
	g.Go(func() error {
		for shopping() {
			cctx, cancel := context.WithTimeout(ctx, demoDropTimeout)
			callTCP(cctx, h["web"], addr("ratings"), 100)
			cancel()
			select {
			case <-ctx.Done():
			case <-time.After(250 * time.Millisecond):
			}
		}
		return nil
	})
	for range shoppers {
		g.Go(func() error {
			c := client("client", false)
			for shopping() {
				if err := get(ctx, c, "http://"+addr("web")+"/product/"+strconv.Itoa(rand.IntN(1000))); err != nil {
					if ctx.Err() != nil {
						return nil
					}
					failed.Add(1)
				} else {
					pages.Add(1)
				}
				select {
				case <-ctx.Done():
				case <-time.After(time.Duration(20+rand.IntN(60)) * time.Millisecond):
				}
			}
			return nil
		})
	}
	g.Go(func() error {
		if d > 0 {
			// The servers, once the shoppers are done (report is d).
			defer cancel()
		}
		tick := time.NewTicker(5 * time.Second)
		defer tick.Stop()
		for time.Since(start) < report {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-tick.C:
			case <-time.After(report - time.Since(start)):
			}
			seen := ""
			if s, err := fetchGraph(ctx, agentURL, topology.LevelWorkload, "1m"); err == nil {
				var b uint64
				for _, e := range s.Edges {
					b += e.Bytes()
				}
				seen = fmt.Sprintf(", agent sees %d nodes, %d edges, %s in the last minute", len(s.Nodes), len(s.Edges), topology.Rate(float64(b)/s.Window.Seconds()))
			}
			of := ""
			if d > 0 {
				of = fmt.Sprintf("/%.0fs", d.Seconds())
			}
			fmt.Fprintf(stdout, "[%2.0fs%s] %d pages served, %d failed%s\n",
				time.Since(start).Seconds(), of, pages.Load(), failed.Load(), seen)
		}
		return nil
	})
	err = g.Wait()
	if err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	if p := pages.Load(); p == 0 {
		return fmt.Errorf("no page served (%d failed)", failed.Load())
	}
	return nil
}

// waitReady polls the agent's /readyz until it answers 200.
func waitReady(ctx context.Context, addr string) error {
	url := "http://" + addr + "/readyz"
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func get(ctx context.Context, c *http.Client, url string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("get %s: %s", url, resp.Status)
	}
	return nil
}

// serveTCP answers each connection's request with resp bytes.
func serveTCP(ln net.Listener, resp int) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			c.SetDeadline(time.Now().Add(5 * time.Second))
			buf := make([]byte, 64<<10)
			if _, err := c.Read(buf); err != nil {
				return
			}
			c.Write(make([]byte, resp))
		}()
	}
}

// callTCP opens a connection, sends req bytes and reads the response.
func callTCP(ctx context.Context, from *sandbox.Host, addr string, req int) error {
	c, err := from.DialContext(ctx, "tcp4", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write(make([]byte, req)); err != nil {
		return err
	}
	_, err = io.Copy(io.Discard, c)
	return err
}

// serveCache answers a get with a value, three times in four, or a miss.
func serveCache(pc net.PacketConn) {
	buf := make([]byte, 1500)
	for {
		_, from, err := pc.ReadFrom(buf)
		if err != nil {
			return
		}
		resp := make([]byte, 1024)
		if rand.IntN(4) == 0 {
			resp = []byte("END\r\n")
		}
		pc.WriteTo(resp, from)
	}
}

// cacheGet asks the cache for a key over UDP, and says whether it had it.
func cacheGet(ctx context.Context, from *sandbox.Host, addr string) (bool, error) {
	c, err := from.DialContext(ctx, "udp4", addr)
	if err != nil {
		return false, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Write([]byte("get item:" + strconv.Itoa(rand.IntN(1000)) + "\r\n")); err != nil {
		return false, err
	}
	buf := make([]byte, 1500)
	n, err := c.Read(buf)
	if err != nil {
		return false, err
	}
	return n > 5, nil
}
