package flows

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"time"

	"github.com/cilium/ebpf"

	"github.com/flowmap/flowmap/model"
)

// drainGrace is how long a drain waits after flipping the double buffer
// when it cannot wait for the programs as it should (see waitPrograms):
// a program that read the old active_buf finishes its update well within
// it (they run in softirq or with migration disabled, for microseconds).
const drainGrace = 20 * time.Millisecond

// drainBatch is how many entries one batch syscall reads. It must exceed
// the longest hash bucket, or the kernel answers ENOSPC.
const drainBatch = 4096

// direction is one flow direction as drained.
type direction struct {
	model.Direction
	first uint64 // CLOCK_MONOTONIC ns; 0 if only a retransmit was seen
	lastJ uint64 // jiffies
	rtt   uint64
	// backend is the server that answered where it was not the one
	// dialled (natJoin).
	backend netip.AddrPort
}

// clientSet remembers the client direction of up to n flows, by the
// flow's canonical key (see canon) and the client's side of it, as two
// generations of maps: a set in a full newer one drops the older, and a
// flow found in the older moves to the newer. Unlike a linked LRU, a set
// allocates nothing once the maps have grown; one lookup answers for
// both directions of a flow.
type clientSet struct {
	cur, old map[bpfFlowKey]uint8
	n        int // entries of one generation
}

func newClientSet(n int) *clientSet {
	n = max(1, n/2)
	return &clientSet{cur: make(map[bpfFlowKey]uint8), old: make(map[bpfFlowKey]uint8), n: n}
}

// side returns the client's side of the flow whose canonical key is ck.
func (s *clientSet) side(ck bpfFlowKey) (int, bool) {
	if v, ok := s.cur[ck]; ok {
		return int(v), true
	}
	if v, ok := s.old[ck]; ok {
		s.set(ck, int(v))
		return int(v), true
	}
	return 0, false
}

// set remembers side as the client's of the flow whose canonical key is ck.
func (s *clientSet) set(ck bpfFlowKey, side int) {
	if len(s.cur) >= s.n {
		s.old, s.cur = s.cur, s.old
		clear(s.cur)
	}
	s.cur[ck] = uint8(side)
}

// has reports whether k is a client direction the set knows.
func (s *clientSet) has(k bpfFlowKey) bool {
	ck, side := canon(k)
	c, ok := s.side(ck)
	return ok && c == side
}

// add remembers k as the client direction of its flow.
func (s *clientSet) add(k bpfFlowKey) {
	ck, side := canon(k)
	s.set(ck, side)
}

// keySet remembers up to n keys, the newest n/2 at least, as two
// generations of maps like clientSet: unlike a linked LRU, which allocates
// an element for each key it adds, it allocates nothing once the maps have
// grown. Its methods are a cache's: a value-less Add.
type keySet struct {
	cur, old map[bpfFlowKey]struct{}
	n        int // entries of one generation
}

func newKeySet(n int) *keySet {
	return &keySet{cur: map[bpfFlowKey]struct{}{}, old: map[bpfFlowKey]struct{}{}, n: max(1, n/2)}
}

// Contains reports whether the set holds k.
func (s *keySet) Contains(k bpfFlowKey) bool {
	if _, ok := s.cur[k]; ok {
		return true
	}
	_, ok := s.old[k]
	return ok
}

// Add adds k; evicted says whether it dropped the older generation.
func (s *keySet) Add(k bpfFlowKey, _ struct{}) (evicted bool) {
	if _, ok := s.cur[k]; ok {
		return false
	}
	if len(s.cur) >= s.n {
		s.old, s.cur = s.cur, s.old
		clear(s.cur)
		evicted = true
	}
	s.cur[k] = struct{}{}
	return evicted
}

// Remove forgets k.
func (s *keySet) Remove(k bpfFlowKey) {
	delete(s.cur, k)
	delete(s.old, k)
}

