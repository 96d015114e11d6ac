package flows

import (
	"encoding/binary"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"time"

	"github.com/cilium/ebpf"
)

// PathCost is what tc_ingress costs on one path of a flow's life, timed
// with BPF_PROG_TEST_RUN one run at a time, each run on a flow of its own
// (a new tuple), so that the path's inserts are in what it costs.
type PathCost struct {
	Name string
	// NS is the median over the rounds of the mean kernel time of a run
	// (bpf_test_run's clock: the program, one clock read and the loop).
	NS float64
	// Inserts names the maps that the timed packet added entries to, from
	// maps emptied before the flow's first packet.
	Inserts []string
}

// pathSteps is one path: the packets before the timed one (untimed),
// then the timed one, for flow number i.
type pathSteps struct {
	name string
	// frames returns the setup frames and the timed frame of flow i.
	frames func(i int) (setup [][]byte, timed []byte)
}

// The hosts of the paths' flows: a client talking to a web server.
var (
	pathClient = [4]byte{198, 51, 100, 2}
	pathServer = [4]byte{203, 0, 113, 80}
)

// TCP header flags.
const (
	tcpFIN = 0x01
	tcpSYN = 0x02
	tcpPSH = 0x08
	tcpACK = 0x10
)

var (
	pathRequest  = []byte("GET /index.html HTTP/1.1\r\nHost: shop\r\nUser-Agent: bench\r\n\r\n")
	pathResponse = []byte("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
)

// pathTCP returns a TCP frame of flow i (client port 10000+i to the
// server's port 80), from the client (c2s) or from the server.
func pathTCP(i int, c2s bool, flags uint8, payload []byte) []byte {
	sport, dport := uint16(10000+i), uint16(80)
	src, dst := pathClient, pathServer
	if !c2s {
		sport, dport, src, dst = dport, sport, dst, src
	}
	tcp := make([]byte, 20+len(payload))
	binary.BigEndian.PutUint16(tcp[0:], sport)
	binary.BigEndian.PutUint16(tcp[2:], dport)
	binary.BigEndian.PutUint32(tcp[4:], 1000)
	tcp[12] = 5 << 4
	tcp[13] = flags
	binary.BigEndian.PutUint16(tcp[14:], 65535)
	copy(tcp[20:], payload)
	return pathIP4(src, dst, 6, tcp)
}

// pathUDP returns a 64-byte UDP frame of flow i.
func pathUDP(i int) []byte {
	udp := make([]byte, 64-14-20)
	binary.BigEndian.PutUint16(udp[0:], uint16(10000+i))
	binary.BigEndian.PutUint16(udp[2:], 5201)
	binary.BigEndian.PutUint16(udp[4:], uint16(len(udp)))
	return pathIP4(pathClient, pathServer, 17, udp)
}

// pathIP4 wraps an L4 segment in IPv4 and Ethernet headers (checksums
// left 0: the programs read none).
func pathIP4(src, dst [4]byte, proto uint8, l4 []byte) []byte {
	f := make([]byte, 14+20+len(l4))
	copy(f[0:6], []byte{0x02, 0, 0, 0, 0, 0x0b})
	copy(f[6:12], []byte{0x02, 0, 0, 0, 0, 0x0a})
	binary.BigEndian.PutUint16(f[12:], 0x0800)
	ip := f[14:]
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], uint16(20+len(l4)))
	ip[8] = 64
	ip[9] = proto
	copy(ip[12:16], src[:])
	copy(ip[16:20], dst[:])
	copy(ip[20:], l4)
	return f
}

