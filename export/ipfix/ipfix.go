// Package ipfix exports flows as IPFIX (RFC 7011) over UDP, TCP or TLS.
//
// Each flow is one data record of one of four templates, for IPv4 and IPv6,
// with and without health,
// made of IANA's information elements for the 5-tuple, the times and the
// counts of the forward direction (client to server), the reverse
// direction as RFC 5103's biflow elements (IANA's numbers with the
// enterprise bit and PEN 29305), and flowmap's own elements, under
// [PEN], for what IANA has none of: the names of the ends, L7 counts,
// retransmits, the handshake RTT and the sampling rate, and a flow's
// health: IANA's flowEndReason, and flowmap's connection outcomes, ICMP
// errors, zero windows, retransmission timeouts, drops by the kernel's
// reason and smoothed RTT.
//
// The encoder is written here, not taken from a library: vmware/go-ipfix
// (the maintained encoder, Antrea's) could not be had from the module
// proxy this project builds with, and it would bring its own collector,
// registry and logging for what is two templates and a few hundred lines;
// calmh/ipfix decodes only.
package ipfix

import (
	"cmp"
	"encoding/binary"
	"maps"
	"math"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/flowmap/flowmap/model"
)

// PEN is the private enterprise number of flowmap's information elements.
// It is 32473, which RFC 5612 reserves for documentation: a placeholder
// until flowmap registers a number of its own with IANA. A collector
// decodes these elements only where it is told of them; the IANA and
// RFC 5103 ones it knows.
const PEN = 32473

// reversePEN is RFC 5103's number of the reverse information elements.
const reversePEN = 29305

// Template IDs of the data sets (256 and up, RFC 7011 section 3.4.3): a
// flow with health (model.Flow.Health, nil with --health=off) goes in one
// of the health templates, which add its elements to the others'; a flow
// without costs no byte more than it did before them.
const (
	template4       = 256
	template6       = 257
	template4Health = 258
	template6Health = 259
)

// varLen is the length of a variable-length element in a template.
const varLen = 0xffff

// field is one information element of the templates, and how to write a
// flow's value of it.
type field struct {
	id     uint16
	pen    uint32
	length uint16
	put    func(b []byte, f *model.Flow, rate uint32) []byte
}

// Elements of flowmap's PEN: their numbers, names and types, as a
// collector would be told them (RFC 5610 style).
const (
	eSamplingRate      = 1  // unsigned32: N of 1-in-N flow sampling, 1 without
	eRetransmits       = 2  // unsigned32: TCP retransmits, forward
	eReverseRetransmit = 3  // unsigned32: TCP retransmits, reverse
	eHandshakeRTT      = 4  // unsigned32: SYN to SYN-ACK, microseconds
	eL7Protocol        = 5  // string: http, http2, tls, dns, postgresql, …
	eL7Requests        = 6  // unsigned64: HTTP requests and DNS queries
	eL7Responses       = 7  // unsigned64: HTTP responses (2xx-5xx) and DNS responses
	eL7Errors          = 8  // unsigned64: HTTP 5xx and DNS SERVFAIL
	eL7LatencySum      = 9  // unsigned64: request to response, summed, microseconds
	eSrcKind           = 10 // string: container, pod, host, service, external, netns, unknown
	eSrcName           = 11 // string
	eSrcNamespace      = 12 // string: Kubernetes namespace
	eSrcWorkload       = 13 // string
	eSrcNode           = 14 // string
	eSrcID             = 15 // string: container id, pod UID, host name, …
	eDstKind           = 16 // the same for the destination
	eDstName           = 17
	eDstNamespace      = 18
	eDstWorkload       = 19
	eDstNode           = 20
	eDstID             = 21

	// Health (the health templates only). Counts are unsigned32 each,
	// in the interval, as model.Health counts them.
	eConnAttempts    = 22 // SYNs that opened a connection
	eSYNRetries      = 23 // SYNs sent again while the first was unanswered
	eConnEstablished = 24 // SYN-ACKs answering a SYN
	eConnRefused     = 25 // RSTs answering a SYN
	eConnTimedOut    = 26 // attempts no answer reached
	eResetByClient   = 27 // RSTs past the handshake, from the client
	eResetByServer   = 28 // and from the server
	eConnClosed      = 29 // connections ended with a FIN
	eICMPUnreachable = 30 // ICMP destination unreachable quoting the flow
	eICMPTTL         = 31 // ICMP time exceeded quoting the flow
	eDrops           = 32 // the flow's packets the kernel dropped
	eDropReasons     = 33 // string: "REASON=count" for each reason, commonest first, space-separated
	eFailure         = 34 // string: the dominant failure (refused, timeout, reset, drop:REASON, …), "" if none
	eSmoothedRTT     = 35 // unsigned32: the local sockets' smoothed RTT, mean of samples, microseconds
	eZeroWindows     = 36 // answered zero-window probes of the local sockets
	eRTOs            = 37 // loss recoveries a retransmission timeout began on the local sockets
)

