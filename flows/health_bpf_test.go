package flows

import (
	"testing"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"

	"github.com/flowmap/flowmap/internal/testenv"
)

// healthSum is a direction's health_stats summed over the CPUs, without
// its times.
type healthSum struct {
	Syns, SynRetries, Accepts, Refusals, Resets, Unreachable, TimeExceeded uint32
	RTTSamples                                                             uint32
}

// sumHealth reads the health map of half a (b false) or b.
func sumHealth(t testing.TB, objs *bpfObjects, b bool) map[bpfFlowKey]healthSum {
	t.Helper()
	m := objs.HealthA
	if b {
		m = objs.HealthB
	}
	out := map[bpfFlowKey]healthSum{}
	var (
		k bpfFlowKey
		v bpfHealthStats
	)
	it := m.Iterate()
	for it.Next(&k, &v) {
		var s healthSum
		{
			s.Syns += v.Syns
			s.SynRetries += v.SynRetries
			s.Accepts += v.Accepts
			s.Refusals += v.Refusals
			s.Resets += v.Resets
			s.Unreachable += v.Unreachable
			s.TimeExceeded += v.TimeExceeded
			s.RTTSamples += v.RttSamples
		}
		out[k] = s
	}
	if err := it.Err(); err != nil {
		t.Fatalf("iterate %v: %v", m, err)
	}
	return out
}

// sumAllHealth is sumHealth with what the drain adds to it (see
// halfopen.go): the handshake health folded into the half's flow entries
// and, for half a (b false), the attempts waiting in half_open.
func sumAllHealth(t testing.TB, objs *bpfObjects, b bool) map[bpfFlowKey]healthSum {
	t.Helper()
	out := sumHealth(t, objs, b)
	add := func(k bpfFlowKey, f func(*healthSum)) {
		s := out[k]
		f(&s)
		out[k] = s
	}
	h := halfA(objs)
	if b {
		h = halfB(objs)
	}
	v4, v6 := h.maps()
	var v bpfFlowStats
	fold := func(k bpfFlowKey) {
		if v.Syns|v.SynRetries|uint16(v.Accepts) != 0 {
			add(k, func(s *healthSum) {
				s.Syns += uint32(v.Syns)
				s.SynRetries += uint32(v.SynRetries)
				s.Accepts += uint32(v.Accepts)
			})
		}
	}
	var k4 bpfFlowKey4
	it := v4.Iterate()
	for it.Next(&k4, &v) {
		fold(k4.mapped())
	}
	if err := it.Err(); err != nil {
		t.Fatalf("iterate %v: %v", v4, err)
	}
	var k bpfFlowKey
	it = v6.Iterate()
	for it.Next(&k, &v) {
		fold(k)
	}
	if err := it.Err(); err != nil {
		t.Fatalf("iterate %v: %v", v6, err)
	}
	if b {
		return out
	}
	var a bpfAttempt
	it = objs.HalfOpen.Iterate()
	for it.Next(&k, &a) {
		add(k, func(s *healthSum) { s.Syns += a.Syns; s.SynRetries += a.Retries })
		if a.Accepts+a.Refusals > 0 {
			add(reverse(k), func(s *healthSum) { s.Accepts += uint32(a.Accepts); s.Refusals += uint32(a.Refusals) })
		}
	}
	if err := it.Err(); err != nil {
		t.Fatalf("iterate half_open: %v", err)
	}
	return out
}

// icmpErrorL is the payload of an ICMP error quoting frame's IP packet
// (frame without its 14-byte Ethernet header): its IP header and the
// first 8 bytes after it, as RFC 792 asks (Linux quotes more; the
// programs read no further).
func icmpErrorL(frame []byte, ipLen int) gopacket.Payload {
	return gopacket.Payload(frame[14 : 14+ipLen+8])
}