// half is one half of the double buffer: the IPv4 and IPv6 flow maps, or
// L7 maps.
type half struct{ v4, v6 *ebpf.Map }

// drainer empties the inactive half of the double-buffered flow maps.
type drainer struct {
	halves [2]half
	active *ebpf.Variable
	cur    uint32 // the half the programs write now
	ncpu   int
	keys4  []bpfFlowKey4
	keys6  []bpfFlowKey
	vals   []bpfFlowStats // drainBatch: the flow maps are shared, one value a key
	// clients remembers the client direction of connections whose
	// handshake was seen, so that later intervals orient them alike.
	clients *clientSet
	// dirs holds the last drain's directions, until records made them
	// records: it is reused by the next drain.
	dirs *flowTable

	// L7: the halves of the L7 maps, and what the last drain read of
	// them by client-to-server key (see l7.go), until records takes it.
	l7s [2]half
	// l7pending is the L7 pending maps, where the drain carries the
	// requests still waiting in the entries it takes.
	l7pending half
	// cache is the per-CPU slots of the last IPv4 flow each CPU counted,
	// one per half.
	cache *ebpf.Map
	l7    map[bpfFlowKey]*pendingL7
	// The L7 drain's batch buffers: l7Batch keys, l7Batch × ncpu values.
	l7keys4 []bpfFlowKey4
	l7keys6 []bpfFlowKey
	l7vals  []bpfL7Stats

	// Health (see health.go): the halves of the health and drops maps
	// (nil maps with health off), what the last drain read of them by
	// sender direction, attempts not answered yet, connections whose
	// close was counted, and the kernel's drop reasons by value.
	healths [2]healthHalf
	health  map[bpfFlowKey]*dirHealth
	// halfOpen is the drain's side of the TCP connection attempts held
	// apart from the flow maps (see halfopen.go).
	halfOpen *halfOpenState
	// healthFree are dirHealths for health to reuse (newDirHealth).
	healthFree []*dirHealth
	pending    map[bpfFlowKey]pendingSYN
	// maxPending bounds pending: attempts past it are not timed.
	maxPending int
	finished   *keySet
	reasons    map[uint32]string
	hkeys      []bpfFlowKey
	hvals      []bpfHealthStats
	dkeys      []bpfDropKey
	dvals      []uint64

	// sync is an array of maps whose update waits for an RCU grace
	// period (see waitPrograms), inner the map it is updated with.
	sync, inner *ebpf.Map
	// graceWaits counts the drains that could not wait for the programs
	// and slept drainGrace instead.
	graceWaits uint64
	// kept says that d.dirs holds what a failed drain had already taken
	// out of the maps: the next drain hands it out.
	kept bool
	// fault, for tests, fails a drain after the step it names.
	fault func(step string) error
}

