package flows

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"runtime"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/btf"
	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/flowmap/flowmap/internal/testenv"
	"github.com/flowmap/flowmap/model"
)

// These tests run the programs of bpf/flow.c through BPF_PROG_TEST_RUN
// (ebpf.Program.Run) on frames built with gopacket, and read what they
// counted back from the maps.
//
// What BPF_PROG_TEST_RUN cannot reach, so these tests do not cover:
//   - frames shorter than an Ethernet header: the kernel refuses a test run
//     of fewer than 14 bytes with EINVAL, for XDP too (even when XDP metadata
//     takes the first bytes of the input);
//   - through TC, an IPv4 or IPv6 frame cut inside its IP header: the skb
//     test run refuses it with EINVAL (seen on Linux 6.18), so such frames
//     run through XDP, and through TC behind an 802.1Q tag, which the
//     kernel does not look behind;
//   - a VLAN tag taken off into skb metadata (vlan_present, vlan_tci): the
//     kernel does not take them from the __sk_buff context;
//   - tcp_retransmit, kfree_skb and tcp_probe: tp_btf programs have no
//     test run (the end-to-end tests cover them).

// TCP flag bits as they are in the TCP header (RFC 9293), with NS (RFC 3540)
// in bit 8, which is how flow_stats.tcp_flags holds them; above them,
// flow.c adds model.FlagSYNOnly and model.FlagSYNACK.
const (
	hdrFIN = 0x01
	hdrSYN = 0x02
	hdrRST = 0x04
	hdrPSH = 0x08
	hdrACK = 0x10
	hdrURG = 0x20
	hdrECE = 0x40
	hdrCWR = 0x80
	hdrNS  = 0x100
)

// segFlags is what flow.c records for segments with these header flags:
// their OR, and for a SYN whether it came with an ACK.
func segFlags(segs ...uint16) uint16 {
	var f uint16
	for _, s := range segs {
		f |= s
		switch {
		case s&hdrSYN != 0 && s&hdrACK != 0:
			f |= model.FlagSYNACK
		case s&hdrSYN != 0:
			f |= model.FlagSYNOnly
		}
	}
	return f
}

var (
	testMACA = net.HardwareAddr{0x02, 0xf1, 0x0f, 0x00, 0x00, 0x0a}
	testMACB = net.HardwareAddr{0x02, 0xf1, 0x0f, 0x00, 0x00, 0x0b}
)

// loadTestObjects loads the programs and maps, with each flow map
// and L7 map holding maxFlows entries (0 keeps the object's size), and
// closes them when t ends.
func loadTestObjects(t testing.TB, maxFlows uint32) *bpfObjects {
	t.Helper()
	spec, err := loadBpf()
	if err != nil {
		t.Fatalf("load embedded BPF: %v", err)
	}
	if maxFlows > 0 {
		sizeMaps(spec, maxFlows, maxFlows)
	}
	var objs bpfObjects
	if err := spec.LoadAndAssign(&objs, nil); err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			t.Fatalf("load BPF objects: %+v", ve)
		}
		t.Fatalf("load BPF objects: %v", err)
	}
	t.Cleanup(func() {
		if err := objs.Close(); err != nil {
			t.Errorf("close BPF objects: %v", err)
		}
	})
	return &objs
}

// resetObjects empties every hash map, zeroes the counters and makes the
// _a maps the active half, so that each case starts from a freshly loaded
// state. (The watched array is left to the test that fills it.)
func resetObjects(t testing.TB, objs *bpfObjects) {
	t.Helper()
	clearMap[bpfFlowKey4](t, objs.Flows4A)
	clearMap[bpfFlowKey4](t, objs.Flows4B)
	clearMap[bpfFlowKey](t, objs.Flows6A)
	clearMap[bpfFlowKey](t, objs.Flows6B)
	clearMap[bpfFlowKey](t, objs.HalfOpen)
	clearMap[bpfFlowKey4](t, objs.Seen4)
	clearMap[bpfFlowKey](t, objs.Seen6)
	clearMap[uint32](t, objs.WatchedHi)
	clearMap[bpfFlowKey4](t, objs.L7s4A)
	clearMap[bpfFlowKey4](t, objs.L7s4B)
	clearMap[bpfFlowKey](t, objs.L7s6A)
	clearMap[bpfFlowKey](t, objs.L7s6B)
	clearMap[bpfL7PendingKey4](t, objs.L7Pending4)
	clearMap[bpfL7PendingKey](t, objs.L7Pending6)
	clearMap[bpfFlowKey](t, objs.HealthA)
	clearMap[bpfFlowKey](t, objs.HealthB)
	clearMap[bpfDropKey](t, objs.DropsA)
	clearMap[bpfDropKey](t, objs.DropsB)
	ncpu := mustPossibleCPUs(t)
	for i := range uint32(bpfL7LossL7LOSS_MAX * l7Protos) {
		if err := objs.L7Lost.Put(i, make([]uint64, ncpu)); err != nil {
			t.Fatalf("zero l7_lost %d: %v", i, err)
		}
	}
	for half := range uint32(2) {
		if err := objs.FlowCache.Put(half, make([]bpfCacheSlot, ncpu)); err != nil {
			t.Fatalf("empty flow cache %d: %v", half, err)
		}
	}
	for i := range uint32(bpfCounterCOUNTER_MAX) {
		if err := objs.Counters.Put(i, make([]uint64, ncpu)); err != nil {
			t.Fatalf("zero counter %d: %v", i, err)
		}
	}
	if err := objs.ActiveBuf.Set(uint32(0)); err != nil {
		t.Fatalf("set active_buf to 0: %v", err)
	}
}

// clearMap deletes every key of a hash map.
func clearMap[K any](t testing.TB, m *ebpf.Map) {
	t.Helper()
	for {
		var k K
		err := m.NextKey(nil, &k)
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return
		}
		if err != nil {
			t.Fatalf("first key of %v: %v", m, err)
		}
		if err := m.Delete(&k); err != nil {
			t.Fatalf("delete from %v: %v", m, err)
		}
	}
}

// kernelStruct returns the layout of a struct in the running kernel's BTF.
func kernelStruct(t testing.TB, name string) *btf.Struct {
	t.Helper()
	spec, err := btf.LoadKernelSpec()
	if err != nil {
		t.Fatalf("load kernel BTF: %v", err)
	}
	var s *btf.Struct
	if err := spec.TypeByName(name, &s); err != nil {
		t.Fatalf("struct %s in kernel BTF: %v", name, err)
	}
	return s
}

// progContext returns the context struct name (__sk_buff, xdp_md) as a
// BPF_PROG_TEST_RUN input, with the named __u32 fields set. The layout is
// the running kernel's, read from its BTF: bpf2go cannot generate
// __sk_buff (its pointer members), and a hand-written mirror of it would
// be one more thing to keep in step with the kernel.
func progContext(t testing.TB, name string, fields map[string]uint32) []byte {
	t.Helper()
	s := kernelStruct(t, name)
	buf := make([]byte, s.Size)
	for field, v := range fields {
		i := 0
		for i < len(s.Members) && s.Members[i].Name != field {
			i++
		}
		if i == len(s.Members) {
			t.Fatalf("struct %s has no field %s", name, field)
		}
		m := s.Members[i]
		if size, err := btf.Sizeof(m.Type); err != nil || size != 4 || m.BitfieldSize != 0 {
			t.Fatalf("field %s.%s is not a __u32 (size %d, %v)", name, field, size, err)
		}
		binary.NativeEndian.PutUint32(buf[m.Offset.Bytes():], v)
	}
	return buf
}

// kernelEnum returns the value of an enumerator in the running kernel's
// BTF, such as XDP_PASS of enum xdp_action.
func kernelEnum(t testing.TB, enum, name string) uint32 {
	t.Helper()
	spec, err := btf.LoadKernelSpec()
	if err != nil {
		t.Fatalf("load kernel BTF: %v", err)
	}
	var e *btf.Enum
	if err := spec.TypeByName(enum, &e); err != nil {
		t.Fatalf("enum %s in kernel BTF: %v", enum, err)
	}
	for _, v := range e.Values {
		if v.Name == name {
			return uint32(v.Value)
		}
	}
	t.Fatalf("enum %s has no %s", enum, name)
	return 0
}

// loopbackIndex is the index of lo in the test's namespace: a test run of
// a TC program gets it as skb->ifindex, and an XDP test run as
// ingress_ifindex, unless the context names another device.
func loopbackIndex(t testing.TB) uint32 {
	t.Helper()
	lo, err := net.InterfaceByName("lo")
	if err != nil {
		t.Fatalf("find lo: %v", err)
	}
	return uint32(lo.Index)
}

// coarseNow is CLOCK_MONOTONIC_COARSE in nanoseconds, the clock of
// bpf_ktime_get_coarse_ns, which stamps first and last seen.
func coarseNow(t testing.TB) uint64 {
	t.Helper()
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC_COARSE, &ts); err != nil {
		t.Fatalf("read CLOCK_MONOTONIC_COARSE: %v", err)
	}
	return uint64(ts.Nano())
}

// monoNow is CLOCK_MONOTONIC in nanoseconds, the clock of
// bpf_ktime_get_ns, which times handshakes.
func monoNow(t testing.TB) uint64 {
	t.Helper()
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		t.Fatalf("read CLOCK_MONOTONIC: %v", err)
	}
	return uint64(ts.Nano())
}

// hook is one program with how it is run and what it returns and records.
type hook struct {
	name  string
	prog  *ebpf.Program
	ret   uint32
	point bpfPoint
}

// testHooks returns the three packet programs as the kernel would run them
// for a packet the host did not receive through a watched interface.
func testHooks(t testing.TB, objs *bpfObjects) []hook {
	t.Helper()
	unspec := int32(netlink.TC_ACT_UNSPEC) // -1: the program's return value as a uint32
	tcUnspec := uint32(unspec)
	return []hook{
		{"tc_ingress", objs.TcIngress, tcUnspec, bpfPointPOINT_TC_INGRESS},
		{"tc_egress", objs.TcEgress, tcUnspec, bpfPointPOINT_TC_EGRESS},
		{"xdp_ingress", objs.XdpIngress, kernelEnum(t, "xdp_action", "XDP_PASS"), bpfPointPOINT_XDP},
	}
}

