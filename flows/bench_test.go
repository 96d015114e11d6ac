package flows

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/flowmap/flowmap/internal/testenv"
	"github.com/flowmap/flowmap/model"
)

// benchDirections is the size of the synthetic flow map: a busy node's
// drain.
const benchDirections = 10_000

// benchCPUs is the drainer's CPU count (its per-CPU health and L7 maps).
const benchCPUs = 8

// benchACK is the TCP header's ACK flag.
const benchACK = 0x10

// benchKey returns the key of flow i's client direction: TCP, UDP and ICMP
// echo in the proportions 6:3:1, between 256 clients and 64 servers.
func benchKey(i int) bpfFlowKey {
	var k bpfFlowKey
	src := netip.AddrFrom4([4]byte{198, 51, 100, byte(i % 256)}).As16()
	dst := netip.AddrFrom4([4]byte{203, 0, 113, byte(i % 64)}).As16()
	k.Saddr, k.Daddr = src, dst
	switch i % 10 {
	case 0:
		k.Proto = uint8(model.ProtoICMP)
		k.Sport = 8 // echo request, code 0
	case 1, 2, 3:
		k.Proto = uint8(model.ProtoUDP)
		k.Sport, k.Dport = uint16(32768+i%28000), 53
	default:
		k.Proto = uint8(model.ProtoTCP)
		k.Sport, k.Dport = uint16(32768+i%28000), 443
	}
	return k
}

// benchDirs returns n flow directions as drain leaves them: both
// directions of n/2 flows, a third of the TCP ones with their handshake.
func benchDirs(n int) *flowTable {
	dirs := newFlowTable()
	for i := 0; dirs.len() < n; i++ {
		k := benchKey(i)
		fwd := &direction{Direction: model.Direction{Bytes: 1500, Packets: 10, Point: model.PointTCIngress, Ifindex: 2 + i%32},
			first: uint64(i), lastJ: uint64(i) + 1000}
		rev := &direction{Direction: model.Direction{Bytes: 64000, Packets: 50, Point: model.PointTCEgress, Ifindex: 2 + i%32},
			first: uint64(i) + 10, lastJ: uint64(i) + 2000}
		if k.Proto == uint8(model.ProtoTCP) {
			fwd.TCPFlags, rev.TCPFlags = benchACK, benchACK
			if i%3 == 0 {
				fwd.TCPFlags |= model.FlagSYNOnly
				rev.TCPFlags |= model.FlagSYNACK
				rev.rtt = 50_000
			}
		}
		*dirs.put(k), *dirs.put(reverse(k)) = *fwd, *rev
	}
	return dirs
}

func benchDrainer(b *testing.B) *drainer {
	return &drainer{ncpu: benchCPUs, clients: newClientSet(65536), dirs: newFlowTable()}
}

// BenchmarkDrainerAdd adds the values of 10k drained entries to their
// directions, as drain does with each batch the kernel returns.
func BenchmarkDrainerAdd(b *testing.B) {
	d := benchDrainer(b)
	keys := make([]bpfFlowKey, benchDirections)
	for i := range keys {
		keys[i] = benchKey(i)
	}
	vals := []bpfFlowStats{{Bytes: 1500, Packets: 1, FirstNs: 1, LastJiffies: 2,
		Ifindex: 3, TcpFlags: benchACK, Point: uint8(model.PointTCIngress)}}
	b.ReportAllocs()
	for b.Loop() {
		d.dirs.reset()
		out := d.dirs
		for _, k := range keys {
			d.add(out, k, vals)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*benchDirections), "ns/entry")
}

// BenchmarkRecords joins a drain of 10k flow directions into records.
func BenchmarkRecords(b *testing.B) {
	d := benchDrainer(b)
	dirs := benchDirs(benchDirections)
	// As Datapath.iface: a lookup of interfaces known beforehand.
	known := map[int]model.Interface{}
	for idx := 2; idx < 34; idx++ {
		known[idx] = model.Interface{Index: idx, Name: fmt.Sprintf("veth%d", idx), Kind: "veth", PeerNetNSID: idx}
	}
	ifaces := func(idx int) model.Interface { return known[idx] }
	clk := clockReading{wall: time.Now(), ns: 1 << 40, j: 1 << 30, tick: 4 * time.Millisecond}
	b.ReportAllocs()
	var recs []model.Record
	for b.Loop() {
		recs = d.records(dirs, ifaces, clk)
	}
	if got, want := len(recs), benchDirections/2; got != want {
		b.Fatalf("records of %d directions: got %d records, want %d", benchDirections, got, want)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*benchDirections), "ns/direction")
}

// BenchmarkMerge sums a minute of 5s batches (12) of 5k flows each, of
// which half recur in every batch and half are new.
func BenchmarkMerge(b *testing.B) {
	const (
		batches = 12
		flows   = benchDirections / 2
	)
	d := benchDrainer(b)
	ifaces := func(idx int) model.Interface { return model.Interface{Index: idx, PeerNetNSID: -1} }
	start := time.Now()
	var in []model.Batch
	for i := range batches {
		dirs := newFlowTable()
		for j := range flows {
			n := j
			if j%2 == 1 {
				n = flows + i*flows + j // new in this batch
			}
			k := benchKey(n)
			*dirs.put(k) = direction{Direction: model.Direction{Bytes: 1500, Packets: 10, Point: model.PointTCIngress, Ifindex: 3}, first: 1, lastJ: 2}
			*dirs.put(reverse(k)) = direction{Direction: model.Direction{Bytes: 900, Packets: 9, Point: model.PointTCEgress, Ifindex: 4}, first: 1, lastJ: 2}
		}
		t := start.Add(time.Duration(i) * 5 * time.Second)
		clk := clockReading{wall: t, ns: 1 << 40, j: 1 << 30, tick: 4 * time.Millisecond}
		in = append(in, model.Batch{Start: t, End: t.Add(5 * time.Second), Records: d.records(dirs, ifaces, clk)})
	}
	b.ReportAllocs()
	var out model.Batch
	for b.Loop() {
		out = model.Merge(in...)
	}
	// Keys wrap at 256 clients and 28000 ports; count what Merge saw.
	if len(out.Records) == 0 || len(out.Records) > batches*flows {
		b.Fatalf("Merge of %d batches of %d: got %d records", batches, flows, len(out.Records))
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*batches*flows), "ns/record")
}

// BenchmarkBPFNewFlow times tc_ingress on each path of a new flow (see
// PathCosts): ns/flow is the kernel's time for the timed packet, each on a
// flow of its own.
func BenchmarkBPFNewFlow(b *testing.B) {
	testenv.MustBeRoot(b)
	testenv.MustHaveBTF(b)
	for b.Loop() {
		costs, err := PathCosts(3, 4096)
		if err != nil {
			b.Fatal(err)
		}
		for _, c := range costs {
			b.Logf("%-36s %7.1f ns  inserts %v", c.Name, c.NS, c.Inserts)
		}
	}
}