func newDrainer(objs *bpfObjects, maxFlows int, reasons map[uint32]string) (*drainer, error) {
	ncpu, err := ebpf.PossibleCPU()
	if err != nil {
		return nil, fmt.Errorf("count possible CPUs: %w", err)
	}
	d := &drainer{
		dirs:      newFlowTable(),
		halves:    [2]half{{objs.Flows4A, objs.Flows6A}, {objs.Flows4B, objs.Flows6B}},
		active:    objs.ActiveBuf,
		ncpu:      ncpu,
		keys4:     make([]bpfFlowKey4, drainBatch),
		keys6:     make([]bpfFlowKey, drainBatch),
		vals:      make([]bpfFlowStats, drainBatch),
		clients:   newClientSet(maxFlows),
		l7s:       [2]half{{objs.L7s4A, objs.L7s6A}, {objs.L7s4B, objs.L7s6B}},
		l7pending: half{objs.L7Pending4, objs.L7Pending6},
		cache:     objs.FlowCache,
		l7:        map[bpfFlowKey]*pendingL7{},
		l7keys4:   make([]bpfFlowKey4, l7Batch),
		l7keys6:   make([]bpfFlowKey, l7Batch),
		l7vals:    make([]bpfL7Stats, l7Batch*ncpu),
	}
	d.halfOpen = newHalfOpenState(objs.HalfOpen)
	if reasons != nil {
		d.finished = newKeySet(maxFlows)
		d.healths = [2]healthHalf{{objs.HealthA, objs.DropsA}, {objs.HealthB, objs.DropsB}}
		d.health = map[bpfFlowKey]*dirHealth{}
		d.pending = map[bpfFlowKey]pendingSYN{}
		d.maxPending = maxFlows
		d.reasons = reasons
		d.hkeys = make([]bpfFlowKey, healthBatch)
		d.hvals = make([]bpfHealthStats, healthBatch*ncpu)
		d.dkeys = make([]bpfDropKey, healthBatch)
		d.dvals = make([]uint64, healthBatch*ncpu)
	}
	if d.inner, err = ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 1}); err != nil {
		return nil, fmt.Errorf("create drain sync map: %w", err)
	}
	d.sync, err = ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.ArrayOfMaps, KeySize: 4, ValueSize: 4, MaxEntries: 1,
		InnerMap: &ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 1}})
	if err != nil {
		d.inner.Close()
		return nil, fmt.Errorf("create drain sync map: %w", err)
	}
	if err := d.active.Get(&d.cur); err != nil {
		d.close()
		return nil, fmt.Errorf("read active_buf: %w", err)
	}
	return d, nil
}

// close releases the drainer's own maps; the programs' are the caller's.
func (d *drainer) close() error {
	return errors.Join(d.sync.Close(), d.inner.Close())
}

// waitPrograms returns once every program that may have read active_buf
// before it was flipped has ended, so that none writes the old half after.
// The packet programs and the tracepoint run inside RCU read-side critical
// sections (softirq, XDP's NAPI poll, bpf_trace_run), and the kernel
// waits for an RCU grace period, synchronize_rcu, whenever a map of maps
// is updated from user space, precisely so that user space knows every
// program that could have seen the old value is done: kernel commit
// 1ae80cf31938 ("bpf: wait for running BPF programs when updating
// map-in-map"), maybe_wait_bpf_programs in kernel/bpf/syscall.c. The
// programs never read sync; updating it is only for the wait. If the
// update fails, it sleeps drainGrace instead and counts it.
func (d *drainer) waitPrograms() {
	if err := d.sync.Put(uint32(0), d.inner); err != nil {
		d.graceWaits++
		time.Sleep(drainGrace)
	}
}

// keep holds what a failed drain took out of the maps for the next one.
func (d *drainer) keep(dirs *flowTable) {
	d.kept = dirs.len() > 0
}

// step returns the fault a test injected after step, or nil.
func (d *drainer) step(name string) error {
	if d.fault == nil {
		return nil
	}
	return d.fault(name)
}

// drain flips the buffer and returns what the programs counted in the
// half they wrote until now, with what the CPUs' cache slots held, and
// empties that half, with what a failed drain kept (see keep). IPv4 keys
// come out IPv4-mapped. On an error, what it returns was taken out of the
// maps: the caller keeps it for the next drain. The half it did not empty
// is emptied by the drain after next, when it is the old half again. The
// table is the drainer's, valid until the next drain.
func (d *drainer) drain() (*flowTable, error) {
	out := d.dirs
	if d.kept {
		// A failed drain's directions are still in d.dirs: this drain
		// adds to them and hands them out.
		d.kept = false
	} else {
		d.dirs.reset()
	}
	old := d.cur
	if err := d.active.Set(1 - old); err != nil {
		return out, fmt.Errorf("flip flow maps: %w", err)
	}
	d.cur = 1 - old
	d.waitPrograms()

	h := d.halves[old]
	err := drainMap(h.v4, d.keys4, d.vals, d.ncpu, func(k bpfFlowKey4, v []bpfFlowStats) { d.add(out, k.mapped(), v) })
	if err == nil {
		err = d.step("v4")
	}
	if err != nil {
		return out, err
	}
	if err := drainMap(h.v6, d.keys6, d.vals, d.ncpu, func(k bpfFlowKey, v []bpfFlowStats) { d.add(out, k, v) }); err != nil {
		return out, err
	}
	if err := d.drainCache(old, out); err != nil {
		return out, err
	}
	if err := d.takeHalfOpen(out); err != nil {
		return out, err
	}
	if err := d.drainHealth(old); err != nil {
		return out, err
	}
	return out, d.drainL7(old)
}

