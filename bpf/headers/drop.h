// SPDX-License-Identifier: GPL-2.0
//
// drop.h counts the packets the kernel drops, by flow direction and the
// kernel's reason (enum skb_drop_reason, named in Go from the kernel's
// BTF), from the kfree_skb tracepoint. It runs on every skb freed on the
// machine, most of them not dropped: it leaves at the first test of the
// reason for those, and counts a drop only where the flow is one a
// watched interface counted in the active half, or a packet this host
// sent out of a watched interface, dropped before its egress counted it
// (see sent_out_watched).

#pragma once

#include "common.h"
#include "count.h"
#include "health.h"
#include "sock.h"
#include "watched.h"

// drop_reason_min is the first reason that is a drop:
// SKB_DROP_REASON_NOT_SPECIFIED (2 since 6.0, after SKB_NOT_DROPPED_YET and
// SKB_CONSUMED), set from Go out of the kernel's BTF.
volatile const __u32 drop_reason_min = 2;

// drop_key is a flow direction (the dropped packet's, IPv4 mapped) and the
// reason its packets were dropped.
struct drop_key {
	struct flow_key flow;
	__u32 reason; // enum skb_drop_reason
};

// drops_a, drops_b: drop_key -> count of dropped packets, one for all
// CPUs, added to atomically; the halves follow active_buf as the flow maps
// do. Not per CPU: 8 bytes × max_entries on each possible CPU is 64 MiB a
// half on 128 CPUs at 65,536 flows. Not preallocated, sized by Go at a
// quarter of the flow maps (see sizeMaps): drops take memory only as they
// come, and a full map counts what it refused (COUNTER_DROPS_MAP_FULL).
#define DROP_MAP(name)                                                                             \
	struct {                                                                                   \
		__uint(type, BPF_MAP_TYPE_HASH);                                                   \
		__uint(map_flags, BPF_F_NO_PREALLOC);                                              \
		__uint(max_entries, MAX_FLOWS);                                                    \
		__type(key, struct drop_key);                                                      \
		__type(value, __u64);                                                              \
	} name SEC(".maps")

DROP_MAP(drops_a);
DROP_MAP(drops_b);

// flow_counted reports whether the active half of the flow maps has the
// direction k (IPv4 mapped), or, for TCP, whether its connection's
// attempt waits in half_open (a SYN, or its answer, dropped): the
// tracepoints see every socket and packet of the machine, and count only
// flows a watched interface carries.
static __always_inline int flow_counted(struct flow_key *k)
{
	if (k->proto == IPPROTO_TCP) {
		struct flow_key r;
		reverse_key(k, &r);
		if (bpf_map_lookup_elem(&half_open, k) || bpf_map_lookup_elem(&half_open, &r))
			return 1;
	}
	struct flow_key4 k4;
	if (key4_of6(k, &k4))
		return bpf_map_lookup_elem(active_buf ? (void *)&flows4_b : (void *)&flows4_a, &k4) != 0;
	return bpf_map_lookup_elem(active_buf ? (void *)&flows6_b : (void *)&flows6_a, k) != 0;
}

// host_netns is the cookie of the network namespace of the agent's
// interfaces, set from Go (SO_NETNS_COOKIE); 0: unknown, and the drops of
// the host's own packets before they were counted are not joined.
volatile const __u64 host_netns = 0;

// sent_out_watched returns the watched interface that skb, a packet this
// host sent itself (skb_iif 0), was routed out of, or 0. Such a packet is
// counted at that interface's egress: one dropped before it (netfilter's
// OUTPUT, a full socket queue, a route that failed late) would have been
// the first of its flow there.
static __always_inline __u32 sent_out_watched(struct sk_buff *skb)
{
	if (!host_netns || BPF_CORE_READ(skb, skb_iif) != 0)
		return 0;
	struct dst_entry *dst = (void *)(BPF_CORE_READ(skb, _skb_refdst) & ~1UL);
	if (!dst)
		return 0;
	struct net_device *dev = BPF_CORE_READ(dst, dev);
	if (!dev || BPF_CORE_READ(dev, nd_net.net, net_cookie) != host_netns)
		return 0;
	__u32 ifindex = BPF_CORE_READ(dev, ifindex);
	return is_watched(ifindex) ? ifindex : 0;
}

