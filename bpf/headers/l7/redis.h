// SPDX-License-Identifier: GPL-2.0
//
// redis.h tells a Redis connection by its client's commands.

#pragma once

#include "l7/msg.h"

// redis reports whether b, the first L7_PEEK bytes of a TCP payload, is a
// RESP array of bulk strings, as Redis clients send commands, and notes
// the protocol in m if so.
static __always_inline int redis(const __u8 *b, struct l7_msg *m)
{
	if (b[0] == '*' && b[1] >= '1' && b[1] <= '9' &&
	    ((b[2] == '\r' && b[3] == '\n' && b[4] == '$') ||
	     (is_digit(b[2]) && b[3] == '\r' && b[4] == '\n' && b[5] == '$'))) {
		m->proto = L7_REDIS;
		return 1;
	}
	return 0;
}
