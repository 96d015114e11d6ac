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
// and a flow has one SYN-ACK. accepts, syns and syn_retries are the
// handshake's health, folded in from its attempt when the attempt leaves
// half_open (see handshake.h): written when the entry is made, so that a
// new TCP flow costs no insert into the health map; plain, saturating adds
// when an entry already there takes a second attempt of its tuple.
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
	__u8 accepts;     // on the server's direction: SYN-ACKs answering a SYN (HEALTH_ACCEPT)
	__u16 syns;       // on the client's direction: HEALTH_SYN
	__u16 syn_retries; // HEALTH_SYN_RETRY
};

// or_flags ORs flags into s->tcp_flags, atomically. BPF has a 32-bit
// atomic OR only from -mcpu=v3 on (bpf2go builds v1), so it ORs the
// aligned 64-bit word that starts with tcp_flags, whose low 16 bits they
// are on a little-endian target: the fields after them are left as they
// are (an OR of zeros). Most
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

// seen4 (IPv4) and seen6: the TCP flows that a watched interface counted
// lately, by one of their directions -> an enum seen, so that the
// retransmit tracepoint, which sees every socket of the machine, counts a
// retransmit on such a flow even when the direction has no entry in the
// active half (idle since the last drain), and never inserts one for a
// flow no watched interface carries. account notes a direction when it
// inserts its entry, unless the other direction of its flow is noted
// already: one entry a connection, its client's, which the retransmit
// tracepoint finds by either direction. LRU, so that the flows longest
// without a new entry go first. The value is an enum seen: the direction
// that opened its connection is the client, whose first TLS ClientHello
// alone names the server (see tls.h).
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

// see notes the TCP flow direction key (its other direction: rev) in the
// map seen (see seen4), whose frame has the flags flags: a lookup, which
// keeps it in the LRU, and an insert if neither direction is there. A
// SYN (a connection's client, whose entry is made when its attempt leaves
// half_open) marks its direction the client, anew if the tuple served an
// earlier connection.
static __always_inline void see(void *seen, void *key, void *rev, __u16 flags)
{
	__u8 v = (flags & FLAG_SYN_ONLY) ? SEEN_SYN : SEEN_ANY;
	__u8 *s = bpf_map_lookup_elem(seen, key);
	if (s) {
		if (v == SEEN_SYN)
			*s = SEEN_SYN;
		return;
	}
	if (v == SEEN_ANY && bpf_map_lookup_elem(seen, rev))
		return;
	bpf_map_update_elem(seen, key, &v, BPF_ANY);
}

// attempt is a TCP connection attempt whose handshake has not completed
// (see handshake.h): what its client's SYNs, and the server's answer
// (SYN-ACKs, or the RST refusing it), would have added to their
// directions' flow entries, and what they count of the connection's
// health. Shared; the counts are added atomically, times and flags stored
// (one sender a direction).
struct attempt {
	// The client's SYNs.
	__u64 syn_ns;       // bpf_ktime_get_ns of the last SYN (opening or retry)
	__u64 first_ns;     // of the first SYN
	__u64 last_jiffies; // of the last SYN
	__u64 bytes;
	__u64 packets;
	__u32 ifindex; // where the first SYN was counted
	__u32 retransmits; // the client socket's SYNs sent again (the retransmit tracepoint)
	__u32 syns;    // HEALTH_SYN
	__u32 retries; // HEALTH_SYN_RETRY
	__u16 tcp_flags;
	__u8 point;
	__u8 answer;   // enum answer: the last SYN's
	__u16 accepts;  // SYN-ACKs that answered a pending SYN
	__u16 refusals; // RSTs that answered a pending SYN
	// The server's answers.
	__u64 ans_first_ns;
	__u64 ans_last_jiffies;
	__u64 ans_bytes;
	__u64 ans_packets;
	__u64 rtt_ns; // the last SYN to the SYN-ACK answering it
	__u32 ans_ifindex;
	__u16 ans_flags;
	__u8 ans_point;
	__u8 pad;
};

// answer is how the server answered an attempt's last SYN.
enum answer {
	ANSWER_NONE = 0,
	ANSWER_SYN_ACK = 1, // accepted: HEALTH_ACCEPT
	ANSWER_RST = 2,     // refused: HEALTH_REFUSAL
};

// Force BTF for a type that Go needs beyond map keys and values.
const enum answer *unused_answer __attribute__((unused));

#define MAX_HALF_OPEN 16384 // Go sets max_entries: a quarter of --max-flows

// half_open: the client direction of an attempt (IPv4 mapped) -> its
// attempt. LRU: a SYN flood from random sources evicts its own oldest
// attempts and never fills the flow maps. Go's drain takes out the
// attempts refused or not completed within synTimeout and counts them as
// flows; it counts those the LRU evicted first (see halfopen.go).
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_HALF_OPEN);
	__type(key, struct flow_key);
	__type(value, struct attempt);
} half_open SEC(".maps");