// flowEndReason values (IANA IE 136).
const (
	endActiveTimeout = 0x02 // the flow is exported at the interval's end
	endDetected      = 0x03 // a FIN or RST ended a connection of it
)

func u8(b []byte, v uint8) []byte         { return append(b, v) }
func u16(b []byte, v uint16) []byte       { return binary.BigEndian.AppendUint16(b, v) }
func u32(b []byte, v uint32) []byte       { return binary.BigEndian.AppendUint32(b, v) }
func u64(b []byte, v uint64) []byte       { return binary.BigEndian.AppendUint64(b, v) }
func ms(t time.Time) uint64               { return uint64(max(t.UnixMilli(), 0)) }
func clamp32(v uint64) uint32             { return uint32(min(v, math.MaxUint32)) }
func addr4(b []byte, a netip.Addr) []byte { v := a.Unmap().As4(); return append(b, v[:]...) }
func addr6(b []byte, a netip.Addr) []byte { v := a.As16(); return append(b, v[:]...) }

// str writes a variable-length string (RFC 7011 section 7), cut at 65535
// bytes.
func str(b []byte, s string) []byte {
	if len(s) > 0xffff {
		s = s[:0xffff]
	}
	if len(s) < 255 {
		b = append(b, byte(len(s)))
	} else {
		b = append(b, 255, byte(len(s)>>8), byte(len(s)))
	}
	return append(b, s...)
}

func isICMP(p model.Proto) bool { return p == model.ProtoICMP || p == model.ProtoICMPv6 }

// port is a transport port, zero for ICMP whose type and code the records
// carry in the ports.
func port(f *model.Flow, p uint16) uint16 {
	if isICMP(f.Proto) {
		return 0
	}
	return p
}

func icmpTypeCode(f *model.Flow) uint16 {
	if !isICMP(f.Proto) {
		return 0
	}
	return f.SrcPort<<8 | f.DstPort&0xff
}

// tcpFlags are the TCP header's flags, without flowmap's own bits.
func tcpFlags(v uint16) uint16 { return v & 0x1ff }

func l7(f *model.Flow) *model.L7 {
	if f.L7 == nil {
		return &model.L7{}
	}
	return f.L7
}

// health returns f's health, a zero one if it has none.
func health(f *model.Flow) *model.Health {
	if f.Health == nil {
		return &model.Health{}
	}
	return f.Health
}

// endReason is flowEndReason: end of flow detected where a connection of
// the flow closed, was refused or reset in the interval, else an active
// timeout (flowmap exports every flow at each interval).
func endReason(h *model.Health) uint8 {
	if h.Closed+h.Refused+h.ResetByClient+h.ResetByServer > 0 {
		return endDetected
	}
	return endActiveTimeout
}

// dropReasons is eDropReasons' value: "NETFILTER_DROP=6 NO_SOCKET=1".
func dropReasons(h *model.Health) string {
	if len(h.Drops) == 0 {
		return ""
	}
	reasons := slices.Collect(maps.Keys(h.Drops))
	slices.SortFunc(reasons, func(a, b string) int {
		return cmp.Or(cmp.Compare(h.Drops[b], h.Drops[a]), strings.Compare(a, b))
	})
	var b strings.Builder
	for i, r := range reasons {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(r)
		b.WriteByte('=')
		b.WriteString(strconv.FormatUint(h.Drops[r], 10))
	}
	return b.String()
}

