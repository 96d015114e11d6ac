// SPDX-License-Identifier: GPL-2.0
//
// msg.h is what the L7 sniffers share: the protocols they tell apart and
// the l7_msg each fills from a payload's first L7_PEEK bytes.

#pragma once

#include "common.h"

// l7_proto is the application protocol of a flow, as its first bytes tell.
enum l7_proto {
	L7_NONE = 0,
	L7_HTTP = 1,
	L7_HTTP2 = 2, // the client preface; gRPC is HTTP/2 and looks the same
	L7_TLS = 3,
	L7_DNS = 4,
	L7_POSTGRES = 5,
	L7_MYSQL = 6,
	L7_REDIS = 7,
	L7_KAFKA = 8,
};

const enum l7_proto *unused_l7_proto __attribute__((unused));

#define L7_PEEK 16 // payload bytes that classify reads

// FOUR is four bytes as a little-endian load of them reads.
#define FOUR(a, b, c, d) ((__u32)(a) | (__u32)(b) << 8 | (__u32)(c) << 16 | (__u32)(d) << 24)

// msg_kind is what one payload's first bytes are.
enum msg_kind {
	MSG_NONE = 0,     // nothing to count (maybe a protocol to note)
	MSG_REQUEST,      // an HTTP request line, a DNS query
	MSG_RESPONSE,     // an HTTP status line, a DNS response
};

// l7_msg is what classify found in one payload.
struct l7_msg {
	__u8 proto;   // enum l7_proto
	__u8 kind;    // enum msg_kind
	__u8 method;  // HTTP: enum l7_method
	__u8 status;  // HTTP: status class 1 to 5; DNS: response code, 7 for above 6
	__u16 id;     // DNS id
	__u8 reverse; // the payload goes server to client
	__u8 name;    // enum name_kind: send the payload to l7_names
	__u8 name_off; // where in the payload the name event's data starts; DNS: its header, always
};

static __always_inline int is_digit(__u8 c) { return c >= '0' && c <= '9'; }

// be32 reads a big-endian 32-bit number at b.
static __always_inline __u32 be32(const __u8 *b)
{
	return (__u32)b[0] << 24 | (__u32)b[1] << 16 | (__u32)b[2] << 8 | b[3];
}
