// SPDX-License-Identifier: GPL-2.0
//
// flow.c counts per-flow L4 statistics at TC (ingress, egress) and XDP
// (ingress) hooks. It never changes a packet: TC programs return
// TC_ACT_UNSPEC (TCX_NEXT: go on with the next program, then the stack) and
// the XDP program returns XDP_PASS.
//
// Counted once: a packet is counted where it enters the host through a
// watched interface (TC or XDP ingress), or, if it entered through none, at
// the egress of the watched interface it leaves by. The egress programs skip
// packets whose skb_iif (the interface they arrived on) is in the watched
// map; packets the host sends itself have skb_iif 0. flows/doc.go has the
// whole rule.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/pkt_cls.h>
#include <linux/tcp.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

char __license[] SEC("license") = "GPL";

// flow_key4 is one direction of an IPv4 flow. Addresses are in network
// byte order, ports in host byte order; for ICMP sport is the type and
// dport the code. A key of its own, and not IPv6's with IPv4 mapped in it,
// because the map hashes every byte of the key on every packet: 16 bytes
// cost about 15 ns less than 40.
struct flow_key4 {
	__be32 saddr;
	__be32 daddr;
	__u16 sport;
	__u16 dport;
	__u8 proto;
	__u8 pad;
	__u16 vlan; // 802.1Q VLAN id, 0 if untagged
};

// flow_key is one direction of an IPv6 flow, and of any flow where the
// two families meet (the handshakes map): IPv4 is then IPv4-mapped
// (::ffff:a.b.c.d). Ports as in flow_key4; for ICMPv6 sport is the type and
// dport the code.
struct flow_key {
	__u8 saddr[16];
	__u8 daddr[16];
	__u16 sport;
	__u16 dport;
	__u8 proto;
	__u8 pad;
	__u16 vlan; // 802.1Q VLAN id, 0 if untagged
};

// point is where a flow direction was counted.
enum point {
	POINT_NONE = 0,
	POINT_TC_INGRESS = 1,
	POINT_TC_EGRESS = 2,
	POINT_XDP = 3,
};

// flow_stats is what one CPU counted for one flow direction since the
// last drain.
struct flow_stats {
	__u64 bytes;      // wire bytes: Ethernet header to end of payload, no FCS
	__u64 packets;    // wire packets: a GSO skb counts gso_segs
	__u64 first_ns;   // bpf_ktime_get_ns (CLOCK_MONOTONIC), taken once
	__u64 last_jiffies; // bpf_jiffies64: a tick's precision, almost free
	__u64 syn_rtt_ns; // on the SYN-ACK direction: SYN to SYN-ACK
	__u32 ifindex;    // the interface where it was counted
	__u32 retransmits;
	__u16 tcp_flags;  // OR of the TCP flags (NS in bit 8; FLAG_SYN_ONLY, FLAG_SYN_ACK)
	__u8 point;       // enum point
	__u8 pad[5];
};

// counter indexes the counters map.
enum counter {
	COUNTER_MAP_FULL_PACKETS = 0, // packets not counted: the flow map was full
	COUNTER_MAP_FULL_BYTES,
	COUNTER_NON_IP,    // frames that are neither IPv4 nor IPv6 (ARP, LLDP, …)
	COUNTER_MALFORMED, // IP frames truncated or with a bad header length
	COUNTER_L7_MAP_FULL, // L7 messages not counted: the L7 map was full
	COUNTER_NAMES_LOST,  // DNS answers and TLS ClientHellos not sent: the ring buffer was full
	COUNTER_MAX,
};

// Force BTF for the types that Go needs beyond map keys and values.
const enum point *unused_point __attribute__((unused));
const enum counter *unused_counter __attribute__((unused));

#define MAX_FLOWS 65536 // Go sets max_entries from --max-flows

// flows4_a, flows4_b: flow_key4 -> per-CPU flow_stats, and flows6_a,
// flows6_b: flow_key -> per-CPU flow_stats. A double buffer: the programs
// write the half named by active_buf while Go drains the other, so no
// increment is lost between a read and its delete. Not LRU: a full map
// refuses new flows and counts what it refused (COUNTER_MAP_FULL_*), where
// an LRU would silently evict a live flow's counts.
#define FLOW_MAP(name, key_type)                                                                   \
	struct {                                                                                   \
		__uint(type, BPF_MAP_TYPE_PERCPU_HASH);                                            \
		__uint(max_entries, MAX_FLOWS);                                                    \
		__type(key, key_type);                                                             \
		__type(value, struct flow_stats);                                                  \
	} name SEC(".maps")

FLOW_MAP(flows4_a, struct flow_key4);
FLOW_MAP(flows4_b, struct flow_key4);
FLOW_MAP(flows6_a, struct flow_key);
FLOW_MAP(flows6_b, struct flow_key);

// cache_slot is the IPv4 flow direction a CPU counted last, with what it
// counted of it since it was last added to the flow map: consecutive
// packets of one flow (a burst, a GSO train) then cost an array slot's
// compare and adds instead of a hash lookup (about 40 ns a packet on real
// traffic here, where the hash's bucket, key and per-CPU value are cold).
struct cache_slot {
	struct flow_key4 key;
	__u64 bytes;
	__u64 packets;
	__u64 last_jiffies;
	__u16 tcp_flags;
	__u8 valid; // key holds a flow that has an entry in the flow map
	__u8 pad[5];
};

// flow_cache: half of the double buffer (active_buf) -> per-CPU cache_slot.
// A slot is added to its half's map when its CPU counts another flow; Go
// reads and empties the slots of the half it drains.
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, struct cache_slot);
} flow_cache SEC(".maps");

// watched: ifindex -> 1 for every interface whose ingress flowmap counts,
// and for bridges whose ports it counts, for ifindexes below
// WATCHED_ARRAY; watched_hi for the rest. Egress skips packets that
// arrived on one of them: they were counted there. An array because its
// lookup is inlined to a bounds check and a load.
#define WATCHED_ARRAY 65536
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, WATCHED_ARRAY);
	__type(key, __u32);
	__type(value, __u32);
} watched SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, __u32);
} watched_hi SEC(".maps");

// handshakes: the key of a SYN -> when it was seen, until the SYN-ACK.
// LRU, so that handshakes that never complete (scans) age out.
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct flow_key);
	__type(value, __u64);
} handshakes SEC(".maps");

// counters: enum counter -> per-CPU count.
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, COUNTER_MAX);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