// run runs h once on frame and fails t unless the program returns what the
// hook should and leaves the frame as it was.
func (h hook) run(t testing.TB, frame []byte) {
	t.Helper()
	h.runCtx(t, frame, nil)
}

// runCtx is run with a context (from progContext); nil is none.
func (h hook) runCtx(t testing.TB, frame, ctx []byte) {
	t.Helper()
	opts := ebpf.RunOptions{Data: frame, DataOut: make([]byte, len(frame)+256)}
	if ctx != nil {
		opts.Context = ctx
	}
	ret, err := h.prog.Run(&opts)
	if err != nil {
		t.Fatalf("run %s on %d bytes: %v", h.name, len(frame), err)
	}
	if ret != h.ret {
		t.Errorf("%s returned %#x, want %#x", h.name, ret, h.ret)
	}
	if !bytes.Equal(opts.DataOut, frame) {
		t.Errorf("%s changed the frame:\ngot  %x\nwant %x", h.name, opts.DataOut, frame)
	}
}

// buildFrame serializes layers with lengths and checksums fixed; TCP, UDP
// and ICMPv6 checksums cover the IP layer before them.
func buildFrame(t testing.TB, ls ...gopacket.SerializableLayer) []byte {
	t.Helper()
	var ip gopacket.NetworkLayer
	for _, l := range ls {
		switch l := l.(type) {
		case *layers.IPv4:
			ip = l
		case *layers.IPv6:
			ip = l
		case *layers.TCP:
			l.SetNetworkLayerForChecksum(ip)
		case *layers.UDP:
			l.SetNetworkLayerForChecksum(ip)
		case *layers.ICMPv6:
			l.SetNetworkLayerForChecksum(ip)
		}
	}
	buf := gopacket.NewSerializeBuffer()
	opts := gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}
	if err := gopacket.SerializeLayers(buf, opts, ls...); err != nil {
		t.Fatalf("serialize %d layers: %v", len(ls), err)
	}
	return bytes.Clone(buf.Bytes())
}

func ethL(typ layers.EthernetType) *layers.Ethernet {
	return &layers.Ethernet{SrcMAC: testMACA, DstMAC: testMACB, EthernetType: typ}
}

func vlanL(id uint16, typ layers.EthernetType) *layers.Dot1Q {
	// Priority and DEI set, so that a key that kept the whole TCI shows.
	return &layers.Dot1Q{Priority: 5, DropEligible: true, VLANIdentifier: id, Type: typ}
}

func ip4L(src, dst string, proto layers.IPProtocol) *layers.IPv4 {
	return &layers.IPv4{
		Version: 4, TTL: 64, Id: 0x1234, Flags: layers.IPv4DontFragment, Protocol: proto,
		SrcIP: netip.MustParseAddr(src).AsSlice(), DstIP: netip.MustParseAddr(dst).AsSlice(),
	}
}

func ip6L(src, dst string, next layers.IPProtocol) *layers.IPv6 {
	return &layers.IPv6{
		Version: 6, HopLimit: 64, NextHeader: next,
		SrcIP: netip.MustParseAddr(src).AsSlice(), DstIP: netip.MustParseAddr(dst).AsSlice(),
	}
}

func tcpL(sport, dport uint16, flags uint16) *layers.TCP {
	return &layers.TCP{
		SrcPort: layers.TCPPort(sport), DstPort: layers.TCPPort(dport), Seq: 1000, Ack: 2000, Window: 64240,
		FIN: flags&hdrFIN != 0, SYN: flags&hdrSYN != 0, RST: flags&hdrRST != 0, PSH: flags&hdrPSH != 0,
		ACK: flags&hdrACK != 0, URG: flags&hdrURG != 0, ECE: flags&hdrECE != 0, CWR: flags&hdrCWR != 0,
		NS: flags&hdrNS != 0,
	}
}

func udpL(sport, dport uint16) *layers.UDP {
	return &layers.UDP{SrcPort: layers.UDPPort(sport), DstPort: layers.UDPPort(dport)}
}

// payloadL is n bytes of payload that do not start with zeros, so that a
// program that read them as ports would not find 0.
func payloadL(n int) gopacket.Payload {
	p := make([]byte, n)
	for i := range p {
		p[i] = byte(0xa5 + i)
	}
	return p
}

// flowKey is the key of a flow direction: IPv4 addresses IPv4-mapped.
func flowKey(src, dst string, sport, dport uint16, proto layers.IPProtocol, vlan uint16) bpfFlowKey {
	return bpfFlowKey{
		Saddr: netip.MustParseAddr(src).As16(), Daddr: netip.MustParseAddr(dst).As16(),
		Sport: sport, Dport: dport, Proto: uint8(proto), Vlan: vlan,
	}
}

func keyString(k bpfFlowKey) string {
	s := netip.AddrPortFrom(netip.AddrFrom16(k.Saddr).Unmap(), k.Sport)
	d := netip.AddrPortFrom(netip.AddrFrom16(k.Daddr).Unmap(), k.Dport)
	return fmt.Sprintf("proto %d %v > %v vlan %d pad %d", k.Proto, s, d, k.Vlan, k.Pad)
}

// flowSum is a flow direction's entry, with what the CPUs' cache slots
// hold of it.
type flowSum struct {
	Bytes       uint64
	Packets     uint64
	TCPFlags    uint16
	Point       bpfPoint
	Ifindex     uint32
	SynRTT      uint64
	Retransmits uint32
	First       uint64 // first_ns
	Last        uint64 // the latest last_jiffies of the entry's and the slots'
}

// flowHalf is one half of the double buffer: the _a maps or the _b maps.
type flowHalf struct {
	objs *bpfObjects
	b    bool
}

func halfA(objs *bpfObjects) flowHalf { return flowHalf{objs, false} }
func halfB(objs *bpfObjects) flowHalf { return flowHalf{objs, true} }

func (h flowHalf) String() string {
	if h.b {
		return "flows4_b/flows6_b"
	}
	return "flows4_a/flows6_a"
}

func mustPossibleCPUs(t testing.TB) int {
	t.Helper()
	n, err := ebpf.PossibleCPU()
	if err != nil {
		t.Fatalf("count possible CPUs: %v", err)
	}
	return n
}

// cacheSlots returns each CPU's flow cache slot of the half.
func (h flowHalf) cacheSlots(t testing.TB) []bpfCacheSlot {
	t.Helper()
	var idx uint32
	if h.b {
		idx = 1
	}
	var slots []bpfCacheSlot
	if err := h.objs.FlowCache.Lookup(idx, &slots); err != nil {
		t.Fatalf("read flow cache %d: %v", idx, err)
	}
	return slots
}

func (h flowHalf) maps() (v4, v6 *ebpf.Map) {
	if h.b {
		return h.objs.Flows4B, h.objs.Flows6B
	}
	return h.objs.Flows4A, h.objs.Flows6A
}

// v4 returns the IPv4 key of an IPv4-mapped key.
func (k bpfFlowKey) v4() (bpfFlowKey4, bool) {
	var prefix [12]byte
	prefix[10], prefix[11] = 0xff, 0xff
	if [12]byte(k.Saddr[:12]) != prefix || [12]byte(k.Daddr[:12]) != prefix {
		return bpfFlowKey4{}, false
	}
	return bpfFlowKey4{
		Saddr: binary.NativeEndian.Uint32(k.Saddr[12:]),
		Daddr: binary.NativeEndian.Uint32(k.Daddr[12:]),
		Sport: k.Sport, Dport: k.Dport, Proto: k.Proto, Vlan: k.Vlan,
	}, true
}

// sumFlows reads both flow maps of a half, and adds to each IPv4
// direction what the CPUs' cache slots hold of it, with IPv4 keys mapped
// as the drain maps them. It fails t where an entry is inconsistent:
// packets without a time or a point, or a time or a point without packets.
func sumFlows(t testing.TB, h flowHalf) map[bpfFlowKey]flowSum {
	t.Helper()
	out := map[bpfFlowKey]flowSum{}
	v4, v6 := h.maps()
	var k4 bpfFlowKey4
	var v bpfFlowStats
	it := v4.Iterate()
	for it.Next(&k4, &v) {
		out[k4.mapped()] = entrySum(t, k4.mapped(), v)
	}
	if err := it.Err(); err != nil {
		t.Fatalf("iterate %v: %v", v4, err)
	}
	// What the CPUs' cache slots counted of their flows, not yet in the
	// map: a cached flow always has its entry there.
	for cpu, c := range h.cacheSlots(t) {
		if c.Valid == 0 {
			continue
		}
		k := c.Key.mapped()
		s, ok := out[k]
		if !ok {
			t.Errorf("%v: CPU %d caches %s, which has no entry", h, cpu, keyString(k))
		}
		s.Bytes += c.Bytes
		s.Packets += c.Packets
		s.TCPFlags |= c.TcpFlags
		s.Last = max(s.Last, c.LastJiffies)
		out[k] = s
	}
	var k bpfFlowKey
	it = v6.Iterate()
	for it.Next(&k, &v) {
		if _, ok := k.v4(); ok {
			t.Errorf("%v: IPv4 flow %s in the IPv6 map", v6, keyString(k))
		}
		out[k] = entrySum(t, k, v)
	}
	if err := it.Err(); err != nil {
		t.Fatalf("iterate %v: %v", v6, err)
	}
	return out
}

