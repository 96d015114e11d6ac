// SPDX-License-Identifier: GPL-2.0
//
// dns.h tells DNS queries and responses, over UDP and TCP, by their
// header.

#pragma once

#include "l7/msg.h"
#include "names.h"
#include "parse.h"

#define L7_RCODES 8 // DNS response codes 0 to 6, and 7 for any other

// dns_port is the port of DNS servers, over UDP and TCP; Go sets it.
volatile const __u16 dns_port = 53;

// dns_header classifies a DNS header h (12 bytes, from dns_off in the
// payload): a standard query or response with one question, queries to the
// DNS port and responses from it.
static __always_inline void dns_header(struct packet *p, const __u8 *h, __u8 dns_off, struct l7_msg *m)
{
	__u8 f = h[2];
	if ((f & 0x78) != 0 || h[4] != 0 || h[5] != 1) // opcode QUERY, QDCOUNT 1
		return;
	m->id = (__u16)h[0] << 8 | h[1];
	if (!(f & 0x80)) {
		if (p->key.dport != dns_port)
			return;
		m->proto = L7_DNS;
		m->kind = MSG_REQUEST;
		return;
	}
	if (p->key.sport != dns_port)
		return;
	m->proto = L7_DNS;
	m->kind = MSG_RESPONSE;
	m->reverse = 1;
	__u8 rcode = h[3] & 0x0f;
	m->status = rcode < L7_RCODES - 1 ? rcode : L7_RCODES - 1;
	// Answers only in a response without error; the TC bit (truncated)
	// still has the answers that fit.
	if (rcode == 0 && (h[6] | h[7])) {
		m->name = NAME_DNS;
		m->name_off = dns_off;
	}
}
