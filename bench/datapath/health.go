package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/cilium/ebpf"

	"github.com/flowmap/flowmap/sandbox"
)

// The health path's cost (issue 14): the agent with --health=on and
// --health=off, and the TC floor, interleaved as the main rounds are, on
// loads of working and of failing connections. For each it takes the TC
// programs' cost per run, and with health on that of the tracepoint
// programs kfree_skb (every skb freed on the machine, most not dropped)
// and tcp_probe (every segment a local established socket receives).

// Ports on b the failing loads dial: nothing listens on either, and a DROP
// rule in b's namespace drops TCP to dropPort.
const (
	refusedPort = 5202
	droppedPort = 5203
)

// healthLoad is a load of the health bench.
type healthLoad struct {
	name, unit string
	measure    func(ctx context.Context, b *bench, ha, hb *sandbox.Host, d time.Duration) (float64, error)
}

var healthLoads = []healthLoad{
	{"udp-64B", "Mpkt/s", func(ctx context.Context, _ *bench, ha, hb *sandbox.Host, d time.Duration) (float64, error) {
		return measureUDP(ctx, ha, hb, d)
	}},
	{"tcp-rr", "ktrans/s", func(ctx context.Context, b *bench, ha, hb *sandbox.Host, d time.Duration) (float64, error) {
		return measureRR(ctx, ha, hb, d, b.httpConns)
	}},
	{"tcp-rr-close", "kconn/s", func(ctx context.Context, b *bench, ha, hb *sandbox.Host, d time.Duration) (float64, error) {
		return measureRRClose(ctx, ha, hb, d, b.httpConns)
	}},
	{"conn-refused", "kconn/s", func(ctx context.Context, _ *bench, ha, hb *sandbox.Host, d time.Duration) (float64, error) {
		return measureFailing(ctx, ha, hb, refusedPort, 0, d)
	}},
	{"conn-dropped", "kSYN/s", func(ctx context.Context, _ *bench, ha, hb *sandbox.Host, d time.Duration) (float64, error) {
		return measureFailing(ctx, ha, hb, droppedPort, 20*time.Millisecond, d)
	}},
}

// healthModes are the health bench's modes, rotated each round.
var healthModes = []mode{
	{hook: hookTC},
	{hook: hookTC, agent: true, healthOff: true},
	{hook: hookTC, agent: true},
}

// failingClients is the goroutines of a failing load, each a connection
// attempt at a time.
const failingClients = 32

// measureFailing makes connection attempts from a to b's port for d, from
// failingClients goroutines, and returns the thousands of attempts a
// second. With timeout 0 each attempt must be refused; else each is given
// up after timeout, and must time out (one SYN, dropped).
func measureFailing(ctx context.Context, a, b *sandbox.Host, port int, timeout time.Duration, d time.Duration) (float64, error) {
	addr := net.JoinHostPort(b.Addr.String(), strconv.Itoa(port))
	var n atomic.Int64
	errs := make([]error, failingClients)
	start := time.Now()
	end := start.Add(d)
	var wg sync.WaitGroup
	for i := range failingClients {
		wg.Go(func() {
			for time.Now().Before(end) && ctx.Err() == nil {
				dctx, cancel := ctx, context.CancelFunc(func() {})
				if timeout > 0 {
					dctx, cancel = context.WithTimeout(ctx, timeout)
				}
				c, err := a.DialContext(dctx, "tcp4", addr)
				cancel()
				if err == nil {
					c.Close()
					errs[i] = fmt.Errorf("dial %s: connected, want it to fail", addr)
					return
				}
				if ctx.Err() != nil {
					return
				}
				if want := timeout == 0; want != errors.Is(err, syscall.ECONNREFUSED) {
					errs[i] = fmt.Errorf("dial %s: %w (want refused: %v)", addr, err, want)
					return
				}
				n.Add(1)
			}
		})
	}
	wg.Wait()
	if err := errors.Join(append(errs, ctx.Err())...); err != nil {
		return 0, err
	}
	return float64(n.Load()) / time.Since(start).Seconds() / 1e3, nil
}