// ---- L7 ----
//
// L7 looks at the first bytes of TCP payload and of UDP to or from the DNS
// port, on packets already counted by the L4 path (so under the same
// counted-once rule: a request where it enters the host, its response where
// that enters). It reads a few dozen bytes at most, never loops over a
// payload, and keeps no URL, header or body: HTTP gives its method and
// status class, DNS its id and response code; only DNS responses and TLS
// ClientHellos go to user space, through l7_names, for the names in them.

// l7_proto is the application protocol of a flow, as its first bytes tell.
enum l7_proto {
	L7_NONE = 0,
	L7_HTTP = 1,
	L7_HTTP2 = 2, // the client preface; gRPC is HTTP/2 and looks the same
	L7_TLS = 3,
	L7_DNS = 4,
	L7_POSTGRES = 5,
	L7_MYSQL = 6,
	L7_REDIS = 7,
	L7_KAFKA = 8,
};

// l7_method is an HTTP request's method.
enum l7_method {
	METHOD_OTHER = 0, // CONNECT, TRACE
	METHOD_GET,
	METHOD_HEAD,
	METHOD_POST,
	METHOD_PUT,
	METHOD_DELETE,
	METHOD_PATCH,
	METHOD_OPTIONS,
	METHOD_MAX,
};

// L7_BUCKETS latency buckets, four to an octave: bucket i holds times from
// 2^(10 + i/4) * (1 + (i%4)/4) ns, 1 us to about 68 s; the last bucket
// holds all above.
#define L7_BUCKETS 104
#define L7_RCODES 8 // DNS response codes 0 to 6, and 7 for any other

// l7_stats is one client-to-server flow's messages since the last drain,
// as one CPU counted them: per CPU, so that the request's CPU and the
// response's add without atomics and without moving the entry's lines
// between them (Go sums the CPUs).
struct l7_stats {
	__u64 latency_sum_ns; // over the matched responses
	__u32 latency[L7_BUCKETS]; // request (first byte) to response (first byte)
	__u32 methods[METHOD_MAX]; // HTTP requests by method
	__u32 statuses[6]; // HTTP responses by status class: [1] is 1xx … [5] 5xx
	__u32 rcodes[L7_RCODES]; // DNS responses by response code
	__u32 queries;   // DNS queries
	__u32 unmatched; // responses without a request seen: latency unknown
	__u8 proto;      // enum l7_proto
	__u8 pad[7];
};

// l7_pending_key is a request waiting for its response: its flow's client
// to server key and, for DNS, its id. IPv4 flows have keys of their own, as
// in the flow maps, for the hash's sake.
struct l7_pending_key {
	struct flow_key flow;
	__u16 id;
	__u16 pad;
};

struct l7_pending_key4 {
	struct flow_key4 flow;
	__u16 id;
	__u16 pad;
};

// l7_pending is the times of the requests of one flow that wait for a
// response, oldest first: HTTP/1.1 answers pipelined requests in order.
#define L7_PIPELINE 4
struct l7_pending {
	__u64 ts[L7_PIPELINE]; // bpf_ktime_get_ns at each request's first byte
	__u32 head;            // the oldest request waiting
	__u32 tail;            // where the next request goes
};

// name_kind says what a name event carries.
enum name_kind {
	NAME_DNS = 1, // a DNS response, from its header on
	NAME_TLS = 2, // a TLS record holding a ClientHello
};

#define NAME_DATA 1024
// name_event carries a DNS response or a TLS ClientHello to user space,
// which takes the names and addresses out of it and keeps nothing else.
struct name_event {
	struct flow_key flow; // client to server
	__u16 len;            // bytes in data
	__u8 kind;            // enum name_kind
	__u8 pad[5];
	__u8 data[NAME_DATA];
};

const enum l7_proto *unused_l7_proto __attribute__((unused));
const enum l7_method *unused_l7_method __attribute__((unused));
const enum name_kind *unused_name_kind __attribute__((unused));
const struct name_event *unused_name_event __attribute__((unused));

#define MAX_L7_FLOWS 16384 // Go sets max_entries from --max-flows

// l7s4_a, l7s4_b (IPv4), l7s6_a, l7s6_b: the client-to-server flow key ->
// per-CPU l7_stats, double-buffered by active_buf as the flow maps are.
// Not LRU: a full map refuses new flows and counts their messages
// (COUNTER_L7_MAP_FULL). Not preallocated: an entry is ncpu × 528 bytes,
// and most flows carry no message.
#define L7_MAP(name, key_type)                                                                     \
	struct {                                                                                   \
		__uint(type, BPF_MAP_TYPE_PERCPU_HASH);                                            \
		__uint(map_flags, BPF_F_NO_PREALLOC);                                              \
		__uint(max_entries, MAX_L7_FLOWS);                                                 \
		__type(key, key_type);                                                             \
		__type(value, struct l7_stats);                                                    \
	} name SEC(".maps")

L7_MAP(l7s4_a, struct flow_key4);
L7_MAP(l7s4_b, struct flow_key4);
L7_MAP(l7s6_a, struct flow_key);
L7_MAP(l7s6_b, struct flow_key);

// l7_pending4, l7_pending6: l7_pending_key(4) -> l7_pending, from a
// request until its response. LRU: requests never answered age out.
#define PENDING_MAP(name, key_type)                                                                \
	struct {                                                                                   \
		__uint(type, BPF_MAP_TYPE_LRU_HASH);                                               \
		__uint(max_entries, 16384);                                                        \
		__type(key, key_type);                                                             \
		__type(value, struct l7_pending);                                                  \
	} name SEC(".maps")

PENDING_MAP(l7_pending4, struct l7_pending_key4);
PENDING_MAP(l7_pending6, struct l7_pending_key);

// l7_names: name_event records for user space. Bounded: what does not fit
// is counted (COUNTER_NAMES_LOST).
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
} l7_names SEC(".maps");

// dns_port is the port of DNS servers, over UDP and TCP; Go sets it.
volatile const __u16 dns_port = 53;

// active_buf selects the half of the double buffer the programs write:
// 0 for the _a maps, 1 for the _b maps. Go flips it before each drain.
__u32 active_buf = 0;

// clock_probe writes these, for Go to map jiffies to CLOCK_MONOTONIC.
__u64 probe_jiffies = 0;
__u64 probe_ns = 0;

#define TCP_FLAG_FIN 0x01
#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_ACK 0x10

// Flags of our own above the TCP header's nine: the OR of a direction's
// flags cannot tell a SYN without ACK (the client's) from SYN and ACK in
// different segments.
#define FLAG_SYN_ONLY 0x200 // a SYN without ACK: this direction opened the connection
#define FLAG_SYN_ACK 0x400  // a SYN with ACK: this direction accepted it

