// SPDX-License-Identifier: GPL-2.0
//
// rtt.h samples the smoothed RTT (srtt) of local TCP sockets from the
// tcp_probe tracepoint, which fires on every segment an established
// socket receives: at most once per socket every RTT_SAMPLE_JIFFIES, by a
// jiffies stamp in the socket's local storage, so that the common case
// costs a storage lookup and a compare. Before that, from the same
// tracepoint, it counts the answers to zero-window probes (a peer that
// stopped reading), at the cost of a load and a compare; and from
// tcp_cong_state_set the loss recoveries retransmission timeouts begin.

#pragma once

#include "common.h"
#include "drop.h"
#include "health.h"
#include "sock.h"

// RTT_SAMPLE_JIFFIES: 25 jiffies, 100 ms at HZ=250, 25 ms at HZ=1000.
#define RTT_SAMPLE_JIFFIES 25

// rtt_sampled: socket -> the jiffies of its last RTT sample.
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, __u64);
} rtt_sampled SEC(".maps");

#pragma clang attribute push(__attribute__((preserve_access_index)), apply_to = record)
struct inet_connection_sock {
	__u8 icsk_probes_out; // zero-window probes unanswered
};
struct tcp_sock {
	struct inet_connection_sock inet_conn;
	__u32 srtt_us; // smoothed RTT << 3, in us
	__u32 snd_wnd; // the peer's receive window
};
#pragma clang attribute pop

// sock_key fills key with sk's direction, local address and port to the
// remote's; it returns -1 for a family other than IPv4 and IPv6.
static __always_inline int sock_key(const struct sock *sk, struct flow_key *key)
{
	unsigned short family = sk->__sk_common.skc_family;
	if (family == AF_INET) {
		key->saddr[10] = key->saddr[11] = 0xff;
		key->daddr[10] = key->daddr[11] = 0xff;
		__be32 s = sk->__sk_common.skc_rcv_saddr, d = sk->__sk_common.skc_daddr;
		__builtin_memcpy(&key->saddr[12], &s, 4);
		__builtin_memcpy(&key->daddr[12], &d, 4);
	} else if (family == AF_INET6) {
		__builtin_memcpy(key->saddr, &sk->__sk_common.skc_v6_rcv_saddr, 16);
		__builtin_memcpy(key->daddr, &sk->__sk_common.skc_v6_daddr, 16);
	} else {
		return -1;
	}
	key->proto = IPPROTO_TCP;
	key->sport = sk->__sk_common.skc_num;
	key->dport = bpf_ntohs(sk->__sk_common.skc_dport);
	return 0;
}

// TCP_CA_Loss is the congestion state a retransmission timeout enters.
#define TCP_CA_Loss 4

// TCP_SYN_SENT and TCP_SYN_RECV: a timeout in either is a SYN's or a
// SYN-ACK's, counted as a SYN retry by handshake.h.
#define TCP_SYN_SENT 2
#define TCP_SYN_RECV 3

// sock_event counts event ev (HEALTH_RTO, HEALTH_ZERO_WINDOW) of sk past
// its handshake on its flow direction, if a watched interface counted it.
static __always_inline void sock_event(struct sock *sk, __u32 ev)
{
	unsigned char state = sk->__sk_common.skc_state;
	if (state == TCP_SYN_SENT || state == TCP_SYN_RECV)
		return;
	struct flow_key key = {};
	if (sock_key(sk, &key))
		return;
	if (flow_counted(&key))
		health_add(&key, ev, 0);
}

// rtt_sample adds sk's smoothed RTT to its flow direction's health, if
// the socket was not sampled in the last RTT_SAMPLE_JIFFIES.
static __always_inline void rtt_sample(struct sock *sk)
{
	struct tcp_sock *tp = bpf_skc_to_tcp_sock(sk);
	if (!tp)
		return;
	// A segment that answers a zero-window probe: the peer's window is
	// zero and has been for a retransmission timeout, for the persist
	// timer sent a probe. (tcp_probe fires before the segment's ACK is
	// taken, so the probe is still out.) A zero window that opens within
	// the timeout, as a busy reader's, sent no probe.
	if (!tp->snd_wnd && tp->inet_conn.icsk_probes_out) {
		sock_event(sk, HEALTH_ZERO_WINDOW);
		return;
	}
	__u64 *last = bpf_sk_storage_get(&rtt_sampled, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!last)
		return;
	__u64 now = bpf_jiffies64();
	if (*last && now - *last < RTT_SAMPLE_JIFFIES)
		return;
	*last = now;
	__u32 srtt = tp->srtt_us >> 3;
	struct flow_key key = {};
	if (!srtt || sock_key(sk, &key))
		return;
	if (flow_counted(&key))
		health_add(&key, HEALTH_RTT, srtt);
}

