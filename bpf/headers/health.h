// SPDX-License-Identifier: GPL-2.0
//
// health.h counts what goes wrong on a flow, per flow direction, in a
// double-buffered map beside the flow maps: SYNs and their retries, the
// answers to them (SYN-ACK, RST), resets, ICMP errors quoting the
// direction's packets and smoothed RTT samples of local sockets. Go joins
// the two directions into connection outcomes at the drain.
//
// Only rare packets reach it (SYN, SYN-ACK, RST, ICMP errors): the data
// path of an established flow pays one test of its TCP flags.

#pragma once

#include "common.h"
#include "count.h"
#include "parse.h"

// health_on is set from Go (--health): 0 leaves every path of this header
// and drop.h dead code, which the verifier removes.
volatile const __u8 health_on = 1;

#define TCP_FLAG_RST 0x04

// health_event is what happened to a flow direction.
enum health_event {
	HEALTH_SYN = 0,       // a SYN opening a connection
	HEALTH_SYN_RETRY,     // a SYN sent again, the first still unanswered
	HEALTH_ACCEPT,        // a SYN-ACK answering a SYN
	HEALTH_REFUSAL,       // an RST answering a SYN
	HEALTH_RESET,         // an RST on a connection past its handshake
	HEALTH_UNREACHABLE,   // an ICMP destination unreachable quoting the direction
	HEALTH_TIME_EXCEEDED, // an ICMP time exceeded quoting the direction
	HEALTH_RTT,           // a smoothed RTT sample (us) of the direction's local socket
	HEALTH_ZERO_WINDOW,   // an answered zero-window probe of the direction's local socket
	HEALTH_RTO,           // a loss recovery a timeout began on the direction's local socket
};

// health_stats is what the CPUs saw go wrong (or right) on one flow
// direction since the last drain. The direction is the sender's: a
// refusal is on the server's direction, an ICMP error on the direction
// of the packet it quotes. One for all CPUs: the counts are added
// atomically; syn_ns is a plain store (CPUs racing on one direction's
// SYNs store nearly the same time).
struct health_stats {
	__u64 syn_ns;      // bpf_ktime_get_ns of the last SYN (opening or retry)
	__u64 rtt_sum_us;  // over rtt_samples smoothed RTT samples
	__u32 rtt_samples;
	__u32 syns;        // HEALTH_SYN
	__u32 syn_retries; // HEALTH_SYN_RETRY
	__u32 accepts;     // HEALTH_ACCEPT
	__u32 refusals;    // HEALTH_REFUSAL
	__u32 resets;      // HEALTH_RESET
	__u32 unreachable; // HEALTH_UNREACHABLE
	__u32 time_exceeded; // HEALTH_TIME_EXCEEDED
	__u32 zero_windows;  // HEALTH_ZERO_WINDOW
	__u32 rtos;          // HEALTH_RTO
};

// health_a, health_b: flow_key (the sender's direction, IPv4 mapped) ->
// health_stats; the halves follow active_buf as the flow maps do. Shared,
// not per CPU, for the flow maps' reason: a per-CPU value is max_entries ×
// 48 bytes on every possible CPU (3 MiB a CPU and half at 65,536 flows,
// 805 MiB for both halves on 128 CPUs), for events that reach few flows.
// Not preallocated, and sized by Go at a quarter of the flow maps (see
// sizeMaps): the SYNs and accepts of every connection are in its flow
// entries; what is here (resets, ICMP errors, RTT samples of local
// sockets, zero windows, RTOs) reaches fewer flows, and takes memory only
// as it comes.
#define HEALTH_MAP(name)                                                                           \
	struct {                                                                                   \
		__uint(type, BPF_MAP_TYPE_HASH);                                                   \
		__uint(map_flags, BPF_F_NO_PREALLOC);                                              \
		__uint(max_entries, MAX_FLOWS);                                                    \
		__type(key, struct flow_key);                                                      \
		__type(value, struct health_stats);                                                \
	} name SEC(".maps")

HEALTH_MAP(health_a);
HEALTH_MAP(health_b);

// Force BTF for a type that Go needs beyond map keys and values.
const enum health_event *unused_health_event __attribute__((unused));