struct vlan_hdr {
	__be16 tci;
	__be16 proto;
};

// packet is what parse found in one frame: key6 for IPv6, key6's ports,
// protocol and VLAN with saddr4 and daddr4 for IPv4.
struct packet {
	struct flow_key key;
	__be32 saddr4;
	__be32 daddr4;
	__u8 v4;
	__u32 hdr_len; // L2 to L4 header bytes: repeated in every GSO segment
	__u32 ip_end;  // L2 to the end of the IP packet by its header; 0 if unknown
	__u16 tcp_flags;
};

static __always_inline void bump(__u32 idx, __u64 n)
{
	__u64 *c = bpf_map_lookup_elem(&counters, &idx);
	if (c)
		*c += n;
}

// parse_l4 fills ports, flags and header length from the L4 header at l4.
// A truncated L4 header leaves the ports 0: the packet is still counted,
// under its addresses and protocol, and as malformed.
static __always_inline void parse_l4(struct packet *p, void *l4, void *data, void *data_end)
{
	switch (p->key.proto) {
	case IPPROTO_TCP: {
		struct tcphdr *th = l4;
		if ((void *)(th + 1) > data_end)
			goto truncated;
		p->key.sport = bpf_ntohs(th->source);
		p->key.dport = bpf_ntohs(th->dest);
		// Byte 13 holds CWR..FIN, the low bit of byte 12 is NS.
		__u8 *fl = (__u8 *)th + 12;
		p->tcp_flags = ((__u16)(fl[0] & 1) << 8) | fl[1];
		if (fl[1] & TCP_FLAG_SYN)
			p->tcp_flags |= (fl[1] & TCP_FLAG_ACK) ? FLAG_SYN_ACK : FLAG_SYN_ONLY;
		p->hdr_len = (l4 - data) + th->doff * 4;
		return;
	}
	case IPPROTO_UDP: {
		__be16 *ports = l4;
		if ((void *)(ports + 4) > data_end)
			goto truncated;
		p->key.sport = bpf_ntohs(ports[0]);
		p->key.dport = bpf_ntohs(ports[1]);
		p->hdr_len = (l4 - data) + 8;
		return;
	}
	case IPPROTO_ICMP:
	case IPPROTO_ICMPV6: {
		__u8 *tc = l4;
		if ((void *)(tc + 4) > data_end)
			goto truncated;
		p->key.sport = tc[0];
		p->key.dport = tc[1];
		p->hdr_len = l4 - data;
		return;
	}
	default:
		p->hdr_len = l4 - data;
		return;
	}
truncated:
	p->hdr_len = l4 - data;
	bump(COUNTER_MALFORMED, 1);
}

// parse reads Ethernet, one optional 802.1Q/802.1ad tag, IPv4 or IPv6 and
// the L4 header. It returns 0 when the packet has a flow to count.
static __always_inline int parse(void *data, void *data_end, struct packet *p)
{
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end) {
		bump(COUNTER_NON_IP, 1);
		return -1;
	}
	__be16 proto = eth->h_proto;
	void *nh = eth + 1;
	if (proto == bpf_htons(ETH_P_8021Q) || proto == bpf_htons(ETH_P_8021AD)) {
		struct vlan_hdr *vh = nh;
		if ((void *)(vh + 1) > data_end) {
			bump(COUNTER_MALFORMED, 1);
			return -1;
		}
		p->key.vlan = bpf_ntohs(vh->tci) & 0x0fff;
		proto = vh->proto;
		nh = vh + 1;
	}

	if (proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = nh;
		if ((void *)(ip + 1) > data_end || ip->ihl < 5) {
			bump(COUNTER_MALFORMED, 1);
			return -1;
		}
		p->v4 = 1;
		p->ip_end = (nh - data) + bpf_ntohs(ip->tot_len);
		p->saddr4 = ip->saddr;
		p->daddr4 = ip->daddr;
		p->key.proto = ip->protocol;
		void *l4 = nh + ip->ihl * 4;
		// A fragment after the first has no L4 header: count it under
		// its addresses and protocol, ports 0.
		if (ip->frag_off & bpf_htons(0x1fff)) {
			p->hdr_len = l4 - data;
			return 0;
		}
		parse_l4(p, l4, data, data_end);
		return 0;
	}

	if (proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = nh;
		if ((void *)(ip6 + 1) > data_end) {
			bump(COUNTER_MALFORMED, 1);
			return -1;
		}
		__builtin_memcpy(p->key.saddr, &ip6->saddr, 16);
		__builtin_memcpy(p->key.daddr, &ip6->daddr, 16);
		if (ip6->payload_len)
			p->ip_end = (nh - data) + sizeof(*ip6) + bpf_ntohs(ip6->payload_len);
		__u8 next = ip6->nexthdr;
		void *l4 = ip6 + 1;
		// Skip up to three extension headers: hop-by-hop, routing and
		// destination options share the (next, len in 8 octets - 1) form;
		// a fragment header is 8 bytes.
#pragma unroll
		for (int i = 0; i < 3; i++) {
			if (next != IPPROTO_HOPOPTS && next != IPPROTO_ROUTING &&
			    next != IPPROTO_DSTOPTS && next != IPPROTO_FRAGMENT)
				break;
			__u8 *ext = l4;
			if ((void *)(ext + 2) > data_end) {
				bump(COUNTER_MALFORMED, 1);
				p->key.proto = next;
				p->hdr_len = l4 - data;
				return 0;
			}
			if (next == IPPROTO_FRAGMENT) {
				if ((void *)(ext + 4) > data_end) {
					bump(COUNTER_MALFORMED, 1);
					p->key.proto = next;
					p->hdr_len = l4 - data;
					return 0;
				}
				// A fragment after the first has no L4 header: count
				// it under its addresses and protocol, ports 0, as
				// for IPv4.
				if ((((__u16)ext[2] << 8) | ext[3]) & 0xfff8) {
					p->key.proto = ext[0];
					p->hdr_len = (l4 + 8) - data;
					return 0;
				}
			}
			__u32 len = next == IPPROTO_FRAGMENT ? 8 : ((__u32)ext[1] + 1) * 8;
			next = ext[0];
			l4 += len;
		}
		p->key.proto = next;
		parse_l4(p, l4, data, data_end);
		return 0;
	}

	bump(COUNTER_NON_IP, 1);
	return -1;
}