// healthFields are the health templates' elements past the others'.
func healthFields() []field {
	count := func(id uint16, get func(h *model.Health) uint64) field {
		return field{id, PEN, 4, func(b []byte, f *model.Flow, _ uint32) []byte { return u32(b, clamp32(get(health(f)))) }}
	}
	return []field{
		{136, 0, 1, func(b []byte, f *model.Flow, _ uint32) []byte { return u8(b, endReason(health(f))) }}, // flowEndReason
		count(eConnAttempts, func(h *model.Health) uint64 { return h.Attempts }),
		count(eSYNRetries, func(h *model.Health) uint64 { return h.SYNRetries }),
		count(eConnEstablished, func(h *model.Health) uint64 { return h.Established }),
		count(eConnRefused, func(h *model.Health) uint64 { return h.Refused }),
		count(eConnTimedOut, func(h *model.Health) uint64 { return h.TimedOut }),
		count(eResetByClient, func(h *model.Health) uint64 { return h.ResetByClient }),
		count(eResetByServer, func(h *model.Health) uint64 { return h.ResetByServer }),
		count(eConnClosed, func(h *model.Health) uint64 { return h.Closed }),
		count(eICMPUnreachable, func(h *model.Health) uint64 { return h.Unreachable }),
		count(eICMPTTL, func(h *model.Health) uint64 { return h.TimeExceeded }),
		count(eDrops, func(h *model.Health) uint64 { return h.Dropped() }),
		{eDropReasons, PEN, varLen, func(b []byte, f *model.Flow, _ uint32) []byte { return str(b, dropReasons(health(f))) }},
		{eFailure, PEN, varLen, func(b []byte, f *model.Flow, _ uint32) []byte { return str(b, health(f).Failure()) }},
		count(eSmoothedRTT, func(h *model.Health) uint64 { return uint64(h.RTT().Microseconds()) }),
		count(eZeroWindows, func(h *model.Health) uint64 { return h.ZeroWindows }),
		count(eRTOs, func(h *model.Health) uint64 { return h.RTOs }),
	}
}

func protoName(f *model.Flow) string {
	if f.L7 == nil {
		return ""
	}
	return f.L7.Protocol.String()
}

