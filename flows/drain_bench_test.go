package flows

import (
	"encoding/binary"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/flowmap/flowmap/internal/testenv"
	"github.com/flowmap/flowmap/model"
)

// drainBenchFlows is how many live flows BenchmarkDrainLive drains: both
// directions of each, in flow maps sized for them.
const drainBenchFlows = 500_000

// BenchmarkDrainLive drains a million live flow directions (half a million
// TCP connections, both ways, counted on every CPU) from the kernel's map
// and makes their records, as Datapath.Drain does each interval. The map is
// filled with BatchUpdate before each drain: the programs under
// BPF_PROG_TEST_RUN would take minutes. cpu-ms/op is the process's user
// and system time (the grace period after the flip sleeps).
func BenchmarkDrainLive(b *testing.B) {
	d, keys, vals := drainBenchDatapath(b)
	fill := func() { fillFlows(b, d.drain.halves[d.drain.cur].v4, keys, vals) }
	var cpu time.Duration
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		fill()
		c0 := cpuTime(b)
		b.StartTimer()
		batch, err := d.Drain(time.Now())
		b.StopTimer()
		cpu += cpuTime(b) - c0
		if err != nil {
			b.Fatalf("Drain: %v", err)
		}
		if got := len(batch.Records); got != drainBenchFlows {
			b.Fatalf("Drain: %d records, want %d", got, drainBenchFlows)
		}
		b.StartTimer()
	}
	b.ReportMetric(float64(cpu.Milliseconds())/float64(b.N), "cpu-ms/op")
}

// drainBenchDatapath returns a datapath whose flow maps hold the entries
// of drainBenchEntries, and those entries; it is closed when b ends.
func drainBenchDatapath(b *testing.B) (*Datapath, []bpfFlowKey4, []bpfFlowStats) {
	testenv.MustBeRoot(b)
	testenv.MustHaveBTF(b)
	d, err := New(Config{MaxFlows: 2 * drainBenchFlows})
	if err != nil {
		b.Fatalf("New: %v", err)
	}
	b.Cleanup(func() { d.Close() })
	keys, vals := drainBenchEntries()
	return d, keys, vals
}