// entrySum returns the flow map entry v of k as a flowSum.
func entrySum(t testing.TB, k bpfFlowKey, v bpfFlowStats) flowSum {
	t.Helper()
	s := flowSum{Bytes: v.Bytes, Packets: v.Packets, TCPFlags: v.TcpFlags, Retransmits: v.Retransmits,
		SynRTT: v.SynRttNs, Point: bpfPoint(v.Point), Ifindex: v.Ifindex, First: v.FirstNs, Last: v.LastJiffies}
	if v.Packets == 0 {
		if v.Point != 0 || v.FirstNs != 0 || v.LastJiffies != 0 {
			t.Errorf("%s: no packets but point %d, first_ns %d, last_jiffies %d",
				keyString(k), v.Point, v.FirstNs, v.LastJiffies)
		}
		return s
	}
	if v.FirstNs == 0 || v.LastJiffies == 0 || v.Point == 0 {
		t.Errorf("%s: first_ns %d, last_jiffies %d, point %d, want all set",
			keyString(k), v.FirstNs, v.LastJiffies, v.Point)
	}
	return s
}

// addHeld adds to flows the attempts waiting in half_open (see
// handshake.h), as the drain would count them: the client's SYNs, and the
// server's answer, on their directions.
func addHeld(t testing.TB, objs *bpfObjects, flows map[bpfFlowKey]flowSum) {
	t.Helper()
	add := func(k bpfFlowKey, v flowSum) {
		s, ok := flows[k]
		if !ok {
			flows[k] = v
			return
		}
		s.Bytes += v.Bytes
		s.Packets += v.Packets
		s.TCPFlags |= v.TCPFlags
		s.Retransmits += v.Retransmits
		s.SynRTT = max(s.SynRTT, v.SynRTT)
		if s.First == 0 || v.First != 0 && v.First < s.First {
			s.First, s.Point, s.Ifindex = v.First, v.Point, v.Ifindex
		}
		s.Last = max(s.Last, v.Last)
		flows[k] = s
	}
	var (
		k bpfFlowKey
		a bpfAttempt
	)
	it := objs.HalfOpen.Iterate()
	for it.Next(&k, &a) {
		add(k, flowSum{Bytes: a.Bytes, Packets: a.Packets, TCPFlags: a.TcpFlags, Retransmits: a.Retransmits,
			Point: bpfPoint(a.Point), Ifindex: a.Ifindex, First: a.FirstNs, Last: a.LastJiffies})
		if a.AnsPackets > 0 {
			add(reverse(k), flowSum{Bytes: a.AnsBytes, Packets: a.AnsPackets, TCPFlags: a.AnsFlags, SynRTT: a.RttNs,
				Point: bpfPoint(a.AnsPoint), Ifindex: a.AnsIfindex, First: a.AnsFirstNs, Last: a.AnsLastJiffies})
		}
	}
	if err := it.Err(); err != nil {
		t.Fatalf("iterate half_open: %v", err)
	}
}

// jiffiesSince returns the jiffies now, and a jiffy count no later than
// CLOCK_MONOTONIC ns since: a jiffy lasts at least 1 ms (HZ <= 1000).
func jiffiesSince(t testing.TB, objs *bpfObjects, since uint64) (from, now uint64) {
	t.Helper()
	c := &clock{probe: objs.ClockProbe, jiffies: objs.ProbeJiffies, monotonic: objs.ProbeNs}
	j, ns, err := c.sample()
	if err != nil {
		t.Fatalf("sample the clocks: %v", err)
	}
	back := (ns-min(since, ns))/uint64(time.Millisecond) + 1
	return j - min(back, j), j
}

// checkFlows compares a half's flow maps with want field by field, and
// checks that every direction was first seen between before and after
// (CLOCK_MONOTONIC ns; before may be read from the coarse clock, which
// lags) and last seen at a jiffy in that span.
func checkFlows(t testing.TB, h flowHalf, want map[bpfFlowKey]flowSum, before, after uint64) {
	t.Helper()
	got := sumFlows(t, h)
	if !h.b {
		addHeld(t, h.objs, got)
	}
	jFrom, jNow := jiffiesSince(t, h.objs, before)
	for k, w := range want {
		g, ok := got[k]
		if !ok {
			t.Errorf("%v: no entry for %s", h, keyString(k))
			continue
		}
		delete(got, k)
		if g.First < before || g.First > after {
			t.Errorf("%s: first_ns %d, want within [%d, %d]", keyString(k), g.First, before, after)
		}
		if g.Last < jFrom || g.Last > jNow {
			t.Errorf("%s: last_jiffies %d, want within [%d, %d]", keyString(k), g.Last, jFrom, jNow)
		}
		g.First, g.Last = 0, 0
		if g != w {
			t.Errorf("%s:\ngot  %+v\nwant %+v", keyString(k), g, w)
		}
	}
	for k, g := range got {
		t.Errorf("%v: unexpected entry %s: %+v", h, keyString(k), g)
	}
}

var counterNames = map[bpfCounter]string{
	bpfCounterCOUNTER_MAP_FULL_PACKETS: "map_full_packets",
	bpfCounterCOUNTER_MAP_FULL_BYTES:   "map_full_bytes",
	bpfCounterCOUNTER_NON_IP:           "non_ip",
	bpfCounterCOUNTER_MALFORMED:        "malformed",
}

// sumCounters reads the counters map summed over the CPUs.
func sumCounters(t testing.TB, objs *bpfObjects) map[bpfCounter]uint64 {
	t.Helper()
	out := map[bpfCounter]uint64{}
	for i := range bpfCounterCOUNTER_MAX {
		var percpu []uint64
		if err := objs.Counters.Lookup(uint32(i), &percpu); err != nil {
			t.Fatalf("read counter %d: %v", i, err)
		}
		for _, v := range percpu {
			out[i] += v
		}
	}
	return out
}

// checkCounters compares every counter with want; counters not in want
// must be 0.
func checkCounters(t testing.TB, objs *bpfObjects, want map[bpfCounter]uint64) {
	t.Helper()
	got := sumCounters(t, objs)
	for i := range bpfCounterCOUNTER_MAX {
		// The half-open counters are the half-open tests' (and the
		// SYNs counted there are in checkFlows's flows).
		if _, half := want[i]; !half && i >= bpfCounterCOUNTER_HALF_OPEN_NEW && i <= bpfCounterCOUNTER_HALF_OPEN_PROMOTED_BYTES {
			continue
		}
		if got[i] != want[i] {
			t.Errorf("counter %s (%d) = %d, want %d", counterNames[i], i, got[i], want[i])
		}
	}
}

// parseCase is a frame and what one run of a packet program on it counts.
// want has only bytes, packets and TCP flags: the point and interface are
// the hook's.
type parseCase struct {
	name     string
	frame    []byte
	want     map[bpfFlowKey]flowSum
	counters map[bpfCounter]uint64
	xdpOnly  bool // the skb test run refuses the frame
}

// one is the flow map after one frame of k with these TCP header flags.
func one(k bpfFlowKey, frame []byte, flags uint16) map[bpfFlowKey]flowSum {
	return map[bpfFlowKey]flowSum{k: {Bytes: uint64(len(frame)), Packets: 1, TCPFlags: segFlags(flags)}}
}

// ipv6ExtMax is IPV6_EXT_MAX (bpf/headers/parse.h): the IPv6 extension
// headers that parse walks.
const ipv6ExtMax = 32

// ipv6DstOpts is n destination options headers of 8 bytes, the last
// followed by last.
func ipv6DstOpts(n int, last layers.IPProtocol) gopacket.Payload {
	var b gopacket.Payload
	for i := range n {
		next := byte(layers.IPProtocolIPv6Destination)
		if i == n-1 {
			next = byte(last)
		}
		b = append(b, next, 0, 1, 4, 0, 0, 0, 0) // PadN of 4 bytes
	}
	return b
}

