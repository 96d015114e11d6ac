// SPDX-License-Identifier: GPL-2.0
//
// watched.h knows the interfaces whose ingress flowmap counts: egress
// leaves alone the packets that came in through one of them.

#pragma once

#include "common.h"

// watched: ifindex -> 1 for every interface whose ingress flowmap counts,
// and for bridges whose ports it counts, for ifindexes below
// WATCHED_ARRAY; watched_hi for the rest. Egress skips packets that
// arrived on one of them: they were counted there. An array because its
// lookup is inlined to a bounds check and a load.
#define WATCHED_ARRAY 65536
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, WATCHED_ARRAY);
	__type(key, __u32);
	__type(value, __u32);
} watched SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, __u32);
} watched_hi SEC(".maps");

// is_watched reports whether flowmap counts the ingress of ifindex.
static __always_inline int is_watched(__u32 ifindex)
{
	if (ifindex < WATCHED_ARRAY) {
		__u32 *w = bpf_map_lookup_elem(&watched, &ifindex);
		return w && *w;
	}
	return bpf_map_lookup_elem(&watched_hi, &ifindex) != 0;
}
