// SPDX-License-Identifier: GPL-2.0
//
// stats.h counts L7 messages, per client-to-server flow: requests by
// method, responses by status, and the latency between them.

#pragma once

#include "common.h"
#include "l7/dns.h"
#include "l7/http.h"
#include "l7/match.h"
#include "l7/msg.h"

// L7_BUCKETS latency buckets, four to an octave: bucket i holds times from
// 2^(10 + i/4) * (1 + (i%4)/4) ns, 1 us to about 68 s; the last bucket
// holds all above.
#define L7_BUCKETS 104

// L7_WRAPS is the slots of l7_stats.latency_wraps.
#define L7_WRAPS 4

// l7_stats is one client-to-server flow's messages since the last drain.
// One for all CPUs, added to atomically (see the L7 maps for why not per
// CPU); proto is a plain store, as every CPU stores the same value.
//
// The latency histogram takes 16 bits a bucket, four to a word (see
// count_latency): a bucket counts to 32,767 in its low 15 bits and, past
// that, moves 32,768 of its count into a slot of latency_wraps: slot
// (bucket + 1) << 56 | n holds n × 32,768 more of the bucket's samples.
// Half the size of 32-bit buckets (208 bytes, not 416), and as exact: in
// one drain interval a flow's responses rarely pass 32,767 in a bucket,
// and more than L7_WRAPS buckets of it never in practice (past that, the
// last slot takes the others' wraps: the count stays exact, its bucket
// not).
struct l7_stats {
	__u64 latency_sum_ns; // over the matched responses
	__u64 latency[L7_BUCKETS / 4]; // request (first byte) to response (first byte)
	__u64 latency_wraps[L7_WRAPS];
	__u32 methods[METHOD_MAX]; // HTTP requests by method
	__u32 statuses[6]; // HTTP responses by status class: [1] is 1xx … [5] 5xx
	__u32 rcodes[L7_RCODES]; // DNS responses by response code
	__u32 queries;   // DNS queries
	__u32 unmatched; // responses without a request seen: latency unknown
	__u8 proto;      // enum l7_proto
	__u8 pad[7];
	// The times of the flow's requests that wait for a response, as
	// l7_pending holds them (see match.h), for every protocol but DNS,
	// whose requests wait in l7_pending4/6 by id: kept in the entry
	// that counts them, a flow's first request makes one insert, not
	// two, and a request and its response look up one entry, not two.
	// The drain carries the requests still waiting when it takes the
	// entry over to l7_pending4/6, where a response finds them.
	__u64 wait_ts[L7_PIPELINE];
	__u32 wait_head;
	__u32 wait_tail;
};

#define MAX_L7_FLOWS 16384 // Go sets max_entries from --max-l7-flows

// l7s4_a, l7s4_b (IPv4), l7s6_a, l7s6_b: the client-to-server flow key ->
// l7_stats, double-buffered by active_buf as the flow maps are. Not LRU: a
// full map refuses new flows and counts their messages (l7_lost). Not
// preallocated: an entry is 392 bytes, and most flows carry no message
// (preallocated, a flow's first request would cost about 0.5 us less).
// Not per CPU: a non-preallocated per-CPU value comes from the kernel's
// atomic per-CPU pool, a few pages that a worker refills, which a burst
// of new flows empties: inserts then fail with -ENOMEM though the map is
// nearly empty (20,000 new flows as fast as BPF_PROG_TEST_RUN runs them
// on 2 CPUs: 6,309 refused, the map at 13,691 of 65,536). A shared value
// comes from the slab, through BPF's per-CPU cache of free objects, which
// the same burst never emptied; the price is an atomic add per counter.
#define L7_MAP(name, key_type)                                                                     \
	struct {                                                                                   \
		__uint(type, BPF_MAP_TYPE_HASH);                                                   \
		__uint(map_flags, BPF_F_NO_PREALLOC);                                              \
		__uint(max_entries, MAX_L7_FLOWS);                                                 \
		__type(key, key_type);                                                             \
		__type(value, struct l7_stats);                                                    \
	} name SEC(".maps")

L7_MAP(l7s4_a, struct flow_key4);
L7_MAP(l7s4_b, struct flow_key4);
L7_MAP(l7s6_a, struct flow_key);
L7_MAP(l7s6_b, struct flow_key);

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

