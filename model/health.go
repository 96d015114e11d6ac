package model

import (
	"maps"
	"sort"
	"time"
)

// Health is what went wrong, or right, on a flow in one interval: the
// outcomes of its TCP connection attempts, its resets, the ICMP errors
// that quoted its packets, the packets the kernel dropped and why, and
// the smoothed RTT of its local sockets. Counts are of events in the
// interval: a connection opened in one interval and reset in a later one
// counts Established in the first and a reset in the second.
type Health struct {
	// Attempts counts SYNs that opened a connection; SYNRetries SYNs sent
	// again while the first was unanswered.
	Attempts   uint64 `json:"attempts,omitempty"`
	SYNRetries uint64 `json:"syn_retries,omitempty"`
	// Established counts SYN-ACKs answering a SYN; Refused RSTs answering
	// one; TimedOut attempts that no answer reached, a second after their
	// last SYN or by the next interval.
	Established uint64 `json:"established,omitempty"`
	Refused     uint64 `json:"refused,omitempty"`
	TimedOut    uint64 `json:"timed_out,omitempty"`
	// ResetByClient and ResetByServer count RSTs past the handshake, by
	// the side that sent them.
	ResetByClient uint64 `json:"reset_by_client,omitempty"`
	ResetByServer uint64 `json:"reset_by_server,omitempty"`
	// Closed counts connections that ended with a FIN.
	Closed uint64 `json:"closed,omitempty"`
	// Unreachable and TimeExceeded count ICMP (and ICMPv6) destination
	// unreachable and time exceeded errors quoting the flow's packets.
	Unreachable  uint64 `json:"icmp_unreachable,omitempty"`
	TimeExceeded uint64 `json:"icmp_time_exceeded,omitempty"`
	// ZeroWindows counts the answered zero-window probes of the flow's
	// local sockets: one for each (backed-off) retransmission timeout
	// that the peer's receive window stayed zero, its application not
	// reading. RTOs counts the loss recoveries that a retransmission
	// timeout began on the flow's local sockets past the handshake (the
	// timeouts backed off within one are not counted). Neither is
	// counted for flows that only pass through.
	ZeroWindows uint64 `json:"zero_windows,omitempty"`
	RTOs        uint64 `json:"rtos,omitempty"`
	// Drops counts the flow's packets the kernel dropped, by the name of
	// its reason (enum skb_drop_reason without SKB_DROP_REASON_, as
	// "NETFILTER_DROP").
	Drops map[string]uint64 `json:"drops,omitempty"`
	// RTTSum over RTTSamples smoothed RTT samples of the flow's local
	// sockets (either end that is on this host).
	RTTSum     time.Duration `json:"rtt_sum_ns,omitempty"`
	RTTSamples uint64        `json:"rtt_samples,omitempty"`
}

// Clone returns a copy of h that shares nothing with it.
func (h Health) Clone() Health {
	h.Drops = maps.Clone(h.Drops)
	return h
}

// Add adds o to h: counts and drops by reason summed, RTT samples pooled.
// h's Drops is replaced by a sum of its own, never added into in place.
func (h *Health) Add(o *Health) {
	h.Attempts += o.Attempts
	h.SYNRetries += o.SYNRetries
	h.Established += o.Established
	h.Refused += o.Refused
	h.TimedOut += o.TimedOut
	h.ResetByClient += o.ResetByClient
	h.ResetByServer += o.ResetByServer
	h.Closed += o.Closed
	h.Unreachable += o.Unreachable
	h.TimeExceeded += o.TimeExceeded
	h.ZeroWindows += o.ZeroWindows
	h.RTOs += o.RTOs
	if len(o.Drops) > 0 {
		d := make(map[string]uint64, len(h.Drops)+len(o.Drops))
		maps.Copy(d, h.Drops)
		for r, n := range o.Drops {
			d[r] += n
		}
		h.Drops = d
	}
	h.RTTSum += o.RTTSum
	h.RTTSamples += o.RTTSamples
}

// RTT is the mean of the smoothed RTT samples; 0 without any.
func (h *Health) RTT() time.Duration {
	if h.RTTSamples == 0 {
		return 0
	}
	return h.RTTSum / time.Duration(h.RTTSamples)
}

// Dropped is the sum of Drops.
func (h *Health) Dropped() uint64 {
	var n uint64
	for _, c := range h.Drops {
		n += c
	}
	return n
}

// Failed counts the connections that failed: refused, timed out, reset.
func (h *Health) Failed() uint64 {
	return h.Refused + h.TimedOut + h.ResetByClient + h.ResetByServer
}

// SuccessRatio is the share of the connections that ended (established,
// refused or timed out) that were established; 1 when none ended.
func (h *Health) SuccessRatio() float64 {
	n := h.Established + h.Refused + h.TimedOut
	if n == 0 {
		return 1
	}
	return float64(h.Established) / float64(n)
}

// Failure names the dominant failure, "" where nothing failed: "refused",
// "timeout", "reset", "unreachable", "ttl", or "drop:" and the commonest
// drop reason.
func (h *Health) Failure() string {
	type f struct {
		name string
		n    uint64
	}
	fs := []f{
		{"refused", h.Refused}, {"timeout", h.TimedOut}, {"reset", h.ResetByClient + h.ResetByServer},
		{"unreachable", h.Unreachable}, {"ttl", h.TimeExceeded},
	}
	reasons := make([]string, 0, len(h.Drops))
	for r := range h.Drops {
		reasons = append(reasons, r)
	}
	sort.Slice(reasons, func(i, j int) bool {
		a, b := reasons[i], reasons[j]
		return h.Drops[a] > h.Drops[b] || h.Drops[a] == h.Drops[b] && a < b
	})
	if len(reasons) > 0 {
		fs = append(fs, f{"drop:" + reasons[0], h.Drops[reasons[0]]})
	}
	best := f{}
	for _, x := range fs {
		if x.n > best.n {
			best = x
		}
	}
	return best.name
}

// IsZero reports whether h counted nothing.
func (h *Health) IsZero() bool {
	return h.Attempts == 0 && h.SYNRetries == 0 && h.Established == 0 && h.Refused == 0 &&
		h.TimedOut == 0 && h.ResetByClient == 0 && h.ResetByServer == 0 && h.Closed == 0 &&
		h.Unreachable == 0 && h.TimeExceeded == 0 && h.ZeroWindows == 0 && h.RTOs == 0 &&
		len(h.Drops) == 0 && h.RTTSamples == 0
}
