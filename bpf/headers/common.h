// SPDX-License-Identifier: GPL-2.0
//
// common.h holds what every part of flow.c shares: the flow keys, the
// counters of what was not counted, and the half of the double buffer the
// programs write.

#pragma once

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
// two families meet (half_open): IPv4 is then IPv4-mapped
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

// counter indexes the counters map.
enum counter {
	COUNTER_MAP_FULL_PACKETS = 0, // packets not counted: the flow map was full
	COUNTER_MAP_FULL_BYTES,
	COUNTER_NON_IP,    // frames that are neither IPv4 nor IPv6 (ARP, LLDP, …)
	COUNTER_MALFORMED, // IP frames truncated or with a bad header length
	COUNTER_NAMES_LOST, // DNS answers and TLS ClientHellos not sent: the ring buffer was full
	COUNTER_TRUNCATED,  // IPv6 frames with more extension headers than parse walks
	COUNTER_HEALTH_MAP_FULL, // health events not counted: the health map was full
	COUNTER_DROPS_MAP_FULL,  // drops not counted: the drops map was full
	COUNTER_NAMES_UNMATCHED, // DNS answers not sent: no query with their id, flow and question waited
	COUNTER_NAMES_NOT_CLIENT, // TLS ClientHellos not sent: not the first from a connection's client
	COUNTER_HALF_OPEN_NEW,    // TCP connection attempts held in half_open (see handshake.h)
	COUNTER_HALF_OPEN_PACKETS, // their SYNs (retries too) and answers held
	COUNTER_HALF_OPEN_BYTES,
	COUNTER_HALF_OPEN_PROMOTED, // attempts whose handshake completed, moved to the flow maps
	COUNTER_HALF_OPEN_PROMOTED_PACKETS,
	COUNTER_HALF_OPEN_PROMOTED_BYTES,
	COUNTER_MAX,
};

// Force BTF for the types that Go needs beyond map keys and values.
const enum counter *unused_counter __attribute__((unused));

// counters: enum counter -> per-CPU count.
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, COUNTER_MAX);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

// active_buf selects the half of the double buffer the programs write:
// 0 for the _a maps, 1 for the _b maps. Go flips it before each drain.
__u32 active_buf = 0;

// bump adds n to counter idx.
static __always_inline void bump(__u32 idx, __u64 n)
{
	__u64 *c = bpf_map_lookup_elem(&counters, &idx);
	if (c)
		*c += n;
}

// key4_of6 fills k4 with the flow k if its addresses are IPv4-mapped,
// the form the IPv4 maps take it in, and reports whether they were.
static __always_inline int key4_of6(const struct flow_key *k, struct flow_key4 *k4)
{
	const __u32 *w = (const __u32 *)k->saddr;
	if (w[0] != 0 || w[1] != 0 || w[2] != bpf_htonl(0xffff))
		return 0;
	__builtin_memset(k4, 0, sizeof(*k4));
	__builtin_memcpy(&k4->saddr, &k->saddr[12], 4);
	__builtin_memcpy(&k4->daddr, &k->daddr[12], 4);
	k4->sport = k->sport;
	k4->dport = k->dport;
	k4->proto = k->proto;
	k4->vlan = k->vlan;
	return 1;
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

// reverse_key fills r with the other direction of k (TCP and UDP: ports
// swapped).
static __always_inline void reverse_key(const struct flow_key *k, struct flow_key *r)
{
	__builtin_memcpy(r->saddr, k->daddr, 16);
	__builtin_memcpy(r->daddr, k->saddr, 16);
	r->sport = k->dport;
	r->dport = k->sport;
	r->proto = k->proto;
	r->pad = 0;
	r->vlan = k->vlan;
}