// account adds one frame (or GSO aggregate), seen at jiffies now, to its
// flow in the map flows. It looks up first and adds in place; it inserts
// only on a miss. Each call site must name its map as a constant: the
// verifier inlines the lookup only then, which saves a helper call and a
// retpoline (30 to 45 ns here).
static __always_inline int account(void *flows, void *key, __u64 now, __u64 bytes,
				    __u64 packets, __u16 flags, __u64 rtt, __u32 ifindex,
				    __u8 point)
{
	struct flow_stats *s = bpf_map_lookup_elem(flows, key);
	if (!s) {
		// A new flow: the precise clock, once, so that which direction
		// of a flow came first is known (see the drain's orientation).
		struct flow_stats n = {
			.bytes = bytes,
			.packets = packets,
			.first_ns = bpf_ktime_get_ns(),
			.last_jiffies = now,
			.syn_rtt_ns = rtt,
			.ifindex = ifindex,
			.tcp_flags = flags,
			.point = point,
		};
		long err = bpf_map_update_elem(flows, key, &n, BPF_NOEXIST);
		if (err == 0)
			return 1;
		// -EEXIST: another CPU inserted the key since our lookup.
		s = bpf_map_lookup_elem(flows, key);
		if (!s) {
			bump(COUNTER_MAP_FULL_PACKETS, packets);
			bump(COUNTER_MAP_FULL_BYTES, bytes);
			return 0;
		}
	}
	// Each CPU has its own slot: the first packet on this CPU starts it.
	if (!s->first_ns) {
		s->first_ns = bpf_ktime_get_ns();
		s->ifindex = ifindex;
		s->point = point;
	}
	s->last_jiffies = now;
	s->bytes += bytes;
	s->packets += packets;
	s->tcp_flags |= flags;
	if (rtt)
		s->syn_rtt_ns = rtt;
	return 1;
}

static __always_inline int key4_eq(const struct flow_key4 *a, const struct flow_key4 *b)
{
	const __u64 *x = (const __u64 *)a, *y = (const __u64 *)b;
	return x[0] == y[0] && x[1] == y[1];
}

// account4 counts an IPv4 frame in the map flows of the active half, whose
// cache slot on this CPU is c: in the slot if it holds the frame's flow,
// else in the map, after adding the slot's counts to its flow there. A
// frame that carries a handshake RTT always goes to the map.
static __always_inline void account4(void *flows, struct cache_slot *c, struct flow_key4 *k,
				     __u64 now, __u64 bytes, __u64 packets, __u16 flags, __u64 rtt,
				     __u32 ifindex, __u8 point)
{
	if (c->valid && !rtt && key4_eq(&c->key, k)) {
		c->bytes += bytes;
		c->packets += packets;
		c->tcp_flags |= flags;
		c->last_jiffies = now;
		return;
	}
	if (c->valid && c->packets) {
		// The entry is there: entries leave a half only when Go drains
		// it, after the programs moved to the other half.
		struct flow_stats *s = bpf_map_lookup_elem(flows, &c->key);
		if (s) {
			s->bytes += c->bytes;
			s->packets += c->packets;
			s->tcp_flags |= c->tcp_flags;
			if (c->last_jiffies > s->last_jiffies)
				s->last_jiffies = c->last_jiffies;
		}
	}
	c->valid = 0;
	if (!account(flows, k, now, bytes, packets, flags, rtt, ifindex, point))
		return;
	c->key = *k;
	c->bytes = 0;
	c->packets = 0;
	c->tcp_flags = 0;
	c->last_jiffies = 0;
	c->valid = 1;
}

// key6 fills k with p's flow, IPv4 mapped into IPv6.
static __always_inline void key6(struct packet *p, struct flow_key *k)
{
	*k = p->key;
	if (p->v4) {
		k->saddr[10] = k->saddr[11] = 0xff;
		k->daddr[10] = k->daddr[11] = 0xff;
		__builtin_memcpy(&k->saddr[12], &p->saddr4, 4);
		__builtin_memcpy(&k->daddr[12], &p->daddr4, 4);
	}
}

// key6_of4 fills k with the IPv4 flow k4, mapped into IPv6.
static __always_inline void key6_of4(const struct flow_key4 *k4, struct flow_key *k)
{
	__builtin_memset(k, 0, sizeof(*k));
	k->saddr[10] = k->saddr[11] = 0xff;
	k->daddr[10] = k->daddr[11] = 0xff;
	__builtin_memcpy(&k->saddr[12], &k4->saddr, 4);
	__builtin_memcpy(&k->daddr[12], &k4->daddr, 4);
	k->sport = k4->sport;
	k->dport = k4->dport;
	k->proto = k4->proto;
	k->vlan = k4->vlan;
}

// handshake returns the SYN to SYN-ACK time when p is a SYN-ACK whose SYN
// was seen, and remembers the time of a SYN.
static __always_inline __u64 handshake(struct packet *p)
{
	if (p->key.proto != IPPROTO_TCP)
		return 0;
	__u16 f = p->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK);
	if (f != TCP_FLAG_SYN && f != (TCP_FLAG_SYN | TCP_FLAG_ACK))
		return 0;
	struct flow_key k;
	key6(p, &k);
	if (f == TCP_FLAG_SYN) {
		// A retransmitted SYN restarts the clock: the RTT is that of
		// the SYN that was answered.
		__u64 now = bpf_ktime_get_ns();
		bpf_map_update_elem(&handshakes, &k, &now, BPF_ANY);
		return 0;
	}
	struct flow_key rev = {
		.sport = k.dport,
		.dport = k.sport,
		.proto = k.proto,
		.vlan = k.vlan,
	};
	__builtin_memcpy(rev.saddr, k.daddr, 16);
	__builtin_memcpy(rev.daddr, k.saddr, 16);
	__u64 *syn = bpf_map_lookup_elem(&handshakes, &rev);
	if (!syn)
		return 0;
	__u64 rtt = bpf_ktime_get_ns() - *syn;
	bpf_map_delete_elem(&handshakes, &rev);
	return rtt ? rtt : 1;
}

// ---- L7 helpers ----

#define L7_PEEK 16 // payload bytes that classify reads

// FOUR is four bytes as a little-endian load of them reads.
#define FOUR(a, b, c, d) ((__u32)(a) | (__u32)(b) << 8 | (__u32)(c) << 16 | (__u32)(d) << 24)

// msg_kind is what one payload's first bytes are.
enum msg_kind {
	MSG_NONE = 0,     // nothing to count (maybe a protocol to note)
	MSG_REQUEST,      // an HTTP request line, a DNS query
	MSG_RESPONSE,     // an HTTP status line, a DNS response
};