func parseCases(t *testing.T) []parseCase {
	const (
		a4, b4, c4 = "198.51.100.2", "198.51.100.3", "203.0.113.7"
		a6, b6     = "2001:db8::2", "2001:db8::3"
	)
	var cs []parseCase
	add := func(name string, frame []byte, want map[bpfFlowKey]flowSum, counters map[bpfCounter]uint64) {
		cs = append(cs, parseCase{name: name, frame: frame, want: want, counters: counters})
	}
	malformed := map[bpfCounter]uint64{bpfCounterCOUNTER_MALFORMED: 1}
	nonIP := map[bpfCounter]uint64{bpfCounterCOUNTER_NON_IP: 1}

	f := buildFrame(t, ethL(layers.EthernetTypeIPv4), ip4L(a4, b4, layers.IPProtocolTCP),
		tcpL(40000, 80, hdrPSH|hdrACK), payloadL(100))
	add("tcp4", f, one(flowKey(a4, b4, 40000, 80, layers.IPProtocolTCP, 0), f, hdrPSH|hdrACK), nil)

	f = buildFrame(t, ethL(layers.EthernetTypeIPv4), ip4L(a4, b4, layers.IPProtocolTCP),
		tcpL(40001, 443, hdrNS|hdrCWR|hdrECE|hdrURG|hdrRST|hdrFIN))
	add("tcp4 all flags but SYN ACK PSH", f,
		one(flowKey(a4, b4, 40001, 443, layers.IPProtocolTCP, 0), f, hdrNS|hdrCWR|hdrECE|hdrURG|hdrRST|hdrFIN), nil)

	tcpOpts := tcpL(40002, 22, hdrSYN)
	tcpOpts.Options = []layers.TCPOption{
		{OptionType: layers.TCPOptionKindMSS, OptionLength: 4, OptionData: []byte{0x05, 0xb4}},
		{OptionType: layers.TCPOptionKindSACKPermitted, OptionLength: 2},
		{OptionType: layers.TCPOptionKindWindowScale, OptionLength: 3, OptionData: []byte{7}},
	}
	f = buildFrame(t, ethL(layers.EthernetTypeIPv4), ip4L(a4, b4, layers.IPProtocolTCP), tcpOpts)
	add("tcp4 syn with options", f, one(flowKey(a4, b4, 40002, 22, layers.IPProtocolTCP, 0), f, hdrSYN), nil)

	ipOpts := ip4L(c4, b4, layers.IPProtocolUDP)
	ipOpts.Options = []layers.IPv4Option{{OptionType: 148, OptionLength: 4, OptionData: []byte{0, 0}}} // router alert
	f = buildFrame(t, ethL(layers.EthernetTypeIPv4), ipOpts, udpL(5000, 6000), payloadL(20))
	if ihl := f[14] & 0x0f; ihl != 6 {
		t.Fatalf("IPv4 header with one option: ihl %d, want 6", ihl)
	}
	add("udp4 ip options", f, one(flowKey(c4, b4, 5000, 6000, layers.IPProtocolUDP, 0), f, 0), nil)

	f = buildFrame(t, ethL(layers.EthernetTypeIPv4), ip4L(c4, b4, layers.IPProtocolUDP), udpL(53, 33000), payloadL(60))
	add("udp4", f, one(flowKey(c4, b4, 53, 33000, layers.IPProtocolUDP, 0), f, 0), nil)

	f = buildFrame(t, ethL(layers.EthernetTypeIPv4), ip4L(a4, b4, layers.IPProtocolICMPv4),
		&layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(layers.ICMPv4TypeEchoRequest, 0), Id: 7, Seq: 1}, payloadL(56))
	add("icmp4 echo request", f, one(flowKey(a4, b4, layers.ICMPv4TypeEchoRequest, 0, layers.IPProtocolICMPv4, 0), f, 0), nil)

	f = buildFrame(t, ethL(layers.EthernetTypeIPv4), ip4L(b4, a4, layers.IPProtocolICMPv4),
		&layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(layers.ICMPv4TypeDestinationUnreachable, layers.ICMPv4CodePort)},
		payloadL(28))
	add("icmp4 port unreachable", f, one(flowKey(b4, a4, layers.ICMPv4TypeDestinationUnreachable,
		layers.ICMPv4CodePort, layers.IPProtocolICMPv4, 0), f, 0), nil)

	frag := ip4L(c4, a4, layers.IPProtocolUDP)
	frag.Flags, frag.FragOffset = 0, 185
	f = buildFrame(t, ethL(layers.EthernetTypeIPv4), frag, payloadL(100))
	add("udp4 later fragment", f, one(flowKey(c4, a4, 0, 0, layers.IPProtocolUDP, 0), f, 0), nil)

	frag = ip4L(c4, a4, layers.IPProtocolUDP)
	frag.Flags = layers.IPv4MoreFragments
	f = buildFrame(t, ethL(layers.EthernetTypeIPv4), frag, udpL(4789, 4789), payloadL(100))
	add("udp4 first fragment", f, one(flowKey(c4, a4, 4789, 4789, layers.IPProtocolUDP, 0), f, 0), nil)

	f = buildFrame(t, ethL(layers.EthernetTypeIPv4), ip4L(a4, c4, layers.IPProtocolSCTP), payloadL(48))
	add("sctp4 no ports parsed", f, one(flowKey(a4, c4, 0, 0, layers.IPProtocolSCTP, 0), f, 0), nil)

	f = buildFrame(t, ethL(layers.EthernetTypeIPv6), ip6L(a6, b6, layers.IPProtocolTCP),
		tcpL(50000, 443, hdrACK), payloadL(200))
	add("tcp6", f, one(flowKey(a6, b6, 50000, 443, layers.IPProtocolTCP, 0), f, hdrACK), nil)

	f = buildFrame(t, ethL(layers.EthernetTypeIPv6), ip6L(b6, a6, layers.IPProtocolUDP), udpL(53, 50001), payloadL(90))
	add("udp6", f, one(flowKey(b6, a6, 53, 50001, layers.IPProtocolUDP, 0), f, 0), nil)

	f = buildFrame(t, ethL(layers.EthernetTypeIPv6), ip6L(a6, b6, layers.IPProtocolICMPv6),
		&layers.ICMPv6{TypeCode: layers.CreateICMPv6TypeCode(layers.ICMPv6TypeEchoRequest, 0)},
		&layers.ICMPv6Echo{Identifier: 9, SeqNumber: 1}, payloadL(56))
	add("icmp6 echo request", f, one(flowKey(a6, b6, layers.ICMPv6TypeEchoRequest, 0, layers.IPProtocolICMPv6, 0), f, 0), nil)

	f = buildFrame(t, ethL(layers.EthernetTypeIPv6), ip6L(b6, a6, layers.IPProtocolICMPv6),
		&layers.ICMPv6{TypeCode: layers.CreateICMPv6TypeCode(layers.ICMPv6TypeDestinationUnreachable, layers.ICMPv6CodePortUnreachable)},
		payloadL(52))
	add("icmp6 port unreachable", f, one(flowKey(b6, a6, layers.ICMPv6TypeDestinationUnreachable,
		layers.ICMPv6CodePortUnreachable, layers.IPProtocolICMPv6, 0), f, 0), nil)

	// Options that fill their header to a multiple of 8 bytes: gopacket
	// v1.1.19 pads them wrong.
	routerAlert := []*layers.IPv6HopByHopOption{
		{OptionType: 5, OptionLength: 2, OptionData: []byte{0, 0}}, // router alert
		{OptionType: 1, OptionData: []byte{}},                      // PadN of 2 bytes
	}
	hbh := &layers.IPv6HopByHop{Options: routerAlert}
	hbh.NextHeader = layers.IPProtocolTCP
	f = buildFrame(t, ethL(layers.EthernetTypeIPv6), ip6L(a6, b6, layers.IPProtocolIPv6HopByHop), hbh,
		tcpL(50002, 8080, hdrSYN), payloadL(10))
	add("tcp6 hop-by-hop", f, one(flowKey(a6, b6, 50002, 8080, layers.IPProtocolTCP, 0), f, hdrSYN), nil)

	// A destination options header of 24 bytes (length field 2), so that
	// its length, not only its presence, decides where TCP starts.
	dst := &layers.IPv6Destination{Options: []*layers.IPv6DestinationOption{
		{OptionType: 0x1e, OptionLength: 18, OptionData: make([]byte, 18)},
		{OptionType: 1, OptionData: []byte{}}, // PadN of 2 bytes
	}}
	dst.NextHeader = layers.IPProtocolUDP
	f = buildFrame(t, ethL(layers.EthernetTypeIPv6), ip6L(a6, b6, layers.IPProtocolIPv6Destination), dst,
		udpL(50003, 9000), payloadL(30))
	if got := f[14+40+1]; got != 2 {
		t.Fatalf("destination options length field %d, want 2", got)
	}
	add("udp6 destination options", f, one(flowKey(a6, b6, 50003, 9000, layers.IPProtocolUDP, 0), f, 0), nil)

	// Three extension headers of three kinds: hop-by-hop,
	// destination options and the fragment header of a first fragment.
	hbh3 := &layers.IPv6HopByHop{Options: routerAlert}
	hbh3.NextHeader = layers.IPProtocolIPv6Destination
	dst3 := &layers.IPv6Destination{Options: []*layers.IPv6DestinationOption{
		{OptionType: 0x1e, OptionLength: 4, OptionData: make([]byte, 4)},
	}}
	dst3.NextHeader = layers.IPProtocolIPv6Fragment
	fragHdr := gopacket.Payload{byte(layers.IPProtocolUDP), 0, 0x00, 0x01, 0xde, 0xad, 0xbe, 0xef} // offset 0, M
	f = buildFrame(t, ethL(layers.EthernetTypeIPv6), ip6L(b6, a6, layers.IPProtocolIPv6HopByHop), hbh3, dst3,
		fragHdr, udpL(50004, 4500), payloadL(40))
	add("udp6 three extension headers", f, one(flowKey(b6, a6, 50004, 4500, layers.IPProtocolUDP, 0), f, 0), nil)

	// Eight destination options headers of 8 bytes before UDP: the
	// flow's own ports and protocol, as with one.
	f = buildFrame(t, ethL(layers.EthernetTypeIPv6), ip6L(a6, b6, layers.IPProtocolIPv6Destination),
		ipv6DstOpts(8, layers.IPProtocolUDP), udpL(50006, 4789), payloadL(20))
	add("udp6 eight extension headers", f, one(flowKey(a6, b6, 50006, 4789, layers.IPProtocolUDP, 0), f, 0), nil)
	f = buildFrame(t, ethL(layers.EthernetTypeIPv6), ip6L(a6, b6, layers.IPProtocolIPv6Destination),
		ipv6DstOpts(ipv6ExtMax, layers.IPProtocolTCP), tcpL(50007, 443, hdrSYN))
	add("tcp6 the most extension headers walked", f, one(flowKey(a6, b6, 50007, 443, layers.IPProtocolTCP, 0), f, hdrSYN), nil)
	// One more is too many: counted under the header's protocol, ports
	// 0, and as truncated.
	f = buildFrame(t, ethL(layers.EthernetTypeIPv6), ip6L(a6, b6, layers.IPProtocolIPv6Destination),
		ipv6DstOpts(ipv6ExtMax+1, layers.IPProtocolTCP), tcpL(50008, 443, hdrSYN))
	add("tcp6 too many extension headers", f, one(flowKey(a6, b6, 0, 0, layers.IPProtocolIPv6Destination, 0), f, 0),
		map[bpfCounter]uint64{bpfCounterCOUNTER_TRUNCATED: 1})

	// A later IPv6 fragment (offset 1480): ports 0, as for IPv4.
	laterFrag := gopacket.Payload{byte(layers.IPProtocolUDP), 0, 0x05, 0xc8, 0xde, 0xad, 0xbe, 0xef}
	f = buildFrame(t, ethL(layers.EthernetTypeIPv6), ip6L(a6, b6, layers.IPProtocolIPv6Fragment), laterFrag, payloadL(100))
	add("udp6 later fragment", f, one(flowKey(a6, b6, 0, 0, layers.IPProtocolUDP, 0), f, 0), nil)

	f = buildFrame(t, ethL(layers.EthernetTypeDot1Q), vlanL(100, layers.EthernetTypeIPv4),
		ip4L(a4, c4, layers.IPProtocolUDP), udpL(1234, 5678), payloadL(40))
	add("udp4 802.1Q", f, one(flowKey(a4, c4, 1234, 5678, layers.IPProtocolUDP, 100), f, 0), nil)

	f = buildFrame(t, ethL(layers.EthernetTypeQinQ), vlanL(4094, layers.EthernetTypeIPv6),
		ip6L(b6, a6, layers.IPProtocolTCP), tcpL(443, 50005, hdrACK|hdrFIN))
	add("tcp6 802.1ad", f, one(flowKey(b6, a6, 443, 50005, layers.IPProtocolTCP, 4094), f, hdrACK|hdrFIN), nil)

	// Malformed and non-IP frames.
	full := buildFrame(t, ethL(layers.EthernetTypeIPv4), ip4L(a4, b4, layers.IPProtocolTCP),
		tcpL(40010, 80, hdrACK), payloadL(20))
	add("ethernet header only", full[:14], nil, malformed)
	cs[len(cs)-1].xdpOnly = true
	add("ipv4 header cut", full[:14+19], nil, malformed)
	cs[len(cs)-1].xdpOnly = true
	f = full[:14+20+10]
	add("tcp header cut", f, one(flowKey(a4, b4, 0, 0, layers.IPProtocolTCP, 0), f, 0), malformed)
	f = bytes.Clone(full)
	f[14] = 0x44 // version 4, ihl 4
	add("ipv4 ihl 4", f, nil, malformed)
	f = bytes.Clone(full)
	f[14] = 0x40 // ihl 0
	add("ipv4 ihl 0", f, nil, malformed)

	full = buildFrame(t, ethL(layers.EthernetTypeIPv4), ip4L(c4, b4, layers.IPProtocolUDP), udpL(53, 33001), payloadL(20))
	f = full[:14+20+7]
	add("udp header cut", f, one(flowKey(c4, b4, 0, 0, layers.IPProtocolUDP, 0), f, 0), malformed)

	full = buildFrame(t, ethL(layers.EthernetTypeIPv4), ip4L(a4, b4, layers.IPProtocolICMPv4),
		&layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(layers.ICMPv4TypeEchoRequest, 0)})
	f = full[:14+20+3]
	add("icmp4 header cut", f, one(flowKey(a4, b4, 0, 0, layers.IPProtocolICMPv4, 0), f, 0), malformed)

	full = buildFrame(t, ethL(layers.EthernetTypeIPv6), ip6L(a6, b6, layers.IPProtocolTCP), tcpL(50010, 80, hdrACK))
	add("ipv6 header cut", full[:14+39], nil, malformed)
	cs[len(cs)-1].xdpOnly = true
	f = full[:14+40+19]
	add("tcp6 header cut", f, one(flowKey(a6, b6, 0, 0, layers.IPProtocolTCP, 0), f, 0), malformed)

	full = buildFrame(t, ethL(layers.EthernetTypeIPv6), ip6L(a6, b6, layers.IPProtocolIPv6HopByHop), hbh,
		tcpL(50011, 80, hdrACK))
	f = full[:14+40+1]
	add("ipv6 extension header cut", f,
		one(flowKey(a6, b6, 0, 0, layers.IPProtocolIPv6HopByHop, 0), f, 0), malformed)

	full = buildFrame(t, ethL(layers.EthernetTypeDot1Q), vlanL(7, layers.EthernetTypeIPv4),
		ip4L(a4, b4, layers.IPProtocolUDP), udpL(1, 2))
	add("802.1Q tag cut", full[:14+3], nil, malformed)
	add("802.1Q ipv4 header cut", full[:14+4+19], nil, malformed)
	add("802.1Q tag only", full[:14+4], nil, malformed)
	full = buildFrame(t, ethL(layers.EthernetTypeDot1Q), vlanL(7, layers.EthernetTypeIPv6),
		ip6L(a6, b6, layers.IPProtocolUDP), udpL(1, 2))
	add("802.1Q ipv6 header cut", full[:14+4+39], nil, malformed)

	f = buildFrame(t, ethL(layers.EthernetTypeARP), &layers.ARP{
		AddrType: layers.LinkTypeEthernet, Protocol: layers.EthernetTypeIPv4, HwAddressSize: 6, ProtAddressSize: 4,
		Operation: layers.ARPRequest, SourceHwAddress: testMACA, SourceProtAddress: net.ParseIP(a4).To4(),
		DstHwAddress: make([]byte, 6), DstProtAddress: net.ParseIP(b4).To4(),
	})
	add("arp", f, nil, nonIP)
	f = buildFrame(t, ethL(layers.EthernetTypeLinkLayerDiscovery), payloadL(46))
	add("lldp", f, nil, nonIP)
	add("garbage ones", bytes.Repeat([]byte{0xff}, 64), nil, nonIP)
	add("garbage zeros", make([]byte, 64), nil, nonIP)
	return cs
}