// fields returns the template's elements for IPv4 or IPv6 flows.
func fields(v6 bool) []field {
	src, dst, icmp := field{8, 0, 4, nil}, field{12, 0, 4, nil}, field{32, 0, 2, nil}
	src.put = func(b []byte, f *model.Flow, _ uint32) []byte { return addr4(b, f.Src) }
	dst.put = func(b []byte, f *model.Flow, _ uint32) []byte { return addr4(b, f.Dst) }
	if v6 {
		src = field{27, 0, 16, func(b []byte, f *model.Flow, _ uint32) []byte { return addr6(b, f.Src) }}
		dst = field{28, 0, 16, func(b []byte, f *model.Flow, _ uint32) []byte { return addr6(b, f.Dst) }}
		icmp.id = 139
	}
	icmp.put = func(b []byte, f *model.Flow, _ uint32) []byte { return u16(b, icmpTypeCode(f)) }
	ep := func(id uint16, get func(f *model.Flow) string) field {
		return field{id, PEN, varLen, func(b []byte, f *model.Flow, _ uint32) []byte { return str(b, get(f)) }}
	}
	return []field{
		{152, 0, 8, func(b []byte, f *model.Flow, _ uint32) []byte { return u64(b, ms(f.FirstSeen)) }}, // flowStartMilliseconds
		{153, 0, 8, func(b []byte, f *model.Flow, _ uint32) []byte { return u64(b, ms(f.LastSeen)) }},  // flowEndMilliseconds
		src, dst,
		{7, 0, 2, func(b []byte, f *model.Flow, _ uint32) []byte { return u16(b, port(f, f.SrcPort)) }},  // sourceTransportPort
		{11, 0, 2, func(b []byte, f *model.Flow, _ uint32) []byte { return u16(b, port(f, f.DstPort)) }}, // destinationTransportPort
		{4, 0, 1, func(b []byte, f *model.Flow, _ uint32) []byte { return u8(b, uint8(f.Proto)) }},       // protocolIdentifier
		icmp,
		{58, 0, 2, func(b []byte, f *model.Flow, _ uint32) []byte { return u16(b, f.VLAN) }},                // vlanId
		{10, 0, 4, func(b []byte, f *model.Flow, _ uint32) []byte { return u32(b, uint32(f.SrcIf.Index)) }}, // ingressInterface
		{14, 0, 4, func(b []byte, f *model.Flow, _ uint32) []byte { return u32(b, uint32(f.DstIf.Index)) }}, // egressInterface
		{1, 0, 8, func(b []byte, f *model.Flow, _ uint32) []byte { return u64(b, f.Forward.Bytes) }},        // octetDeltaCount
		{2, 0, 8, func(b []byte, f *model.Flow, _ uint32) []byte { return u64(b, f.Forward.Packets) }},      // packetDeltaCount
		{6, 0, 2, func(b []byte, f *model.Flow, _ uint32) []byte { return u16(b, tcpFlags(f.Forward.TCPFlags)) }},
		{1, reversePEN, 8, func(b []byte, f *model.Flow, _ uint32) []byte { return u64(b, f.Reverse.Bytes) }},
		{2, reversePEN, 8, func(b []byte, f *model.Flow, _ uint32) []byte { return u64(b, f.Reverse.Packets) }},
		{6, reversePEN, 2, func(b []byte, f *model.Flow, _ uint32) []byte { return u16(b, tcpFlags(f.Reverse.TCPFlags)) }},
		{eSamplingRate, PEN, 4, func(b []byte, _ *model.Flow, rate uint32) []byte { return u32(b, rate) }},
		{eRetransmits, PEN, 4, func(b []byte, f *model.Flow, _ uint32) []byte { return u32(b, f.Forward.Retransmits) }},
		{eReverseRetransmit, PEN, 4, func(b []byte, f *model.Flow, _ uint32) []byte { return u32(b, f.Reverse.Retransmits) }},
		{eHandshakeRTT, PEN, 4, func(b []byte, f *model.Flow, _ uint32) []byte {
			return u32(b, clamp32(uint64(f.HandshakeRTT.Microseconds())))
		}},
		{eL7Protocol, PEN, varLen, func(b []byte, f *model.Flow, _ uint32) []byte { return str(b, protoName(f)) }},
		{eL7Requests, PEN, 8, func(b []byte, f *model.Flow, _ uint32) []byte { return u64(b, l7(f).Requests()) }},
		{eL7Responses, PEN, 8, func(b []byte, f *model.Flow, _ uint32) []byte { return u64(b, l7(f).Responses()) }},
		{eL7Errors, PEN, 8, func(b []byte, f *model.Flow, _ uint32) []byte { return u64(b, l7(f).Errors()) }},
		{eL7LatencySum, PEN, 8, func(b []byte, f *model.Flow, _ uint32) []byte {
			return u64(b, uint64(l7(f).Latency.Sum.Microseconds()))
		}},
		ep(eSrcKind, func(f *model.Flow) string { return string(f.SrcEndpoint.Kind) }),
		ep(eSrcName, func(f *model.Flow) string { return f.SrcEndpoint.Name }),
		ep(eSrcNamespace, func(f *model.Flow) string { return f.SrcEndpoint.Namespace }),
		ep(eSrcWorkload, func(f *model.Flow) string { return f.SrcEndpoint.Workload }),
		ep(eSrcNode, func(f *model.Flow) string { return f.SrcEndpoint.Node }),
		ep(eSrcID, func(f *model.Flow) string { return f.SrcEndpoint.ID }),
		ep(eDstKind, func(f *model.Flow) string { return string(f.DstEndpoint.Kind) }),
		ep(eDstName, func(f *model.Flow) string { return f.DstEndpoint.Name }),
		ep(eDstNamespace, func(f *model.Flow) string { return f.DstEndpoint.Namespace }),
		ep(eDstWorkload, func(f *model.Flow) string { return f.DstEndpoint.Workload }),
		ep(eDstNode, func(f *model.Flow) string { return f.DstEndpoint.Node }),
		ep(eDstID, func(f *model.Flow) string { return f.DstEndpoint.ID }),
	}
}