// drainBenchEntries returns the flow map entries BenchmarkDrainLive
// drains: both directions of drainBenchFlows TCP connections.
func drainBenchEntries() ([]bpfFlowKey4, []bpfFlowStats) {
	keys := make([]bpfFlowKey4, 0, 2*drainBenchFlows)
	for i := range drainBenchFlows {
		var k bpfFlowKey4
		k.Saddr = binary.NativeEndian.Uint32([]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
		k.Daddr = binary.NativeEndian.Uint32([]byte{10, 255, 0, byte(i % 64)})
		k.Sport, k.Dport, k.Proto = uint16(32768+i%28000), 443, uint8(unix.IPPROTO_TCP)
		r := k
		r.Saddr, r.Daddr, r.Sport, r.Dport = k.Daddr, k.Saddr, k.Dport, k.Sport
		keys = append(keys, k, r)
	}
	vals := make([]bpfFlowStats, len(keys))
	for i := range keys {
		vals[i] = bpfFlowStats{Bytes: 1500, Packets: 3, FirstNs: 1000, LastJiffies: 2000,
			Ifindex: 3, TcpFlags: benchACK, Point: uint8(bpfPointPOINT_TC_INGRESS)}
	}
	return keys, vals
}

// fillFlows puts keys and vals in the flow map m.
func fillFlows(b *testing.B, m *ebpf.Map, keys []bpfFlowKey4, vals []bpfFlowStats) {
	for i := 0; i < len(keys); i += drainBatch {
		j := min(i+drainBatch, len(keys))
		if _, err := m.BatchUpdate(keys[i:j], vals[i:j], &ebpf.BatchOptions{}); err != nil {
			b.Fatalf("fill flow map: %v", err)
		}
	}
}

// BenchmarkDrainKernel is the kernel's share of BenchmarkDrainLive: the
// batch syscalls alone over the same million entries, by batch size, with
// and without the delete (what emptying the map costs on top of reading
// it). cpu-ms/op is the process's user and system time.
func BenchmarkDrainKernel(b *testing.B) {
	d, keys, vals := drainBenchDatapath(b)
	m := d.drain.halves[d.drain.cur].v4
	for _, del := range []bool{true, false} {
		for _, size := range []int{1024, 4096, 16384, 65536} {
			name := fmt.Sprintf("lookup/batch=%d", size)
			if del {
				name = fmt.Sprintf("lookup-and-delete/batch=%d", size)
			}
			b.Run(name, func(b *testing.B) {
				kb, vb := make([]bpfFlowKey4, size), make([]bpfFlowStats, size)
				var cpu time.Duration
				for range b.N {
					b.StopTimer()
					fillFlows(b, m, keys, vals)
					c0 := cpuTime(b)
					b.StartTimer()
					var cursor ebpf.MapBatchCursor
					got := 0
					for {
						var n int
						var err error
						if del {
							n, err = m.BatchLookupAndDelete(&cursor, kb, vb, nil)
						} else {
							n, err = m.BatchLookup(&cursor, kb, vb, nil)
						}
						got += n
						if errors.Is(err, ebpf.ErrKeyNotExist) {
							break
						}
						if err != nil {
							b.Fatalf("batch: %v", err)
						}
					}
					b.StopTimer()
					cpu += cpuTime(b) - c0
					if got != len(keys) {
						b.Fatalf("read %d entries, want %d", got, len(keys))
					}
					if !del {
						// Empty it for the next fill, untimed.
						var c ebpf.MapBatchCursor
						for {
							_, err := m.BatchLookupAndDelete(&c, kb, vb, nil)
							if errors.Is(err, ebpf.ErrKeyNotExist) {
								break
							}
						}
					}
					b.StartTimer()
				}
				b.ReportMetric(float64(cpu.Microseconds())/1000/float64(b.N), "cpu-ms/op")
			})
		}
	}
}

// BenchmarkDrainGo is the Go share of BenchmarkDrainLive, without root:
// the same million directions added as the batches hand them over, joined
// by natJoin (no conntrack) and made records, with health on (its maps
// are only tested for nil on this path).
func BenchmarkDrainGo(b *testing.B) {
	d := &drainer{ncpu: 1, clients: newClientSet(2 * drainBenchFlows), dirs: newFlowTable(),
		health: map[bpfFlowKey]*dirHealth{}, pending: map[bpfFlowKey]pendingSYN{}, maxPending: 2 * drainBenchFlows}
	d.healths[0].health = &ebpf.Map{}
	d.finished = newKeySet(2 * drainBenchFlows)
	keys, vals := drainBenchEntries()
	clk := clockReading{wall: time.Now(), ns: 1 << 40, j: 1 << 30, tick: 4 * time.Millisecond}
	ifaces := func(idx int) model.Interface { return model.Interface{Index: idx, PeerNetNSID: -1} }
	b.ReportAllocs()
	for b.Loop() {
		d.dirs.reset()
		for i := range keys {
			d.add(d.dirs, keys[i].mapped(), vals[i:i+1])
		}
		natJoin(d.dirs, nil)
		if recs := d.records(d.dirs, ifaces, clk); len(recs) != drainBenchFlows {
			b.Fatalf("records: %d, want %d", len(recs), drainBenchFlows)
		}
	}
}

// cpuTime returns the process's user and system time.
func cpuTime(b *testing.B) time.Duration {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		b.Fatalf("getrusage: %v", err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// TestClientSet checks that the set keeps its newest n keys at least, and
// a key looked up stays.
func TestClientSet(t *testing.T) {
	key := func(i int) bpfFlowKey { return bpfFlowKey{Sport: uint16(i), Proto: 6} }
	s := newClientSet(4) // two generations of 2
	for i := range 3 {
		s.add(key(i))
	}
	// Generations: old {0, 1}, cur {2}. Looking up 0 moves it to cur,
	// which is then full: adding 3 drops {2, 0}'s older generation, {1}.
	if !s.has(key(0)) {
		t.Fatalf("has(0) = false after adding 0, 1, 2 to a set of 4, want true")
	}
	s.add(key(3))
	for _, tt := range []struct {
		key  int
		want bool
	}{{0, true}, {1, false}, {2, true}, {3, true}, {4, false}} {
		if got := s.has(key(tt.key)); got != tt.want {
			t.Errorf("has(%d) = %t, want %t", tt.key, got, tt.want)
		}
	}
}

// TestKeySet checks that the set keeps its newest n/2 keys at least, and
// forgets a key removed.
func TestKeySet(t *testing.T) {
	key := func(i int) bpfFlowKey { return bpfFlowKey{Sport: uint16(i), Proto: 6} }
	s := newKeySet(4) // two generations of 2
	for i := range 5 {
		s.Add(key(i), struct{}{})
	}
	// Generations: old {2, 3}, cur {4}.
	s.Remove(key(3))
	for _, tt := range []struct {
		key  int
		want bool
	}{{0, false}, {1, false}, {2, true}, {3, false}, {4, true}} {
		if got := s.Contains(key(tt.key)); got != tt.want {
			t.Errorf("Contains(%d) = %t, want %t", tt.key, got, tt.want)
		}
	}
}