// drainCache adds what each CPU's cache slot of half counted since it was
// last added to the map, and empties the slots before the half is written
// again.
func (d *drainer) drainCache(half uint32, out *flowTable) error {
	var slots []bpfCacheSlot
	if err := d.cache.Lookup(half, &slots); err != nil {
		return fmt.Errorf("read flow cache %d: %w", half, err)
	}
	for _, c := range slots {
		if c.Valid != 0 && c.Packets > 0 {
			d.add(out, c.Key.mapped(), []bpfFlowStats{{Bytes: c.Bytes, Packets: c.Packets, TcpFlags: c.TcpFlags, LastJiffies: c.LastJiffies}})
		}
	}
	if err := d.cache.Put(half, make([]bpfCacheSlot, len(slots))); err != nil {
		return fmt.Errorf("empty flow cache %d: %w", half, err)
	}
	return nil
}

// drainMap reads and deletes every entry of m, handing add each key with
// its value, or its CPUs' values if m is per CPU; in batches of len(keys)
// where the kernel has them (5.6+), else one by one. vals holds len(keys)
// values, times ncpu for a per-CPU map. The programs do not write m
// meanwhile, so reading then deleting loses nothing.
func drainMap[K comparable, V any](m *ebpf.Map, keys []K, vals []V, ncpu int, add func(K, []V)) error {
	if !perCPU(m.Type()) {
		ncpu = 1
	}
	var cursor ebpf.MapBatchCursor
	for {
		n, err := m.BatchLookupAndDelete(&cursor, keys, vals[:len(keys)*ncpu], nil)
		for i := range n {
			add(keys[i], vals[i*ncpu:(i+1)*ncpu])
		}
		switch {
		case errors.Is(err, ebpf.ErrKeyNotExist):
			return nil
		case errors.Is(err, ebpf.ErrNotSupported):
			return drainEach(m, add)
		case err != nil:
			return fmt.Errorf("drain %s: %w", m, err)
		}
	}
}

func drainEach[K comparable, V any](m *ebpf.Map, add func(K, []V)) error {
	var (
		key  K
		vals []V
		keys []K
	)
	it := m.Iterate()
	if !perCPU(m.Type()) {
		vals = make([]V, 1)
		for it.Next(&key, &vals[0]) {
			add(key, vals)
			keys = append(keys, key)
		}
	} else {
		for it.Next(&key, &vals) {
			add(key, vals)
			keys = append(keys, key)
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("iterate %s: %w", m, err)
	}
	for _, k := range keys {
		if err := m.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("delete from %s: %w", m, err)
		}
	}
	return nil
}

// mapped returns k as an IPv6 key with its addresses IPv4-mapped.
func (k bpfFlowKey4) mapped() bpfFlowKey {
	m := bpfFlowKey{Sport: k.Sport, Dport: k.Dport, Proto: k.Proto, Vlan: k.Vlan}
	m.Saddr[10], m.Saddr[11] = 0xff, 0xff
	m.Daddr[10], m.Daddr[11] = 0xff, 0xff
	// The fields hold the header's bytes as they lie in memory.
	binary.NativeEndian.PutUint32(m.Saddr[12:], k.Saddr)
	binary.NativeEndian.PutUint32(m.Daddr[12:], k.Daddr)
	return m
}

