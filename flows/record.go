package flows

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
	// they saw none (see l7.go).
	L7 *L7 `json:"l7,omitempty"`
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

// Batch is the flows of one drain interval.
type Batch struct {
	Start   time.Time `json:"start"`
	End     time.Time `json:"end"`
	Records []Record  `json:"flows"`
	// Names are the names that DNS answers and TLS server names gave
	// addresses during the interval.
	Names []Name `json:"names,omitempty"`
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

// The counting points, as the BPF programs number them.
const (
	PointNone       = Point(bpfPointPOINT_NONE)
	PointTCIngress  = Point(bpfPointPOINT_TC_INGRESS)
	PointTCEgress   = Point(bpfPointPOINT_TC_EGRESS)
	PointXDPIngress = Point(bpfPointPOINT_XDP)
)

func (p Point) String() string {
	switch p {
	case PointTCIngress:
		return "tc-ingress"
	case PointTCEgress:
		return "tc-egress"
	case PointXDPIngress:
		return "xdp"
	}
	return "none"
}

// Ingress reports whether the packet was counted as it entered the host.
func (p Point) Ingress() bool { return p == PointTCIngress || p == PointXDPIngress }

// MarshalText writes the point's name.
func (p Point) MarshalText() ([]byte, error) { return []byte(p.String()), nil }

// UnmarshalText reads what MarshalText wrote.
func (p *Point) UnmarshalText(b []byte) error {
	for _, q := range []Point{PointNone, PointTCIngress, PointTCEgress, PointXDPIngress} {
		if q.String() == string(b) {
			*p = q
			return nil
		}
	}
	return fmt.Errorf("unknown counting point %q", b)
}
