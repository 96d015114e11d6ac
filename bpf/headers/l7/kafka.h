// SPDX-License-Identifier: GPL-2.0
//
// kafka.h tells a Kafka connection by its client's requests.

#pragma once

#include "l7/msg.h"

// kafka reports whether b, the first L7_PEEK bytes of a TCP payload of plen
// bytes, is a Kafka request whose size is the rest of this payload, with an
// API key and version in the ranges Kafka has; it notes the protocol in m
// if so.
static __always_inline int kafka(const __u8 *b, __u32 plen, struct l7_msg *m)
{
	__u32 len = be32(b);
	if (len + 4 == plen && len >= 10 && b[4] == 0 && b[5] < 75 && b[6] == 0 && b[7] < 20) {
		m->proto = L7_KAFKA;
		return 1;
	}
	return 0;
}