// add adds vals, a flow map's value or a cache slot's counts, to k's
// direction in out.
func (d *drainer) add(out *flowTable, k bpfFlowKey, vals []bpfFlowStats) {
	dir := out.put(k)
	for _, v := range vals {
		dir.Bytes += v.Bytes
		dir.Packets += v.Packets
		dir.Retransmits += v.Retransmits
		dir.TCPFlags |= v.TcpFlags
		if v.Point != 0 && dir.Point == 0 {
			dir.Point = pointOf(bpfPoint(v.Point))
			dir.Ifindex = int(v.Ifindex)
		}
		if v.FirstNs != 0 && (dir.first == 0 || v.FirstNs < dir.first) {
			dir.first = v.FirstNs
		}
		dir.lastJ = max(dir.lastJ, v.LastJiffies)
		dir.rtt = max(dir.rtt, v.SynRttNs)
		// The handshake's health, folded into the entry from its
		// attempt (see halfopen.go).
		if v.Syns|v.SynRetries|uint16(v.Accepts) != 0 {
			d.addSYNs(k, uint32(v.Syns), uint32(v.SynRetries), 0)
			if v.Accepts != 0 && d.health != nil {
				d.dirHealth(k).Accepts += uint32(v.Accepts)
			}
		}
	}
}

// icmpReply returns the reply type of an ICMP or ICMPv6 query type t, or
// the query type of a reply type (echo, timestamp; ICMPv6 echo), and false
// for other types and protocols.
func icmpReply(p model.Proto, t uint16) (uint16, bool) {
	switch {
	case p == model.ProtoICMP && (t == 8 || t == 0):
		return 8 - t, true
	case p == model.ProtoICMP && (t == 13 || t == 14):
		return 27 - t, true
	case p == model.ProtoICMPv6 && (t == 128 || t == 129):
		return 257 - t, true
	}
	return 0, false
}

// reverse returns the key of the other direction. For ICMP, whose ports
// are type and code, that is the reply type of a query and the query type
// of a reply; other ICMP types keep their type.
func reverse(k bpfFlowKey) bpfFlowKey {
	k.Saddr, k.Daddr = k.Daddr, k.Saddr
	if p := model.Proto(k.Proto); p == model.ProtoICMP || p == model.ProtoICMPv6 {
		if t, ok := icmpReply(p, k.Sport); ok {
			k.Sport = t
		}
		return k
	}
	k.Sport, k.Dport = k.Dport, k.Sport
	return k
}

// isClient reports whether k is the client's direction of its flow, and
// remembers the answer so that later intervals orient the flow alike:
//   - TCP: the direction that sent a SYN without ACK, or was answered by a
//     SYN-ACK;
//   - ICMP: the query's direction (echo request, timestamp request);
//   - else the direction towards the one port outside the ephemeral range
//     (32768 and up, Linux's default), as in 41234 → 53;
//   - else the direction seen first, when both were seen;
//   - else, for a flow seen one way, the direction seen (until a later
//     interval knows better); else the direction towards the lower port.
//
// k is the flow's canonical key (see canon), whose side 0 it is.
func (d *drainer) isClient(k bpfFlowKey, dir, rev *direction) bool {
	if side, ok := d.clients.side(k); ok {
		return side == 0
	}
	client, sure := guessClient(k, dir, rev)
	if sure {
		d.clients.set(k, boolSide(!client))
	}
	return client
}

// boolSide is 1 for true, 0 for false.
func boolSide(b bool) int {
	if b {
		return 1
	}
	return 0
}

// ephemeralPorts is where Linux picks client ports by default.
const ephemeralPorts = 32768

