package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/flowmap/flowmap/flows"
	"github.com/flowmap/flowmap/internal/sandbox"
	"golang.org/x/sync/errgroup"
)

// demoPrefix names everything the demo creates, so that a crashed demo's
// leftovers are found and removed by the next.
const demoPrefix = "fmdemo"

func runDemo(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("flowmap demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	duration := fs.Duration("duration", 15*time.Second, "how long to drive traffic")
	var a agentFlags
	a.register(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if os.Geteuid() != 0 {
		return errors.New("demo: needs root (network namespaces and BPF): run it with sudo")
	}
	if err := sandbox.Cleanup(demoPrefix); err != nil {
		return fmt.Errorf("demo: remove an earlier demo's leftovers: %w", err)
	}
	sb, err := sandbox.New(sandbox.Options{Prefix: demoPrefix, Subnet: netip.MustParsePrefix("198.51.100.0/25")})
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	defer sb.Close()
	hosts := map[string]*sandbox.Host{}
	for _, name := range []string{"web", "api", "db", "client"} {
		if hosts[name], err = sb.AddHost(name); err != nil {
			return fmt.Errorf("demo: %w", err)
		}
	}
	if hosts["outside"], err = sb.AddHostAddr("outside", netip.MustParsePrefix("203.0.113.10/24")); err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	fmt.Fprintf(stdout, "sandbox: bridge %s, hosts:", sb.BridgeName())
	for _, h := range sb.Hosts() {
		fmt.Fprintf(stdout, " %s=%s", h.Name, h.Addr)
	}
	fmt.Fprintln(stdout)

	a.cfg.Interfaces = []string{demoPrefix + "-*"}
	if a.cfg.Interval == 5*time.Second {
		a.cfg.Interval = time.Second
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: a.logLevel}))
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var batches []flows.Batch
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		return agent(gctx, a, log, func(b flows.Batch) { batches = append(batches, b) })
	})
	g.Go(func() error {
		defer cancel()
		if err := waitReady(gctx, a.listen); err != nil {
			return err
		}
		return driveTraffic(gctx, hosts, *duration, a.cfg.Interval, stdout)
	})
	if err := g.Wait(); err != nil && !errors.Is(err, context.Canceled) {
		return fmt.Errorf("demo: %w", err)
	}
	names := map[netip.Addr]string{sb.Addr(): "host"}
	for _, h := range sb.Hosts() {
		names[h.Addr] = h.Name
	}
	printFlows(stdout, flows.Merge(batches...), names)
	return nil
}

// driveTraffic runs a tiny shop: web calls api, api calls db, a client
// calls web, and web calls a service "outside". Each call is one TCP
// connection with a request and a response of known sizes.
func driveTraffic(ctx context.Context, h map[string]*sandbox.Host, d, interval time.Duration, stdout io.Writer) error {
	type service struct {
		host *sandbox.Host
		port int
		resp int
	}
	services := map[string]service{
		"web":     {h["web"], 8080, 20 << 10},
		"api":     {h["api"], 9000, 4 << 10},
		"db":      {h["db"], 5432, 64 << 10},
		"outside": {h["outside"], 443, 2 << 10},
	}
	for name, s := range services {
		ln, err := s.host.Listen("tcp4", net.JoinHostPort(s.host.Addr.String(), strconv.Itoa(s.port)))
		if err != nil {
			return fmt.Errorf("listen on %s: %w", name, err)
		}
		defer ln.Close()
		go serve(ln, s.resp)
	}
	calls := []struct {
		from, to string
		req      int
	}{
		{"client", "web", 512}, {"web", "api", 1 << 10}, {"api", "db", 256}, {"web", "outside", 300},
	}
	deadline := time.Now().Add(d)
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	var n int
	last := time.Now()
	for time.Now().Before(deadline) {
		for _, c := range calls {
			s := services[c.to]
			if err := call(ctx, h[c.from], net.JoinHostPort(s.host.Addr.String(), strconv.Itoa(s.port)), c.req); err != nil {
				return fmt.Errorf("call %s → %s: %w", c.from, c.to, err)
			}
			n++
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
		if time.Since(last) >= time.Second {
			last = time.Now()
			fmt.Fprintf(stdout, "driving traffic: %d calls, %.0fs left\n", n, time.Until(deadline).Seconds())
		}
	}
	fmt.Fprintf(stdout, "driving traffic: %d calls, done\n", n)
	// Two more intervals, so that the last calls are drained.
	select {
	case <-ctx.Done():
	case <-time.After(2 * interval):
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

// serve answers each connection's request with resp bytes.
func serve(ln net.Listener, resp int) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			buf := make([]byte, 64<<10)
			if _, err := c.Read(buf); err != nil {
				return
			}
			c.Write(make([]byte, resp))
		}()
	}
}

func call(ctx context.Context, from *sandbox.Host, addr string, req int) error {
	c, err := from.DialContext(ctx, "tcp4", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	if _, err := c.Write(make([]byte, req)); err != nil {
		return err
	}
	_, err = io.Copy(io.Discard, c)
	return err
}

// printFlows prints a table of flows by endpoint pair and server port.
func printFlows(w io.Writer, b flows.Batch, names map[netip.Addr]string) {
	type edge struct {
		src, dst string
		proto    flows.Proto
		port     uint16
	}
	type sums struct {
		conns           int
		fwd, back, pkts uint64
		rtt             time.Duration
		srcIf, dstIf    string
	}
	name := func(a netip.Addr) string {
		if n, ok := names[a]; ok {
			return n
		}
		return a.String()
	}
	agg := map[edge]*sums{}
	for _, r := range b.Records {
		if r.Proto != flows.ProtoTCP {
			continue
		}
		e := edge{name(r.Src), name(r.Dst), r.Proto, r.DstPort}
		s := agg[e]
		if s == nil {
			s = &sums{srcIf: r.SrcIf.Name, dstIf: r.DstIf.Name}
			agg[e] = s
		}
		s.conns++
		s.fwd += r.Forward.Bytes
		s.back += r.Reverse.Bytes
		s.pkts += r.Forward.Packets + r.Reverse.Packets
		s.rtt = max(s.rtt, r.HandshakeRTT)
	}
	edges := make([]edge, 0, len(agg))
	for e := range agg {
		edges = append(edges, e)
	}
	sort.Slice(edges, func(i, j int) bool {
		return agg[edges[i]].fwd+agg[edges[i]].back > agg[edges[j]].fwd+agg[edges[j]].back
	})
	fmt.Fprintf(w, "\nflows seen by the datapath from %s to %s (TCP):\n\n", b.Start.Format(time.TimeOnly), b.End.Format(time.TimeOnly))
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "CLIENT\tSERVER\tPORT\tCONNS\tBYTES →\tBYTES ←\tPACKETS\tMAX RTT\tCOUNTED AT")
	for _, e := range edges {
		s := agg[e]
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%d\t%d\t%s\t%s\n", e.src, e.dst, e.port, s.conns, s.fwd, s.back, s.pkts,
			s.rtt.Round(time.Microsecond), strings.Trim(s.srcIf+" → "+s.dstIf, " →"))
	}
	tw.Flush()
}
