package main

import (
	"encoding/binary"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/cilium/ebpf"

	"github.com/flowmap/flowmap/flows"
)

// testRunRepeat is how often BPF_PROG_TEST_RUN runs a program per sample.
const testRunRepeat = 1_000_000

// testRun is one program's cost on a 64-byte frame, away from any hook.
type testRun struct {
	name string
	ns   float64 // median ns per run over the samples
}

// testRuns times flowmap's packet programs and the floor's with
// BPF_PROG_TEST_RUN on a 64-byte UDP frame from src to dst: the cost of the
// programs alone, without the hook around them or the run-time statistics'
// clock reads. The flow's entry is made by the first run; the others find
// it, as all but a flow's first packet do.
func testRuns(floor *bpfObjects, src, dst netip.Addr, samples int) ([]testRun, error) {
	d, err := flows.New(flows.Config{})
	if err != nil {
		return nil, fmt.Errorf("load datapath: %w", err)
	}
	defer d.Close()
	progs := d.Programs()
	frame := udpFrame(src, dst)
	var out []testRun
	for _, p := range []struct {
		name string
		prog *ebpf.Program
	}{
		{"tc_ingress", progs["tc_ingress"]},
		{"tc_egress (counts: no skb_iif)", progs["tc_egress"]},
		{"xdp_ingress", progs["xdp_ingress"]},
		{"floor_ingress", floor.FloorIngress},
		{"floor_xdp", floor.FloorXdp},
	} {
		ns := make([]float64, 0, samples)
		for range samples {
			_, per, err := p.prog.Benchmark(frame, testRunRepeat, nil)
			if err != nil {
				return nil, fmt.Errorf("test run %s: %w", p.name, err)
			}
			ns = append(ns, float64(per)/float64(time.Nanosecond))
		}
		out = append(out, testRun{p.name, median(ns)})
	}
	return out, nil
}

// udpFrame returns a 64-byte Ethernet frame (no FCS) holding an IPv4 UDP
// datagram of 22 payload bytes from src:40000 to dst:5201.
func udpFrame(src, dst netip.Addr) []byte {
	udp := make([]byte, 64-14-20)
	binary.BigEndian.PutUint16(udp[0:], 40000)
	binary.BigEndian.PutUint16(udp[2:], 5201)
	binary.BigEndian.PutUint16(udp[4:], uint16(len(udp)))
	return ip4Frame(src, dst, 17, udp)
}

// median returns the median of v, 0 for none.
func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Sorted(slices.Values(v))
	if n := len(s); n%2 == 0 {
		return (s[n/2-1] + s[n/2]) / 2
	}
	return s[len(s)/2]
}

// The new-flow paths are timed in pathRounds rounds of pathFlows flows
// each (see flows.PathCosts).
const (
	pathRounds = 5
	pathFlows  = 4096
)

// printPathCosts prints what tc_ingress costs on each path of a new flow,
// above the steady state's run, and the maps its packet inserts into.
func printPathCosts(w io.Writer, paths []flows.PathCost) {
	fmt.Fprintf(w, "BPF_PROG_TEST_RUN, tc_ingress, one run a flow, each a new flow (%d flows a round, median of %d rounds):\n",
		pathFlows, pathRounds)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "path\tns/run\tinserts into\t\n")
	for _, p := range paths {
		fmt.Fprintf(tw, "%s\t%.0f\t%s\t\n", p.Name, p.NS, strings.Join(p.Inserts, " "))
	}
	tw.Flush()
}
