// SPDX-License-Identifier: GPL-2.0
//
// handshake.h keeps a TCP connection's opening SYNs, and the server's
// answer, apart from the flow maps until the handshake completes, and
// times the handshake (SYN to SYN-ACK).
//
// A SYN without ACK goes to the half_open LRU map only (count.h): one
// insert, no entry in the flow, seen or health maps. The SYN-ACK, or the
// RST refusing the attempt, is added to the attempt too. The client's next
// packet (its ACK, or data) makes its direction's flow entry, which takes
// in the attempt's SYNs and health, and makes the server's direction's
// entry from the answer (see account). A SYN flood from random sources
// then fills half_open, whose oldest attempts the kernel evicts, and never
// the flow maps, so the flows that carry data keep their room; a flood
// against a listening port, whose every SYN is answered by a SYN-ACK that
// no client ACKs, too. Go's drain takes out the attempts refused, and
// those not completed synTimeout after their last SYN, and counts them as
// flows; it counts the attempts the LRU evicted before either from the
// COUNTER_HALF_OPEN_ counters (see halfopen.go). A TCP Fast Open SYN's
// payload is counted, not sniffed.

#pragma once

#include "common.h"
#include "count.h"
#include "health.h"
#include "parse.h"

// SYN_STALE_NS is how old a pending SYN may be and still make a SYN on its
// key a retry: Linux gives up a connect after about 130 s of retries.
#define SYN_STALE_NS (180ULL * 1000000000ULL)

// hold_syn adds a SYN of the client direction k (a frame of bytes over
// packets segments, with flags, at jiffies now_j) to its attempt in
// half_open: a retry if the attempt's last SYN is pending (unanswered) and
// younger than SYN_STALE_NS, else a new SYN (a new attempt, or another on
// the tuple).
static __always_inline void hold_syn(struct flow_key *k, __u64 bytes, __u64 packets, __u16 flags,
				     __u64 now_j, __u32 ifindex, __u8 point)
{
	__u64 now = bpf_ktime_get_ns();
	bump(COUNTER_HALF_OPEN_PACKETS, packets);
	bump(COUNTER_HALF_OPEN_BYTES, bytes);
	struct attempt *h = bpf_map_lookup_elem(&half_open, k);
	if (!h) {
		struct attempt n = {
			.syn_ns = now,
			.first_ns = now,
			.last_jiffies = now_j,
			.bytes = bytes,
			.packets = packets,
			.ifindex = ifindex,
			.syns = 1,
			.tcp_flags = flags,
			.point = point,
		};
		if (bpf_map_update_elem(&half_open, k, &n, BPF_NOEXIST) == 0) {
			bump(COUNTER_HALF_OPEN_NEW, 1);
			return;
		}
		// -EEXIST: another CPU's SYN of the attempt went first.
		h = bpf_map_lookup_elem(&half_open, k);
		if (!h)
			return; // an LRU insert fails only on -EEXIST or -ENOMEM
	}
	if (h->answer == ANSWER_NONE && now - h->syn_ns < SYN_STALE_NS) {
		__sync_fetch_and_add(&h->retries, 1);
	} else {
		__sync_fetch_and_add(&h->syns, 1);
		h->answer = ANSWER_NONE;
	}
	__sync_fetch_and_add(&h->bytes, bytes);
	__sync_fetch_and_add(&h->packets, packets);
	h->syn_ns = now;
	h->last_jiffies = now_j;
	if ((h->tcp_flags & flags) != flags)
		h->tcp_flags |= flags; // one sender: the client's stack
}

// hold_answer adds the server's answer to the attempt h: a SYN-ACK (rst 0)
// or an RST refusing it. The first answer to a pending SYN is counted (an
// accept, with the handshake's RTT, or a refusal); a SYN-ACK sent again
// only adds its frame.
static __always_inline void hold_answer(struct attempt *h, int rst, __u64 bytes, __u64 packets,
					__u16 flags, __u64 now_j, __u32 ifindex, __u8 point)
{
	if (h->answer == ANSWER_NONE) {
		__u64 now = bpf_ktime_get_ns();
		if (!h->ans_packets) {
			h->ans_first_ns = now;
			h->ans_ifindex = ifindex;
			h->ans_point = point;
		}
		if (rst) {
			h->refusals++;
			h->answer = ANSWER_RST;
		} else {
			__u64 rtt = now - h->syn_ns;
			h->rtt_ns = rtt ? rtt : 1;
			h->accepts++;
			h->answer = ANSWER_SYN_ACK;
		}
	}
	h->ans_last_jiffies = now_j;
	__sync_fetch_and_add(&h->ans_bytes, bytes);
	__sync_fetch_and_add(&h->ans_packets, packets);
	if ((h->ans_flags & flags) != flags)
		h->ans_flags |= flags; // one sender: the server's stack
	bump(COUNTER_HALF_OPEN_PACKETS, packets);
	bump(COUNTER_HALF_OPEN_BYTES, bytes);
}

// handshake returns 1 if p (a frame of bytes over segs segments, at
// jiffies now_j, counted at ifindex and point) is a SYN without ACK, or
// the server's answer to an attempt waiting in half_open (a SYN-ACK, or an
// RST before any SYN-ACK): it was added to its attempt, and the flow maps
// must not count it. Else it returns 0, having counted an RST (with health
// on) as a reset. Only SYN, SYN-ACK and RST frames reach past the first
// test.
static __always_inline int handshake(struct packet *p, __u64 bytes, __u32 segs, __u64 now_j,
				     __u32 ifindex, __u8 point)
{
	if (p->key.proto != IPPROTO_TCP || !(p->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_RST)))
		return 0;
	__u16 f = p->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK | TCP_FLAG_RST);
	struct flow_key k;
	key6(p, &k);
	if (f == TCP_FLAG_SYN) {
		hold_syn(&k, bytes, segs, p->tcp_flags, now_j, ifindex, point);
		return 1;
	}
	int rst = f & TCP_FLAG_RST;
	if (rst || f == (TCP_FLAG_SYN | TCP_FLAG_ACK)) {
		// An answer: its attempt is under the reverse direction.
		struct flow_key ck;
		reverse_key(&k, &ck);
		struct attempt *h = bpf_map_lookup_elem(&half_open, &ck);
		if (h && !(rst && h->answer == ANSWER_SYN_ACK)) {
			hold_answer(h, rst, bytes, segs, p->tcp_flags, now_j, ifindex, point);
			return 1;
		}
	}
	if (rst && health_on)
		health_add(&k, HEALTH_RESET, 0);
	return 0;
}