// newFlowPaths are the paths of a new flow, each timed on the packet its
// name says, the packets before it replayed untimed.
func newFlowPaths() []pathSteps {
	syn := func(i int) []byte { return pathTCP(i, true, tcpSYN, nil) }
	synack := func(i int) []byte { return pathTCP(i, false, tcpSYN|tcpACK, nil) }
	ack := func(i int) []byte { return pathTCP(i, true, tcpACK, nil) }
	req := func(i int) []byte { return pathTCP(i, true, tcpPSH|tcpACK, pathRequest) }
	resp := func(i int) []byte { return pathTCP(i, false, tcpPSH|tcpACK, pathResponse) }
	fin := func(i int) []byte { return pathTCP(i, true, tcpFIN|tcpACK, nil) }
	return []pathSteps{
		{"udp first packet", func(i int) ([][]byte, []byte) { return nil, pathUDP(i) }},
		{"SYN", func(i int) ([][]byte, []byte) { return nil, syn(i) }},
		{"SYN-ACK", func(i int) ([][]byte, []byte) { return [][]byte{syn(i)}, synack(i) }},
		{"handshake ACK", func(i int) ([][]byte, []byte) { return [][]byte{syn(i), synack(i)}, ack(i) }},
		{"HTTP request (first payload)", func(i int) ([][]byte, []byte) {
			return [][]byte{syn(i), synack(i), ack(i)}, req(i)
		}},
		{"HTTP response", func(i int) ([][]byte, []byte) {
			return [][]byte{syn(i), synack(i), ack(i), req(i)}, resp(i)
		}},
		// The next request and response of a kept-alive connection:
		// its L7 entry and its L7 state exist.
		{"HTTP request, kept alive", func(i int) ([][]byte, []byte) {
			return [][]byte{syn(i), synack(i), ack(i), req(i), resp(i)}, req(i)
		}},
		{"HTTP response, kept alive", func(i int) ([][]byte, []byte) {
			return [][]byte{syn(i), synack(i), ack(i), req(i), resp(i), req(i)}, resp(i)
		}},
		{"FIN", func(i int) ([][]byte, []byte) {
			return [][]byte{syn(i), synack(i), ack(i), req(i), resp(i)}, fin(i)
		}},
		// For comparison: a packet of a flow that has its entry, once
		// right after another of its own (the per-CPU cache holds it),
		// once after one of another flow (a hash lookup, atomic adds).
		{"steady: UDP, same flow", func(i int) ([][]byte, []byte) { return [][]byte{pathUDP(0)}, pathUDP(0) }},
		{"steady: TCP ACK, flows interleaved", func(i int) ([][]byte, []byte) {
			return [][]byte{ack(1), ack(2)}, ack(1)
		}},
	}
}

// PathCosts times tc_ingress on each path of newFlowPaths, in rounds
// interleaving the paths, flows new flows a path and round; the maps are
// emptied before each path's round (outside the timed runs), so each
// timed packet meets maps that hold at most flows flows.
func PathCosts(rounds, flows int) ([]PathCost, error) {
	spec, err := loadBpf()
	if err != nil {
		return nil, fmt.Errorf("load embedded BPF: %w", err)
	}
	sizeMaps(spec, DefaultMaxFlows, uint32(defaultMaxL7Flows(DefaultMaxFlows)))
	var objs bpfObjects
	if err := spec.LoadAndAssign(&objs, nil); err != nil {
		return nil, fmt.Errorf("load BPF objects: %w", err)
	}
	defer objs.Close()
	prog := objs.TcIngress
	paths := newFlowPaths()
	ns := make([][]float64, len(paths))
	out := make([]PathCost, len(paths))
	for p, path := range paths {
		out[p].Name = path.name
		if out[p].Inserts, err = pathInserts(&objs.bpfMaps, prog, path); err != nil {
			return nil, err
		}
	}
	for range rounds {
		for p, path := range paths {
			if err := emptyMaps(&objs.bpfMaps); err != nil {
				return nil, err
			}
			var total time.Duration
			for i := range flows {
				setup, timed := path.frames(i)
				for _, f := range setup {
					if _, err := prog.Run(&ebpf.RunOptions{Data: f}); err != nil {
						return nil, fmt.Errorf("%s: run setup: %w", path.name, err)
					}
				}
				_, d, err := prog.Benchmark(timed, 1, nil)
				if err != nil {
					return nil, fmt.Errorf("%s: time: %w", path.name, err)
				}
				total += d
			}
			ns[p] = append(ns[p], float64(total.Nanoseconds())/float64(flows))
		}
	}
	for p := range paths {
		slices.Sort(ns[p])
		out[p].NS = ns[p][len(ns[p])/2]
	}
	return out, nil
}