// l7_msg is what classify found in one payload.
struct l7_msg {
	__u8 proto;   // enum l7_proto
	__u8 kind;    // enum msg_kind
	__u8 method;  // HTTP: enum l7_method
	__u8 status;  // HTTP: status class 1 to 5; DNS: response code, 7 for above 6
	__u16 id;     // DNS id
	__u8 reverse; // the payload goes server to client
	__u8 name;    // enum name_kind: send the payload to l7_names
	__u8 name_off; // where in the payload the name event's data starts
};

static __always_inline int is_digit(__u8 c) { return c >= '0' && c <= '9'; }

// is_target reports whether c can start a request target: origin form
// (/path), asterisk form (*), absolute (http://) or authority form (host).
static __always_inline int is_target(__u8 c)
{
	return c == '/' || c == '*' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
	       is_digit(c) || c == '[';
}

static __always_inline __u32 be32(const __u8 *b)
{
	return (__u32)b[0] << 24 | (__u32)b[1] << 16 | (__u32)b[2] << 8 | b[3];
}

// dns_header classifies a DNS header h (12 bytes, from dns_off in the
// payload): a standard query or response with one question, queries to the
// DNS port and responses from it.
static __always_inline void dns_header(struct packet *p, const __u8 *h, __u8 dns_off, struct l7_msg *m)
{
	__u8 f = h[2];
	if ((f & 0x78) != 0 || h[4] != 0 || h[5] != 1) // opcode QUERY, QDCOUNT 1
		return;
	m->id = (__u16)h[0] << 8 | h[1];
	if (!(f & 0x80)) {
		if (p->key.dport != dns_port)
			return;
		m->proto = L7_DNS;
		m->kind = MSG_REQUEST;
		return;
	}
	if (p->key.sport != dns_port)
		return;
	m->proto = L7_DNS;
	m->kind = MSG_RESPONSE;
	m->reverse = 1;
	__u8 rcode = h[3] & 0x0f;
	m->status = rcode < L7_RCODES - 1 ? rcode : L7_RCODES - 1;
	// Answers only in a response without error; the TC bit (truncated)
	// still has the answers that fit.
	if (rcode == 0 && (h[6] | h[7])) {
		m->name = NAME_DNS;
		m->name_off = dns_off;
	}
}

// http_request classifies a request line whose method takes n bytes and a
// space.
static __always_inline void http_request(const __u8 *b, __u32 n, __u8 method, struct l7_msg *m)
{
	if (b[n] != ' ' || !is_target(b[n + 1]))
		return;
	m->proto = L7_HTTP;
	m->kind = MSG_REQUEST;
	m->method = method;
}

// classify_tcp reads what b, the first bytes of a TCP payload of plen
// bytes (zero-padded where it is shorter), is.
static __always_inline void classify_tcp(struct packet *p, const __u8 *b, __u32 plen, int dns,
					 struct l7_msg *m)
{
	if (dns) {
		// DNS over TCP: a two-byte length, then the message.
		dns_header(p, b + 2, 2, m);
		return;
	}
	__u32 w;
	__builtin_memcpy(&w, b, 4);
	switch (w) {
	case FOUR('G', 'E', 'T', ' '):
		http_request(b, 3, METHOD_GET, m);
		return;
	case FOUR('P', 'U', 'T', ' '):
		http_request(b, 3, METHOD_PUT, m);
		return;
	case FOUR('P', 'O', 'S', 'T'):
		http_request(b, 4, METHOD_POST, m);
		return;
	case FOUR('H', 'E', 'A', 'D'):
		http_request(b, 4, METHOD_HEAD, m);
		return;
	case FOUR('D', 'E', 'L', 'E'):
		if (b[4] == 'T' && b[5] == 'E')
			http_request(b, 6, METHOD_DELETE, m);
		return;
	case FOUR('P', 'A', 'T', 'C'):
		if (b[4] == 'H')
			http_request(b, 5, METHOD_PATCH, m);
		return;
	case FOUR('O', 'P', 'T', 'I'):
		if (b[4] == 'O' && b[5] == 'N' && b[6] == 'S')
			http_request(b, 7, METHOD_OPTIONS, m);
		return;
	case FOUR('C', 'O', 'N', 'N'):
		if (b[4] == 'E' && b[5] == 'C' && b[6] == 'T')
			http_request(b, 7, METHOD_OTHER, m);
		return;
	case FOUR('T', 'R', 'A', 'C'):
		if (b[4] == 'E')
			http_request(b, 5, METHOD_OTHER, m);
		return;
	case FOUR('H', 'T', 'T', 'P'):
		// HTTP/1.0 or HTTP/1.1, a space, three digits, a space or the
		// end of the status line's first 16 bytes.
		if (b[4] != '/' || b[5] != '1' || b[6] != '.' || (b[7] != '0' && b[7] != '1') ||
		    b[8] != ' ' || b[9] < '1' || b[9] > '5' || !is_digit(b[10]) || !is_digit(b[11]) ||
		    (b[12] != ' ' && b[12] != '\r'))
			return;
		m->proto = L7_HTTP;
		m->kind = MSG_RESPONSE;
		m->reverse = 1;
		m->status = b[9] - '0';
		return;
	case FOUR('P', 'R', 'I', ' '):
		// The HTTP/2 client preface, "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".
		if (b[4] == '*' && b[5] == ' ' && b[6] == 'H' && b[11] == '2' && b[12] == '.' && b[13] == '0')
			m->proto = L7_HTTP2;
		return;
	}
	// TLS: a handshake record of TLS 1.0 to 1.3 whose message is a
	// ClientHello (from the client) or a ServerHello.
	if (b[0] == 0x16 && b[1] == 3 && b[2] <= 4) {
		if (b[5] == 1) {
			m->proto = L7_TLS;
			m->name = NAME_TLS;
		} else if (b[5] == 2) {
			m->proto = L7_TLS;
			m->reverse = 1;
		}
		return;
	}
	__u32 len = be32(b);
	__u32 code = be32(b + 4);
	// PostgreSQL: a StartupMessage of protocol 3.0, or an SSLRequest or
	// GSSENCRequest, from the client.
	if ((code == 0x00030000 && len >= 8 && len <= 10000) ||
	    ((code == 80877103 || code == 80877104) && len == 8)) {
		m->proto = L7_POSTGRES;
		return;
	}
	// MySQL: the server's greeting, protocol 10, sequence 0, the whole
	// packet in this payload.
	if (b[3] == 0 && b[4] == 10 && ((__u32)b[0] | (__u32)b[1] << 8 | (__u32)b[2] << 16) + 4 == plen) {
		m->proto = L7_MYSQL;
		m->reverse = 1;
		return;
	}
	// Redis: a RESP array of bulk strings, as clients send commands.
	if (b[0] == '*' && b[1] >= '1' && b[1] <= '9' &&
	    ((b[2] == '\r' && b[3] == '\n' && b[4] == '$') ||
	     (is_digit(b[2]) && b[3] == '\r' && b[4] == '\n' && b[5] == '$'))) {
		m->proto = L7_REDIS;
		return;
	}
	// Kafka: a request whose size is the rest of this payload, with an API
	// key and version in the ranges Kafka has.
	if (len + 4 == plen && len >= 10 && b[4] == 0 && b[5] < 75 && b[6] == 0 && b[7] < 20) {
		m->proto = L7_KAFKA;
		return;
	}
}

