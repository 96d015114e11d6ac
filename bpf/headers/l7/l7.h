// SPDX-License-Identifier: GPL-2.0
//
// l7.h counts the L7 messages of a packet the L4 path counted.
//
// L7 looks at the first bytes of TCP payload and of UDP to or from the DNS
// port, on packets already counted by the L4 path (so under the same
// counted-once rule: a request where it enters the host, its response where
// that enters). It reads a few dozen bytes at most (a DNS question up to
// 128, in a loop of 16 words at most), never loops over a payload
// otherwise, and keeps no URL, header or body: HTTP gives its method and
// status class, DNS its id and response code; only DNS responses and TLS
// ClientHellos go to user space, through l7_names, for the names in them,
// and only those that a client's own traffic vouches for: a DNS answer to
// a query seen (its id, flow and question; see match.h), the first
// ClientHello of the side that opened its connection (see tls.h). Any
// other is counted (COUNTER_NAMES_UNMATCHED, COUNTER_NAMES_NOT_CLIENT):
// whoever can send a packet to a node must not name an address.

#pragma once

#include "common.h"
#include "names.h"
#include "parse.h"
#include "l7/dns.h"
#include "l7/http.h"
#include "l7/kafka.h"
#include "l7/match.h"
#include "l7/msg.h"
#include "l7/mysql.h"
#include "l7/postgres.h"
#include "l7/redis.h"
#include "l7/stats.h"
#include "l7/tls.h"

// classify_tcp reads what b, the first bytes of a TCP payload of plen
// bytes (zero-padded where it is shorter), is. A Redis inline command to
// the Redis port comes first; then the first four bytes decide HTTP's
// cases in one switch; the other sniffers follow in this order, and the
// first that knows b decides.
//
// HTTP's switch stays here and not in http.h: behind a helper that returns
// whether it matched, clang 19 lays out the code after it differently and
// spills more (9 more instructions a program).
static __always_inline void classify_tcp(struct packet *p, const __u8 *b, __u32 plen, int dns,
					 struct l7_msg *m)
{
	if (dns) {
		// DNS over TCP: a two-byte length, then the message.
		dns_header(p, b + 2, 2, m);
		return;
	}
	// Before HTTP's: "GET key\r\n" to Redis is no HTTP request.
	if (p->key.dport == REDIS_PORT && redis_inline(b, m))
		return;
	__u32 w;
	__builtin_memcpy(&w, b, 4);
	switch (w) {
	case FOUR('G', 'E', 'T', ' '):
		http_request(b, 3, METHOD_GET, m);
		return;
	case FOUR('P', 'U', 'T', ' '):
		http_request(b, 3, METHOD_PUT, m);
		return;
	case FOUR('P', 'O', 'S', 'T'):
		http_request(b, 4, METHOD_POST, m);
		return;
	case FOUR('H', 'E', 'A', 'D'):
		http_request(b, 4, METHOD_HEAD, m);
		return;
	case FOUR('D', 'E', 'L', 'E'):
		if (b[4] == 'T' && b[5] == 'E')
			http_request(b, 6, METHOD_DELETE, m);
		return;
	case FOUR('P', 'A', 'T', 'C'):
		if (b[4] == 'H')
			http_request(b, 5, METHOD_PATCH, m);
		return;
	case FOUR('O', 'P', 'T', 'I'):
		if (b[4] == 'O' && b[5] == 'N' && b[6] == 'S')
			http_request(b, 7, METHOD_OPTIONS, m);
		return;
	case FOUR('C', 'O', 'N', 'N'):
		if (b[4] == 'E' && b[5] == 'C' && b[6] == 'T')
			http_request(b, 7, METHOD_OTHER, m);
		return;
	case FOUR('T', 'R', 'A', 'C'):
		if (b[4] == 'E')
			http_request(b, 5, METHOD_OTHER, m);
		return;
	case FOUR('H', 'T', 'T', 'P'):
		http_status(b, m);
		return;
	case FOUR('P', 'R', 'I', ' '):
		http2_preface(b, m);
		return;
	}
	if (tls(b, m))
		return;
	if (postgres(b, m))
		return;
	if (mysql(b, plen, m))
		return;
	if (redis(b, m))
		return;
	kafka(b, plen, m);
}

