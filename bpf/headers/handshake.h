// SPDX-License-Identifier: GPL-2.0
//
// handshake.h times TCP handshakes: from a SYN to its SYN-ACK.

#pragma once

#include "common.h"
#include "parse.h"

// handshakes: the key of a SYN -> when it was seen, until the SYN-ACK.
// LRU, so that handshakes that never complete (scans) age out.
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct flow_key);
	__type(value, __u64);
} handshakes SEC(".maps");

// handshake returns the SYN to SYN-ACK time when p is a SYN-ACK whose SYN
// was seen, and remembers the time of a SYN.
static __always_inline __u64 handshake(struct packet *p)
{
	if (p->key.proto != IPPROTO_TCP)
		return 0;
	__u16 f = p->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK);
	if (f != TCP_FLAG_SYN && f != (TCP_FLAG_SYN | TCP_FLAG_ACK))
		return 0;
	struct flow_key k;
	key6(p, &k);
	if (f == TCP_FLAG_SYN) {
		// A retransmitted SYN restarts the clock: the RTT is that of
		// the SYN that was answered.
		__u64 now = bpf_ktime_get_ns();
		bpf_map_update_elem(&handshakes, &k, &now, BPF_ANY);
		return 0;
	}
	struct flow_key rev = {
		.sport = k.dport,
		.dport = k.sport,
		.proto = k.proto,
		.vlan = k.vlan,
	};
	__builtin_memcpy(rev.saddr, k.daddr, 16);
	__builtin_memcpy(rev.daddr, k.saddr, 16);
	__u64 *syn = bpf_map_lookup_elem(&handshakes, &rev);
	if (!syn)
		return 0;
	__u64 rtt = bpf_ktime_get_ns() - *syn;
	bpf_map_delete_elem(&handshakes, &rev);
	return rtt ? rtt : 1;
}