// count_latency adds a sample to bucket b (below L7_BUCKETS) of s's
// latency histogram. The bucket's 16 bits are a 15-bit count and a guard
// bit: the one add that takes the count from 32,767 to 32,768 (only one
// sees 32,767 before it) takes 32,768 back out, which clears the guard,
// and adds a wrap to the bucket's slot. Between the two, the bucket still
// reads its exact count (the guard is worth the 32,768 on their way), and
// adds of other CPUs cannot carry into the next bucket: 32,768 of them
// would have to come in between.
static __always_inline void count_latency(struct l7_stats *s, __u32 b)
{
	__u32 i = b >> 2;
	if (i >= L7_BUCKETS / 4)
		return;
	__u64 *w = &s->latency[i];
	__u32 shift = (b & 3) * 16;
	// 64-bit atomics: the programs are built for BPF v1, which returns no
	// old value from a 32-bit add.
	__u64 old = __sync_fetch_and_add(w, 1ULL << shift);
	if (((old >> shift) & 0x7fff) != 0x7fff)
		return;
	__sync_fetch_and_add(w, -(0x8000ULL << shift));
	__u64 tag = (__u64)(b + 1) << 56;
#pragma unroll
	for (int j = 0; j < L7_WRAPS; j++) {
		__u64 v = s->latency_wraps[j];
		if (v == 0)
			v = __sync_val_compare_and_swap(&s->latency_wraps[j], 0, tag | 1);
		if (v == 0)
			return; // claimed, with this wrap
		if ((v >> 56 << 56) == tag || j == L7_WRAPS - 1) {
			__sync_fetch_and_add(&s->latency_wraps[j], 1);
			return;
		}
	}
}

// l7_loss is why a message was not counted: why its flow's entry could
// not be inserted into the L7 map.
enum l7_loss {
	L7_LOSS_MAP_FULL = 0, // -E2BIG: the map holds max_entries flows
	L7_LOSS_NO_MEMORY,    // -ENOMEM: no memory for the entry, though the map had room
	L7_LOSS_BUSY,         // -EBUSY, -EDEADLK, -ETIMEDOUT: the bucket's lock was not taken
	L7_LOSS_OTHER,        // any other error
	L7_LOSS_MAX,
};

const enum l7_loss *unused_l7_loss __attribute__((unused));

// The errors of bpf_map_update_elem, as asm-generic/errno.h numbers them.
#ifndef E2BIG
#define E2BIG 7
#endif
#ifndef ENOMEM
#define ENOMEM 12
#endif
#ifndef EBUSY
#define EBUSY 16
#endif
#ifndef EDEADLK
#define EDEADLK 35
#endif
#ifndef ETIMEDOUT
#define ETIMEDOUT 110
#endif

#define L7_PROTOS 16 // enum l7_proto's values, rounded up to a power of two

// l7_lost: enum l7_loss * L7_PROTOS + enum l7_proto -> per-CPU count of
// the messages (or, for a protocol that l7 only notes, the payloads that
// told it) not counted.
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, L7_LOSS_MAX * L7_PROTOS);
	__type(key, __u32);
	__type(value, __u64);
} l7_lost SEC(".maps");

// l7_lose counts a message of protocol proto that l7_entry could not
// insert, under the reason its error err tells.
static __always_inline void l7_lose(long err, __u8 proto)
{
	__u32 reason = L7_LOSS_OTHER;
	if (err == -E2BIG)
		reason = L7_LOSS_MAP_FULL;
	else if (err == -ENOMEM)
		reason = L7_LOSS_NO_MEMORY;
	else if (err == -EBUSY || err == -EDEADLK || err == -ETIMEDOUT)
		reason = L7_LOSS_BUSY;
	__u32 idx = reason * L7_PROTOS + (proto & (L7_PROTOS - 1));
	__u64 *c = bpf_map_lookup_elem(&l7_lost, &idx);
	if (c)
		*c += 1;
}

// l7_entry returns flow k's L7 stats in the map l7s, inserted if new; NULL,
// with the insert's error in *err, if it could not be inserted. As with
// account, each call site names its map.
static __always_inline struct l7_stats *l7_entry(void *l7s, void *k, long *err)
{
	struct l7_stats *s = bpf_map_lookup_elem(l7s, k);
	if (s)
		return s;
	// Zeroed, and not on the stack: l7_stats is larger than the stack
	// can spare. BPF_NOEXIST keeps another CPU's entry: -EEXIST then,
	// and the lookup finds that entry.
	static const struct l7_stats zero = {};
	*err = bpf_map_update_elem(l7s, k, &zero, BPF_NOEXIST);
	return bpf_map_lookup_elem(l7s, k);
}