func TestBPFParse(t *testing.T) {
	testenv.MustBeRoot(t)
	testenv.MustHaveBTF(t)
	objs := loadTestObjects(t, 0)
	lo := loopbackIndex(t)
	cases := parseCases(t)
	for _, h := range testHooks(t, objs) {
		for _, tc := range cases {
			if tc.xdpOnly && h.point != bpfPointPOINT_XDP {
				continue
			}
			t.Run(h.name+"/"+tc.name, func(t *testing.T) {
				resetObjects(t, objs)
				before := coarseNow(t)
				h.run(t, tc.frame)
				after := monoNow(t)
				want := map[bpfFlowKey]flowSum{}
				for k, w := range tc.want {
					w.Point, w.Ifindex = h.point, lo
					want[k] = w
				}
				checkFlows(t, halfA(objs), want, before, after)
				checkFlows(t, halfB(objs), nil, 0, 0)
				checkCounters(t, objs, tc.counters)
			})
		}
	}
}

// TestBPFGarbage runs random frames through the programs: each must return
// its verdict, leave the frame alone, and land in exactly one of: a flow,
// non_ip, malformed.
func TestBPFGarbage(t *testing.T) {
	testenv.MustBeRoot(t)
	testenv.MustHaveBTF(t)
	objs := loadTestObjects(t, 0)
	const frames = 300
	ethertypes := []uint16{0x0800, 0x86dd, 0x8100, 0x88a8, 0x0806}
	for _, h := range testHooks(t, objs) {
		t.Run(h.name, func(t *testing.T) {
			resetObjects(t, objs)
			rng := rand.New(rand.NewPCG(1, 2)) // the same frames every run
			var wantBytes uint64
			for range frames {
				// The skb test run refuses IP frames shorter than their
				// header; VLAN-tagged ones make short IP headers here.
				f := make([]byte, 14+40+rng.IntN(100))
				for i := range f {
					f[i] = byte(rng.Uint32())
				}
				if et := rng.IntN(len(ethertypes) + 1); et < len(ethertypes) {
					binary.BigEndian.PutUint16(f[12:], ethertypes[et])
				}
				// IP headers mostly of the right version, so that parsing goes on.
				switch binary.BigEndian.Uint16(f[12:]) {
				case 0x0800:
					f[14] = 0x40 | f[14]&0x0f
				case 0x86dd:
					f[14] = 0x60 | f[14]&0x0f
				}
				h.run(t, f)
				wantBytes += uint64(len(f))
			}
			var packets, bytes uint64
			for _, s := range sumFlows(t, halfA(objs)) {
				packets += s.Packets
				bytes += s.Bytes
			}
			c := sumCounters(t, objs)
			nonIP, malformed := c[bpfCounterCOUNTER_NON_IP], c[bpfCounterCOUNTER_MALFORMED]
			// A truncated L4 header is counted and malformed, so only
			// bounds hold: packets + non_ip <= frames <= that + malformed.
			if packets+nonIP > frames || packets+nonIP+malformed < frames {
				t.Errorf("%d frames: %d counted packets, %d non_ip, %d malformed; want packets+non_ip <= %d <= packets+non_ip+malformed",
					frames, packets, nonIP, malformed, frames)
			}
			if bytes > wantBytes {
				t.Errorf("%d frames of %d bytes: counted %d bytes", frames, wantBytes, bytes)
			}
			if packets == 0 || nonIP == 0 || malformed == 0 {
				t.Errorf("random frames made %d packets, %d non_ip, %d malformed; want some of each", packets, nonIP, malformed)
			}
		})
	}
}