// healthSample is one measurement of the health bench.
type healthSample struct {
	throughput           float64
	ingressNs, egressNs  float64
	kfreeNs, probeNs     float64 // per run; 0 without health
	kfreeRate, probeRate float64 // runs a second
}

// healthCost runs the health bench: rounds of every health load under
// every health mode.
func (b *bench) healthCost(ctx context.Context, ha, hb *sandbox.Host, ifindexes []int, rounds int, d time.Duration) (map[string]map[mode][]healthSample, error) {
	drop := []string{"INPUT", "-p", "tcp", "--dport", strconv.Itoa(droppedPort), "-j", "DROP"}
	if out, err := hb.Command(ctx, "iptables", append([]string{"-A"}, drop...)...).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("iptables in %s: %w: %s", hb.NetNS, err, out)
	}
	defer hb.Command(context.Background(), "iptables", append([]string{"-D"}, drop...)...).Run()

	res := map[string]map[mode][]healthSample{}
	for r := range rounds {
		for _, l := range healthLoads {
			if res[l.name] == nil {
				res[l.name] = map[mode][]healthSample{}
			}
			for i := range healthModes {
				m := healthModes[(i+r)%len(healthModes)]
				s, err := b.healthOnce(ctx, l, m, ha, hb, ifindexes, d)
				if err != nil {
					return nil, fmt.Errorf("health round %d, %s, %s: %w", r+1, l.name, m, err)
				}
				res[l.name][m] = append(res[l.name][m], s)
				b.log.Debug("health measured", "round", r+1, "load", l.name, "mode", m, "throughput", s.throughput,
					"ingress_ns", s.ingressNs, "kfree_skb_ns", s.kfreeNs, "tcp_probe_ns", s.probeNs)
			}
		}
		b.log.Info("health round done", "round", r+1, "of", rounds)
	}
	return res, nil
}

// healthOnce measures load l under mode m.
func (b *bench) healthOnce(ctx context.Context, l healthLoad, m mode, ha, hb *sandbox.Host, ifindexes []int, d time.Duration) (healthSample, error) {
	var s healthSample
	a, err := b.attach(ctx, m, ifindexes)
	if err != nil {
		return s, err
	}
	var tps []*ebpf.Program // kfree_skb, tcp_probe
	if m.agent && !m.healthOff {
		tps, err = tracepoints(a.ingress, "kfree_skb", "tcp_probe")
	}
	defer func() {
		for _, p := range tps {
			p.Close()
		}
	}()
	var in0, eg0, in1, eg1 ebpf.ProgramStats
	var tp0, tp1 [2]ebpf.ProgramStats
	read := func(in, eg *ebpf.ProgramStats, tp *[2]ebpf.ProgramStats) error {
		var err error
		*in, *eg, err = a.stats()
		for i, p := range tps {
			if err != nil {
				break
			}
			var st *ebpf.ProgramStats
			st, err = p.Stats()
			if err == nil {
				tp[i] = *st
			}
		}
		return err
	}
	if err == nil {
		err = read(&in0, &eg0, &tp0)
	}
	t0 := time.Now()
	if err == nil {
		s.throughput, err = l.measure(ctx, b, ha, hb, d)
	}
	secs := time.Since(t0).Seconds()
	if err == nil {
		err = read(&in1, &eg1, &tp1)
	}
	if cerr := a.close(); cerr != nil {
		err = errors.Join(err, fmt.Errorf("detach %s: %w", m, cerr))
	}
	if err != nil {
		return s, err
	}
	s.ingressNs, _ = perRun(in0, in1)
	s.egressNs, _ = perRun(eg0, eg1)
	if len(tps) == 2 {
		var kf, tp uint64
		s.kfreeNs, kf = perRun(tp0[0], tp1[0])
		s.probeNs, tp = perRun(tp0[1], tp1[1])
		s.kfreeRate, s.probeRate = float64(kf)/secs, float64(tp)/secs
	}
	return s, nil
}

