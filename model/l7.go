package model

import (
	"fmt"
	"math"
	"time"
)

// L7 is what the programs saw of a flow's application messages in one
// interval: the protocol its first bytes tell, and for HTTP/1.x and DNS the
// requests, the responses and the time between them. Requests and
// responses are joined in the kernel; no URL, header or body leaves it.
type L7 struct {
	Protocol L7Protocol `json:"protocol"`
	// Methods counts HTTP requests by method (index Method).
	Methods [NumMethods]uint64 `json:"methods"`
	// Statuses counts HTTP responses by status class: [2] is 2xx.
	Statuses [6]uint64 `json:"statuses"`
	// Queries counts DNS queries; Rcodes DNS responses by response code,
	// [7] for codes above 6.
	Queries uint64            `json:"queries,omitempty"`
	Rcodes  [NumRcodes]uint64 `json:"rcodes"`
	// Unmatched counts responses whose request flowmap did not see: they
	// have no latency.
	Unmatched uint64 `json:"unmatched,omitempty"`
	// Latency is from a request's first byte to its response's first
	// byte, as the host saw them.
	Latency Histogram `json:"latency"`
}

// L7Protocol is an application protocol as a flow's first bytes tell it.
type L7Protocol uint8

// The protocols the programs tell apart. gRPC is HTTP/2 and is reported so.
const (
	L7None L7Protocol = iota
	L7HTTP
	L7HTTP2
	L7TLS
	L7DNS
	L7Postgres
	L7MySQL
	L7Redis
	L7Kafka
	NumL7Protocols = iota
)

var l7ProtocolNames = [NumL7Protocols]string{"", "http", "http2", "tls", "dns", "postgresql", "mysql", "redis", "kafka"}

func (p L7Protocol) String() string {
	if int(p) < len(l7ProtocolNames) {
		return l7ProtocolNames[p]
	}
	return fmt.Sprintf("l7-%d", p)
}

// MarshalText writes the protocol's name.
func (p L7Protocol) MarshalText() ([]byte, error) { return []byte(p.String()), nil }

// UnmarshalText reads what MarshalText wrote.
func (p *L7Protocol) UnmarshalText(b []byte) error {
	for i, n := range l7ProtocolNames {
		if n == string(b) {
			*p = L7Protocol(i)
			return nil
		}
	}
	return fmt.Errorf("unknown l7 protocol %q", b)
}

// Method is an HTTP request method, as the programs class them.
type Method uint8

// The methods; MethodOther is CONNECT and TRACE.
const (
	MethodOther Method = iota
	MethodGET
	MethodHEAD
	MethodPOST
	MethodPUT
	MethodDELETE
	MethodPATCH
	MethodOPTIONS
	NumMethods = iota
)

var methodNames = [NumMethods]string{"OTHER", "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"}

func (m Method) String() string {
	if int(m) < NumMethods {
		return methodNames[m]
	}
	return "OTHER"
}

// NumRcodes is the DNS response codes counted apart: 0 to 6, then the rest.
const NumRcodes = 8

var rcodeNames = [NumRcodes]string{"NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "YXDOMAIN", "OTHER"}

// RcodeName names DNS response code slot i of L7.Rcodes.
func RcodeName(i int) string {
	if i >= 0 && i < NumRcodes {
		return rcodeNames[i]
	}
	return "OTHER"
}

// Requests returns the HTTP requests and DNS queries.
func (l *L7) Requests() uint64 {
	n := l.Queries
	for _, c := range l.Methods {
		n += c
	}
	return n
}

// Responses returns the HTTP responses (1xx not included) and DNS
// responses.
func (l *L7) Responses() uint64 {
	var n uint64
	for _, c := range l.Statuses[2:] {
		n += c
	}
	for _, c := range l.Rcodes {
		n += c
	}
	return n
}

// Errors returns the responses that say the server failed: HTTP 5xx, DNS
// SERVFAIL. DNS NXDOMAIN is an answer, counted in Rcodes apart.
func (l *L7) Errors() uint64 { return l.Statuses[5] + l.Rcodes[2] }

// Add adds o to l. A protocol that l does not know yet is taken from o.
func (l *L7) Add(o *L7) {
	l.TakeProtocol(o.Protocol)
	for i := range l.Methods {
		l.Methods[i] += o.Methods[i]
	}
	for i := range l.Statuses {
		l.Statuses[i] += o.Statuses[i]
	}
	for i := range l.Rcodes {
		l.Rcodes[i] += o.Rcodes[i]
	}
	l.Queries += o.Queries
	l.Unmatched += o.Unmatched
	l.Latency.Add(&o.Latency)
}

// TakeProtocol makes p l's protocol where l knows none yet, or only that
// the flow is TLS and p says more.
func (l *L7) TakeProtocol(p L7Protocol) {
	if l.Protocol == L7None || (l.Protocol == L7TLS && p != L7None) {
		l.Protocol = p
	}
}

// LatencyBuckets is the number of buckets of a Histogram: four to an
// octave from 1.024 µs (bucket 0 holds all below) to about 68 s (the last
// holds all above).
const LatencyBuckets = 104

// Histogram is a latency histogram with the programs' buckets.
type Histogram struct {
	Counts [LatencyBuckets]uint64 `json:"counts"`
	Sum    time.Duration          `json:"sum_ns"`
}

// Count returns the samples.
func (h *Histogram) Count() uint64 {
	var n uint64
	for _, c := range h.Counts {
		n += c
	}
	return n
}

// Add adds o's samples to h.
func (h *Histogram) Add(o *Histogram) {
	for i, c := range o.Counts {
		h.Counts[i] += c
	}
	h.Sum += o.Sum
}

// BucketLower returns the lower bound of bucket i; bucket 0's is 0.
func BucketLower(i int) time.Duration {
	if i <= 0 {
		return 0
	}
	return bucketStart(i)
}

// BucketUpper returns the upper bound of bucket i; the last one's is
// unbounded, returned as math.MaxInt64.
func BucketUpper(i int) time.Duration {
	if i >= LatencyBuckets-1 {
		return math.MaxInt64
	}
	return bucketStart(i + 1)
}

// bucketStart is 2^(10 + i/4) * (1 + (i%4)/4) ns, as the programs'
// latency_bucket (bpf/headers/l7/stats.h) sorts.
func bucketStart(i int) time.Duration {
	oct := time.Duration(1) << (10 + i/4)
	return oct + oct/4*time.Duration(i%4)
}

// Quantile returns the q-quantile (0 < q <= 1) of the samples, linear
// within its bucket; 0 without samples. The last bucket, unbounded, is
// taken as its lower bound.
func (h *Histogram) Quantile(q float64) time.Duration {
	n := h.Count()
	if n == 0 {
		return 0
	}
	rank := q * float64(n)
	var seen float64
	for i, c := range h.Counts {
		if c == 0 {
			continue
		}
		if seen+float64(c) >= rank {
			lo, hi := BucketLower(i), BucketUpper(i)
			if i == LatencyBuckets-1 {
				return lo
			}
			frac := (rank - seen) / float64(c)
			return lo + time.Duration(frac*float64(hi-lo))
		}
		seen += float64(c)
	}
	return BucketLower(LatencyBuckets - 1)
}
