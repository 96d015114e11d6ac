// SPDX-License-Identifier: GPL-2.0
//
// sock.h declares the fields of struct sock and struct sk_buff that the
// tracepoints read (tcp_retransmit: a socket and its skb's TCP control
// block; drop.h: a freed skb's headers), relocated by CO-RE against the
// running kernel's BTF.

#pragma once

#include "common.h"

#pragma clang attribute push(__attribute__((preserve_access_index)), apply_to = record)
struct sock_common {
	union {
		struct {
			__be32 skc_daddr;
			__be32 skc_rcv_saddr;
		};
	};
	union {
		struct {
			__be16 skc_dport;
			__u16 skc_num;
		};
	};
	unsigned short skc_family;
	volatile unsigned char skc_state;
	struct in6_addr skc_v6_daddr;
	struct in6_addr skc_v6_rcv_saddr;
};
struct sock {
	struct sock_common __sk_common;
};
struct sk_buff {
	char cb[48];
	unsigned char *head;
	__u16 network_header;
	__be16 protocol;
	int skb_iif;                // the interface it arrived on; 0: sent by this host
	unsigned long _skb_refdst; // its route (struct dst_entry *, bit 0 a flag)
};
// What drop.h reads of a route: the device it leaves by, and that
// device's network namespace.
struct net {
	__u64 net_cookie;
};
typedef struct {
	struct net *net;
} possible_net_t;
struct net_device {
	int ifindex;
	possible_net_t nd_net;
};
struct dst_entry {
	struct net_device *dev;
};
// tcp_skb_cb is what TCP keeps in an skb's cb.
struct tcp_skb_cb {
	__u32 seq;
	__u32 end_seq;
	union {
		struct {
			__u16 tcp_gso_segs; // tcp_skb_pcount: the segments of the skb
			__u16 tcp_gso_size;
		};
		__u32 tcp_tw_isn;
	};
};
#pragma clang attribute pop

// Errors of __tcp_retransmit_skb, as asm-generic/errno.h numbers them.
#define EAGAIN 11
#define EINVAL 22
#define EHOSTUNREACH 113
#ifndef EBUSY
#define EBUSY 16
#endif
#ifndef ENOMEM
#define ENOMEM 12
#endif

#define AF_INET 2
#define AF_INET6 10
