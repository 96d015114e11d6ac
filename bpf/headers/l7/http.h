// SPDX-License-Identifier: GPL-2.0
//
// http.h tells HTTP/1.x request and status lines, and the HTTP/2 client
// preface, by their first bytes. classify_tcp (l7.h) switches on a
// payload's first four bytes and calls these for HTTP's.

#pragma once

#include "l7/msg.h"

// l7_method is an HTTP request's method.
enum l7_method {
	METHOD_OTHER = 0, // CONNECT, TRACE
	METHOD_GET,
	METHOD_HEAD,
	METHOD_POST,
	METHOD_PUT,
	METHOD_DELETE,
	METHOD_PATCH,
	METHOD_OPTIONS,
	METHOD_MAX,
};

const enum l7_method *unused_l7_method __attribute__((unused));

// is_target reports whether c can start a request target: origin form
// (/path), asterisk form (*), absolute (http://) or authority form (host).
static __always_inline int is_target(__u8 c)
{
	return c == '/' || c == '*' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
	       is_digit(c) || c == '[';
}

// http_request classifies a request line whose method takes n bytes and a
// space.
static __always_inline void http_request(const __u8 *b, __u32 n, __u8 method, struct l7_msg *m)
{
	if (b[n] != ' ' || !is_target(b[n + 1]))
		return;
	m->proto = L7_HTTP;
	m->kind = MSG_REQUEST;
	m->method = method;
}

// http_status classifies b, which starts "HTTP", as a status line:
// HTTP/1.0 or HTTP/1.1, a space, three digits, a space or the end of the
// status line's first 16 bytes.
static __always_inline void http_status(const __u8 *b, struct l7_msg *m)
{
	if (b[4] != '/' || b[5] != '1' || b[6] != '.' || (b[7] != '0' && b[7] != '1') ||
	    b[8] != ' ' || b[9] < '1' || b[9] > '5' || !is_digit(b[10]) || !is_digit(b[11]) ||
	    (b[12] != ' ' && b[12] != '\r'))
		return;
	m->proto = L7_HTTP;
	m->kind = MSG_RESPONSE;
	m->reverse = 1;
	m->status = b[9] - '0';
}

// http2_preface classifies b, which starts "PRI ", as the HTTP/2 client
// preface, "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".
static __always_inline void http2_preface(const __u8 *b, struct l7_msg *m)
{
	if (b[4] == '*' && b[5] == ' ' && b[6] == 'H' && b[11] == '2' && b[12] == '.' && b[13] == '0')
		m->proto = L7_HTTP2;
}
