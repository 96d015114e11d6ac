// SPDX-License-Identifier: GPL-2.0
//
// count.h adds frames to their flow direction's entry in the flow maps,
// through a per-CPU cache of the last IPv4 flow counted.

#pragma once

#include "common.h"
#include "parse.h"

// point is where a flow direction was counted.
enum point {
	POINT_NONE = 0,
	POINT_TC_INGRESS = 1,
	POINT_TC_EGRESS = 2,
	POINT_XDP = 3,
};

// flow_stats is what the CPUs counted for one flow direction since the
// last drain. One for all CPUs: the counts are added atomically, the flags
// ORed atomically; first_ns, ifindex and point are written once when the
// entry is made (or, for an entry a retransmit made, by the first packet);
// last_jiffies and syn_rtt_ns are plain stores, a benign race: CPUs that
// count the same flow at once store the same tick (or one a tick older),
// and a flow has one SYN-ACK.
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

// or_flags ORs flags into s->tcp_flags, atomically. BPF has a 32-bit
// atomic OR only from -mcpu=v3 on (bpf2go builds v1), so it ORs the
// aligned 64-bit word that starts with tcp_flags, whose low 16 bits they
// are on a little-endian target: point and pad are left as they are. Most
// packets bring no new flag, and then cost a compare, not a locked OR.
_Static_assert(__builtin_offsetof(struct flow_stats, tcp_flags) % 8 == 0,
	       "or_flags needs tcp_flags 8-byte aligned");
_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "or_flags needs little-endian");
static __always_inline void or_flags(struct flow_stats *s, __u16 flags)
{
	if ((s->tcp_flags & flags) != flags)
		__sync_fetch_and_or((__u64 *)&s->tcp_flags, (__u64)flags);
}

// Force BTF for a type that Go needs beyond map keys and values.
const enum point *unused_point __attribute__((unused));

#define MAX_FLOWS 65536 // Go sets max_entries from --max-flows

// flows4_a, flows4_b: flow_key4 -> flow_stats, and flows6_a, flows6_b:
// flow_key -> flow_stats. Shared, not per CPU: a per-CPU value takes
// max_entries × value size on every possible CPU (14.7 MiB a CPU at 65,536
// flows, 1.9 GiB on 128 CPUs), and a drain reads every CPU's copy; a
// shared one costs its atomic adds. A double buffer: the programs
// write the half named by active_buf while Go drains the other, so no
// increment is lost between a read and its delete. Not LRU: a full map
// refuses new flows and counts what it refused (COUNTER_MAP_FULL_*), where
// an LRU would silently evict a live flow's counts.
#define FLOW_MAP(name, key_type)                                                                   \
	struct {                                                                                   \
		__uint(type, BPF_MAP_TYPE_HASH);                                                   \
		__uint(max_entries, MAX_FLOWS);                                                    \
		__type(key, key_type);                                                             \
		__type(value, struct flow_stats);                                                  \
	} name SEC(".maps")

FLOW_MAP(flows4_a, struct flow_key4);
FLOW_MAP(flows4_b, struct flow_key4);
FLOW_MAP(flows6_a, struct flow_key);
FLOW_MAP(flows6_b, struct flow_key);

// seen4 (IPv4) and seen6: the TCP flow directions that a watched interface
// counted lately -> 1, so that the retransmit tracepoint, which sees every
// socket of the machine, counts a retransmit on such a direction even when
// the direction has no entry in the active half (idle since the last
// drain), and never inserts one for a flow no watched interface carries.
// account adds a direction when it inserts its entry; LRU, so that the
// directions longest without a new entry go first. The value is an enum
// seen: the direction that opened its connection is the client, whose
// first TLS ClientHello alone names the server (see tls.h).
#define SEEN_MAP(name, key_type)                                                                   \
	struct {                                                                                   \
		__uint(type, BPF_MAP_TYPE_LRU_HASH);                                               \
		__uint(max_entries, MAX_FLOWS);                                                    \
		__type(key, key_type);                                                             \
		__type(value, __u8);                                                               \
	} name SEC(".maps")

SEEN_MAP(seen4, struct flow_key4);
SEEN_MAP(seen6, struct flow_key);

// seen is what the seen maps know of a TCP flow direction.
enum seen {
	SEEN_ANY = 1,   // counted lately
	SEEN_SYN = 2,   // and it sent a SYN without ACK: the connection's client
	SEEN_HELLO = 3, // a client whose ClientHello went to user space
};

// see notes the TCP flow direction key in the map seen (see seen4), whose
// frame has the flags flags: a lookup, which keeps it in the LRU, and an
// insert if it is not there. A SYN (a connection's first frame, so one
// that inserts its entry) marks its direction the client, anew if the
// tuple served an earlier connection.
static __always_inline void see(void *seen, void *key, __u16 flags)
{
	__u8 v = (flags & FLAG_SYN_ONLY) ? SEEN_SYN : SEEN_ANY;
	__u8 *s = bpf_map_lookup_elem(seen, key);
	if (s) {
		if (v == SEEN_SYN)
			*s = SEEN_SYN;
		return;
	}
	bpf_map_update_elem(seen, key, &v, BPF_ANY);
}

// cache_slot is the IPv4 flow direction a CPU counted last, with what it
// counted of it since it was last added to the flow map: consecutive
// packets of one flow (a burst, a GSO train) then cost an array slot's
// compare and adds instead of a hash lookup (about 40 ns a packet on real
// traffic here, where the hash's bucket, key and value are cold), and no
// atomic adds on a value other CPUs may write.
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

// account adds one frame (or GSO aggregate), seen at jiffies now, to its
// flow in the map flows. It looks up first and adds in place; it inserts
// only on a miss, and then notes a TCP (tcp set) direction in the map seen.
// Each call site must name its maps as constants: the verifier inlines the
// lookup only then, which saves a helper call and a retpoline (30 to 45 ns
// here).
static __always_inline int account(void *flows, void *seen, void *key, int tcp, __u64 now,
				   __u64 bytes, __u64 packets, __u16 flags, __u64 rtt,
				   __u32 ifindex, __u8 point)
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
		if (err == 0) {
			if (tcp)
				see(seen, key, flags);
			return 1;
		}
		// -EEXIST: another CPU inserted the key since our lookup.
		s = bpf_map_lookup_elem(flows, key);
		if (!s) {
			bump(COUNTER_MAP_FULL_PACKETS, packets);
			bump(COUNTER_MAP_FULL_BYTES, bytes);
			return 0;
		}
	}
	// An entry a retransmit made (see retransmit_in) has no first
	// packet yet: this is it. CPUs that race here store nearly the same.
	if (!s->first_ns) {
		s->first_ns = bpf_ktime_get_ns();
		s->ifindex = ifindex;
		s->point = point;
	}
	s->last_jiffies = now;
	__sync_fetch_and_add(&s->bytes, bytes);
	__sync_fetch_and_add(&s->packets, packets);
	or_flags(s, flags);
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
			__sync_fetch_and_add(&s->bytes, c->bytes);
			__sync_fetch_and_add(&s->packets, c->packets);
			or_flags(s, c->tcp_flags);
			if (c->last_jiffies > s->last_jiffies)
				s->last_jiffies = c->last_jiffies;
		}
	}
	c->valid = 0;
	if (!account(flows, &seen4, k, k->proto == IPPROTO_TCP, now, bytes, packets, flags, rtt,
		     ifindex, point))
		return;
	c->key = *k;
	c->bytes = 0;
	c->packets = 0;
	c->tcp_flags = 0;
	c->last_jiffies = 0;
	c->valid = 1;
}
