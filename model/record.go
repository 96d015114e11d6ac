package model

import (
	"fmt"
	"net/netip"
	"strconv"
	"time"
)

// Record is one flow seen in one interval: both directions of a connection
// (or of a UDP or ICMP exchange) joined, oriented client to server.
type Record struct {
	Src   netip.Addr `json:"src"`
	Dst   netip.Addr `json:"dst"`
	Proto Proto      `json:"proto"`
	// SrcPort and DstPort are the ICMP type and code for ICMP and ICMPv6.
	SrcPort uint16 `json:"src_port"`
	DstPort uint16 `json:"dst_port"`
	VLAN    uint16 `json:"vlan,omitempty"`

	// Forward is Src to Dst; Reverse is Dst to Src.
	Forward Direction `json:"forward"`
	Reverse Direction `json:"reverse"`

	FirstSeen time.Time `json:"first_seen"`
	LastSeen  time.Time `json:"last_seen"`
	// HandshakeRTT is the time from the client's SYN to the server's
	// SYN-ACK, where both were counted in this interval.
	HandshakeRTT time.Duration `json:"handshake_rtt_ns,omitempty"`

	// SrcIf and DstIf are the interfaces behind which each end is attached,
	// where flowmap can tell: zero when the end is this host or beyond an
	// interface that flowmap does not watch.
	SrcIf Interface `json:"src_if"`
	DstIf Interface `json:"dst_if"`

	// L7 is what the L7 parsers saw of the flow's messages, nil where
	// they saw none.
	L7 *L7 `json:"l7,omitempty"`

	// Health is the flow's connection outcomes, ICMP errors, drops and
	// RTT samples, nil where there were none (or --health=off).
	Health *Health `json:"health,omitempty"`

	// Backend is the server that answered, where the host translated
	// the address the client dialled (Dst, DstPort) to another: a
	// Service's backend pod behind its ClusterIP or NodePort, a published
	// port's container. conntrack's reply tuple says it at the drain.
	// Zero where nothing was translated, or conntrack was not read.
	Backend netip.AddrPort `json:"backend,omitzero"`
}

// Key is what makes two records the same flow.
type Key struct {
	Src, Dst         netip.Addr
	Proto            Proto
	SrcPort, DstPort uint16
	VLAN             uint16
}

// Key returns the record's flow key.
func (r *Record) Key() Key {
	return Key{r.Src, r.Dst, r.Proto, r.SrcPort, r.DstPort, r.VLAN}
}

// Clone returns a copy of r that shares nothing with it.
func (r Record) Clone() Record {
	if r.L7 != nil {
		l := *r.L7
		r.L7 = &l
	}
	if r.Health != nil {
		h := r.Health.Clone()
		r.Health = &h
	}
	return r
}

// Add adds o, a record of the same flow, to r: counts are summed, flags
// ORed, the seen times widened; the handshake time, interfaces and
// backend are taken from o where r has none. r's L7 is replaced by a sum
// of its own, never added into in place, so that a record r was copied
// from is left unchanged; so is its Health.
func (r *Record) Add(o *Record) {
	r.Forward.Add(o.Forward)
	r.Reverse.Add(o.Reverse)
	if r.FirstSeen.IsZero() || (!o.FirstSeen.IsZero() && o.FirstSeen.Before(r.FirstSeen)) {
		r.FirstSeen = o.FirstSeen
	}
	if o.LastSeen.After(r.LastSeen) {
		r.LastSeen = o.LastSeen
	}
	if r.HandshakeRTT == 0 {
		r.HandshakeRTT = o.HandshakeRTT
	}
	if r.SrcIf.Index == 0 {
		r.SrcIf = o.SrcIf
	}
	if r.DstIf.Index == 0 {
		r.DstIf = o.DstIf
	}
	if !r.Backend.IsValid() {
		r.Backend = o.Backend
	}
	if o.L7 != nil {
		var l L7
		if r.L7 != nil {
			l = *r.L7
		}
		l.Add(o.L7)
		r.L7 = &l
	}
	if o.Health != nil {
		var h Health
		if r.Health != nil {
			h = *r.Health
		}
		h.Add(o.Health)
		r.Health = &h
	}
}