// peek reads n bytes of the frame at off into buf, paged data too.
static __always_inline long peek(void *ctx, int xdp, __u32 off, void *buf, __u32 n)
{
	if (xdp)
		return bpf_xdp_load_bytes(ctx, off, buf, n);
	return bpf_skb_load_bytes(ctx, off, buf, n);
}

// latency_bucket returns ns's bucket of l7_stats.latency.
static __always_inline __u32 latency_bucket(__u64 ns)
{
	if (ns < 1024)
		return 0;
	// log2 without a loop.
	__u32 l = 0;
	__u64 v = ns;
	if (v >> 32) { v >>= 32; l += 32; }
	if (v >> 16) { v >>= 16; l += 16; }
	if (v >> 8) { v >>= 8; l += 8; }
	if (v >> 4) { v >>= 4; l += 4; }
	if (v >> 2) { v >>= 2; l += 2; }
	if (v >> 1) { l += 1; }
	__u32 sub = (ns >> (l - 2)) & 3; // the two bits after the leading one
	__u32 i = (l - 10) * 4 + sub;
	return i < L7_BUCKETS ? i : L7_BUCKETS - 1;
}

// pending_request notes the time of a request of flow k in the map
// pending (a constant at each call site, as in account).
static __always_inline void pending_request(void *pending, void *k, __u64 now)
{
	struct l7_pending *q = bpf_map_lookup_elem(pending, k);
	if (!q) {
		struct l7_pending n = {.ts = {now}, .tail = 1};
		bpf_map_update_elem(pending, k, &n, BPF_ANY);
		return;
	}
	// Deeper pipelines than L7_PIPELINE lose their latest requests'
	// times: their responses count as unmatched.
	if (q->tail - q->head < L7_PIPELINE) {
		q->ts[q->tail & (L7_PIPELINE - 1)] = now;
		q->tail++;
	}
}

// pending_response returns the time since the oldest request of flow k
// that waits in the map pending, and takes it off; 0 if none waits.
static __always_inline __u64 pending_response(void *pending, void *k, __u64 now, int dns)
{
	struct l7_pending *q = bpf_map_lookup_elem(pending, k);
	if (!q || q->head == q->tail)
		return 0;
	__u64 ts = q->ts[q->head & (L7_PIPELINE - 1)];
	// A request's send time may lie ahead of the response's clock read
	// (a paced TCP sender's departure time): no negative latency.
	__u64 lat = now > ts ? now - ts : 0;
	q->head++;
	// A DNS id answers once: the entry goes (an HTTP connection's stays
	// for its next request, until LRU pushes it out).
	if (dns)
		bpf_map_delete_elem(pending, k);
	return lat ? lat : 1;
}

// SKB_CLOCK_MONOTONIC is BPF_SKB_TSTAMP_DELIVERY_MONO, named
// BPF_SKB_CLOCK_MONOTONIC since Linux 6.11.
#define SKB_CLOCK_MONOTONIC 1

// send_time returns when the TCP stack that sent the skb of a TC program
// (context ctx; xdp is 0) sent it, on CLOCK_MONOTONIC as bpf_ktime_get_ns;
// 0 if the skb does not carry that, or under XDP. TCP stamps every skb with its departure time, and since Linux 5.18 the stamp
// stays on the skb across network namespaces, marked as a monotonic
// delivery time: a container's message reaches its host-side veth with the
// time its socket sent it. Read for free, it spares the L7 path a clock
// read (20 to 40 ns here). Skbs from a NIC carry a receive time or none,
// UDP none: the L7 path reads the clock for those.
static __always_inline __u64 send_time(void *ctx, int xdp)
{
	if (xdp)
		return 0;
	struct __sk_buff *skb = ctx;
	// Kernels before 5.18 have no tstamp_type, and at TC ingress read the
	// delivery time as 0: load the program all the same.
	if (!bpf_core_field_exists(skb->tstamp_type))
		return 0;
	if (skb->tstamp_type != SKB_CLOCK_MONOTONIC)
		return 0;
	return skb->tstamp;
}

// pending_msg notes a request's time in the map pending, or takes a
// response's request off it and returns the latency (0 if unknown). The
// message's time is when its sender's TCP stack sent it, where the skb
// carries that (see send_time), else now.
static __always_inline __u64 pending_msg(void *pending, void *k, struct l7_msg *m, __u64 sent)
{
	if (m->kind == MSG_REQUEST)
		pending_request(pending, k, sent ? sent : bpf_ktime_get_ns());
	else if (m->kind == MSG_RESPONSE && !(m->proto == L7_HTTP && m->status == 1))
		// 1xx is not the response: the final one follows.
		return pending_response(pending, k, sent ? sent : bpf_ktime_get_ns(), m->proto == L7_DNS);
	return 0;
}

// l7_entry returns flow k's L7 stats in the map l7s, inserted if new; NULL
// if the map is full. As with account, each call site names its map.
static __always_inline struct l7_stats *l7_entry(void *l7s, void *k)
{
	struct l7_stats *s = bpf_map_lookup_elem(l7s, k);
	if (s)
		return s;
	// Zeroed, and not on the stack: l7_stats is larger than the stack
	// can spare; BPF_NOEXIST keeps another CPU's entry.
	static const struct l7_stats zero = {};
	bpf_map_update_elem(l7s, k, &zero, BPF_NOEXIST);
	return bpf_map_lookup_elem(l7s, k);
}

