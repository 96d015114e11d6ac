package main

import (
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/flowmap/flowmap/flows"
)

// Targets from the issue (and load.minRatio).
const (
	maxOverFloor = 40.0  // ns per run above the floor's, on small packets
	maxL7Ns      = 150.0 // ns the L7 path adds to a packet that carries a payload
	// Per packet, ingress and egress, above the floor's: on HTTP over
	// keep-alive connections, and on short connections.
	maxKeepAliveNs = 150.0
	maxShortNs     = 300.0
	// The agent's own cost on short connections: a share of one core, and
	// its peak resident set.
	maxShortCPU = 0.03
	maxShortRSS = 80 << 20
	// The maps' memory at maxMapCPUs possible CPUs.
	maxMapMemory = 64 << 20
	maxMapCPUs   = 128
)

// sample is one measurement of one load under one mode.
type sample struct {
	throughput  float64 // in the load's unit
	ingressNs   float64 // ns per run of the ingress program
	egressNs    float64
	ingressRuns uint64
	egressRuns  uint64
	agentCPU    float64 // the agent's CPU time over the load's, in cores
	agentRSS    uint64  // the agent's peak resident set, bytes
	foreign     bool    // another process had programs on the veths
}

// results holds every sample by load, mode and round.
type results struct {
	rounds    int
	loads     []load
	httpConns int
	samples   map[load]map[mode][]sample
}

func newResults(rounds int, loads []load, httpConns int) *results {
	r := &results{rounds: rounds, loads: loads, httpConns: httpConns, samples: map[load]map[mode][]sample{}}
	for _, l := range r.loads {
		r.samples[l] = map[mode][]sample{}
		for _, m := range l.modes() {
			r.samples[l][m] = make([]sample, rounds)
		}
	}
	return r
}

func (r *results) add(l load, m mode, round int, s sample) { r.samples[l][m][round] = s }

// summary is a load and mode over all rounds: medians.
type summary struct {
	throughput, ratio   float64
	minRatio, maxRatio  float64 // over the rounds: how noisy the ratio is
	ingressNs, egressNs float64
	foreign             int
	// Of an agent, against its floor in the same round: ingress and
	// egress ns per packet above the floor's, and the throughput ratio.
	overFloor, floorRatio float64
	agentCPU              float64 // cores
	agentRSS              float64 // bytes
}

func (r *results) summarize(l load, m mode) summary {
	var s summary
	var thr, ratio, in, eg []float64
	base := r.samples[l][mode{hook: hookNone}]
	for i, x := range r.samples[l][m] {
		thr = append(thr, x.throughput)
		if base[i].throughput > 0 {
			ratio = append(ratio, x.throughput/base[i].throughput)
		}
		if x.ingressRuns > 0 {
			in = append(in, x.ingressNs)
		}
		if x.egressRuns > 0 {
			eg = append(eg, x.egressNs)
		}
		if x.foreign {
			s.foreign++
		}
	}
	s.throughput, s.ratio = median(thr), median(ratio)
	if len(ratio) > 0 {
		s.minRatio, s.maxRatio = slices.Min(ratio), slices.Max(ratio)
	}
	s.ingressNs, s.egressNs = median(in), median(eg)
	if m.agent {
		var over, fr, cpu, rss []float64
		floor := r.samples[l][mode{hook: m.hook}]
		for i, x := range r.samples[l][m] {
			f := floor[i]
			if x.ingressRuns > 0 && f.ingressRuns > 0 {
				over = append(over, x.ingressNs+x.egressNs-f.ingressNs-f.egressNs)
			}
			if f.throughput > 0 {
				fr = append(fr, x.throughput/f.throughput)
			}
			cpu = append(cpu, x.agentCPU)
			rss = append(rss, float64(x.agentRSS))
		}
		s.overFloor, s.floorRatio = median(over), median(fr)
		s.agentCPU, s.agentRSS = median(cpu), slices.Max(rss)
	}
	return s
}

