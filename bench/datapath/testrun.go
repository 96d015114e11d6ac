package main

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"slices"
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
