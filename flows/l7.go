package flows

import (
	"fmt"
	"math"
	"time"
)

// L7 is what the programs saw of a flow's application messages in one
// interval: the protocol its first bytes tell, and for HTTP/1.x and DNS the
// requests, the responses and the time between them. Requests and
// responses are joined in the kernel (see bpf/flow.c); no URL, header or
// body leaves it.
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

	carried bool // the drain kept it over from the one before
}

// L7Protocol is an application protocol as a flow's first bytes tell it.
type L7Protocol uint8

// The protocols the programs tell apart. gRPC is HTTP/2 and is reported so.
const (
	L7None     = L7Protocol(bpfL7ProtoL7NONE)
	L7HTTP     = L7Protocol(bpfL7ProtoL7HTTP)
	L7HTTP2    = L7Protocol(bpfL7ProtoL7HTTP2)
	L7TLS      = L7Protocol(bpfL7ProtoL7TLS)
	L7DNS      = L7Protocol(bpfL7ProtoL7DNS)
	L7Postgres = L7Protocol(bpfL7ProtoL7POSTGRES)
	L7MySQL    = L7Protocol(bpfL7ProtoL7MYSQL)
	L7Redis    = L7Protocol(bpfL7ProtoL7REDIS)
	L7Kafka    = L7Protocol(bpfL7ProtoL7KAFKA)
)

var l7Names = [...]string{"", "http", "http2", "tls", "dns", "postgresql", "mysql", "redis", "kafka"}

func (p L7Protocol) String() string {
	if int(p) < len(l7Names) {
		return l7Names[p]
	}
	return fmt.Sprintf("l7-%d", p)
}

// MarshalText writes the protocol's name.
func (p L7Protocol) MarshalText() ([]byte, error) { return []byte(p.String()), nil }

// UnmarshalText reads what MarshalText wrote.
func (p *L7Protocol) UnmarshalText(b []byte) error {
	for i, n := range l7Names {
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
	MethodOther   = Method(bpfL7MethodMETHOD_OTHER)
	MethodGET     = Method(bpfL7MethodMETHOD_GET)
	MethodHEAD    = Method(bpfL7MethodMETHOD_HEAD)
	MethodPOST    = Method(bpfL7MethodMETHOD_POST)
	MethodPUT     = Method(bpfL7MethodMETHOD_PUT)
	MethodDELETE  = Method(bpfL7MethodMETHOD_DELETE)
	MethodPATCH   = Method(bpfL7MethodMETHOD_PATCH)
	MethodOPTIONS = Method(bpfL7MethodMETHOD_OPTIONS)
	NumMethods    = int(bpfL7MethodMETHOD_MAX)
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
	l.takeProtocol(o.Protocol)
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

// takeProtocol makes p l's protocol where l knows none yet, or only that
// the flow is TLS and p says more.
func (l *L7) takeProtocol(p L7Protocol) {
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

// bucketStart is 2^(10 + i/4) * (1 + (i%4)/4) ns, as flow.c's
// latency_bucket sorts.
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

// addStats adds one CPU's slot of the programs' stats of a flow to l, as
// Add adds an L7.
func (l *L7) addStats(s *bpfL7Stats) {
	l.takeProtocol(L7Protocol(s.Proto))
	for i, c := range s.Methods {
		l.Methods[i] += uint64(c)
	}
	for i, c := range s.Statuses {
		l.Statuses[i] += uint64(c)
	}
	for i, c := range s.Rcodes {
		l.Rcodes[i] += uint64(c)
	}
	l.Queries += uint64(s.Queries)
	l.Unmatched += uint64(s.Unmatched)
	for i, c := range s.Latency {
		l.Latency.Counts[i] += uint64(c)
	}
	l.Latency.Sum += time.Duration(s.LatencySumNs)
}

// l7Batch is how many L7 entries one batch syscall reads.
const l7Batch = 256

// drainL7 reads and deletes every entry of the L7 maps of half, which
// the programs no longer write (the double buffer flipped), into d.l7,
// keyed client to server (IPv4 keys IPv4-mapped), summed over the CPUs.
func (d *drainer) drainL7(half uint32) error {
	add := func(k bpfFlowKey, percpu []bpfL7Stats) {
		l := d.l7[k]
		if l == nil {
			l = new(L7)
			d.l7[k] = l
		}
		for i := range percpu {
			l.addStats(&percpu[i])
		}
	}
	h := d.l7s[half]
	err := drainMap(h.v4, d.l7keys4, d.l7vals, d.ncpu, func(k bpfFlowKey4, v []bpfL7Stats) { add(k.mapped(), v) })
	if err != nil {
		return err
	}
	return drainMap(h.v6, d.l7keys6, d.l7vals, d.ncpu, add)
}
