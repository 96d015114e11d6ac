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
//
// The entry points are here; what they do is in headers/, one concern to a
// header: parse.h (the headers of a frame), count.h (the flow maps and the
// per-CPU cache), handshake.h (SYNs held apart until the handshake
// completes; SYN to SYN-ACK), watched.h (the interfaces
// counted at ingress), l7/ (the L7 sniffers, request matching and L7
// stats), names.h (the ring buffer of name events), sock.h (what the
// retransmit tracepoint reads of a socket and its skb), health.h
// (connection outcomes and ICMP errors per flow direction), drop.h (drops
// by the kernel's reason, from kfree_skb) and rtt.h (local sockets'
// smoothed RTT, from tcp_probe).

#include "common.h"
#include "count.h"
#include "drop.h"
#include "handshake.h"
#include "health.h"
#include "l7/l7.h"
#include "parse.h"
#include "rtt.h"
#include "sock.h"
#include "watched.h"

char __license[] SEC("license") = "GPL";

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
	// Last seen needs no more than a tick's precision, and jiffies cost
	// next to nothing (bpf_ktime_get_ns reads the clocksource, 30 to 40 ns
	// in this VM). First seen and the handshake RTT, taken once a flow,
	// use the precise clock.
	__u64 now = bpf_jiffies64();
	// A connection's SYNs, and the server's answer, wait in half_open
	// until the handshake completes (see handshake.h).
	if (handshake(&p, bytes, segs, now, ifindex, point))
		return;
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
			account4(&flows4_b, c, &k, now, bytes, segs, p.tcp_flags, ifindex, point);
		} else {
			asm volatile("/* flows4_a */");
			account4(&flows4_a, c, &k, now, bytes, segs, p.tcp_flags, ifindex, point);
		}
	} else if (active_buf) {
		asm volatile("/* flows6_b */");
		account(&flows6_b, &seen6, &p.key, 0, p.key.proto == IPPROTO_TCP, now, bytes, segs,
			p.tcp_flags, ifindex, point);
	} else {
		asm volatile("/* flows6_a */");
		account(&flows6_a, &seen6, &p.key, 0, p.key.proto == IPPROTO_TCP, now, bytes, segs,
			p.tcp_flags, ifindex, point);
	}
	// ICMP errors, to the flow they quote.
	if (health_on && (p.key.proto == IPPROTO_ICMP || p.key.proto == IPPROTO_ICMPV6))
		health_icmp(&p, data, data_end);
	// L7 only on its candidates: TCP that carries payload past its header
	// (a pure ACK's frame reaches no further), UDP to or from the DNS
	// port; never a later fragment (ports 0).
	if (len <= p.hdr_len || !p.key.sport || !p.key.dport)
		return;
	if (p.key.proto == IPPROTO_TCP ||
	    (p.key.proto == IPPROTO_UDP && (p.key.sport == dns_port || p.key.dport == dns_port)))
		l7(ctx, xdp, &p, data, data_end, len);
}