// pathInserts runs one flow of path from empty maps and names the maps
// its timed packet added entries to.
func pathInserts(maps *bpfMaps, prog *ebpf.Program, path pathSteps) ([]string, error) {
	if err := emptyMaps(maps); err != nil {
		return nil, err
	}
	setup, timed := path.frames(0)
	for _, f := range setup {
		if _, err := prog.Run(&ebpf.RunOptions{Data: f}); err != nil {
			return nil, fmt.Errorf("%s: run setup: %w", path.name, err)
		}
	}
	before, err := mapEntries(maps)
	if err != nil {
		return nil, err
	}
	if _, err := prog.Run(&ebpf.RunOptions{Data: timed}); err != nil {
		return nil, fmt.Errorf("%s: run: %w", path.name, err)
	}
	after, err := mapEntries(maps)
	if err != nil {
		return nil, err
	}
	var ins []string
	for name, n := range after {
		if n > before[name] {
			ins = append(ins, name)
		}
	}
	slices.Sort(ins)
	return ins, nil
}

// hashMaps calls f with each hash map (of any kind) of maps, by C name.
func hashMaps(maps *bpfMaps, f func(name string, m *ebpf.Map) error) error {
	v := reflect.ValueOf(maps).Elem()
	for i := range v.NumField() {
		m, ok := v.Field(i).Interface().(*ebpf.Map)
		if !ok || m == nil {
			continue
		}
		switch m.Type() {
		case ebpf.Hash, ebpf.LRUHash, ebpf.PerCPUHash, ebpf.LRUCPUHash:
		default:
			continue
		}
		if err := f(v.Type().Field(i).Tag.Get("ebpf"), m); err != nil {
			return err
		}
	}
	return nil
}

// mapEntries counts the entries of every hash map of maps.
func mapEntries(maps *bpfMaps) (map[string]int, error) {
	n := map[string]int{}
	err := hashMaps(maps, func(name string, m *ebpf.Map) error {
		var prev any // nil: the first key
		for {
			k := make([]byte, m.KeySize())
			err := m.NextKey(prev, &k)
			if errors.Is(err, ebpf.ErrKeyNotExist) {
				return nil
			}
			if err != nil {
				return fmt.Errorf("iterate %s: %w", name, err)
			}
			n[name]++
			prev = k
		}
	})
	return n, err
}

// emptyMaps deletes every entry of every hash map of maps, and empties
// the CPUs' flow cache slots, which would otherwise name a flow the maps
// no longer hold (and count its next packets there, as no drain would
// let them).
func emptyMaps(maps *bpfMaps) error {
	for half := range uint32(2) {
		var slots []bpfCacheSlot
		if err := maps.FlowCache.Lookup(half, &slots); err != nil {
			return fmt.Errorf("read flow cache %d: %w", half, err)
		}
		if err := maps.FlowCache.Put(half, make([]bpfCacheSlot, len(slots))); err != nil {
			return fmt.Errorf("empty flow cache %d: %w", half, err)
		}
	}
	return hashMaps(maps, func(name string, m *ebpf.Map) error {
		k := make([]byte, m.KeySize())
		for {
			err := m.NextKey(nil, &k)
			if errors.Is(err, ebpf.ErrKeyNotExist) {
				return nil
			}
			if err != nil {
				return fmt.Errorf("first key of %s: %w", name, err)
			}
			if err := m.Delete(k); err != nil {
				return fmt.Errorf("delete from %s: %w", name, err)
			}
		}
	})
}