func (r *results) print(w io.Writer) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "load\tmode\tmedian throughput\tratio vs none\tratio range\tvs floor\tingress ns/run\tegress ns/run\tfloor ingress\tfloor egress\tns/pkt over floor\tagent CPU\tagent peak RSS\ttarget met\t")
	foreign := 0
	for _, l := range r.loads {
		for _, m := range l.modes() {
			s := r.summarize(l, m)
			foreign += s.foreign
			ratio, spread, in, eg, fin, feg, target := "-", "-", "-", "-", "-", "-", "-"
			vsFloor, over, cpu, rss := "-", "-", "-", "-"
			if m.hook != hookNone {
				ratio = fmt.Sprintf("%.3f", s.ratio)
				spread = fmt.Sprintf("%.2f-%.2f", s.minRatio, s.maxRatio)
				in, eg = fmt.Sprintf("%.1f", s.ingressNs), fmt.Sprintf("%.1f", s.egressNs)
			}
			if m.agent {
				f := r.summarize(l, mode{hook: m.hook})
				fin, feg = fmt.Sprintf("%.1f", f.ingressNs), fmt.Sprintf("%.1f", f.egressNs)
				target = verdict(l, s, f)
				vsFloor, over = fmt.Sprintf("%.3f", s.floorRatio), fmt.Sprintf("%.0f", s.overFloor)
				cpu, rss = fmt.Sprintf("%.1f %%", 100*s.agentCPU), fmt.Sprintf("%.0f MiB", s.agentRSS/(1<<20))
			}
			fmt.Fprintf(tw, "%s\t%s\t%.3f %s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t\n",
				l, m, s.throughput, l.unit(), ratio, spread, vsFloor, in, eg, fin, feg, over, cpu, rss, target)
		}
	}
	tw.Flush()
	fmt.Fprintf(w, "\nTargets: ratio >= %.2f on %s and %s, >= %.2f on %s, >= %.2f on %s; on %s, each program at most its floor + %.0f ns/run;\n",
		loadTCP.minRatio(), loadTCP, loadUDP64, loadHTTP.minRatio(), loadHTTP, loadHTTPClose.minRatio(), loadHTTPClose, loadUDP64, maxOverFloor)
	fmt.Fprintf(w, "ingress + egress at most the floor's + %.0f ns a packet on %s, + %.0f on %s and %s, whose agent uses at most %.0f %% of a core and %d MiB.\n",
		maxKeepAliveNs, loadHTTP, maxShortNs, loadHTTPClose, loadRRClose, 100*maxShortCPU, maxShortRSS>>20)
	fmt.Fprintln(w, "Throughput is what the server received: TCP payload, UDP datagrams of", udpPayload, "payload bytes,")
	fmt.Fprintf(w, "HTTP requests answered (wrk, %d connections, to nginx: kept alive, or one a request on %s),\n", r.httpConns, loadHTTPClose)
	fmt.Fprintf(w, "or exchanges of %d bytes of no protocol on as many connections (%s: kept alive; %s: one an exchange).\n", rrSize, loadRR, loadRRClose)
	fmt.Fprintln(w, "The agent is flowmap's binary with its defaults (but the interfaces, hooks and --interval), a process of its")
	fmt.Fprintln(w, "own, started for each measurement: its CPU is its user and system time over the load's (median over rounds),")
	fmt.Fprintln(w, "its peak RSS VmHWM (the largest over rounds). \"vs floor\" is the throughput over the floor's in the same round.")
	fmt.Fprintln(w, "A floor's ratio, and the range over rounds, show how much the machine's other work moved the numbers.")
	fmt.Fprintln(w, "ns/run are medians over rounds of the kernel's run-time statistics, which add their own clock")
	fmt.Fprintln(w, "reads to every run, the floor's too. Native XDP on a veth turns off TSO (GSO) on its peer, so")
	fmt.Fprintln(w, "the TCP stream is cut into MTU segments before the programs see it: compare with its floor.")
	if foreign > 0 {
		fmt.Fprintf(w, "WARNING: in %d measurements another process had programs on the bench's veths.\n", foreign)
	}
	r.printL7(w)
}

// printL7 prints the L7 path's cost under the http loads: the agent's
// ns per packet (ingress and egress) over the floor's, less the same on
// the tcp-rr load of the same shape, whose exchanges are the same but of
// no protocol. Each round gives one difference, of four measurements taken
// close together; the median over rounds is the figure, the range how
// noisy it is.
func (r *results) printL7(w io.Writer) {
	agent, floor := mode{hook: hookTC, agent: true}, mode{hook: hookTC}
	over := func(l load, round int) float64 {
		a, f := r.samples[l][agent][round], r.samples[l][floor][round]
		return a.ingressNs + a.egressNs - f.ingressNs - f.egressNs
	}
	for _, p := range [][2]load{{loadHTTP, loadRR}, {loadHTTPClose, loadRRClose}} {
		if !slices.Contains(r.loads, p[0]) || !slices.Contains(r.loads, p[1]) {
			continue
		}
		var l7, http, rr []float64
		for i := range r.rounds {
			http, rr = append(http, over(p[0], i)), append(rr, over(p[1], i))
			l7 = append(l7, http[i]-rr[i])
		}
		ns := median(l7)
		target := "target met"
		if ns > maxL7Ns {
			target = fmt.Sprintf("MISSED: target %.0f ns", maxL7Ns)
		}
		fmt.Fprintf(w, "\nL7 path under %s: %.0f ns a packet, median over rounds (range %.0f to %.0f; agent over floor: %s %.0f ns, %s %.0f ns), %s.",
			p[0], ns, slices.Min(l7), slices.Max(l7), p[0], median(http), p[1], median(rr), target)
	}
	fmt.Fprintln(w)
}

