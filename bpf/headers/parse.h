// SPDX-License-Identifier: GPL-2.0
//
// parse.h reads a frame's headers into a packet: Ethernet, one VLAN tag,
// IPv4 or IPv6 (with up to IPV6_EXT_MAX extension headers) and the L4
// header.

#pragma once

#include "common.h"

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

// IPV6_EXT_MAX is how many IPv6 extension headers parse skips; a packet
// with more is counted as truncated (COUNTER_TRUNCATED). RFC 8200's order
// has at most six (destination options twice); any more is an evasion.
// IPV6_EXT_END bounds where the last may start, for the verifier's sake
// (a packet offset must stay below 64 KiB): a header at 2048 bytes or
// more is truncated too.
#define IPV6_EXT_MAX 32
#define IPV6_EXT_END 2048

// ipv6_ext reports whether next is an IPv6 extension header parse skips.
static __always_inline int ipv6_ext(__u8 next)
{
	return next == IPPROTO_HOPOPTS || next == IPPROTO_ROUTING || next == IPPROTO_DSTOPTS ||
	       next == IPPROTO_FRAGMENT;
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
		__u32 off = (void *)(ip6 + 1) - data;
		// Skip extension headers: hop-by-hop, routing and destination
		// options share the (next, len in 8 octets - 1) form; a
		// fragment header is 8 bytes. A real loop, not unrolled: the
		// verifier walks each of its IPV6_EXT_MAX turns.
#pragma clang loop unroll(disable)
		for (int i = 0; i < IPV6_EXT_MAX; i++) {
			if (!ipv6_ext(next) || off > IPV6_EXT_END)
				break;
			__u8 *ext = data + off;
			if ((void *)(ext + 2) > data_end) {
				bump(COUNTER_MALFORMED, 1);
				p->key.proto = next;
				p->hdr_len = off;
				return 0;
			}
			if (next == IPPROTO_FRAGMENT) {
				if ((void *)(ext + 4) > data_end) {
					bump(COUNTER_MALFORMED, 1);
					p->key.proto = next;
					p->hdr_len = off;
					return 0;
				}
				// A fragment after the first has no L4 header: count
				// it under its addresses and protocol, ports 0, as
				// for IPv4.
				if ((((__u16)ext[2] << 8) | ext[3]) & 0xfff8) {
					p->key.proto = ext[0];
					p->hdr_len = off + 8;
					return 0;
				}
			}
			off += next == IPPROTO_FRAGMENT ? 8 : ((__u32)ext[1] + 1) * 8;
			next = ext[0];
		}
		p->key.proto = next;
		// off is at most IPV6_EXT_END + 2048; the verifier, which
		// widens it in the loop, is told again, and clang kept from
		// dropping the check.
		asm volatile("" : "+r"(off));
		if (ipv6_ext(next) || off > IPV6_EXT_END + 2048) {
			// More than IPV6_EXT_MAX headers, or past IPV6_EXT_END: no
			// legitimate packet has that many. Counted under the
			// header's protocol, ports 0, and as truncated.
			bump(COUNTER_TRUNCATED, 1);
			p->hdr_len = off;
			return 0;
		}
		parse_l4(p, data + off, data, data_end);
		return 0;
	}

	bump(COUNTER_NON_IP, 1);
	return -1;
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

// peek reads n bytes of the frame at off into buf, paged data too.
static __always_inline long peek(void *ctx, int xdp, __u32 off, void *buf, __u32 n)
{
	if (xdp)
		return bpf_xdp_load_bytes(ctx, off, buf, n);
	return bpf_skb_load_bytes(ctx, off, buf, n);
}