// guessClient is isClient without memory; sure is false for the guess by
// port number alone, which a later interval may improve on.
func guessClient(k bpfFlowKey, dir, rev *direction) (client, sure bool) {
	switch model.Proto(k.Proto) {
	case model.ProtoTCP:
		if dir != nil && (dir.TCPFlags&model.FlagSYNOnly != 0 || rev != nil && rev.TCPFlags&model.FlagSYNACK != 0) {
			return true, true
		}
		if rev != nil && (rev.TCPFlags&model.FlagSYNOnly != 0 || dir != nil && dir.TCPFlags&model.FlagSYNACK != 0) {
			return false, true
		}
	case model.ProtoICMP, model.ProtoICMPv6:
		switch k.Sport {
		case 0, 14, 129: // replies
			return false, true
		}
		return true, true
	}
	if (k.Sport >= ephemeralPorts) != (k.Dport >= ephemeralPorts) {
		return k.Sport >= ephemeralPorts, true
	}
	if dir != nil && rev != nil && dir.first != 0 && rev.first != 0 && dir.first != rev.first {
		return dir.first < rev.first, true
	}
	if rev == nil || dir == nil {
		// One way only: the side that speaks is the likelier client.
		return dir != nil, false
	}
	return k.Dport < k.Sport, false
}

// records joins the two directions of each flow into a Record. ifaces
// names the interfaces by index; clk turns the programs' times into times.
func (d *drainer) records(dirs *flowTable, ifaces func(int) model.Interface, clk clockReading) []model.Record {
	recs := make([]model.Record, 0, dirs.used)
	dirs.each(func(k bpfFlowKey, dir, rev *direction) {
		rk := reverse(k)
		if !d.isClient(k, dir, rev) {
			if rev == nil {
				// A one-way flow seen from its server side (a reply
				// whose request was counted in another interval).
				rev, dir = dir, nil
			} else {
				dir, rev = rev, dir
			}
			k, rk = rk, k
		}
		var fwd, back direction
		if dir != nil {
			fwd = *dir
		}
		if rev != nil {
			back = *rev
		}
		r := model.Record{
			Src:          addr(k.Saddr),
			Dst:          addr(k.Daddr),
			Proto:        model.Proto(k.Proto),
			SrcPort:      k.Sport,
			DstPort:      k.Dport,
			VLAN:         k.Vlan,
			Forward:      fwd.Direction,
			Reverse:      back.Direction,
			HandshakeRTT: time.Duration(max(fwd.rtt, back.rtt)),
			SrcIf:        model.Interface{PeerNetNSID: -1},
			DstIf:        model.Interface{PeerNetNSID: -1},
			Backend:      fwd.backend,
		}
		if !r.Backend.IsValid() {
			r.Backend = back.backend
		}
		first := fwd.first
		if first == 0 || (back.first != 0 && back.first < first) {
			first = back.first
		}
		if first != 0 {
			// Last seen has a tick's precision: it is never before first.
			r.FirstSeen = clk.mono(first)
			r.LastSeen = clk.jiffies(max(fwd.lastJ, back.lastJ))
			if r.LastSeen.Before(r.FirstSeen) {
				r.LastSeen = r.FirstSeen
			}
		}
		// An ingress count is at the sender's interface, an egress count
		// at the receiver's.
		for _, c := range []struct {
			dir      model.Direction
			src, dst *model.Interface
		}{{fwd.Direction, &r.SrcIf, &r.DstIf}, {back.Direction, &r.DstIf, &r.SrcIf}} {
			switch {
			case c.dir.Ifindex == 0:
			case c.dir.Point.Ingress() && c.src.Index == 0:
				*c.src = ifaces(c.dir.Ifindex)
			case c.dir.Point == model.PointTCEgress && c.dst.Index == 0:
				*c.dst = ifaces(c.dir.Ifindex)
			}
		}
		r.L7 = d.takeL7(k, rk)
		r.Health = d.takeHealth(k, rk, dir, rev, clk)
		recs = append(recs, r)
	})
	if d.health != nil {
		recs = append(recs, d.leftoverHealth(clk)...)
	}
	// L7 entries whose flow had no packets in this drain (the programs
	// read active_buf once for each map) wait for the next drain, once.
	for k, l := range d.l7 {
		if l.carried {
			delete(d.l7, k)
		}
		l.carried = true
	}
	return recs
}

