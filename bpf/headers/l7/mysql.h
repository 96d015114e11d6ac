// SPDX-License-Identifier: GPL-2.0
//
// mysql.h tells a MySQL connection by its server's greeting.

#pragma once

#include "l7/msg.h"

// mysql reports whether b, the first L7_PEEK bytes of a TCP payload of
// plen bytes, is a MySQL server's greeting: protocol 10, sequence 0, the
// whole packet in this payload; it notes the protocol in m if so.
static __always_inline int mysql(const __u8 *b, __u32 plen, struct l7_msg *m)
{
	if (b[3] == 0 && b[4] == 10 && ((__u32)b[0] | (__u32)b[1] << 8 | (__u32)b[2] << 16) + 4 == plen) {
		m->proto = L7_MYSQL;
		m->reverse = 1;
		return 1;
	}
	return 0;
}
