// SPDX-License-Identifier: GPL-2.0
//
// tls.h tells TLS handshakes by their record header: the ClientHello,
// whose server name user space takes, and the ServerHello.

#pragma once

#include "count.h"
#include "l7/msg.h"
#include "names.h"

// tls classifies b, the first L7_PEEK bytes of a TCP payload, as TLS: a
// handshake record of TLS 1.0 to 1.3 whose message is a ClientHello (from
// the client) or a ServerHello. It returns 1 if b starts a handshake
// record, whatever its message.
static __always_inline int tls(const __u8 *b, struct l7_msg *m)
{
	if (b[0] != 0x16 || b[1] != 3 || b[2] > 4)
		return 0;
	if (b[5] == 1) {
		m->proto = L7_TLS;
		m->name = NAME_TLS;
	} else if (b[5] == 2) {
		m->proto = L7_TLS;
		m->reverse = 1;
	}
	return 1;
}

// hello_first reports whether a ClientHello on the TCP flow direction key
// (in the map seen: seen4 or seen6, a constant at each call site) is the
// first from the side that opened the connection, and notes that one was:
// a ClientHello from the server's side, from a connection whose SYN no
// watched interface counted, or again on one connection, names nothing.
// Two CPUs with a ClientHello each of one connection at the same instant
// may both pass: a byte has no atomic compare-and-swap.
static __always_inline int hello_first(void *seen, void *key)
{
	__u8 *s = bpf_map_lookup_elem(seen, key);
	if (!s || *s != SEEN_SYN)
		return 0;
	*s = SEEN_HELLO;
	return 1;
}