// sat16 returns a + b, at most 0xffff.
static __always_inline __u16 sat16(__u32 a, __u32 b)
{
	__u32 x = a + b;
	return x > 0xffff ? 0xffff : x;
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

// reverse_key4 fills r with the other direction of the TCP or UDP flow k.
static __always_inline void reverse_key4(const struct flow_key4 *k, struct flow_key4 *r)
{
	r->saddr = k->daddr;
	r->daddr = k->saddr;
	r->sport = k->dport;
	r->dport = k->sport;
	r->proto = k->proto;
	r->pad = 0;
	r->vlan = k->vlan;
}

// merge_dir adds v, a flow direction's counts, to its entry key in the
// map flows, making it if it is not there; a full map refuses it as it
// refuses a frame.
static __always_inline void merge_dir(void *flows, void *key, struct flow_stats *v)
{
	if (bpf_map_update_elem(flows, key, v, BPF_NOEXIST) == 0)
		return;
	struct flow_stats *s = bpf_map_lookup_elem(flows, key);
	if (!s) {
		bump(COUNTER_MAP_FULL_PACKETS, v->packets);
		bump(COUNTER_MAP_FULL_BYTES, v->bytes);
		return;
	}
	if (!s->first_ns || s->first_ns > v->first_ns) {
		s->first_ns = v->first_ns;
		s->ifindex = v->ifindex;
		s->point = v->point;
	}
	__sync_fetch_and_add(&s->bytes, v->bytes);
	__sync_fetch_and_add(&s->packets, v->packets);
	or_flags(s, v->tcp_flags);
	if (v->syn_rtt_ns)
		s->syn_rtt_ns = v->syn_rtt_ns;
	s->accepts = s->accepts + v->accepts > 0xff ? 0xff : s->accepts + v->accepts;
}

// promote takes the attempt whose client direction is k6 (IPv4 mapped)
// out of half_open, if one waits there that was not refused, and folds it
// into n, the new entry of that direction, and into m, the entry of the
// server's direction (m->packets 0 if the server sent nothing); it
// returns whether it did. The delete decides between the programs and
// Go's drain, which takes attempts out too: the one whose delete succeeds
// counts the attempt, once.
static __always_inline int promote(struct flow_key *k6, struct flow_stats *n, struct flow_stats *m)
{
	struct attempt *h = bpf_map_lookup_elem(&half_open, k6);
	if (!h || h->answer == ANSWER_RST)
		return 0;
	__u64 bytes = h->bytes, packets = h->packets;
	n->first_ns = h->first_ns;
	n->ifindex = h->ifindex;
	n->point = h->point;
	n->tcp_flags |= h->tcp_flags;
	n->retransmits = h->retransmits;
	n->syns = sat16(h->syns, 0);
	n->syn_retries = sat16(h->retries, 0);
	m->bytes = h->ans_bytes;
	m->packets = h->ans_packets;
	m->first_ns = h->ans_first_ns;
	m->last_jiffies = h->ans_last_jiffies;
	m->syn_rtt_ns = h->rtt_ns;
	m->ifindex = h->ans_ifindex;
	m->tcp_flags = h->ans_flags;
	m->point = h->ans_point;
	m->accepts = h->accepts > 0xff ? 0xff : h->accepts;
	if (bpf_map_delete_elem(&half_open, k6))
		return 0;
	n->bytes += bytes;
	n->packets += packets;
	bump(COUNTER_HALF_OPEN_PROMOTED, 1);
	bump(COUNTER_HALF_OPEN_PROMOTED_PACKETS, packets + m->packets);
	bump(COUNTER_HALF_OPEN_PROMOTED_BYTES, bytes + m->bytes);
	return 1;
}

// account adds one frame (or GSO aggregate), seen at jiffies now, to its
// flow in the map flows. It looks up first and adds in place; it inserts
// only on a miss. A TCP (tcp set) direction's new entry takes in its
// connection's attempt if one waits in half_open (the client's first
// packet after its SYNs: the handshake completed), and makes the server's
// direction's entry from the attempt's answer; and it notes the direction
// in the map seen. v4 (a constant) says key is a flow_key4. It returns 0
// if the map refused the frame.
// Each call site must name its maps as constants: the verifier inlines the
// lookup only then, which saves a helper call and a retpoline (30 to 45 ns
// here).
static __always_inline int account(void *flows, void *seen, void *key, int v4, int tcp,
				   __u64 now, __u64 bytes, __u64 packets, __u16 flags,
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
			.ifindex = ifindex,
			.tcp_flags = flags,
			.point = point,
		};
		struct flow_stats m = {};
		// The other direction, and the key IPv4 mapped (half_open's).
		union {
			struct flow_key4 k4;
			struct flow_key k6;
		} rev;
		struct flow_key k6;
		int promoted = 0;
		if (tcp) {
			if (v4) {
				reverse_key4(key, &rev.k4);
				key6_of4(key, &k6);
				promoted = promote(&k6, &n, &m);
			} else {
				reverse_key(key, &rev.k6);
				promoted = promote(key, &n, &m);
			}
		}
		long err = bpf_map_update_elem(flows, key, &n, BPF_NOEXIST);
		if (promoted && m.packets)
			merge_dir(flows, &rev, &m);
		if (err == 0) {
			if (tcp)
				see(seen, key, &rev, n.tcp_flags);
			return 1;
		}
		// -EEXIST: another CPU inserted the key since our lookup.
		if (promoted) {
			merge_dir(flows, key, &n);
			return 1;
		}
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
	return 1;
}

static __always_inline int key4_eq(const struct flow_key4 *a, const struct flow_key4 *b)
{
	const __u64 *x = (const __u64 *)a, *y = (const __u64 *)b;
	return x[0] == y[0] && x[1] == y[1];
}

// account4 counts an IPv4 frame in the map flows of the active half, whose
// cache slot on this CPU is c: in the slot if it holds the frame's flow,
// else in the map, after adding the slot's counts to its flow there.
static __always_inline void account4(void *flows, struct cache_slot *c, struct flow_key4 *k,
				     __u64 now, __u64 bytes, __u64 packets, __u16 flags,
				     __u32 ifindex, __u8 point)
{
	if (c->valid && key4_eq(&c->key, k)) {
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
	if (!account(flows, &seen4, k, 1, k->proto == IPPROTO_TCP, now, bytes, packets, flags,
		     ifindex, point))
		return;
	c->key = *k;
	c->bytes = 0;
	c->packets = 0;
	c->tcp_flags = 0;
	c->last_jiffies = 0;
	c->valid = 1;
}
