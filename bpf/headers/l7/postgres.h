// SPDX-License-Identifier: GPL-2.0
//
// postgres.h tells a PostgreSQL connection by its client's first message.

#pragma once

#include "l7/msg.h"

// postgres reports whether b, the first L7_PEEK bytes of a TCP payload, is
// a PostgreSQL StartupMessage of protocol 3.0, or an SSLRequest or
// GSSENCRequest, from the client, and notes the protocol in m if so.
static __always_inline int postgres(const __u8 *b, struct l7_msg *m)
{
	__u32 len = be32(b);
	__u32 code = be32(b + 4);
	if ((code == 0x00030000 && len >= 8 && len <= 10000) ||
	    ((code == 80877103 || code == 80877104) && len == 8)) {
		m->proto = L7_POSTGRES;
		return 1;
	}
	return 0;
}
