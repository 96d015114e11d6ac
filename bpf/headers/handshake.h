// SPDX-License-Identifier: GPL-2.0
//
// handshake.h times TCP handshakes, from a SYN to its SYN-ACK, and tells
// health.h how each SYN was answered: by a SYN-ACK, an RST, or not (yet).

#pragma once

#include "common.h"
#include "health.h"
#include "parse.h"

// SYN_STALE_NS is how old a pending SYN may be and still make a SYN on its
// key a retry: Linux gives up a connect after about 130 s of retries.
#define SYN_STALE_NS (180ULL * 1000000000ULL)

// handshakes: the key of a SYN -> when it was seen, until the SYN-ACK.
// LRU, so that handshakes that never complete (scans) age out.
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct flow_key);
	__type(value, __u64);
} handshakes SEC(".maps");

// handshake_rst counts an RST in p: a refusal if it answers a pending SYN
// (which it then clears), else a reset.
static __always_inline void handshake_rst(struct packet *p)
{
	struct flow_key k, rev;
	key6(p, &k);
	reverse_key(&k, &rev);
	if (bpf_map_lookup_elem(&handshakes, &rev)) {
		bpf_map_delete_elem(&handshakes, &rev);
		health_add(&k, HEALTH_REFUSAL, 0);
	} else {
		health_add(&k, HEALTH_RESET, 0);
	}
}

// handshake returns the SYN to SYN-ACK time when p is a SYN-ACK whose SYN
// was seen, and remembers the time of a SYN. With health on, it counts
// SYNs, their retries, and the SYN-ACKs and RSTs that answer them.
static __always_inline __u64 handshake(struct packet *p)
{
	if (p->key.proto != IPPROTO_TCP)
		return 0;
	if (health_on && (p->tcp_flags & TCP_FLAG_RST)) {
		handshake_rst(p);
		return 0;
	}
	__u16 f = p->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK);
	if (f != TCP_FLAG_SYN && f != (TCP_FLAG_SYN | TCP_FLAG_ACK))
		return 0;
	struct flow_key k;
	key6(p, &k);
	if (f == TCP_FLAG_SYN) {
		// A retransmitted SYN restarts the clock: the RTT is that of
		// the SYN that was answered.
		__u64 now = bpf_ktime_get_ns();
		if (health_on) {
			__u64 *prev = bpf_map_lookup_elem(&handshakes, &k);
			int retry = prev && now - *prev < SYN_STALE_NS;
			health_add(&k, retry ? HEALTH_SYN_RETRY : HEALTH_SYN, now);
		}
		bpf_map_update_elem(&handshakes, &k, &now, BPF_ANY);
		return 0;
	}
	struct flow_key rev;
	reverse_key(&k, &rev);
	__u64 *syn = bpf_map_lookup_elem(&handshakes, &rev);
	if (!syn)
		return 0;
	__u64 rtt = bpf_ktime_get_ns() - *syn;
	bpf_map_delete_elem(&handshakes, &rev);
	if (health_on)
		health_add(&k, HEALTH_ACCEPT, 0);
	return rtt ? rtt : 1;
}
