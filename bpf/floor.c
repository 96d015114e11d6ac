// SPDX-License-Identifier: GPL-2.0
//
// floor.c is the cheapest program that still does something per packet: it
// adds one to a per-CPU counter and lets the packet go on. make bench runs
// it in the same hooks as flow.c (TC ingress and egress, XDP ingress) so
// that flow.c's cost per run can be read against what any program there
// costs: the hook's dispatch and the run-time statistics' own clock reads.

#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

char __license[] SEC("license") = "GPL";

// runs: index 0 -> per-CPU count of runs, of all floor programs together.
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} runs SEC(".maps");

static __always_inline void bump(void)
{
	__u32 idx = 0;
	__u64 *c = bpf_map_lookup_elem(&runs, &idx);
	if (c)
		*c += 1;
}

// Two TC programs, though alike, so that each hook has its own run-time
// statistics.
SEC("tc")
int floor_ingress(struct __sk_buff *skb)
{
	bump();
	return TC_ACT_UNSPEC;
}

SEC("tc")
int floor_egress(struct __sk_buff *skb)
{
	bump();
	return TC_ACT_UNSPEC;
}

SEC("xdp")
int floor_xdp(struct xdp_md *ctx)
{
	bump();
	return XDP_PASS;
}