// entry_msg notes or matches the request or response m of a flow other
// than DNS in the flow's entry s of the active half (NULL if it could not
// be inserted: the request goes unnoted), and returns the latency, 0 if
// unknown. A response whose request is not in s looks in the entry of the
// other half, the map other, whose requests were sent before the last
// flip and which the drain has yet to take, then in the map pending
// (key pk), where the drain carried those it took.
static __always_inline __u64 entry_msg(struct l7_stats *s, void *other, void *pending, void *pk,
				       void *flow, struct l7_msg *m, __u64 sent)
{
	if (m->kind == MSG_REQUEST) {
		if (s)
			queue_push(s->wait_ts, &s->wait_head, &s->wait_tail, msg_time(sent));
		return 0;
	}
	// 1xx is not the response: the final one follows.
	if (m->kind != MSG_RESPONSE || (m->proto == L7_HTTP && m->status == 1))
		return 0;
	__u64 now = msg_time(sent);
	if (s && s->wait_head != s->wait_tail)
		return queue_pop(s->wait_ts, &s->wait_head, now);
	struct l7_stats *o = bpf_map_lookup_elem(other, flow);
	if (o && o->wait_head != o->wait_tail)
		return queue_pop(o->wait_ts, &o->wait_head, now);
	return pending_response(pending, pk, now, 0, 0);
}

// l7_lookup notes or matches the request or response m of a flow, whose
// pending key is pk and flow key flow (and, for DNS, whose question hashes
// to question), sets *lat to the latency (0 if unknown: no request
// matched), and returns the flow's stats in l7s_a or l7s_b, the half
// active_buf names (NULL, and the error in *err, if its entry could not be
// inserted). A DNS message waits in, or is matched in, the map pending by
// its id (pending_msg); any other in the flow's stats entry (entry_msg).
// It is inlined at one call site per family, each naming its maps, so that
// each lookup has one constant map, which the verifier needs to inline it
// (see account); the asm statements keep clang from merging the two
// halves' l7_entry back into one call on a map chosen at run time.
static __always_inline struct l7_stats *l7_lookup(void *pending, void *l7s_a, void *l7s_b,
						  void *pk, void *flow, struct l7_msg *m,
						  __u64 sent, __u64 question, __u64 *lat, long *err)
{
	int dns = m->proto == L7_DNS;
	if (dns)
		*lat = pending_msg(pending, pk, m, sent, question);
	struct l7_stats *s;
	if (active_buf) {
		asm volatile("/* l7s_b */");
		s = l7_entry(l7s_b, flow, err);
		if (!dns)
			*lat = entry_msg(s, l7s_a, pending, pk, flow, m, sent);
		return s;
	}
	asm volatile("/* l7s_a */");
	s = l7_entry(l7s_a, flow, err);
	if (!dns)
		*lat = entry_msg(s, l7s_b, pending, pk, flow, m, sent);
	return s;
}

// name_vouched reports whether the message m of the flow whose client to
// server key is flow, which carries names (m->name), may go to user space:
// a DNS answer that matched its query (lat, from pending_msg, is not 0), a
// ClientHello that hello_first lets through (seen is seen4 or seen6, as
// the flow's family). One that may not is counted.
static __always_inline int name_vouched(void *seen, void *flow, struct l7_msg *m, __u64 lat)
{
	if (m->name == NAME_DNS) {
		if (lat)
			return 1;
		bump(COUNTER_NAMES_UNMATCHED, 1);
		return 0;
	}
	if (hello_first(seen, flow))
		return 1;
	bump(COUNTER_NAMES_NOT_CLIENT, 1);
	return 0;
}