// tracepoints returns the loaded programs of these names that share a map
// with prog: the agent's own, not those of another flowmap on the machine.
func tracepoints(prog *ebpf.Program, names ...string) ([]*ebpf.Program, error) {
	info, err := prog.Info()
	if err != nil {
		return nil, err
	}
	ids, _ := info.MapIDs()
	mine := map[ebpf.MapID]bool{}
	for _, id := range ids {
		mine[id] = true
	}
	found := make([]*ebpf.Program, len(names))
	for id := ebpf.ProgramID(0); ; {
		next, err := ebpf.ProgramGetNextID(id)
		if err != nil {
			break
		}
		id = next
		p, err := ebpf.NewProgramFromID(id)
		if err != nil {
			continue // gone since
		}
		pi, err := p.Info()
		keep := false
		if err == nil {
			for i, name := range names {
				if pi.Name != name || found[i] != nil {
					continue
				}
				pids, _ := pi.MapIDs()
				for _, m := range pids {
					if mine[m] {
						found[i], keep = p, true
						break
					}
				}
			}
		}
		if !keep {
			p.Close()
		}
	}
	for i, p := range found {
		if p == nil {
			for _, q := range found {
				if q != nil {
					q.Close()
				}
			}
			return nil, fmt.Errorf("the agent's %s program not found", names[i])
		}
	}
	return found, nil
}

// printHealth prints the health bench's medians: per load, each mode's
// throughput and TC programs' ns per run, health on over off and over the
// floor, and the tracepoints' ns per run and runs a second.
func printHealth(w io.Writer, res map[string]map[mode][]healthSample, rounds int) {
	fmt.Fprintf(w, "health path (--health=on vs off, TC, median of %d interleaved rounds; ns per run from bpf_stats):\n", rounds)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "load\tmode\tthroughput\tingress ns\tegress ns\tkfree_skb ns\tkfree_skb runs/s\ttcp_probe ns\ttcp_probe runs/s\t")
	off, on := healthModes[1], healthModes[2]
	type med struct{ tput, in, eg, kf, kfr, tp, tpr float64 }
	summary := func(ss []healthSample) med {
		var v [7][]float64
		for _, s := range ss {
			for i, x := range []float64{s.throughput, s.ingressNs, s.egressNs, s.kfreeNs, s.kfreeRate, s.probeNs, s.probeRate} {
				v[i] = append(v[i], x)
			}
		}
		return med{median(v[0]), median(v[1]), median(v[2]), median(v[3]), median(v[4]), median(v[5]), median(v[6])}
	}
	var deltas []string
	for _, l := range healthLoads {
		byMode := res[l.name]
		if byMode == nil {
			continue
		}
		for _, m := range healthModes {
			s := summary(byMode[m])
			tp := "-\t-\t-\t-\t"
			if m == on {
				tp = fmt.Sprintf("%.1f\t%.0f\t%.1f\t%.0f\t", s.kf, s.kfr, s.tp, s.tpr)
			}
			fmt.Fprintf(tw, "%s\t%s\t%.3f %s\t%.1f\t%.1f\t%s\n", l.name, m, s.tput, l.unit, s.in, s.eg, tp)
		}
		// Ratios of medians of per-round differences: the rounds are
		// interleaved, so a busy round weighs on both sides.
		var dIn, dEg, dInFloor []float64
		for r := range byMode[on] {
			if r < len(byMode[off]) && r < len(byMode[healthModes[0]]) {
				dIn = append(dIn, byMode[on][r].ingressNs-byMode[off][r].ingressNs)
				dEg = append(dEg, byMode[on][r].egressNs-byMode[off][r].egressNs)
				dInFloor = append(dInFloor, byMode[on][r].ingressNs-byMode[healthModes[0]][r].ingressNs)
			}
		}
		deltas = append(deltas, fmt.Sprintf("  %s: ingress on−off %+.1f ns, egress on−off %+.1f ns; ingress on = floor %+.1f ns",
			l.name, median(dIn), median(dEg), median(dInFloor)))
	}
	tw.Flush()
	fmt.Fprintln(w, "health on over off, median of the rounds' differences:")
	for _, d := range deltas {
		fmt.Fprintln(w, d)
	}
}
