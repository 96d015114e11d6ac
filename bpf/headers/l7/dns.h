// SPDX-License-Identifier: GPL-2.0
//
// dns.h tells DNS queries and responses, over UDP and TCP, by their
// header, and hashes their question, which a response must repeat to be
// the answer to a query (see match.h).

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
	m->name_off = dns_off;
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
	if (rcode == 0 && (h[6] | h[7]))
		m->name = NAME_DNS;
}

// DNS_QMAX is how many bytes of the question section dns_question hashes:
// a name of up to 123 bytes whole, with its type and class; of a longer
// name, its first DNS_QMAX bytes. A multiple of 8.
#define DNS_QMAX 128

// dns_scratch: 0 -> per CPU, the question bytes dns_question reads; off
// the stack, which the flow and L7 paths share, and a map value needs no
// zeroing before the verifier lets bytes past what peek wrote be read.
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64[DNS_QMAX / 8]);
} dns_scratch SEC(".maps");

// dns_mix folds the word w into the hash h (a multiply and xor-shift, as
// in splitmix64): cheap, and not meant to resist an attacker, who has to
// match the query's id and ports before the question counts.
static __always_inline __u64 dns_mix(__u64 h, __u64 w)
{
	h ^= w;
	h *= 0x9e3779b97f4a7c15ULL;
	return h ^ (h >> 32);
}

// zero_byte returns the index of the lowest byte flagged in z, a word with
// only bits 7, 15, … 63 set: the first zero byte in memory order.
static __always_inline __u32 zero_byte(__u64 z)
{
	__u32 j = 0;
	if (!(z & 0xffffffff)) {
		z >>= 32;
		j += 4;
	}
	if (!(z & 0xffff)) {
		z >>= 16;
		j += 2;
	}
	if (!(z & 0xff))
		j += 1;
	return j;
}

// dns_question returns a hash of the question section of the DNS message
// whose header is at off in the frame and which has len bytes from there:
// its name, type and class, as bytes (so case counts: a response repeats
// the query's question byte for byte, 0x20 randomisation included), at
// most DNS_QMAX of them. It returns 0, which matches nothing, if the
// question does not fit in the message.
//
// The name ends at its first zero byte, the root label's: a zero inside a
// label (legal, but no host name's) ends it early, for the query and its
// answer alike. Eight bytes at a time: a byte-by-byte walk of the labels
// costs a loop iteration a byte.
static __always_inline __u64 dns_question(void *ctx, int xdp, __u32 off, __u32 len)
{
	if (len <= 12)
		return 0;
	__u64 n = len - 12;
	if (n > DNS_QMAX)
		n = DNS_QMAX;
	asm volatile("" : "+r"(n)); // as in send_name
	if (n < 1)
		return 0;
	// Not zeroed: no byte past n is hashed (see end below).
	__u32 zero = 0;
	__u64 *w = bpf_map_lookup_elem(&dns_scratch, &zero);
	if (!w || peek(ctx, xdp, off + 12, w, n))
		return 0;
	// The words before the one that holds the name's end, whole.
	__u64 h = 0;
	__u32 end = DNS_QMAX, i;
	for (i = 0; i < DNS_QMAX / 8; i++) {
		__u64 x = w[i];
		// Bit 7 of each zero byte, and maybe of bytes above the first
		// zero (a borrow), never below it.
		__u64 z = (x - 0x0101010101010101ULL) & ~x & 0x8080808080808080ULL;
		if (z) {
			end = i * 8 + zero_byte(z) + 5; // the root label, QTYPE, QCLASS
			break;
		}
		h = dns_mix(h, x);
	}
	if (end > n) {
		// Cut short by the message; or a name too long, of which the
		// first DNS_QMAX bytes count.
		if (n < DNS_QMAX)
			return 0;
		end = DNS_QMAX;
	}
	// Then the bytes up to end: at most 13, in two words.
	for (; i < DNS_QMAX / 8 && i * 8 < end; i++) {
		__u32 r = end - i * 8;
		__u64 x = w[i];
		if (r < 8)
			x &= (1ULL << (r * 8)) - 1;
		h = dns_mix(h, x);
	}
	return dns_mix(h, end) | 1;
}