// send_name sends bytes from off of the payload, at most NAME_DATA, to
// user space.
static __always_inline void send_name(void *ctx, int xdp, struct flow_key *k, __u8 kind, __u32 off,
				      __u64 n)
{
	if (n > NAME_DATA)
		n = NAME_DATA;
	// Apart, so that clang does not fold the two bounds into one check
	// of n - 1, which leaves the verifier no lower bound of n.
	asm volatile("" : "+r"(n));
	if (n < 1)
		return;
	struct name_event *ev = bpf_ringbuf_reserve(&l7_names, sizeof(*ev), 0);
	if (!ev) {
		bump(COUNTER_NAMES_LOST, 1);
		return;
	}
	if (peek(ctx, xdp, off, ev->data, n)) {
		bpf_ringbuf_discard(ev, 0);
		return;
	}
	ev->flow = *k;
	ev->len = n;
	ev->kind = kind;
	bpf_ringbuf_submit(ev, 0);
}

// l7 classifies the payload of p, a TCP segment with payload or a UDP
// datagram to or from the DNS port, and counts the message in it.
static __always_inline void l7(void *ctx, int xdp, struct packet *p, void *data, void *data_end,
			       __u64 len)
{
	__u32 off = p->hdr_len;
	// The IP header's length, not the frame's: a short frame's padding
	// is no payload. GSO and BIG TCP packets may say 0 or less.
	__u64 end = len;
	if (p->ip_end > off && p->ip_end < end)
		end = p->ip_end;
	if (end <= off || off > 1024)
		return;
	__u32 plen = end - off;
	int dns = p->key.sport == dns_port || p->key.dport == dns_port;

	__u8 b[L7_PEEK] = {};
	void *pl = data + off;
	if (pl + L7_PEEK <= data_end) {
		__builtin_memcpy(b, pl, L7_PEEK);
	} else {
		__u64 n = plen < L7_PEEK ? plen : L7_PEEK;
		asm volatile("" : "+r"(n)); // as in send_name
		if (n < 1 || peek(ctx, xdp, off, b, n))
			return;
	}

	struct l7_msg m = {};
	if (p->key.proto == IPPROTO_UDP) {
		if (plen < 12)
			return;
		dns_header(p, b, 0, &m);
	} else {
		classify_tcp(p, b, plen, dns, &m);
	}
	if (!m.proto)
		return;

	__u64 sent = send_time(ctx, xdp);
	// The flow client to server: the packet's, turned round for a message
	// from the server. Each map at a call site of its own, as in
	// count_frame.
	__u64 lat;
	struct l7_stats *s;
	if (p->v4) {
		struct l7_pending_key4 pk = {
			.flow = {
				.saddr = m.reverse ? p->daddr4 : p->saddr4,
				.daddr = m.reverse ? p->saddr4 : p->daddr4,
				.sport = m.reverse ? p->key.dport : p->key.sport,
				.dport = m.reverse ? p->key.sport : p->key.dport,
				.proto = p->key.proto,
				.vlan = p->key.vlan,
			},
			.id = m.id,
		};
		if (m.name) {
			struct flow_key k6;
			key6_of4(&pk.flow, &k6);
			send_name(ctx, xdp, &k6, m.name, off + m.name_off, plen - m.name_off);
		}
		asm volatile("/* l7_pending4 */");
		lat = pending_msg(&l7_pending4, &pk, &m, sent);
		if (active_buf) {
			asm volatile("/* l7s4_b */");
			s = l7_entry(&l7s4_b, &pk.flow);
		} else {
			asm volatile("/* l7s4_a */");
			s = l7_entry(&l7s4_a, &pk.flow);
		}
	} else {
		struct l7_pending_key pk = {.flow = p->key, .id = m.id};
		if (m.reverse) {
			struct flow_key *k = &pk.flow;
			__u8 a[16];
			__builtin_memcpy(a, k->saddr, 16);
			__builtin_memcpy(k->saddr, k->daddr, 16);
			__builtin_memcpy(k->daddr, a, 16);
			__u16 port = k->sport;
			k->sport = k->dport;
			k->dport = port;
		}
		if (m.name)
			send_name(ctx, xdp, &pk.flow, m.name, off + m.name_off, plen - m.name_off);
		asm volatile("/* l7_pending6 */");
		lat = pending_msg(&l7_pending6, &pk, &m, sent);
		if (active_buf) {
			asm volatile("/* l7s6_b */");
			s = l7_entry(&l7s6_b, &pk.flow);
		} else {
			asm volatile("/* l7s6_a */");
			s = l7_entry(&l7s6_a, &pk.flow);
		}
	}
	if (!s) {
		if (m.kind != MSG_NONE)
			bump(COUNTER_L7_MAP_FULL, 1);
		return;
	}
	s->proto = m.proto;
	if (m.kind == MSG_REQUEST) {
		if (m.proto == L7_DNS)
			s->queries += 1;
		else
			s->methods[m.method & (METHOD_MAX - 1)] += 1;
		return;
	}
	if (m.kind != MSG_RESPONSE)
		return;
	if (m.proto == L7_DNS)
		s->rcodes[m.status & (L7_RCODES - 1)] += 1;
	else if (m.status < 6)
		s->statuses[m.status] += 1;
	if (lat) {
		s->latency[latency_bucket(lat)] += 1;
		s->latency_sum_ns += lat;
	} else if (!(m.proto == L7_HTTP && m.status == 1)) {
		s->unmatched += 1;
	}
}