func TestBPFHealth(t *testing.T) {
	testenv.MustBeRoot(t)
	testenv.MustHaveBTF(t)
	objs := loadTestObjects(t, 0)
	hooks := testHooks(t, objs)
	ingress, egress, xdp := hooks[0], hooks[1], hooks[2]

	type family struct {
		name             string
		cli, srv, router string
		eth              layers.EthernetType
		ip               func(src, dst string, p layers.IPProtocol) gopacket.SerializableLayer
		ipLen            int
		icmp             func(typ, code uint8) []gopacket.SerializableLayer
		unreach, ttl     [2]uint8 // type, code: port unreachable; TTL exceeded in transit
		icmpProto        layers.IPProtocol
	}
	families := []family{
		{
			name: "ipv4", cli: "198.51.100.2", srv: "198.51.100.3", router: "198.51.100.1",
			eth:   layers.EthernetTypeIPv4,
			ip:    func(s, d string, p layers.IPProtocol) gopacket.SerializableLayer { return ip4L(s, d, p) },
			ipLen: 20,
			icmp: func(typ, code uint8) []gopacket.SerializableLayer {
				return []gopacket.SerializableLayer{&layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(typ, code)}}
			},
			unreach: [2]uint8{3, 3}, ttl: [2]uint8{11, 0}, icmpProto: layers.IPProtocolICMPv4,
		},
		{
			name: "ipv6", cli: "2001:db8::2", srv: "2001:db8::3", router: "2001:db8::1",
			eth:   layers.EthernetTypeIPv6,
			ip:    func(s, d string, p layers.IPProtocol) gopacket.SerializableLayer { return ip6L(s, d, p) },
			ipLen: 40,
			icmp: func(typ, code uint8) []gopacket.SerializableLayer {
				// The 4 unused bytes of an ICMPv6 error, then the quote.
				return []gopacket.SerializableLayer{&layers.ICMPv6{TypeCode: layers.CreateICMPv6TypeCode(typ, code)}, gopacket.Payload{0, 0, 0, 0}}
			},
			unreach: [2]uint8{1, 4}, ttl: [2]uint8{3, 0}, icmpProto: layers.IPProtocolICMPv6,
		},
	}
	for _, f := range families {
		tcp := func(src, dst string, sport, dport uint16, flags uint16, payload int) []byte {
			ls := []gopacket.SerializableLayer{ethL(f.eth), f.ip(src, dst, layers.IPProtocolTCP), tcpL(sport, dport, flags)}
			if payload > 0 {
				ls = append(ls, payloadL(payload))
			}
			return buildFrame(t, ls...)
		}
		udp := buildFrame(t, ethL(f.eth), f.ip(f.cli, f.srv, layers.IPProtocolUDP), udpL(41000, 5000), payloadL(32))
		icmpErr := func(from string, tc [2]uint8, quoted []byte) []byte {
			ls := []gopacket.SerializableLayer{ethL(f.eth), f.ip(from, f.cli, f.icmpProto)}
			ls = append(ls, f.icmp(tc[0], tc[1])...)
			// The ICMPv4 layer is 8 bytes; ICMPv6's 4, then 4 unused.
			return buildFrame(t, append(ls, icmpErrorL(quoted, f.ipLen))...)
		}
		c2s := flowKey(f.cli, f.srv, 41000, 80, layers.IPProtocolTCP, 0)
		s2c := flowKey(f.srv, f.cli, 80, 41000, layers.IPProtocolTCP, 0)
		udpKey := flowKey(f.cli, f.srv, 41000, 5000, layers.IPProtocolUDP, 0)
		syn := tcp(f.cli, f.srv, 41000, 80, hdrSYN, 0)
		synAck := tcp(f.srv, f.cli, 80, 41000, hdrSYN|hdrACK, 0)
		ack := tcp(f.cli, f.srv, 41000, 80, hdrACK, 0)
		data := tcp(f.cli, f.srv, 41000, 80, hdrACK|hdrPSH, 100)
		rstAck := tcp(f.srv, f.cli, 80, 41000, hdrRST|hdrACK, 0)
		fin := tcp(f.cli, f.srv, 41000, 80, hdrFIN|hdrACK, 0)
		finBack := tcp(f.srv, f.cli, 80, 41000, hdrFIN|hdrACK, 0)

		type step struct {
			hook  hook
			frame []byte
		}
		cases := []struct {
			name  string
			steps []step
			want  map[bpfFlowKey]healthSum
			// pending: the SYN is still waiting for its answer.
			pending bool
		}{
			{
				name:    "SYN then RST",
				steps:   []step{{ingress, syn}, {egress, rstAck}},
				want:    map[bpfFlowKey]healthSum{c2s: {Syns: 1}, s2c: {Refusals: 1}},
				pending: false,
			},
			{
				name:    "SYN, SYN, SYN",
				steps:   []step{{ingress, syn}, {ingress, syn}, {xdp, syn}},
				want:    map[bpfFlowKey]healthSum{c2s: {Syns: 1, SynRetries: 2}},
				pending: true,
			},
			{
				name: "RST after data",
				steps: []step{{ingress, syn}, {egress, synAck}, {ingress, ack}, {ingress, data},
					{egress, rstAck}},
				want: map[bpfFlowKey]healthSum{c2s: {Syns: 1}, s2c: {Accepts: 1, Resets: 1}},
			},
			{
				name:  "ICMP port unreachable quoting a UDP flow",
				steps: []step{{egress, udp}, {ingress, icmpErr(f.srv, f.unreach, udp)}},
				want:  map[bpfFlowKey]healthSum{udpKey: {Unreachable: 1}},
			},
			{
				name:  "ICMP time exceeded quoting a SYN",
				steps: []step{{egress, syn}, {ingress, icmpErr(f.router, f.ttl, syn)}},
				want:  map[bpfFlowKey]healthSum{c2s: {Syns: 1, TimeExceeded: 1}},
				// A time exceeded does not end the handshake: the SYN may
				// be sent again on another route.
				pending: true,
			},
			{
				name: "nothing failed",
				steps: []step{{ingress, syn}, {egress, synAck}, {ingress, ack}, {ingress, data},
					{egress, finBack}, {ingress, fin}, {egress, udp}},
				want: map[bpfFlowKey]healthSum{c2s: {Syns: 1}, s2c: {Accepts: 1}},
			},
		}
		for _, tc := range cases {
			t.Run(f.name+"/"+tc.name, func(t *testing.T) {
				resetObjects(t, objs)
				for _, s := range tc.steps {
					s.hook.run(t, s.frame)
				}
				got := sumAllHealth(t, objs, false)
				for k, w := range tc.want {
					if got[k] != w {
						t.Errorf("health[%s] = %+v, want %+v", keyString(k), got[k], w)
					}
				}
				for k, g := range got {
					if _, ok := tc.want[k]; !ok {
						t.Errorf("health[%s] = %+v, want no entry", keyString(k), g)
					}
				}
				if b := sumAllHealth(t, objs, true); len(b) != 0 {
					t.Errorf("the inactive half has %d entries, want none", len(b))
				}
				// Pending: the attempt waits in half_open, its last SYN
				// unanswered.
				var at bpfAttempt
				err := objs.HalfOpen.Lookup(&c2s, &at)
				if tc.pending && (err != nil || bpfAnswer(at.Answer) != bpfAnswerANSWER_NONE) {
					t.Errorf("half_open[%s]: %+v, %v; want the SYN pending", keyString(c2s), at, err)
				}
				if !tc.pending && err == nil && bpfAnswer(at.Answer) == bpfAnswerANSWER_NONE {
					t.Errorf("half_open[%s]: %+v; want no pending SYN", keyString(c2s), at)
				}
			})
		}
	}
}