// verdict says whether the agent s met the targets, given its floor f.
func verdict(l load, s, f summary) string {
	var missed []string
	if l.minRatio() > 0 && s.ratio < l.minRatio() {
		missed = append(missed, fmt.Sprintf("ratio %.3f < %.2f", s.ratio, l.minRatio()))
	}
	switch {
	case l == loadHTTP && s.overFloor > maxKeepAliveNs:
		missed = append(missed, fmt.Sprintf("floor+%.0f ns/pkt", s.overFloor))
	case l.short():
		if s.overFloor > maxShortNs {
			missed = append(missed, fmt.Sprintf("floor+%.0f ns/pkt", s.overFloor))
		}
		if s.agentCPU > maxShortCPU {
			missed = append(missed, fmt.Sprintf("agent %.1f %% CPU", 100*s.agentCPU))
		}
		if s.agentRSS > maxShortRSS {
			missed = append(missed, fmt.Sprintf("agent %.0f MiB", s.agentRSS/(1<<20)))
		}
	}
	if l == loadUDP64 {
		if s.ingressNs > f.ingressNs+maxOverFloor {
			missed = append(missed, fmt.Sprintf("ingress floor+%.0f ns", s.ingressNs-f.ingressNs))
		}
		if s.egressNs > f.egressNs+maxOverFloor {
			missed = append(missed, fmt.Sprintf("egress floor+%.0f ns", s.egressNs-f.egressNs))
		}
	}
	if len(missed) == 0 {
		return "yes"
	}
	return "MISSED: " + strings.Join(missed, ", ")
}

func printTestRuns(w io.Writer, trs []testRun) {
	fmt.Fprintf(w, "BPF_PROG_TEST_RUN, one 64-byte UDP frame, %d runs, median of 5 (no hook, no run-time statistics):\n", testRunRepeat)
	if b, err := os.ReadFile("/proc/sys/kernel/bpf_stats_enabled"); err == nil && strings.TrimSpace(string(b)) != "0" {
		fmt.Fprintln(w, "(another process has kernel.bpf_stats_enabled on: these include its clock reads)")
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	for _, t := range trs {
		fmt.Fprintf(tw, "%s\t%.1f ns/run\t\n", t.name, t.ns)
	}
	tw.Flush()
}

// printMapMemory prints the kernel memory of the agent's maps here and on
// machines with more possible CPUs.
func printMapMemory(w io.Writer, mem []flows.MapMemory) {
	if len(mem) == 0 {
		return
	}
	here := mem[0].CPUs
	fmt.Fprintf(w, "The agent's maps (default --max-flows), kernel memory (fdinfo memlock) now at %d possible CPUs, and full\n", here)
	fmt.Fprintln(w, "(maps not preallocated counted at their max entries) at as many and at more CPUs:")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "map\ttype\tmax entries\tvalue size\tnow\tfull, %d CPUs\tfull, 64 CPUs\tfull, %d CPUs\t\n", here, maxMapCPUs)
	mib := func(b uint64) string { return fmt.Sprintf("%.2f MiB", float64(b)/(1<<20)) }
	var total, thre, t64, tmax uint64
	for _, m := range mem {
		total, thre, t64, tmax = total+m.Bytes, thre+m.At(here), t64+m.At(64), tmax+m.At(maxMapCPUs)
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%s\t%s\t%s\t%s\t\n", m.Name, m.Type, m.MaxEntries, m.ValueSize,
			mib(m.Bytes), mib(m.At(here)), mib(m.At(64)), mib(m.At(maxMapCPUs)))
	}
	target := "target met"
	if tmax > maxMapMemory {
		target = fmt.Sprintf("MISSED: target %d MiB at %d CPUs", maxMapMemory>>20, maxMapCPUs)
	}
	fmt.Fprintf(tw, "total\t\t\t\t%s\t%s\t%s\t%s\t%s\t\n", mib(total), mib(thre), mib(t64), mib(tmax), target)
	tw.Flush()
}