// counted_out makes the entry of direction k (IPv4 mapped), whose packet
// this host sent out of the watched interface ifindex and the kernel
// dropped before the egress program counted it: no packet, first seen
// now, so that the drain reports the direction with its drops. It returns
// 0 if the flow map refused it.
static __always_inline int counted_out(struct flow_key *k, __u32 ifindex)
{
	struct flow_stats n = {
		.first_ns = bpf_ktime_get_ns(),
		.last_jiffies = bpf_jiffies64(),
		.ifindex = ifindex,
		.point = POINT_TC_EGRESS,
	};
	long err;
	struct flow_key4 k4;
	if (key4_of6(k, &k4)) {
		err = bpf_map_update_elem(active_buf ? (void *)&flows4_b : (void *)&flows4_a, &k4, &n, BPF_NOEXIST);
	} else {
		err = bpf_map_update_elem(active_buf ? (void *)&flows6_b : (void *)&flows6_a, k, &n, BPF_NOEXIST);
	}
	// -EEXIST: another CPU made it since flow_counted looked.
	return err == 0 || err == -17;
}

// drop counts skb, dropped for reason, on its flow direction. The headers
// are read from the skb's network header on: a drop before the stack set
// it (in a driver) finds no flow. VLAN tags are not read: a tagged flow's
// drops are not joined.
static __always_inline void drop(struct sk_buff *skb, __u32 reason)
{
	unsigned char *head = skb->head;
	__u16 nh = skb->network_header;
	__be16 proto = skb->protocol;
	struct drop_key dk = {.reason = reason};
	struct flow_key *k = &dk.flow;
	__u32 l4;
	int frag = 0;
	if (proto == bpf_htons(ETH_P_IP)) {
		struct iphdr ip;
		if (bpf_probe_read_kernel(&ip, sizeof(ip), head + nh))
			return;
		k->saddr[10] = k->saddr[11] = 0xff;
		k->daddr[10] = k->daddr[11] = 0xff;
		__builtin_memcpy(&k->saddr[12], &ip.saddr, 4);
		__builtin_memcpy(&k->daddr[12], &ip.daddr, 4);
		k->proto = ip.protocol;
		l4 = nh + ip.ihl * 4;
		frag = (ip.frag_off & bpf_htons(0x1fff)) != 0;
	} else if (proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr ip6;
		if (bpf_probe_read_kernel(&ip6, sizeof(ip6), head + nh))
			return;
		__builtin_memcpy(k->saddr, &ip6.saddr, 16);
		__builtin_memcpy(k->daddr, &ip6.daddr, 16);
		k->proto = ip6.nexthdr;
		l4 = nh + sizeof(ip6);
	} else {
		return;
	}
	if (!frag && (k->proto == IPPROTO_TCP || k->proto == IPPROTO_UDP || k->proto == IPPROTO_ICMP ||
		      k->proto == IPPROTO_ICMPV6)) {
		__u8 b[4];
		if (bpf_probe_read_kernel(b, sizeof(b), head + l4))
			return;
		if (k->proto == IPPROTO_TCP || k->proto == IPPROTO_UDP) {
			k->sport = ((__u16)b[0] << 8) | b[1];
			k->dport = ((__u16)b[2] << 8) | b[3];
		} else {
			k->sport = b[0];
			k->dport = b[1];
		}
	}
	if (!flow_counted(k)) {
		__u32 out = sent_out_watched(skb);
		if (!out || !counted_out(k, out))
			return;
	}
	void *m = active_buf ? (void *)&drops_b : (void *)&drops_a;
	__u64 *c = bpf_map_lookup_elem(m, &dk);
	if (c) {
		__sync_fetch_and_add(c, 1);
		return;
	}
	__u64 one = 1;
	if (bpf_map_update_elem(m, &dk, &one, BPF_NOEXIST)) {
		// -EEXIST: another CPU inserted it since our lookup.
		c = bpf_map_lookup_elem(m, &dk);
		if (c)
			__sync_fetch_and_add(c, 1);
		else
			bump(COUNTER_DROPS_MAP_FULL, 1);
	}
}
