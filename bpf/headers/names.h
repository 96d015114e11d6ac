// SPDX-License-Identifier: GPL-2.0
//
// names.h sends the payloads that carry names (DNS responses, TLS
// ClientHellos) to user space, which takes the names and addresses out of
// them and keeps nothing else.

#pragma once

#include "common.h"
#include "parse.h"

// name_kind says what a name event carries.
enum name_kind {
	NAME_DNS = 1, // a DNS response, from its header on
	NAME_TLS = 2, // a TLS record holding a ClientHello
};

#define NAME_DATA 1024
// name_event carries a DNS response or a TLS ClientHello to user space,
// which takes the names and addresses out of it and keeps nothing else.
struct name_event {
	struct flow_key flow; // client to server
	__u16 len;            // bytes in data
	__u8 kind;            // enum name_kind
	__u8 pad[5];
	__u8 data[NAME_DATA];
};

// Force BTF for the types that Go needs beyond map keys and values.
const enum name_kind *unused_name_kind __attribute__((unused));
const struct name_event *unused_name_event __attribute__((unused));

// l7_names: name_event records for user space. Bounded: what does not fit
// is counted (COUNTER_NAMES_LOST).
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
} l7_names SEC(".maps");

// send_name sends bytes from off of the payload, at most NAME_DATA, to
// user space.
static __always_inline void send_name(void *ctx, int xdp, struct flow_key *k, __u8 kind, __u32 off,
				      __u64 n)
{
	if (n > NAME_DATA)
		n = NAME_DATA;
	// Apart, so that clang does not fold the two bounds into one check
	// of n - 1, which leaves the verifier no lower bound of n.
	asm volatile("" : "+r"(n));
	if (n < 1)
		return;
	struct name_event *ev = bpf_ringbuf_reserve(&l7_names, sizeof(*ev), 0);
	if (!ev) {
		bump(COUNTER_NAMES_LOST, 1);
		return;
	}
	if (peek(ctx, xdp, off, ev->data, n)) {
		bpf_ringbuf_discard(ev, 0);
		return;
	}
	ev->flow = *k;
	ev->len = n;
	ev->kind = kind;
	bpf_ringbuf_submit(ev, 0);
}