func TestBPFGSO(t *testing.T) {
	testenv.MustBeRoot(t)
	testenv.MustHaveBTF(t)
	objs := loadTestObjects(t, 0)
	lo := loopbackIndex(t)
	tsOpt := []layers.TCPOption{ // doff 8: 12 bytes of options
		{OptionType: layers.TCPOptionKindNop}, {OptionType: layers.TCPOptionKindNop},
		{OptionType: layers.TCPOptionKindTimestamps, OptionLength: 10, OptionData: make([]byte, 8)},
	}
	tcpTS := tcpL(40000, 5201, hdrPSH|hdrACK)
	tcpTS.Options = tsOpt
	hbh := &layers.IPv6HopByHop{Options: []*layers.IPv6HopByHopOption{
		{OptionType: 5, OptionLength: 2, OptionData: []byte{0, 0}}, {OptionType: 1, OptionData: []byte{}},
	}}
	hbh.NextHeader = layers.IPProtocolTCP
	const mss = 600
	cases := []struct {
		name    string
		layers  []gopacket.SerializableLayer // headers only: the payload is added
		payload int
		segs    uint32
		key     bpfFlowKey
		flags   uint16
	}{
		{
			name:    "tcp4 4 segments",
			layers:  []gopacket.SerializableLayer{ethL(layers.EthernetTypeIPv4), ip4L("198.51.100.2", "198.51.100.3", layers.IPProtocolTCP), tcpL(40000, 5201, hdrACK)},
			payload: 4 * mss, segs: 4,
			key:   flowKey("198.51.100.2", "198.51.100.3", 40000, 5201, layers.IPProtocolTCP, 0),
			flags: hdrACK,
		},
		{
			name:    "tcp4 timestamps 3 segments",
			layers:  []gopacket.SerializableLayer{ethL(layers.EthernetTypeIPv4), ip4L("198.51.100.2", "198.51.100.3", layers.IPProtocolTCP), tcpTS},
			payload: 3*mss - 100, segs: 3,
			key:   flowKey("198.51.100.2", "198.51.100.3", 40000, 5201, layers.IPProtocolTCP, 0),
			flags: hdrPSH | hdrACK,
		},
		{
			name: "tcp6 802.1Q hop-by-hop 5 segments",
			layers: []gopacket.SerializableLayer{ethL(layers.EthernetTypeDot1Q), vlanL(42, layers.EthernetTypeIPv6),
				ip6L("2001:db8::2", "2001:db8::3", layers.IPProtocolIPv6HopByHop), hbh, tcpL(40001, 5201, hdrACK)},
			payload: 5 * 500, segs: 5,
			key:   flowKey("2001:db8::2", "2001:db8::3", 40001, 5201, layers.IPProtocolTCP, 42),
			flags: hdrACK,
		},
		{
			name:    "udp4 GSO 2 segments",
			layers:  []gopacket.SerializableLayer{ethL(layers.EthernetTypeIPv4), ip4L("203.0.113.7", "198.51.100.3", layers.IPProtocolUDP), udpL(443, 50000)},
			payload: 2 * 1200, segs: 2,
			key: flowKey("203.0.113.7", "198.51.100.3", 443, 50000, layers.IPProtocolUDP, 0),
		},
		{
			name:    "gso_segs 1",
			layers:  []gopacket.SerializableLayer{ethL(layers.EthernetTypeIPv4), ip4L("198.51.100.2", "198.51.100.3", layers.IPProtocolTCP), tcpL(40002, 5201, hdrACK)},
			payload: mss, segs: 1,
			key:   flowKey("198.51.100.2", "198.51.100.3", 40002, 5201, layers.IPProtocolTCP, 0),
			flags: hdrACK,
		},
		{
			name:    "gso_segs 0 counts one",
			layers:  []gopacket.SerializableLayer{ethL(layers.EthernetTypeIPv4), ip4L("198.51.100.2", "198.51.100.3", layers.IPProtocolTCP), tcpL(40003, 5201, hdrACK)},
			payload: mss, segs: 0,
			key:   flowKey("198.51.100.2", "198.51.100.3", 40003, 5201, layers.IPProtocolTCP, 0),
			flags: hdrACK,
		},
	}
	for _, h := range testHooks(t, objs)[:2] { // XDP sees no GSO
		for _, tc := range cases {
			t.Run(h.name+"/"+tc.name, func(t *testing.T) {
				resetObjects(t, objs)
				frame := buildFrame(t, append(tc.layers, payloadL(tc.payload))...)
				hdrLen := uint64(len(frame) - tc.payload)
				ctx := progContext(t, "__sk_buff", map[string]uint32{"gso_segs": tc.segs, "gso_size": mss})
				before := coarseNow(t)
				h.runCtx(t, frame, ctx)
				after := monoNow(t)
				segs := uint64(max(tc.segs, 1))
				want := flowSum{
					Bytes:    uint64(len(frame)) + (segs-1)*hdrLen,
					Packets:  segs,
					TCPFlags: segFlags(tc.flags),
					Point:    h.point,
					Ifindex:  lo,
				}
				checkFlows(t, halfA(objs), map[bpfFlowKey]flowSum{tc.key: want}, before, after)
				checkCounters(t, objs, nil)
			})
		}
	}
}

func TestBPFEgressSkip(t *testing.T) {
	testenv.MustBeRoot(t)
	testenv.MustHaveBTF(t)
	objs := loadTestObjects(t, 0)
	lo := loopbackIndex(t)
	hooks := testHooks(t, objs)
	ingress, egress := hooks[0], hooks[1]
	// Interface indexes as the agent puts them in watched; the test run
	// needs no such device, it only sets skb_iif.
	const watchedIf, otherIf = 1001, 1002
	frame := buildFrame(t, ethL(layers.EthernetTypeIPv4), ip4L("203.0.113.7", "198.51.100.3", layers.IPProtocolTCP),
		tcpL(443, 40000, hdrACK), payloadL(64))
	key := flowKey("203.0.113.7", "198.51.100.3", 443, 40000, layers.IPProtocolTCP, 0)
	cases := []struct {
		name    string
		hook    hook
		iif     uint32
		counted bool
	}{
		{"egress of a packet the host sent", egress, 0, true},
		{"egress after a watched ingress", egress, watchedIf, false},
		{"egress after an unwatched ingress", egress, otherIf, true},
		{"ingress does not look at watched", ingress, watchedIf, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			resetObjects(t, objs)
			if err := objs.Watched.Put(uint32(watchedIf), uint32(1)); err != nil {
				t.Fatalf("watch %d: %v", watchedIf, err)
			}
			t.Cleanup(func() { objs.Watched.Put(uint32(watchedIf), uint32(0)) })
			ctx := progContext(t, "__sk_buff", map[string]uint32{"ingress_ifindex": tc.iif})
			before := coarseNow(t)
			tc.hook.runCtx(t, frame, ctx)
			after := monoNow(t)
			want := map[bpfFlowKey]flowSum{}
			if tc.counted {
				want[key] = flowSum{Bytes: uint64(len(frame)), Packets: 1, TCPFlags: hdrACK, Point: tc.hook.point, Ifindex: lo}
			}
			checkFlows(t, halfA(objs), want, before, after)
			checkFlows(t, halfB(objs), nil, 0, 0)
			checkCounters(t, objs, nil)
		})
	}
}

// TestBPFSeen checks that a TCP flow direction's first frame in a half
// notes it in the seen maps, which the retransmit tracepoint reads (it has
// no test run: TestRetransmits runs it), and that other protocols' do not.
func TestBPFSeen(t *testing.T) {
	testenv.MustBeRoot(t)
	testenv.MustHaveBTF(t)
	objs := loadTestObjects(t, 0)
	const a4, b4, a6, b6 = "198.51.100.2", "198.51.100.3", "2001:db8::2", "2001:db8::3"
	tcp4 := flowKey(a4, b4, 40000, 443, layers.IPProtocolTCP, 0)
	udp4 := flowKey(a4, b4, 40001, 4789, layers.IPProtocolUDP, 0)
	tcp6 := flowKey(a6, b6, 40002, 443, layers.IPProtocolTCP, 0)
	frames := [][]byte{
		buildFrame(t, ethL(layers.EthernetTypeIPv4), ip4L(a4, b4, layers.IPProtocolTCP), tcpL(40000, 443, hdrACK)),
		buildFrame(t, ethL(layers.EthernetTypeIPv4), ip4L(a4, b4, layers.IPProtocolUDP), udpL(40001, 4789), payloadL(10)),
		buildFrame(t, ethL(layers.EthernetTypeIPv6), ip6L(a6, b6, layers.IPProtocolTCP), tcpL(40002, 443, hdrACK)),
	}
	for _, h := range testHooks(t, objs) {
		t.Run(h.name, func(t *testing.T) {
			resetObjects(t, objs)
			for _, f := range frames {
				h.run(t, f)
			}
			var v uint8
			k4, _ := tcp4.v4()
			if err := objs.Seen4.Lookup(k4, &v); err != nil {
				t.Errorf("seen4 %s: %v, want noted", keyString(tcp4), err)
			}
			k4, _ = udp4.v4()
			if err := objs.Seen4.Lookup(k4, &v); err == nil {
				t.Errorf("seen4 %s: noted, want not (UDP)", keyString(udp4))
			}
			if err := objs.Seen6.Lookup(tcp6, &v); err != nil {
				t.Errorf("seen6 %s: %v, want noted", keyString(tcp6), err)
			}
		})
	}
}

func TestBPFDoubleBuffer(t *testing.T) {
	testenv.MustBeRoot(t)
	testenv.MustHaveBTF(t)
	objs := loadTestObjects(t, 0)
	lo := loopbackIndex(t)
	frame := buildFrame(t, ethL(layers.EthernetTypeIPv4), ip4L("198.51.100.2", "198.51.100.3", layers.IPProtocolUDP),
		udpL(7000, 7001), payloadL(30))
	key := flowKey("198.51.100.2", "198.51.100.3", 7000, 7001, layers.IPProtocolUDP, 0)
	for _, h := range testHooks(t, objs) {
		// Each step sets active_buf, sends one frame and says how many
		// frames each half holds since the start.
		steps := []struct {
			active uint32
			a, b   uint64
		}{{0, 1, 0}, {1, 1, 1}, {1, 1, 2}, {0, 2, 2}}
		t.Run(h.name, func(t *testing.T) {
			resetObjects(t, objs)
			before := coarseNow(t)
			for i, s := range steps {
				if err := objs.ActiveBuf.Set(s.active); err != nil {
					t.Fatalf("set active_buf to %d: %v", s.active, err)
				}
				h.run(t, frame)
				after := monoNow(t)
				for _, half := range []struct {
					m flowHalf
					n uint64
				}{{halfA(objs), s.a}, {halfB(objs), s.b}} {
					want := map[bpfFlowKey]flowSum{}
					if half.n > 0 {
						want[key] = flowSum{Bytes: half.n * uint64(len(frame)), Packets: half.n, Point: h.point, Ifindex: lo}
					}
					checkFlows(t, half.m, want, before, after)
				}
				if t.Failed() {
					t.Fatalf("the errors above are after step %d: active_buf %d, one frame", i, s.active)
				}
			}
		})
	}
}