// TestBPFHealthOff: with health_on 0 the programs count no health event,
// and the handshake RTT is still taken.
func TestBPFHealthOff(t *testing.T) {
	testenv.MustBeRoot(t)
	testenv.MustHaveBTF(t)
	spec, err := loadBpf()
	if err != nil {
		t.Fatalf("load embedded BPF: %v", err)
	}
	if err := spec.Variables[bpfVarHealthOn].Set(uint8(0)); err != nil {
		t.Fatalf("set health_on: %v", err)
	}
	var objs bpfObjects
	if err := spec.LoadAndAssign(&objs, nil); err != nil {
		t.Fatalf("load BPF objects: %v", err)
	}
	defer objs.Close()
	hooks := testHooks(t, &objs)
	ingress, egress := hooks[0], hooks[1]
	const cli, srv = "198.51.100.2", "198.51.100.3"
	tcp := func(src, dst string, sport, dport uint16, flags uint16) []byte {
		return buildFrame(t, ethL(layers.EthernetTypeIPv4), ip4L(src, dst, layers.IPProtocolTCP), tcpL(sport, dport, flags))
	}
	// The client's ACK completes the handshake: the attempt's RTT goes
	// to the SYN-ACK's direction's entry.
	for _, f := range [][]byte{
		tcp(cli, srv, 41000, 80, hdrSYN), tcp(cli, srv, 41000, 80, hdrSYN), tcp(srv, cli, 80, 41000, hdrSYN|hdrACK),
		tcp(cli, srv, 41000, 80, hdrACK), tcp(srv, cli, 80, 41000, hdrRST|hdrACK),
	} {
		ingress.run(t, f)
	}
	egress.run(t, tcp(srv, cli, 80, 41001, hdrRST|hdrACK))
	if got := sumHealth(t, &objs, false); len(got) != 0 {
		t.Errorf("health_on 0: health map has %v, want nothing", got)
	}
	if got := sumFlows(t, halfA(&objs))[flowKey(srv, cli, 80, 41000, layers.IPProtocolTCP, 0)].SynRTT; got == 0 {
		t.Errorf("health_on 0: no handshake RTT on the SYN-ACK's direction")
	}
}
