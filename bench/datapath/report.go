package main

import (
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
)

// Targets from the issue (and load.minRatio).
const (
	maxOverFloor = 40.0  // ns per run above the floor's, on small packets
	maxL7Ns      = 150.0 // ns the L7 path adds to a packet that carries a payload
)

// sample is one measurement of one load under one mode.
type sample struct {
	throughput  float64 // in the load's unit
	ingressNs   float64 // ns per run of the ingress program
	egressNs    float64
	ingressRuns uint64
	egressRuns  uint64
	counted     uint64 // packets the agent reported
	foreign     bool   // another process had programs on the veths
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
	return s
}

func (r *results) print(w io.Writer) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "load\tmode\tmedian throughput\tratio vs none\tratio range\tingress ns/run\tegress ns/run\tfloor ingress\tfloor egress\ttarget met\t")
	foreign := 0
	for _, l := range r.loads {
		for _, m := range l.modes() {
			s := r.summarize(l, m)
			foreign += s.foreign
			ratio, spread, in, eg, fin, feg, target := "-", "-", "-", "-", "-", "-", "-"
			if m.hook != hookNone {
				ratio = fmt.Sprintf("%.3f", s.ratio)
				spread = fmt.Sprintf("%.2f-%.2f", s.minRatio, s.maxRatio)
				in, eg = fmt.Sprintf("%.1f", s.ingressNs), fmt.Sprintf("%.1f", s.egressNs)
			}
			if m.agent {
				f := r.summarize(l, mode{hook: m.hook})
				fin, feg = fmt.Sprintf("%.1f", f.ingressNs), fmt.Sprintf("%.1f", f.egressNs)
				target = verdict(l, s, f)
			}
			fmt.Fprintf(tw, "%s\t%s\t%.3f %s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t\n",
				l, m, s.throughput, l.unit(), ratio, spread, in, eg, fin, feg, target)
		}
	}
	tw.Flush()
	fmt.Fprintf(w, "\nTargets: ratio >= %.2f on %s and %s, >= %.2f on %s; on %s, each program at most its floor + %.0f ns/run.\n",
		loadTCP.minRatio(), loadTCP, loadUDP64, loadHTTP.minRatio(), loadHTTP, loadUDP64, maxOverFloor)
	fmt.Fprintln(w, "Throughput is what the server received: TCP payload, UDP datagrams of", udpPayload, "payload bytes,")
	fmt.Fprintf(w, "or HTTP requests answered (wrk, %d keep-alive connections, to a Go net/http server).\n", r.httpConns)
	fmt.Fprintln(w, "A floor's ratio, and the range over rounds, show how much the machine's other work moved the numbers.")
	fmt.Fprintln(w, "ns/run are medians over rounds of the kernel's run-time statistics, which add their own clock")
	fmt.Fprintln(w, "reads to every run, the floor's too. Native XDP on a veth turns off TSO (GSO) on its peer, so")
	fmt.Fprintln(w, "the TCP stream is cut into MTU segments before the programs see it: compare with its floor.")
	if foreign > 0 {
		fmt.Fprintf(w, "WARNING: in %d measurements another process had programs on the bench's veths.\n", foreign)
	}
	r.printL7(w)
}

// printL7 prints the L7 path's cost under the http load: the agent's
// ingress ns/run over the floor's, less the same on tcp-rr, whose
// exchanges are the same but of no protocol. Nearly every packet of both
// carries a payload: the next request carries the ACK of a response. Each
// round gives one difference, of four measurements taken close together;
// the median over rounds is the figure, the range how noisy it is.
func (r *results) printL7(w io.Writer) {
	if !slices.Contains(r.loads, loadHTTP) || !slices.Contains(r.loads, loadRR) {
		return
	}
	agent, floor := mode{hook: hookTC, agent: true}, mode{hook: hookTC}
	over := func(l load, round int) float64 {
		return r.samples[l][agent][round].ingressNs - r.samples[l][floor][round].ingressNs
	}
	var l7, http, rr []float64
	for i := range r.rounds {
		http, rr = append(http, over(loadHTTP, i)), append(rr, over(loadRR, i))
		l7 = append(l7, http[i]-rr[i])
	}
	ns := median(l7)
	target := "target met"
	if ns > maxL7Ns {
		target = fmt.Sprintf("MISSED: target %.0f ns", maxL7Ns)
	}
	fmt.Fprintf(w, "\nL7 path under load: %.0f ns per ingress run, median over rounds (range %.0f to %.0f; agent over floor: %s %.0f ns, %s %.0f ns), %s.\n",
		ns, slices.Min(l7), slices.Max(l7), loadHTTP, median(http), loadRR, median(rr), target)
}

// verdict says whether the agent s met the targets, given its floor f.
func verdict(l load, s, f summary) string {
	var missed []string
	if l.minRatio() > 0 && s.ratio < l.minRatio() {
		missed = append(missed, fmt.Sprintf("ratio %.3f < %.2f", s.ratio, l.minRatio()))
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