// templates are the elements of each template, by templateIndex.
var templates = [4][]field{
	fields(false), fields(true),
	append(fields(false), healthFields()...), append(fields(true), healthFields()...),
}

// templateIDs are the templates' IDs, by templateIndex.
var templateIDs = [4]uint16{template4, template6, template4Health, template6Health}

// templateIndex is the index of f's template: IPv6 +1, health +2.
func templateIndex(f *model.Flow) int {
	i := 0
	if !(f.Src.Unmap().Is4() && f.Dst.Unmap().Is4()) {
		i = 1
	}
	if f.Health != nil {
		i += 2
	}
	return i
}

// appendTemplate appends a template record (RFC 7011 section 3.4.1).
func appendTemplate(b []byte, id uint16, fs []field) []byte {
	b = u16(b, id)
	b = u16(b, uint16(len(fs)))
	for _, f := range fs {
		if f.pen != 0 {
			b = u16(b, f.id|0x8000)
			b = u16(b, f.length)
			b = u32(b, f.pen)
			continue
		}
		b = u16(b, f.id)
		b = u16(b, f.length)
	}
	return b
}

const (
	headerLen    = 16
	setHeaderLen = 4
	setTemplate  = 2
)

// encoder writes flows into IPFIX messages of at most max bytes, counting
// the data records of its stream for the messages' sequence numbers.
type encoder struct {
	domain uint32
	max    int
	seq    uint32
	// templateSet is the set of both templates, written once.
	templateSet []byte
}

func newEncoder(domain uint32, max int) *encoder {
	e := &encoder{domain: domain, max: max}
	set := []byte{0, setTemplate, 0, 0}
	for i, t := range templates {
		set = appendTemplate(set, templateIDs[i], t)
	}
	binary.BigEndian.PutUint16(set[2:], uint16(len(set)))
	e.templateSet = set
	return e
}

// encode appends to msgs (reusing their buffers) the messages that carry
// fs, the first one led by the templates if withTemplates; export is the
// messages' export time. A record too big for a message of max bytes is
// sent alone in one as big as it needs.
func (e *encoder) encode(msgs [][]byte, fs []model.Flow, rate uint32, export time.Time, withTemplates bool) [][]byte {
	var m []byte
	var set int // offset of the open data set's header, 0 if none
	var setID uint16
	var records uint32
	begin := func() {
		if len(msgs) < cap(msgs) {
			m = msgs[:len(msgs)+1][len(msgs)][:0]
		} else {
			m = make([]byte, 0, e.max)
		}
		m = append(m, 0, 10, 0, 0)
		m = u32(m, uint32(export.Unix()))
		m = u32(m, e.seq)
		m = u32(m, e.domain)
		if withTemplates {
			m = append(m, e.templateSet...)
			withTemplates = false
		}
		set, records = 0, 0
	}
	closeSet := func() {
		if set != 0 {
			binary.BigEndian.PutUint16(m[set+2:], uint16(len(m)-set))
			set = 0
		}
	}
	finish := func() {
		closeSet()
		binary.BigEndian.PutUint16(m[2:], uint16(len(m)))
		msgs = append(msgs, m)
		e.seq += records
		m = nil
	}
	begin()
	for i := range fs {
		f := &fs[i]
		ti := templateIndex(f)
		id, t := templateIDs[ti], templates[ti]
		for try := 0; ; try++ {
			mark, markSet, markID := len(m), set, setID
			if set == 0 || setID != id {
				closeSet()
				set, setID = len(m), id
				m = append(m, byte(id>>8), byte(id), 0, 0)
			}
			for _, fl := range t {
				m = fl.put(m, f, rate)
			}
			// The first record of a message goes in whatever its
			// size, unless the templates lead it: they then go alone.
			if len(m) <= e.max || records == 0 && markSet == 0 && mark == headerLen || try > 0 {
				records++
				break
			}
			// Past the message's size: end it without this record and
			// write the record into the next.
			m, set, setID = m[:mark], markSet, markID
			finish()
			begin()
		}
	}
	if records > 0 || len(m) > headerLen {
		finish()
	}
	return msgs
}