func TestBPFHandshake(t *testing.T) {
	testenv.MustBeRoot(t)
	testenv.MustHaveBTF(t)
	objs := loadTestObjects(t, 0)
	hooks := testHooks(t, objs)
	ingress, egress, xdp := hooks[0], hooks[1], hooks[2]
	const (
		cli4, srv4 = "198.51.100.2", "198.51.100.3"
		cli6, srv6 = "2001:db8::2", "2001:db8::3"
	)
	tcp4 := func(src, dst string, sport, dport uint16, flags uint16) []byte {
		return buildFrame(t, ethL(layers.EthernetTypeIPv4), ip4L(src, dst, layers.IPProtocolTCP), tcpL(sport, dport, flags))
	}
	syn4 := tcp4(cli4, srv4, 41000, 80, hdrSYN)
	synAck4 := tcp4(srv4, cli4, 80, 41000, hdrSYN|hdrACK)
	synKey4 := flowKey(cli4, srv4, 41000, 80, layers.IPProtocolTCP, 0)
	synAckKey4 := flowKey(srv4, cli4, 80, 41000, layers.IPProtocolTCP, 0)
	vlanTCP := func(vlan uint16, src, dst string, sport, dport uint16, flags uint16) []byte {
		return buildFrame(t, ethL(layers.EthernetTypeDot1Q), vlanL(vlan, layers.EthernetTypeIPv6),
			ip6L(src, dst, layers.IPProtocolTCP), tcpL(sport, dport, flags))
	}

	type step struct {
		hook  hook
		frame []byte
		sleep time.Duration // before the step
	}
	ack4 := tcp4(cli4, srv4, 41000, 80, hdrACK)
	cases := []struct {
		name    string
		steps   []step
		synKey  bpfFlowKey // the SYN's direction and half_open key
		rttKey  bpfFlowKey // the SYN-ACK's direction
		wantRTT bool       // the SYN-ACK's direction has the time since the last SYN
		ack     step       // with wantRTT: the client's ACK, which completes the handshake
	}{
		{
			name:   "ipv4",
			steps:  []step{{ingress, syn4, 0}, {egress, synAck4, 2 * time.Millisecond}},
			synKey: synKey4, rttKey: synAckKey4, wantRTT: true, ack: step{ingress, ack4, 0},
		},
		{
			name: "ipv6 802.1Q, SYN at XDP",
			steps: []step{
				{xdp, vlanTCP(9, cli6, srv6, 41001, 443, hdrSYN), 0},
				{ingress, vlanTCP(9, srv6, cli6, 443, 41001, hdrSYN|hdrACK), 2 * time.Millisecond},
			},
			synKey:  flowKey(cli6, srv6, 41001, 443, layers.IPProtocolTCP, 9),
			rttKey:  flowKey(srv6, cli6, 443, 41001, layers.IPProtocolTCP, 9),
			wantRTT: true,
			ack:     step{xdp, vlanTCP(9, cli6, srv6, 41001, 443, hdrACK), 0},
		},
		{
			name: "retransmitted SYN restarts the clock",
			steps: []step{
				{ingress, syn4, 0}, {ingress, syn4, 50 * time.Millisecond}, {egress, synAck4, 2 * time.Millisecond},
			},
			synKey: synKey4, rttKey: synAckKey4, wantRTT: true, ack: step{ingress, ack4, 0},
		},
		{
			name:   "SYN-ACK of another connection",
			steps:  []step{{ingress, syn4, 0}, {egress, tcp4(srv4, cli4, 80, 41999, hdrSYN|hdrACK), 0}},
			synKey: synKey4, rttKey: flowKey(srv4, cli4, 80, 41999, layers.IPProtocolTCP, 0),
		},
		{
			name: "SYN-ACK on another VLAN",
			steps: []step{
				{ingress, vlanTCP(9, cli6, srv6, 41002, 443, hdrSYN), 0},
				{egress, vlanTCP(10, srv6, cli6, 443, 41002, hdrSYN|hdrACK), 0},
			},
			synKey: flowKey(cli6, srv6, 41002, 443, layers.IPProtocolTCP, 9),
			rttKey: flowKey(srv6, cli6, 443, 41002, layers.IPProtocolTCP, 10),
		},
		{
			name:   "ACK is no SYN-ACK",
			steps:  []step{{ingress, syn4, 0}, {egress, tcp4(srv4, cli4, 80, 41000, hdrACK), 0}},
			synKey: synKey4, rttKey: synAckKey4,
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			resetObjects(t, objs)
			// lastSyn is when the last SYN's run started; synAck when the
			// SYN-ACK's run ended: the RTT lies between them.
			var lastSynStart, lastSynEnd, replyStart, replyEnd uint64
			for i, s := range tc.steps {
				time.Sleep(s.sleep)
				start := monoNow(t)
				s.hook.run(t, s.frame)
				end := monoNow(t)
				if i == len(tc.steps)-1 {
					replyStart, replyEnd = start, end
					break
				}
				lastSynStart, lastSynEnd = start, end
				var at bpfAttempt
				if err := objs.HalfOpen.Lookup(&tc.synKey, &at); err != nil {
					t.Fatalf("after SYN %d: half_open[%s]: %v", i, keyString(tc.synKey), err)
				}
				if at.SynNs < start || at.SynNs > end {
					t.Errorf("after SYN %d: half_open[%s] last SYN at %d, want within [%d, %d]", i, keyString(tc.synKey), at.SynNs, start, end)
				}
			}
			if tc.wantRTT {
				// The SYN-ACK waits with its attempt until the client's
				// next packet moves both to the flow maps.
				if got := sumFlows(t, halfA(objs)); len(got) != 0 {
					t.Errorf("after the SYN-ACK: flow entries %v, want none before the client's ACK", got)
				}
				tc.ack.hook.run(t, tc.ack.frame)
			}
			var at bpfAttempt
			err := objs.HalfOpen.Lookup(&tc.synKey, &at)
			switch {
			case tc.wantRTT && !errors.Is(err, ebpf.ErrKeyNotExist):
				t.Errorf("after the client's ACK: half_open[%s] = %+v, %v; want it moved to the flow maps", keyString(tc.synKey), at, err)
			case !tc.wantRTT && (err != nil || bpfAnswer(at.Answer) != bpfAnswerANSWER_NONE):
				t.Errorf("after an unrelated reply: half_open[%s] = %+v, %v; want it pending", keyString(tc.synKey), at, err)
			}
			flows := sumFlows(t, halfA(objs))
			if got := flows[tc.synKey].SynRTT; got != 0 {
				t.Errorf("SYN direction %s: syn_rtt_ns %d, want 0", keyString(tc.synKey), got)
			}
			reply, ok := flows[tc.rttKey]
			if !ok {
				t.Fatalf("no entry for the reply %s", keyString(tc.rttKey))
			}
			if !tc.wantRTT {
				if reply.SynRTT != 0 {
					t.Errorf("reply %s: syn_rtt_ns %d, want 0", keyString(tc.rttKey), reply.SynRTT)
				}
				return
			}
			lo, hi := replyStart-lastSynEnd, replyEnd-lastSynStart
			if reply.SynRTT < lo || reply.SynRTT > hi {
				t.Errorf("SYN-ACK direction %s: syn_rtt_ns %d, want within [%d, %d] (the last SYN to the SYN-ACK)",
					keyString(tc.rttKey), reply.SynRTT, lo, hi)
			}
		})
	}
}

func TestBPFMapFull(t *testing.T) {
	testenv.MustBeRoot(t)
	testenv.MustHaveBTF(t)
	const maxFlows = 4
	objs := loadTestObjects(t, maxFlows)
	lo := loopbackIndex(t)
	if got := objs.Flows4A.MaxEntries(); got != maxFlows {
		t.Fatalf("flows4_a max_entries %d, want %d", got, maxFlows)
	}
	udp := func(sport uint16, payload int) ([]byte, bpfFlowKey) {
		return buildFrame(t, ethL(layers.EthernetTypeIPv4), ip4L("198.51.100.2", "203.0.113.7", layers.IPProtocolUDP),
				udpL(sport, 53), payloadL(payload)),
			flowKey("198.51.100.2", "203.0.113.7", sport, 53, layers.IPProtocolUDP, 0)
	}
	for _, h := range testHooks(t, objs)[:2] { // the GSO step needs an skb
		t.Run(h.name, func(t *testing.T) {
			resetObjects(t, objs)
			want := map[bpfFlowKey]flowSum{}
			var fullPackets, fullBytes uint64
			before := coarseNow(t)
			// Seven flows of distinct sizes into four entries: the first four
			// get them, the last three are refused and counted.
			for i := range 7 {
				f, k := udp(uint16(20000+i), 10*(i+1))
				h.run(t, f)
				if i < maxFlows {
					want[k] = flowSum{Bytes: uint64(len(f)), Packets: 1, Point: h.point, Ifindex: lo}
				} else {
					fullPackets++
					fullBytes += uint64(len(f))
				}
			}
			// A flow that has its entry still counts in place.
			f, k := udp(20000, 10)
			h.run(t, f)
			w := want[k]
			w.Bytes += uint64(len(f))
			w.Packets++
			want[k] = w
			// A refused GSO skb counts its wire packets and bytes.
			const segs, payload = 3, 3 * 500
			f, _ = udp(20100, payload)
			h.runCtx(t, f, progContext(t, "__sk_buff", map[string]uint32{"gso_segs": segs, "gso_size": 500}))
			fullPackets += segs
			fullBytes += uint64(len(f)) + (segs-1)*uint64(len(f)-payload)
			after := monoNow(t)
			checkFlows(t, halfA(objs), want, before, after)
			checkCounters(t, objs, map[bpfCounter]uint64{
				bpfCounterCOUNTER_MAP_FULL_PACKETS: fullPackets,
				bpfCounterCOUNTER_MAP_FULL_BYTES:   fullBytes,
			})
			// The other half is as big and empty: flipping makes room.
			if err := objs.ActiveBuf.Set(uint32(1)); err != nil {
				t.Fatalf("set active_buf to 1: %v", err)
			}
			before = coarseNow(t)
			f, k = udp(20006, 70)
			h.run(t, f)
			checkFlows(t, halfB(objs), map[bpfFlowKey]flowSum{k: {Bytes: uint64(len(f)), Packets: 1, Point: h.point, Ifindex: lo}},
				before, monoNow(t))
		})
	}
}