// health_add counts event ev (with value arg: a time or an RTT) on the
// direction k in the active half. Inlined (a static subprogram left
// tc_egress without line info at its start, which the kernel refuses).
static __always_inline void health_add(struct flow_key *k, __u32 ev, __u64 arg)
{
	void *m = active_buf ? (void *)&health_b : (void *)&health_a;
	struct health_stats *h = bpf_map_lookup_elem(m, k);
	if (!h) {
		struct health_stats n = {};
		bpf_map_update_elem(m, k, &n, BPF_NOEXIST);
		h = bpf_map_lookup_elem(m, k);
		if (!h) {
			bump(COUNTER_HEALTH_MAP_FULL, 1);
			return;
		}
	}
	switch (ev) {
	case HEALTH_SYN:
		__sync_fetch_and_add(&h->syns, 1);
		h->syn_ns = arg;
		break;
	case HEALTH_SYN_RETRY:
		__sync_fetch_and_add(&h->syn_retries, 1);
		h->syn_ns = arg;
		break;
	case HEALTH_ACCEPT:
		__sync_fetch_and_add(&h->accepts, 1);
		break;
	case HEALTH_REFUSAL:
		__sync_fetch_and_add(&h->refusals, 1);
		break;
	case HEALTH_RESET:
		__sync_fetch_and_add(&h->resets, 1);
		break;
	case HEALTH_UNREACHABLE:
		__sync_fetch_and_add(&h->unreachable, 1);
		break;
	case HEALTH_TIME_EXCEEDED:
		__sync_fetch_and_add(&h->time_exceeded, 1);
		break;
	case HEALTH_RTT:
		__sync_fetch_and_add(&h->rtt_sum_us, arg);
		__sync_fetch_and_add(&h->rtt_samples, 1);
		break;
	case HEALTH_ZERO_WINDOW:
		h->zero_windows++;
		break;
	case HEALTH_RTO:
		h->rtos++;
		break;
	}
}

// ICMP error types: destination unreachable and time exceeded.
#define ICMP_DEST_UNREACH 3
#define ICMP_TIME_EXCEEDED 11
#define ICMPV6_DEST_UNREACH 1
#define ICMPV6_TIME_EXCEED 3

// health_icmp joins an ICMP or ICMPv6 error in p to the flow direction of
// the packet it quotes (an IPv4 or IPv6 header and the first 8 bytes of
// its L4 header, after the 8-byte ICMP header). The quoted packet's IP
// header must be in the linear data; no extension headers are skipped.
static __always_inline void health_icmp(struct packet *p, void *data, void *data_end)
{
	__u32 ev;
	if (p->v4 && p->key.proto == IPPROTO_ICMP) {
		if (p->key.sport == ICMP_DEST_UNREACH)
			ev = HEALTH_UNREACHABLE;
		else if (p->key.sport == ICMP_TIME_EXCEEDED)
			ev = HEALTH_TIME_EXCEEDED;
		else
			return;
	} else if (!p->v4 && p->key.proto == IPPROTO_ICMPV6) {
		if (p->key.sport == ICMPV6_DEST_UNREACH)
			ev = HEALTH_UNREACHABLE;
		else if (p->key.sport == ICMPV6_TIME_EXCEED)
			ev = HEALTH_TIME_EXCEEDED;
		else
			return;
	} else {
		return;
	}
	struct flow_key k = {.vlan = p->key.vlan};
	__u32 off = p->hdr_len + 8;
	if (off > 256)
		return;
	void *inner = data + off;
	__u16 *ports;
	if (p->v4) {
		struct iphdr *ip = inner;
		if ((void *)(ip + 1) > data_end)
			return;
		k.saddr[10] = k.saddr[11] = 0xff;
		k.daddr[10] = k.daddr[11] = 0xff;
		__builtin_memcpy(&k.saddr[12], &ip->saddr, 4);
		__builtin_memcpy(&k.daddr[12], &ip->daddr, 4);
		k.proto = ip->protocol;
		ports = inner + ip->ihl * 4;
	} else {
		struct ipv6hdr *ip6 = inner;
		if ((void *)(ip6 + 1) > data_end)
			return;
		__builtin_memcpy(k.saddr, &ip6->saddr, 16);
		__builtin_memcpy(k.daddr, &ip6->daddr, 16);
		k.proto = ip6->nexthdr;
		ports = (void *)(ip6 + 1);
	}
	if ((void *)(ports + 2) > data_end)
		return;
	if (k.proto == IPPROTO_TCP || k.proto == IPPROTO_UDP) {
		k.sport = bpf_ntohs(ports[0]);
		k.dport = bpf_ntohs(ports[1]);
	} else if (k.proto == IPPROTO_ICMP || k.proto == IPPROTO_ICMPV6) {
		__u8 *tc = (__u8 *)ports;
		k.sport = tc[0];
		k.dport = tc[1];
	}
	health_add(&k, ev, 0);
}
