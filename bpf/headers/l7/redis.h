// SPDX-License-Identifier: GPL-2.0
//
// redis.h tells a Redis connection by its client's commands, or by the
// server's answer to PING.

#pragma once

#include "l7/msg.h"

// REDIS_PORT is the Redis server port: inline commands are told only to it.
#define REDIS_PORT 6379

// redis reports whether b, the first L7_PEEK bytes of a TCP payload, is a
// RESP array of bulk strings, as Redis clients send commands, or "+PONG\r\n",
// the answer to PING (from the server); it notes the protocol in m if so.
static __always_inline int redis(const __u8 *b, struct l7_msg *m)
{
	if (b[0] == '*' && b[1] >= '1' && b[1] <= '9' &&
	    ((b[2] == '\r' && b[3] == '\n' && b[4] == '$') ||
	     (is_digit(b[2]) && b[3] == '\r' && b[4] == '\n' && b[5] == '$'))) {
		m->proto = L7_REDIS;
		return 1;
	}
	__u32 w;
	__builtin_memcpy(&w, b, 4);
	if (w == FOUR('+', 'P', 'O', 'N') && b[4] == 'G' && b[5] == '\r' && b[6] == '\n') {
		m->proto = L7_REDIS;
		m->reverse = 1;
		return 1;
	}
	return 0;
}

// redis_inline reports whether b, the first L7_PEEK bytes of a TCP payload
// to REDIS_PORT, is an inline command (as redis-cli and telnet send them:
// "PING\r\n", "get key\r\n"): a word of letters, then a space or the end of
// the line, CRLF. Only on the Redis port: SMTP's "EHLO host\r\n", FTP's
// "USER x\r\n" or memcached's "get key\r\n" look the same. It notes the
// protocol in m if so.
static __always_inline int redis_inline(const __u8 *b, struct l7_msg *m)
{
#pragma unroll
	for (int i = 0; i < L7_PEEK - 1; i++) {
		__u8 c = b[i] | 0x20; // lower case
		if (c >= 'a' && c <= 'z')
			continue;
		if (i > 0 && (b[i] == ' ' || (b[i] == '\r' && b[i + 1] == '\n'))) {
			m->proto = L7_REDIS;
			return 1;
		}
		return 0;
	}
	return 0;
}