func TestBPFRepeated(t *testing.T) {
	testenv.MustBeRoot(t)
	testenv.MustHaveBTF(t)
	objs := loadTestObjects(t, 0)
	lo := loopbackIndex(t)
	const cli, srv = "198.51.100.2", "198.51.100.3"
	tcp := func(src, dst string, sport, dport, flags uint16, payload int) []byte {
		return buildFrame(t, ethL(layers.EthernetTypeIPv4), ip4L(src, dst, layers.IPProtocolTCP),
			tcpL(sport, dport, flags), payloadL(payload))
	}
	udp6 := func(payload int) []byte {
		return buildFrame(t, ethL(layers.EthernetTypeIPv6), ip6L("2001:db8::2", "2001:db8::3", layers.IPProtocolUDP),
			udpL(5000, 5001), payloadL(payload))
	}
	up := flowKey(cli, srv, 42000, 80, layers.IPProtocolTCP, 0)
	down := flowKey(srv, cli, 80, 42000, layers.IPProtocolTCP, 0)
	cases := []struct {
		name   string
		frames [][]byte
		keys   []bpfFlowKey // of each frame
		flags  []uint16     // of each frame
	}{
		{
			name: "tcp one direction",
			frames: [][]byte{
				tcp(cli, srv, 42000, 80, hdrSYN, 0), tcp(cli, srv, 42000, 80, hdrACK, 0),
				tcp(cli, srv, 42000, 80, hdrPSH|hdrACK, 300), tcp(cli, srv, 42000, 80, hdrFIN|hdrACK, 0),
			},
			keys:  []bpfFlowKey{up, up, up, up},
			flags: []uint16{hdrSYN, hdrACK, hdrPSH | hdrACK, hdrFIN | hdrACK},
		},
		{
			name: "tcp both directions stay apart",
			frames: [][]byte{
				tcp(cli, srv, 42000, 80, hdrPSH|hdrACK, 100), tcp(srv, cli, 80, 42000, hdrACK, 0),
				tcp(srv, cli, 80, 42000, hdrPSH|hdrACK, 1400), tcp(cli, srv, 42000, 80, hdrACK, 0),
				tcp(srv, cli, 80, 42000, hdrRST, 0),
			},
			keys:  []bpfFlowKey{up, down, down, up, down},
			flags: []uint16{hdrPSH | hdrACK, hdrACK, hdrPSH | hdrACK, hdrACK, hdrRST},
		},
		{
			name:   "udp6 sizes",
			frames: [][]byte{udp6(1), udp6(100), udp6(1000), udp6(10), udp6(1400)},
			keys: func() []bpfFlowKey {
				k := flowKey("2001:db8::2", "2001:db8::3", 5000, 5001, layers.IPProtocolUDP, 0)
				return []bpfFlowKey{k, k, k, k, k}
			}(),
			flags: make([]uint16, 5),
		},
	}
	for _, h := range testHooks(t, objs) {
		for _, tc := range cases {
			t.Run(h.name+"/"+tc.name, func(t *testing.T) {
				resetObjects(t, objs)
				want := map[bpfFlowKey]flowSum{}
				before := coarseNow(t)
				for i, f := range tc.frames {
					h.run(t, f)
					w := want[tc.keys[i]]
					w.Bytes += uint64(len(f))
					w.Packets++
					w.TCPFlags |= segFlags(tc.flags[i])
					w.Point, w.Ifindex = h.point, lo
					want[tc.keys[i]] = w
				}
				checkFlows(t, halfA(objs), want, before, monoNow(t))
			})
		}
	}

	// One flow counted on two CPUs: its one entry (with what the CPUs'
	// cache slots hold of it) has every frame of both, first seen at the
	// first frame and last seen at the last.
	t.Run("two CPUs", func(t *testing.T) {
		var cpus unix.CPUSet
		if err := unix.SchedGetaffinity(0, &cpus); err != nil {
			t.Fatalf("read CPU affinity: %v", err)
		}
		var allowed []int
		for c := range 1024 {
			if cpus.IsSet(c) {
				allowed = append(allowed, c)
			}
		}
		if len(allowed) < 2 {
			t.Fatalf("test needs 2 CPUs to run on, has %v", allowed)
		}
		for _, h := range testHooks(t, objs) {
			t.Run(h.name, func(t *testing.T) {
				resetObjects(t, objs)
				frames := [][]byte{tcp(cli, srv, 42000, 80, hdrSYN, 0), tcp(cli, srv, 42000, 80, hdrPSH|hdrACK, 500),
					tcp(cli, srv, 42000, 80, hdrACK, 0)}
				onCPU := []int{allowed[0], allowed[1], allowed[0]}
				// starts[i] (coarse) is before frame i was counted, ends[i]
				// (precise) after.
				starts, ends := make([]uint64, len(frames)), make([]uint64, len(frames))
				errc := make(chan error, 1)
				go func() {
					// The thread keeps its affinity: locked and never unlocked,
					// it ends with this goroutine.
					runtime.LockOSThread()
					errc <- func() error {
						for i, f := range frames {
							var set unix.CPUSet
							set.Set(onCPU[i])
							if err := unix.SchedSetaffinity(0, &set); err != nil {
								return fmt.Errorf("pin to CPU %d: %w", onCPU[i], err)
							}
							var ts unix.Timespec
							if err := unix.ClockGettime(unix.CLOCK_MONOTONIC_COARSE, &ts); err != nil {
								return fmt.Errorf("read CLOCK_MONOTONIC_COARSE: %w", err)
							}
							starts[i] = uint64(ts.Nano())
							ret, err := h.prog.Run(&ebpf.RunOptions{Data: f})
							if err != nil {
								return fmt.Errorf("run %s on CPU %d: %w", h.name, onCPU[i], err)
							}
							if ret != h.ret {
								return fmt.Errorf("%s on CPU %d returned %#x, want %#x", h.name, onCPU[i], ret, h.ret)
							}
							if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
								return fmt.Errorf("read CLOCK_MONOTONIC: %w", err)
							}
							ends[i] = uint64(ts.Nano())
						}
						return nil
					}()
				}()
				if err := <-errc; err != nil {
					t.Fatal(err)
				}
				var s bpfFlowStats
				up4, ok := up.v4()
				if !ok {
					t.Fatalf("%s is not IPv4", keyString(up))
				}
				if err := objs.Flows4A.Lookup(&up4, &s); err != nil {
					t.Fatalf("flows4_a[%s]: %v", keyString(up), err)
				}
				// With what each CPU's cache slot holds of the flow.
				for _, c := range halfA(objs).cacheSlots(t) {
					if c.Valid != 0 && c.Key == up4 {
						s.Bytes += c.Bytes
						s.Packets += c.Packets
						s.TcpFlags |= c.TcpFlags
						s.LastJiffies = max(s.LastJiffies, c.LastJiffies)
					}
				}
				flags := []uint16{hdrSYN, hdrPSH | hdrACK, hdrACK}
				var w bpfFlowStats
				for i := range frames {
					w.Bytes += uint64(len(frames[i]))
					w.Packets++
					w.TcpFlags |= segFlags(flags[i])
				}
				if s.Bytes != w.Bytes || s.Packets != w.Packets || s.TcpFlags != w.TcpFlags ||
					bpfPoint(s.Point) != h.point || s.Ifindex != lo {
					t.Errorf("entry: bytes %d packets %d flags %#x point %d ifindex %d; want %d %d %#x %d %d",
						s.Bytes, s.Packets, s.TcpFlags, s.Point, s.Ifindex, w.Bytes, w.Packets, w.TcpFlags, h.point, lo)
				}
				first, last := 0, len(frames)-1
				if s.FirstNs < starts[first] || s.FirstNs > ends[first] {
					t.Errorf("entry: first_ns %d, want within [%d, %d] (frame %d)", s.FirstNs, starts[first], ends[first], first)
				}
				if from, now := jiffiesSince(t, objs, starts[last]); s.LastJiffies < from || s.LastJiffies > now {
					t.Errorf("entry: last_jiffies %d, want within [%d, %d] (frame %d)", s.LastJiffies, from, now, last)
				}
			})
		}
	})
}

// benchFrame is a 64-byte UDP frame, the smallest Ethernet frame without
// its FCS plus 4 bytes.
func benchFrame(b *testing.B) []byte {
	f := buildFrame(b, ethL(layers.EthernetTypeIPv4), ip4L("198.51.100.2", "198.51.100.3", layers.IPProtocolUDP),
		udpL(40000, 53), payloadL(64-14-20-8))
	if len(f) != 64 {
		b.Fatalf("bench frame of %d bytes, want 64", len(f))
	}
	return f
}

// BenchmarkBPFProgram times the packet programs on a 64-byte UDP frame of
// a flow that has its entry (the common case), and the floors: programs
// that only return TC_ACT_UNSPEC or XDP_PASS. ns/op is the kernel's time per program
// run, averaged over benchRepeat runs per BPF_PROG_TEST_RUN; allocs/op and
// B/op are Go's for one such call.
func BenchmarkBPFProgram(b *testing.B) {
	testenv.MustBeRoot(b)
	testenv.MustHaveBTF(b)
	const benchRepeat = 10000
	objs := loadTestObjects(b, 0)
	floor, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.SchedCLS, License: "GPL", Instructions: probeInsns})
	if err != nil {
		b.Fatalf("load TC floor program: %v", err)
	}
	b.Cleanup(func() { floor.Close() })
	xdpPass := kernelEnum(b, "xdp_action", "XDP_PASS")
	floorXDP, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.XDP, License: "GPL", Instructions: asm.Instructions{
		asm.Mov.Imm(asm.R0, int32(xdpPass)),
		asm.Return(),
	}})
	if err != nil {
		b.Fatalf("load XDP floor program: %v", err)
	}
	b.Cleanup(func() { floorXDP.Close() })
	frame := benchFrame(b)
	for _, bc := range []struct {
		name string
		prog *ebpf.Program
	}{
		{"floor_tc", floor},
		{"tc_ingress", objs.TcIngress},
		{"tc_egress", objs.TcEgress},
		{"floor_xdp", floorXDP},
		{"xdp_ingress", objs.XdpIngress},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			var total time.Duration
			var calls int
			for b.Loop() {
				_, perRun, err := bc.prog.Benchmark(frame, benchRepeat, nil)
				if err != nil {
					b.Fatalf("benchmark %s: %v", bc.name, err)
				}
				total += perRun
				calls++
			}
			b.ReportMetric(float64(total.Nanoseconds())/float64(calls), "ns/op")
		})
	}
}
