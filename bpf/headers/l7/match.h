// SPDX-License-Identifier: GPL-2.0
//
// match.h matches responses to their requests, for the latency between
// them: a request's time waits in a pending map until its response. A DNS
// response matches only the query with its id, on its flow turned round,
// that asked its question: only such an answer may name addresses.

#pragma once

#include "common.h"
#include "l7/msg.h"

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
	__u64 question;        // DNS: the latest query's dns_question (0: none that reads)
};

// l7_pending4, l7_pending6: l7_pending_key(4) -> l7_pending, from a
// DNS query until its response, and the requests of other protocols that
// the drain carried over from the L7 entries it took (see l7_stats'
// wait_*) until theirs. LRU: requests never answered age out.
#define PENDING_MAP(name, key_type)                                                                \
	struct {                                                                                   \
		__uint(type, BPF_MAP_TYPE_LRU_HASH);                                               \
		__uint(max_entries, 16384);                                                        \
		__type(key, key_type);                                                             \
		__type(value, struct l7_pending);                                                  \
	} name SEC(".maps")

PENDING_MAP(l7_pending4, struct l7_pending_key4);
PENDING_MAP(l7_pending6, struct l7_pending_key);

// queue_push notes a request's time now in the queue ts, head, tail
// (l7_pending's or l7_stats' wait_*). Deeper pipelines than L7_PIPELINE
// lose their latest requests' times: their responses count as unmatched.
static __always_inline void queue_push(__u64 *ts, __u32 *head, __u32 *tail, __u64 now)
{
	if (*tail - *head < L7_PIPELINE) {
		ts[*tail & (L7_PIPELINE - 1)] = now;
		*tail += 1;
	}
}

// queue_pop returns the time from the oldest request of a queue that has
// one to now, and takes it off; at least 1.
static __always_inline __u64 queue_pop(__u64 *ts, __u32 *head, __u64 now)
{
	__u64 t = ts[*head & (L7_PIPELINE - 1)];
	*head += 1;
	// A request's send time may lie ahead of the response's clock read
	// (a paced TCP sender's departure time): no negative latency.
	__u64 lat = now > t ? now - t : 0;
	return lat ? lat : 1;
}

// pending_request notes the time of a request of flow k in the map
// pending (a constant at each call site, as in account), and for DNS its
// question.
static __always_inline void pending_request(void *pending, void *k, __u64 now, __u64 question)
{
	struct l7_pending *q = bpf_map_lookup_elem(pending, k);
	if (!q) {
		struct l7_pending n = {.ts = {now}, .tail = 1, .question = question};
		bpf_map_update_elem(pending, k, &n, BPF_ANY);
		return;
	}
	// A query sent again with its id (a retry) asks the same; the
	// latest question is the one its answer must repeat.
	q->question = question;
	queue_push(q->ts, &q->head, &q->tail, now);
}

// pending_response returns the time since the oldest request of flow k
// that waits in the map pending, and takes it off; 0 if none waits. A DNS
// response (dns set) must carry the question its query asked: one that
// does not is no answer to it (a forgery, or a stray), and the query waits
// on for its own.
static __always_inline __u64 pending_response(void *pending, void *k, __u64 now, int dns,
					      __u64 question)
{
	struct l7_pending *q = bpf_map_lookup_elem(pending, k);
	if (!q || q->head == q->tail)
		return 0;
	if (dns && (!question || q->question != question))
		return 0;
	__u64 lat = queue_pop(q->ts, &q->head, now);
	// A DNS id answers once, and the requests that the drain carried
	// over (see l7_stats' wait_*) wait only until answered: the entry
	// goes when none waits.
	if (dns || q->head == q->tail)
		bpf_map_delete_elem(pending, k);
	return lat;
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

// msg_time returns a message's time: when its sender's TCP stack sent it
// (sent, see send_time) where the skb carries that, else now.
static __always_inline __u64 msg_time(__u64 sent)
{
	return sent ? sent : bpf_ktime_get_ns();
}

// pending_msg notes a request's time in the map pending, or takes a
// response's request off it and returns the latency (0 if unknown: no
// request matched). The message's time is when its sender's TCP stack sent
// it, where the skb carries that (see send_time), else now. question is a
// DNS message's dns_question, 0 for other protocols.
static __always_inline __u64 pending_msg(void *pending, void *k, struct l7_msg *m, __u64 sent,
					 __u64 question)
{
	if (m->kind == MSG_REQUEST)
		pending_request(pending, k, msg_time(sent), question);
	else if (m->kind == MSG_RESPONSE && !(m->proto == L7_HTTP && m->status == 1))
		// 1xx is not the response: the final one follows.
		return pending_response(pending, k, msg_time(sent), m->proto == L7_DNS, question);
	return 0;
}