// count_frame counts one frame (or GSO aggregate) of the program with
// context ctx; xdp is a constant: 1 in the XDP program, 0 in TC's.
static __always_inline void count_frame(void *ctx, int xdp, void *data, void *data_end, __u64 len,
					__u32 segs, __u16 vlan_meta, __u32 ifindex, __u8 point)
{
	struct packet p = {};
	if (parse(data, data_end, &p))
		return;
	// A VLAN tag taken off into skb metadata by the driver.
	if (!p.key.vlan)
		p.key.vlan = vlan_meta;
	if (segs < 1)
		segs = 1;
	// A GSO skb carries its headers once; on the wire each segment has them.
	__u64 bytes = len + (__u64)(segs - 1) * p.hdr_len;
	__u64 rtt = handshake(&p);
	// Last seen needs no more than a tick's precision, and jiffies cost
	// next to nothing (bpf_ktime_get_ns reads the clocksource, 30 to 40 ns
	// in this VM). First seen and the handshake RTT, taken once a flow,
	// use the precise clock.
	__u64 now = bpf_jiffies64();
	// Four call sites, each with its map a constant (see account). The
	// asm statements keep clang from merging them back into one call on a
	// map chosen at run time.
	if (p.v4) {
		struct flow_key4 k = {
			.saddr = p.saddr4,
			.daddr = p.daddr4,
			.sport = p.key.sport,
			.dport = p.key.dport,
			.proto = p.key.proto,
			.vlan = p.key.vlan,
		};
		__u32 half = active_buf;
		struct cache_slot *c = bpf_map_lookup_elem(&flow_cache, &half);
		if (!c)
			return;
		if (half) {
			asm volatile("/* flows4_b */");
			account4(&flows4_b, c, &k, now, bytes, segs, p.tcp_flags, rtt, ifindex, point);
		} else {
			asm volatile("/* flows4_a */");
			account4(&flows4_a, c, &k, now, bytes, segs, p.tcp_flags, rtt, ifindex, point);
		}
	} else if (active_buf) {
		asm volatile("/* flows6_b */");
		account(&flows6_b, &p.key, now, bytes, segs, p.tcp_flags, rtt, ifindex, point);
	} else {
		asm volatile("/* flows6_a */");
		account(&flows6_a, &p.key, now, bytes, segs, p.tcp_flags, rtt, ifindex, point);
	}
	// L7 only on its candidates: TCP that carries payload past its header
	// (a pure ACK's frame reaches no further), UDP to or from the DNS
	// port; never a later fragment (ports 0).
	if (len <= p.hdr_len || !p.key.sport || !p.key.dport)
		return;
	if (p.key.proto == IPPROTO_TCP ||
	    (p.key.proto == IPPROTO_UDP && (p.key.sport == dns_port || p.key.dport == dns_port)))
		l7(ctx, xdp, &p, data, data_end, len);
}

static __always_inline void count_skb(struct __sk_buff *skb, __u8 point)
{
	__u16 vlan = skb->vlan_present ? (skb->vlan_tci & 0x0fff) : 0;
	count_frame(skb, 0, (void *)(long)skb->data, (void *)(long)skb->data_end, skb->len,
		    skb->gso_segs, vlan, skb->ifindex, point);
}

// is_watched reports whether flowmap counts the ingress of ifindex.
static __always_inline int is_watched(__u32 ifindex)
{
	if (ifindex < WATCHED_ARRAY) {
		__u32 *w = bpf_map_lookup_elem(&watched, &ifindex);
		return w && *w;
	}
	return bpf_map_lookup_elem(&watched_hi, &ifindex) != 0;
}

SEC("tc")
int tc_ingress(struct __sk_buff *skb)
{
	count_skb(skb, POINT_TC_INGRESS);
	return TC_ACT_UNSPEC;
}

SEC("tc")
int tc_egress(struct __sk_buff *skb)
{
	// ingress_ifindex is skb_iif: 0 for packets this host sends itself.
	__u32 iif = skb->ingress_ifindex;
	if (iif && is_watched(iif))
		return TC_ACT_UNSPEC;
	count_skb(skb, POINT_TC_EGRESS);
	return TC_ACT_UNSPEC;
}

SEC("xdp")
int xdp_ingress(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	count_frame(ctx, 1, data, data_end, data_end - data, 1, 0, ctx->ingress_ifindex, POINT_XDP);
	return XDP_PASS;
}

// The fields of struct sock that tcp_retransmit reads, relocated by CO-RE
// against the running kernel's BTF.
#pragma clang attribute push(__attribute__((preserve_access_index)), apply_to = record)
struct sock_common {
	union {
		struct {
			__be32 skc_daddr;
			__be32 skc_rcv_saddr;
		};
	};
	union {
		struct {
			__be16 skc_dport;
			__u16 skc_num;
		};
	};
	unsigned short skc_family;
	struct in6_addr skc_v6_daddr;
	struct in6_addr skc_v6_rcv_saddr;
};
struct sock {
	struct sock_common __sk_common;
};
#pragma clang attribute pop

#define AF_INET 2
#define AF_INET6 10

// tcp_retransmit counts a retransmitted segment of a local socket on the
// flow direction it belongs to (local address and port to remote), if that
// direction was counted since the last drain (the segment itself is
// counted after the tracepoint, so a retransmit on a flow idle for a whole
// interval is missed).
SEC("tp_btf/tcp_retransmit_skb")
int BPF_PROG(tcp_retransmit, const struct sock *sk)
{
	struct flow_key key = {.proto = IPPROTO_TCP};
	unsigned short family = sk->__sk_common.skc_family;
	if (family == AF_INET) {
		key.saddr[10] = key.saddr[11] = 0xff;
		key.daddr[10] = key.daddr[11] = 0xff;
		__be32 s = sk->__sk_common.skc_rcv_saddr, d = sk->__sk_common.skc_daddr;
		__builtin_memcpy(&key.saddr[12], &s, 4);
		__builtin_memcpy(&key.daddr[12], &d, 4);
	} else if (family == AF_INET6) {
		__builtin_memcpy(key.saddr, &sk->__sk_common.skc_v6_rcv_saddr, 16);
		__builtin_memcpy(key.daddr, &sk->__sk_common.skc_v6_daddr, 16);
	} else {
		return 0;
	}
	key.sport = sk->__sk_common.skc_num;
	key.dport = bpf_ntohs(sk->__sk_common.skc_dport);

	// Only flows a watched interface counted: the tracepoint sees every
	// socket of the machine, and must not fill the map with flows that
	// no watched interface carries. IPv4, and IPv4-mapped addresses of a
	// dual-stack socket, are in the IPv4 maps.
	struct flow_stats *s;
	__u32 *w6 = (__u32 *)key.saddr;
	if (w6[0] == 0 && w6[1] == 0 && w6[2] == bpf_htonl(0xffff)) {
		struct flow_key4 k4 = {.sport = key.sport, .dport = key.dport, .proto = IPPROTO_TCP};
		__builtin_memcpy(&k4.saddr, &key.saddr[12], 4);
		__builtin_memcpy(&k4.daddr, &key.daddr[12], 4);
		s = bpf_map_lookup_elem(active_buf ? (void *)&flows4_b : (void *)&flows4_a, &k4);
	} else {
		s = bpf_map_lookup_elem(active_buf ? (void *)&flows6_b : (void *)&flows6_a, &key);
	}
	if (s)
		s->retransmits++;
	return 0;
}

// clock_probe samples jiffies and CLOCK_MONOTONIC together, for Go to turn
// last_jiffies into times. Go runs it with BPF_PROG_TEST_RUN; it is never
// attached.
SEC("xdp")
int clock_probe(struct xdp_md *ctx)
{
	probe_jiffies = bpf_jiffies64();
	probe_ns = bpf_ktime_get_ns();
	return XDP_PASS;
}
