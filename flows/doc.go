// Package flows loads flowmap's eBPF programs, attaches them to network
// interfaces as they come and go, and drains their per-flow counters into
// [model.Record]s, one [model.Batch] per interval.
//
// # Where a packet is counted
//
// A packet between two containers on one host passes the sender's host-side
// veth (ingress), maybe a bridge, and the receiver's host-side veth (egress).
// Each flow is reported once per host, with exact counts, by this rule:
//
//   - A packet is counted where it enters the host through a watched
//     interface: TC ingress, or XDP on interfaces given to --xdp.
//   - A packet that entered through no watched interface (the host sent it
//     itself, or it came in on an interface flowmap does not watch) is
//     counted at the TC egress of the watched interface it leaves by.
//   - The egress program tells the two apart by skb_iif, the interface the
//     packet arrived on (0 for packets the host sends), looked up in the
//     kernel map of watched interfaces.
//   - Bridges get no program of their own: each frame that reaches a bridge
//     came through one of its ports, and flowmap watches every port of a
//     bridge it watches. A bridge's index is in the watched map all the same,
//     so that a packet the host routes on after it came up through the
//     bridge (a container talking to the outside) is not counted again at the
//     egress NIC.
//   - A veth whose peer is in the host's own namespace is not watched: both
//     of its ends would count the same packet.
//
// So a container-to-container packet is counted at the sender's veth
// ingress; host-to-container at the container's veth egress; outside to
// container at the NIC (ingress); container to outside at the container's
// veth. Where a flow is counted tells who is behind each end: the interface
// of an ingress count is the source's, that of an egress count the
// destination's ([model.Record.SrcIf], [model.Record.DstIf]).
//
// NAT: a connection the host translates is counted, one way, before the
// translation and, the other way, before the reverse one: a masqueraded
// container's request at its veth but the reply at the NIC, a published
// port's request at the NIC but the container's reply at its veth. At each
// drain the direction counted under conntrack's reply tuple is moved to the
// reverse of the original tuple, so the connection is one record under the
// tuple its client used (the container's own for masquerade, the public
// address for a published port). Without conntrack (no nf_conntrack_netlink
// or CAP_NET_ADMIN; flowmap_conntrack_errors_total) the two directions stay
// two one-way records. The L7 parsers do not join across NAT.
//
// # What is counted
//
// Bytes are wire bytes: from the Ethernet header to the end of the payload,
// without preamble or FCS. A GSO or GRO skb of n segments counts n packets,
// and its headers n times. Per direction: bytes, packets, the OR of TCP
// flags, first and last seen; per TCP connection: the time from SYN to
// SYN-ACK where flowmap counted both, and the segments that local sockets
// retransmitted (the tcp_retransmit_skb tracepoint, as TCP_INFO's total
// retransmits count them), on flows a watched interface counted lately
// (the last 65,536 TCP directions to get an entry), idle or not.
//
// # Application protocols (L7)
//
// The same programs, at the same counting points, read the first 16 bytes
// of each TCP payload and of each UDP datagram to or from the DNS port
// ([Config.DNSPort]): so each message is seen once per host, as its packet
// is counted. They tell the protocol a flow speaks (HTTP/1.x, HTTP/2, TLS,
// DNS, PostgreSQL, MySQL, Redis, Kafka), count HTTP requests by method and
// responses by status class, DNS queries and responses by response code,
// and join each response to its request (HTTP in order on a connection, up
// to 4 waiting; DNS by id) for a latency histogram ([model.L7], [model.Record.L7]).
// A message is known by its segment's first bytes: requests pipelined into
// one segment count once, and a response whose request came before the
// programs were attached has no latency ([model.L7.Unmatched]). A message's time
// is when its sender's TCP stack sent it where the packet carries that (a
// local socket's departure time, which crosses network namespaces: a
// container's messages at its host-side veth, kernel 5.18 and newer), else
// when the program saw it (XDP, packets from a NIC, UDP): both on the
// monotonic clock, so a request and its response may be timed either way.
//
// What leaves the kernel is those counts, per flow and interval: no URL,
// header, body or query name. The one exception is names, which map
// addresses to names as the graph needs: DNS responses with answers and
// TLS ClientHellos go, their first 1024 bytes, through a ring buffer to
// user space, which keeps of them only the question's name, the answers'
// addresses and TTLs, and the TLS server name ([model.Name], [model.Batch.Names]); the
// rest of the message is dropped once decoded. Only those a client's own
// traffic vouches for go: a DNS response that answers a query the programs
// saw (its id, on the query's flow turned round, with the query's question,
// compared by a hash of its first 128 bytes), and the first ClientHello
// from the side of a connection that sent its SYN. Any other (a forged
// answer, a ClientHello from the server's side or sent again) is counted
// ([Stats.NamesUnmatched], [Stats.NamesNotClient]) and names nothing. Encrypted traffic (TLS,
// HTTP/2 over TLS) is counted as such, with no methods or statuses.
package flows