// Direction is what was counted one way.
type Direction struct {
	Bytes   uint64 `json:"bytes"`
	Packets uint64 `json:"packets"`
	// TCPFlags is the OR of the TCP flags (FIN 0x1 … CWR 0x80, NS 0x100),
	// with FlagSYNOnly and FlagSYNACK.
	TCPFlags    uint16 `json:"tcp_flags,omitempty"`
	Retransmits uint32 `json:"retransmits,omitempty"`
	// Point and Ifindex say where this direction was counted.
	Point   Point `json:"point,omitempty"`
	Ifindex int   `json:"ifindex,omitempty"`
}

// Add adds o to d: counts summed, flags ORed, the counting point taken
// from o where d has none.
func (d *Direction) Add(o Direction) {
	d.Bytes += o.Bytes
	d.Packets += o.Packets
	d.TCPFlags |= o.TCPFlags
	d.Retransmits += o.Retransmits
	if d.Point == PointNone {
		d.Point, d.Ifindex = o.Point, o.Ifindex
	}
}

// Flags of Direction.TCPFlags beyond the TCP header's, which the programs
// set to tell the client: the OR of a connection's flags cannot.
const (
	FlagSYNOnly = 0x200 // a SYN without ACK: the direction opened the connection
	FlagSYNACK  = 0x400 // a SYN with ACK: the direction accepted it
)

// Interface is a network interface flowmap watches, on this host.
type Interface struct {
	Index int    `json:"index,omitempty"`
	Name  string `json:"name,omitempty"`
	// Kind is the netlink link type: veth, vxlan, device, …
	Kind string `json:"kind,omitempty"`
	// PeerNetNSID is the namespace id (as the host's namespace numbers it)
	// of a veth's peer; -1 where there is none.
	PeerNetNSID int `json:"peer_netnsid"`
	// PeerIndex is the veth peer's ifindex inside its namespace.
	PeerIndex int `json:"peer_ifindex,omitempty"`
}

// Proto is an IP protocol number.
type Proto uint8

// The protocols with names.
const (
	ProtoICMP   Proto = 1
	ProtoTCP    Proto = 6
	ProtoUDP    Proto = 17
	ProtoICMPv6 Proto = 58
)

func (p Proto) String() string {
	switch p {
	case ProtoICMP:
		return "icmp"
	case ProtoTCP:
		return "tcp"
	case ProtoUDP:
		return "udp"
	case ProtoICMPv6:
		return "icmpv6"
	}
	return strconv.Itoa(int(p))
}

// MarshalText writes the protocol's name, or its number.
func (p Proto) MarshalText() ([]byte, error) { return []byte(p.String()), nil }

// UnmarshalText reads what MarshalText wrote.
func (p *Proto) UnmarshalText(b []byte) error {
	for _, q := range []Proto{ProtoICMP, ProtoTCP, ProtoUDP, ProtoICMPv6} {
		if q.String() == string(b) {
			*p = q
			return nil
		}
	}
	n, err := strconv.ParseUint(string(b), 10, 8)
	if err != nil {
		return fmt.Errorf("parse protocol %q: %w", b, err)
	}
	*p = Proto(n)
	return nil
}

// Point is where a direction was counted.
type Point uint8

// The counting points.
const (
	PointNone Point = iota
	PointTCIngress
	PointTCEgress
	PointXDPIngress
)

var pointNames = [...]string{"none", "tc-ingress", "tc-egress", "xdp"}

func (p Point) String() string {
	if int(p) < len(pointNames) {
		return pointNames[p]
	}
	return "none"
}

// Ingress reports whether the packet was counted as it entered the host.
func (p Point) Ingress() bool { return p == PointTCIngress || p == PointXDPIngress }

// MarshalText writes the point's name.
func (p Point) MarshalText() ([]byte, error) { return []byte(p.String()), nil }

// UnmarshalText reads what MarshalText wrote.
func (p *Point) UnmarshalText(b []byte) error {
	for i, n := range pointNames {
		if n == string(b) {
			*p = Point(i)
			return nil
		}
	}
	return fmt.Errorf("unknown counting point %q", b)
}
