package flows

import (
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// natJoin gives both directions of a NATed connection one tuple. The
// counting rule counts a packet where it enters the host: a masqueraded
// container's request at its veth, before the translation, but the reply
// at the NIC, before the reverse translation; a published port's request
// at the NIC, before DNAT, but the container's reply at its veth. Each is
// conntrack's reply tuple of the connection; natJoin moves it to the
// reverse of the original tuple, where the other direction was counted,
// adding to what is there (a packet is counted at one point only, so
// nothing is counted twice). It returns how many directions it moved.
//
// Where the server's end was translated (DNAT: a Service's ClusterIP or
// NodePort, a published port), both directions keep the original tuple,
// what the client dialled, and carry the server that answered as their
// backend. A request counted after DNAT (the host's own, at the egress of
// the interface it leaves by) moves to the original tuple too.
func natJoin(dirs *flowTable, conns []*netlink.ConntrackFlow) int {
	moved := 0
	move := func(from, to bpfFlowKey) {
		if from == to {
			return
		}
		d, ok := dirs.remove(from)
		if !ok {
			return
		}
		dirs.put(to).merge(&d)
		moved++
	}
	for _, c := range conns {
		if c.Forward.Protocol != unix.IPPROTO_TCP && c.Forward.Protocol != unix.IPPROTO_UDP {
			continue
		}
		// The reply tuple: what the answering side sends.
		reply, ok := ctKey(c.Reverse.SrcIP, c.Reverse.DstIP, c.Reverse.SrcPort, c.Reverse.DstPort, c.Forward.Protocol)
		if !ok {
			continue
		}
		// The reverse of the original tuple: the reply as the
		// connection's first packet named the ends.
		want, ok := ctKey(c.Forward.DstIP, c.Forward.SrcIP, c.Forward.DstPort, c.Forward.SrcPort, c.Forward.Protocol)
		if !ok || want == reply {
			continue // not NATed
		}
		move(reply, want)
		if reply.Saddr == want.Saddr && reply.Sport == want.Sport {
			continue // the server's end is as dialled: SNAT only
		}
		orig := reverse(want)
		move(reverse(reply), orig)
		backend := netip.AddrPortFrom(addr(reply.Saddr), reply.Sport)
		for _, k := range []bpfFlowKey{orig, want} {
			if d := dirs.get(k); d != nil {
				d.backend = backend
			}
		}
	}
	return moved
}

// ctKey is the flow key of a conntrack tuple (VLAN 0).
func ctKey(src, dst net.IP, sport, dport uint16, proto uint8) (bpfFlowKey, bool) {
	s, ok1 := netip.AddrFromSlice(src)
	d, ok2 := netip.AddrFromSlice(dst)
	if !ok1 || !ok2 {
		return bpfFlowKey{}, false
	}
	return bpfFlowKey{Saddr: s.As16(), Daddr: d.As16(), Sport: sport, Dport: dport, Proto: proto}, true
}

// merge adds o, counted at another point, to d.
func (d *direction) merge(o *direction) {
	d.Direction.Add(o.Direction)
	if o.first != 0 && (d.first == 0 || o.first < d.first) {
		d.first = o.first
	}
	d.lastJ = max(d.lastJ, o.lastJ)
	d.rtt = max(d.rtt, o.rtt)
	if !d.backend.IsValid() {
		d.backend = o.backend
	}
}