// count_skb counts the frame of a TC program's skb, counted at point.
static __always_inline void count_skb(struct __sk_buff *skb, __u8 point)
{
	__u16 vlan = skb->vlan_present ? (skb->vlan_tci & 0x0fff) : 0;
	count_frame(skb, 0, (void *)(long)skb->data, (void *)(long)skb->data_end, skb->len,
		    skb->gso_segs, vlan, skb->ifindex, point);
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

// retransmit_in adds segs retransmits to the flow direction key (rev: its
// other direction; k6: key IPv4 mapped) in the map flows (the active
// half): to its entry if there is one, else to its attempt if its
// connection's SYNs wait in half_open, else to a new entry if the flow is
// in seen (a flow a watched interface counts), which then holds only the
// retransmits (first_ns 0) until the segment itself is counted.
static __always_inline void retransmit_in(void *flows, void *seen, void *key, void *rev,
					  struct flow_key *k6, __u32 segs)
{
	struct flow_stats *s = bpf_map_lookup_elem(flows, key);
	if (!s) {
		struct attempt *h = bpf_map_lookup_elem(&half_open, k6);
		if (h) {
			__sync_fetch_and_add(&h->retransmits, segs);
			return;
		}
		if (!bpf_map_lookup_elem(seen, key) && !bpf_map_lookup_elem(seen, rev))
			return;
		struct flow_stats n = {.retransmits = segs};
		if (bpf_map_update_elem(flows, key, &n, BPF_NOEXIST) == 0)
			return;
		// -EEXIST: a CPU inserted it since our lookup; a full map:
		// its segments are counted as refused where they pass.
		s = bpf_map_lookup_elem(flows, key);
		if (!s)
			return;
	}
	__sync_fetch_and_add(&s->retransmits, segs);
}

// trace_event_raw_tcp_retransmit_skb is the tracepoint's record; kernels
// that fire it for failed retransmits too, with their error (6.18 does),
// have err in it and pass err as the tracepoint's third argument.
struct trace_event_raw_tcp_retransmit_skb {
	int err;
} __attribute__((preserve_access_index));

// tcp_retransmit counts the segments a local socket retransmitted, as
// TCP_INFO's tcpi_total_retrans does (tcp_skb_pcount of each retransmitted
// skb), on the flow direction they belong to (local address and port to
// remote), if a watched interface counts that flow (seen4, seen6).
SEC("tp_btf/tcp_retransmit_skb")
int tcp_retransmit(__u64 *ctx)
{
	const struct sock *sk = (void *)ctx[0];
	const struct sk_buff *skb = (void *)ctx[1];
	// Count what TCP_INFO counts: a retransmit that got as far as
	// tcp_transmit_skb, whatever that returned (0, -ENOBUFS, a NET_XMIT
	// code, …); not one given up before (-EBUSY: the original is still in
	// a queue of this host; -EAGAIN, -EINVAL, -ENOMEM, -EHOSTUNREACH).
	// Older kernels fire the tracepoint only for those sent.
	if (bpf_core_field_exists(struct trace_event_raw_tcp_retransmit_skb, err)) {
		int err = (int)ctx[2];
		if (err == -EBUSY || err == -EAGAIN || err == -EINVAL || err == -ENOMEM ||
		    err == -EHOSTUNREACH)
			return 0;
	}
	__u32 segs = *(__u16 *)((const char *)skb->cb +
				 bpf_core_field_offset(struct tcp_skb_cb, tcp_gso_segs));
	if (segs < 1)
		segs = 1;

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

	// IPv4, and IPv4-mapped addresses of a dual-stack socket, are in the
	// IPv4 maps.
	struct flow_key4 k4;
	if (key4_of6(&key, &k4)) {
		struct flow_key4 r4;
		reverse_key4(&k4, &r4);
		if (active_buf)
			retransmit_in(&flows4_b, &seen4, &k4, &r4, &key, segs);
		else
			retransmit_in(&flows4_a, &seen4, &k4, &r4, &key, segs);
	} else {
		struct flow_key r6;
		reverse_key(&key, &r6);
		if (active_buf)
			retransmit_in(&flows6_b, &seen6, &key, &r6, &key, segs);
		else
			retransmit_in(&flows6_a, &seen6, &key, &r6, &key, segs);
	}
	return 0;
}

// kfree_skb counts a dropped packet on its flow direction, by reason. Most
// skbs freed are not dropped: they leave at the first compare.
SEC("tp_btf/kfree_skb")
int BPF_PROG(kfree_skb, struct sk_buff *skb, void *location, __u32 reason)
{
	if (reason < drop_reason_min || !health_on)
		return 0;
	drop(skb, reason);
	return 0;
}

// tcp_probe samples the smoothed RTT of a local socket that received a
// segment (see rtt.h).
SEC("tp_btf/tcp_probe")
int BPF_PROG(tcp_probe, struct sock *sk)
{
	if (health_on)
		rtt_sample(sk);
	return 0;
}

// tcp_cong_state counts loss recoveries of local sockets that a
// retransmission timeout began: the retransmit timer puts a socket in
// TCP_CA_Loss, and this tracepoint fires when its congestion state is set,
// which is rare. The timeouts backed off within one recovery are not
// counted (the state stays TCP_CA_Loss); fentry on tcp_enter_loss, which
// would count each, is refused by this kernel (EPERM).
SEC("tp_btf/tcp_cong_state_set")
int BPF_PROG(tcp_cong_state, struct sock *sk, __u8 ca_state)
{
	if (health_on && ca_state == TCP_CA_Loss)
		sock_event(sk, HEALTH_RTO);
	return 0;
}

// clock_probe writes these, for Go to map jiffies to CLOCK_MONOTONIC.
__u64 probe_jiffies = 0;
__u64 probe_ns = 0;

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