// takeL7 returns the L7 stats of the flow whose client direction is k (or
// rk, where the L7 parsers found the client other than the L4 guess).
func (d *drainer) takeL7(k, rk bpfFlowKey) *model.L7 {
	l := d.l7[k]
	if l == nil {
		l = d.l7[rk]
		rk = k
	}
	if l == nil {
		return nil
	}
	delete(d.l7, k)
	delete(d.l7, rk)
	return &l.L7
}

// pendingL7 is a flow's L7 stats waiting for the flow's record.
type pendingL7 struct {
	model.L7
	carried bool // the drain kept it over from the one before
}

// addr turns an IPv6 or IPv4-mapped key address into an address.
func addr(b [16]byte) netip.Addr {
	return netip.AddrFrom16(b).Unmap()
}

// clock turns the times the programs take, CLOCK_MONOTONIC ns and jiffies,
// into wall-clock times. It samples both in the kernel at once by running
// clock_probe, and learns the length of a jiffy (1/CONFIG_HZ) at start.
type clock struct {
	probe     *ebpf.Program
	jiffies   *ebpf.Variable
	monotonic *ebpf.Variable
	tick      time.Duration
}

// kernelHZ are the values CONFIG_HZ takes.
var kernelHZ = []int{100, 250, 300, 1000}

func newClock(objs *bpfObjects) (*clock, error) {
	c := &clock{probe: objs.ClockProbe, jiffies: objs.ProbeJiffies, monotonic: objs.ProbeNs}
	j0, n0, err := c.sample()
	if err != nil {
		return nil, err
	}
	time.Sleep(100 * time.Millisecond)
	j1, n1, err := c.sample()
	if err != nil {
		return nil, err
	}
	// The nearest HZ: 100 ms tell 250 from 300 by 5 jiffies.
	hz := float64(j1-j0) / (float64(n1-n0) / 1e9)
	best := kernelHZ[0]
	for _, h := range kernelHZ {
		if math.Abs(float64(h)-hz) < math.Abs(float64(best)-hz) {
			best = h
		}
	}
	c.tick = time.Second / time.Duration(best)
	return c, nil
}

// sample returns jiffies and CLOCK_MONOTONIC ns read together in the kernel.
func (c *clock) sample() (jiffies, ns uint64, err error) {
	// XDP test runs want at least an Ethernet header of data.
	if _, err := c.probe.Run(&ebpf.RunOptions{Data: make([]byte, 14)}); err != nil {
		return 0, 0, fmt.Errorf("run clock probe: %w", err)
	}
	if err := c.jiffies.Get(&jiffies); err != nil {
		return 0, 0, fmt.Errorf("read clock probe: %w", err)
	}
	if err := c.monotonic.Get(&ns); err != nil {
		return 0, 0, fmt.Errorf("read clock probe: %w", err)
	}
	return jiffies, ns, nil
}

// clockReading converts the programs' times as of one reading.
type clockReading struct {
	wall time.Time // when the reading was taken
	ns   uint64    // CLOCK_MONOTONIC then
	j    uint64    // jiffies then
	tick time.Duration
}

func (c *clock) read() (clockReading, error) {
	j, ns, err := c.sample()
	return clockReading{wall: time.Now(), ns: ns, j: j, tick: c.tick}, err
}

// mono turns CLOCK_MONOTONIC ns into a time.
func (r clockReading) mono(ns uint64) time.Time {
	return r.wall.Add(-time.Duration(int64(r.ns) - int64(ns)))
}

// jiffies turns jiffies into a time, to the tick.
func (r clockReading) jiffies(j uint64) time.Time {
	return r.wall.Add(-time.Duration(int64(r.j)-int64(j)) * r.tick)
}
