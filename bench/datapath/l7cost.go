package main

import (
	"encoding/binary"
	"fmt"
	"io"
	"net/netip"
	"text/tabwriter"
	"time"

	"github.com/cilium/ebpf"

	"github.com/flowmap/flowmap/flows"
)

// l7Samples is how many times each frame of l7Runs runs.
const l7Samples = 20000

// l7Frame is a frame of one HTTP exchange on one flow.
type l7Frame struct {
	name  string
	frame []byte
	// base is the index of the pure ACK that is this frame's baseline:
	// the same direction, which the L7 path never reaches.
	base int
}

// l7Cost is a program's cost on one frame, and what it adds to a pure ACK
// of the same direction.
type l7Cost struct {
	prog, frame string
	ns, overAck float64 // median ns per run
	payload     bool    // the frame carries a payload: the target applies
}

// l7Runs times the L7 path: the programs run, under BPF_PROG_TEST_RUN, the
// frames of an HTTP exchange between src:40000 and dst:8080 in turn, once
// each, l7Samples times, so that every request waits for its response as
// on a keep-alive connection (its pending entry is made by the request and
// taken by the response; a frame repeated would find a full queue or none).
// A pure ACK of the same direction, which ends before the L7 path, is each
// frame's baseline: a run's time includes the test run's own clock reads,
// the same for every frame. Every frame goes the other way from the one
// before it, so that each finds the per-CPU cache of the last IPv4 flow
// (see bpf/flow.c) holding the other direction, as the ACKs do.
func l7Runs(src, dst netip.Addr) ([]l7Cost, error) {
	d, err := flows.New(flows.Config{})
	if err != nil {
		return nil, fmt.Errorf("load datapath: %w", err)
	}
	defer d.Close()
	progs := d.Programs()
	const cport, sport = 40000, 8080
	frames := []l7Frame{
		{"http request", tcpFrame(src, dst, cport, sport, 0x18,
			[]byte("GET /api/items?id=42 HTTP/1.1\r\nHost: "+dst.String()+":8080\r\nUser-Agent: wrk\r\n\r\n")), 2},
		{"http response", tcpFrame(dst, src, sport, cport, 0x18,
			[]byte("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 12\r\n\r\n{\"ok\":true}\n")), 3},
		{"tcp ack to the server (no payload)", tcpFrame(src, dst, cport, sport, 0x10, nil), 2},
		{"tcp ack to the client (no payload)", tcpFrame(dst, src, sport, cport, 0x10, nil), 3},
		{"tcp data (no protocol)", tcpFrame(src, dst, cport, sport, 0x18, make([]byte, 1000)), 2},
		{"tcp ack to the client (no payload)", tcpFrame(dst, src, sport, cport, 0x10, nil), 3},
	}
	var out []l7Cost
	for _, p := range []struct {
		name string
		prog *ebpf.Program
	}{{"tc_ingress", progs["tc_ingress"]}, {"xdp_ingress", progs["xdp_ingress"]}} {
		ns := make([][]float64, len(frames))
		for range l7Samples {
			for i, f := range frames {
				_, per, err := p.prog.Benchmark(f.frame, 1, nil)
				if err != nil {
					return nil, fmt.Errorf("test run %s on %s: %w", p.name, f.name, err)
				}
				ns[i] = append(ns[i], float64(per)/float64(time.Nanosecond))
			}
		}
		for i, f := range frames[:5] { // the last ACK is there for the turn only
			m := median(ns[i])
			out = append(out, l7Cost{prog: p.name, frame: f.name, ns: m, overAck: m - median(ns[f.base]), payload: i != f.base})
		}
	}
	return out, nil
}

func printL7Runs(w io.Writer, cs []l7Cost) {
	fmt.Fprintf(w, "L7 path, BPF_PROG_TEST_RUN, the frames of an HTTP exchange in turn, each run once, %d times, medians:\n", l7Samples)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "program\tframe\tns/run\tover the ack\ttarget met\t")
	for _, c := range cs {
		over, target := "-", "-"
		if c.payload {
			over = fmt.Sprintf("%+.1f", c.overAck)
			target = "yes"
			if c.overAck > maxL7Ns {
				target = fmt.Sprintf("MISSED: %.0f > %.0f ns", c.overAck, maxL7Ns)
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%.1f\t%s\t%s\t\n", c.prog, c.frame, c.ns, over, target)
	}
	tw.Flush()
	fmt.Fprintf(w, "Target: the L7 path adds at most %.0f ns to a packet that carries a payload. A run once includes\n", maxL7Ns)
	fmt.Fprintln(w, "the test run's clock reads: only the difference to the ack, on the same flow and way, is the L7 path's.")
	fmt.Fprintln(w, "A test run's skb carries no send time (its context cannot set tstamp_type), so the L7 path reads")
	fmt.Fprintln(w, "the clock here, as on XDP and on packets from a NIC; a container's TCP messages bring their own.")
	fmt.Fprintln(w, "The http load's ns/run above is over all its packets, ACKs too, with run-time statistics on.")
}

// tcpFrame returns an Ethernet frame holding an IPv4 TCP segment from src
// to dst with flags and payload.
func tcpFrame(src, dst netip.Addr, sport, dport uint16, flags byte, payload []byte) []byte {
	tcp := make([]byte, 20+len(payload))
	binary.BigEndian.PutUint16(tcp[0:], sport)
	binary.BigEndian.PutUint16(tcp[2:], dport)
	binary.BigEndian.PutUint32(tcp[4:], 1)
	binary.BigEndian.PutUint32(tcp[8:], 1)
	tcp[12] = 5 << 4
	tcp[13] = flags
	binary.BigEndian.PutUint16(tcp[14:], 64240)
	copy(tcp[20:], payload)
	return ip4Frame(src, dst, 6, tcp)
}

// ip4Frame returns an Ethernet frame holding an IPv4 packet of protocol
// proto from src to dst around l4.
func ip4Frame(src, dst netip.Addr, proto byte, l4 []byte) []byte {
	f := make([]byte, 14+20+len(l4))
	copy(f[0:6], []byte{0x02, 0, 0, 0, 0, 2})
	copy(f[6:12], []byte{0x02, 0, 0, 0, 0, 1})
	binary.BigEndian.PutUint16(f[12:], 0x0800)
	ip := f[14:34]
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], uint16(len(f)-14))
	ip[8] = 64 // TTL
	ip[9] = proto
	s, d := src.As4(), dst.As4()
	copy(ip[12:16], s[:])
	copy(ip[16:20], d[:])
	var sum uint32
	for i := 0; i < 20; i += 2 {
		sum += uint32(binary.BigEndian.Uint16(ip[i:]))
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	binary.BigEndian.PutUint16(ip[10:], ^uint16(sum))
	copy(f[34:], l4)
	return f
}