// l7 classifies the payload of p, a TCP segment with payload or a UDP
// datagram to or from the DNS port, and counts the message in it.
static __always_inline void l7(void *ctx, int xdp, struct packet *p, void *data, void *data_end,
			       __u64 len)
{
	__u32 off = p->hdr_len;
	// The IP header's length, not the frame's: a short frame's padding
	// is no payload. GSO and BIG TCP packets may say 0 or less.
	__u64 end = len;
	if (p->ip_end > off && p->ip_end < end)
		end = p->ip_end;
	if (end <= off || off > 1024)
		return;
	__u32 plen = end - off;
	int dns = p->key.sport == dns_port || p->key.dport == dns_port;

	__u8 b[L7_PEEK] = {};
	void *pl = data + off;
	if (pl + L7_PEEK <= data_end) {
		__builtin_memcpy(b, pl, L7_PEEK);
	} else {
		__u64 n = plen < L7_PEEK ? plen : L7_PEEK;
		asm volatile("" : "+r"(n)); // as in send_name
		if (n < 1 || peek(ctx, xdp, off, b, n))
			return;
	}

	struct l7_msg m = {};
	if (p->key.proto == IPPROTO_UDP) {
		if (plen < 12)
			return;
		dns_header(p, b, 0, &m);
	} else {
		classify_tcp(p, b, plen, dns, &m);
	}
	if (!m.proto)
		return;

	// A DNS message's question, which its answer must repeat.
	__u64 question = 0;
	if (m.proto == L7_DNS)
		question = dns_question(ctx, xdp, off + m.name_off, plen - m.name_off);

	__u64 sent = send_time(ctx, xdp);
	// The flow client to server: the packet's, turned round for a message
	// from the server. The families differ in their keys only, and
	// l7_lookup does the rest for both. The keys stay apart: IPv4's
	// flow_key4 is built turned round field by field and IPv6's copied and
	// swapped, and a name event takes IPv4's mapped into IPv6; one key for
	// both would make IPv4 hash 40 bytes instead of 16 (see flow_key4).
	__u64 lat;
	long err = 0;
	struct l7_stats *s;
	if (p->v4) {
		struct l7_pending_key4 pk = {
			.flow = {
				.saddr = m.reverse ? p->daddr4 : p->saddr4,
				.daddr = m.reverse ? p->saddr4 : p->daddr4,
				.sport = m.reverse ? p->key.dport : p->key.sport,
				.dport = m.reverse ? p->key.sport : p->key.dport,
				.proto = p->key.proto,
				.vlan = p->key.vlan,
			},
			.id = m.id,
		};
		s = l7_lookup(&l7_pending4, &l7s4_a, &l7s4_b, &pk, &pk.flow, &m, sent, question,
			      &lat, &err);
		if (m.name && name_vouched(&seen4, &pk.flow, &m, lat)) {
			struct flow_key k6;
			key6_of4(&pk.flow, &k6);
			send_name(ctx, xdp, &k6, m.name, off + m.name_off, plen - m.name_off);
		}
	} else {
		struct l7_pending_key pk = {.flow = p->key, .id = m.id};
		if (m.reverse) {
			struct flow_key *k = &pk.flow;
			__u8 a[16];
			__builtin_memcpy(a, k->saddr, 16);
			__builtin_memcpy(k->saddr, k->daddr, 16);
			__builtin_memcpy(k->daddr, a, 16);
			__u16 port = k->sport;
			k->sport = k->dport;
			k->dport = port;
		}
		s = l7_lookup(&l7_pending6, &l7s6_a, &l7s6_b, &pk, &pk.flow, &m, sent, question,
			      &lat, &err);
		if (m.name && name_vouched(&seen6, &pk.flow, &m, lat))
			send_name(ctx, xdp, &pk.flow, m.name, off + m.name_off, plen - m.name_off);
	}
	if (!s) {
		// Every message, and every payload that only tells its
		// protocol (a RESP command, a PostgreSQL SSLRequest): the flow
		// has no L7 entry without it.
		l7_lose(err, m.proto);
		return;
	}
	// Counted here and not in a helper of stats.h: passed the message by
	// pointer or by value, clang 19 emits 9 to 20 more instructions a
	// program.
	// Atomic adds: the entry is every CPU's (see the L7 maps).
	s->proto = m.proto;
	if (m.kind == MSG_REQUEST) {
		if (m.proto == L7_DNS)
			__sync_fetch_and_add(&s->queries, 1);
		else
			__sync_fetch_and_add(&s->methods[m.method & (METHOD_MAX - 1)], 1);
		return;
	}
	if (m.kind != MSG_RESPONSE)
		return;
	if (m.proto == L7_DNS)
		__sync_fetch_and_add(&s->rcodes[m.status & (L7_RCODES - 1)], 1);
	else if (m.status < 6)
		__sync_fetch_and_add(&s->statuses[m.status], 1);
	if (lat) {
		count_latency(s, latency_bucket(lat));
		__sync_fetch_and_add(&s->latency_sum_ns, lat);
	} else if (!(m.proto == L7_HTTP && m.status == 1)) {
		__sync_fetch_and_add(&s->unmatched, 1);
	}
}
