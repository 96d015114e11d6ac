package topology

import (
	"fmt"
	"strings"
	"time"

	"github.com/flowmap/flowmap/model"
)

// Health is an edge's connection outcomes, ICMP errors, drops by the
// kernel's reason and smoothed RTT samples (model.Health), with what they
// tell at a glance.
type Health struct {
	model.Health
	// SuccessRatio is the share of connections that ended their handshake
	// (established, refused or timed out) that were established.
	SuccessRatio float64 `json:"success_ratio"`
	// Failure names the dominant failure ("refused", "timeout", "reset",
	// "unreachable", "ttl", "drop:<reason>"); empty where none.
	Failure string `json:"failure,omitempty"`
	// SRTT is the mean smoothed RTT of the edge's local sockets.
	SRTT time.Duration `json:"srtt_mean_ns,omitempty"`
}

// addHealth returns a sum of h and o that shares nothing with either.
func addHealth(h, o *model.Health) *model.Health {
	var s model.Health
	if h != nil {
		s = *h
	}
	s.Add(o)
	return &s
}

func newHealth(h *model.Health) *Health {
	return &Health{Health: h.Clone(), SuccessRatio: h.SuccessRatio(), Failure: h.Failure(), SRTT: h.RTT()}
}

// Failing reports whether the edge had failures: connections refused,
// timed out or reset, ICMP errors or drops.
func (h *Health) Failing() bool {
	return h != nil && (h.Failed() > 0 || h.Unreachable+h.TimeExceeded > 0 || h.Dropped() > 0)
}

// healthLabel is the table's health column: "ok", or the failures with
// their counts, the dominant first, as "refused 3/3" or "timeout 2/2
// drop:NETFILTER_DROP 6".
func healthLabel(h *Health) string {
	if h == nil {
		return "-"
	}
	ended := h.Established + h.Refused + h.TimedOut
	var parts []string
	add := func(name string, n uint64, of bool) {
		if n == 0 {
			return
		}
		s := fmt.Sprintf("%s %d", name, n)
		if of && ended > 0 {
			s += fmt.Sprintf("/%d", ended)
		}
		if strings.HasPrefix(h.Failure, name) {
			parts = append([]string{s}, parts...)
			return
		}
		parts = append(parts, s)
	}
	add("refused", h.Refused, true)
	add("timeout", h.TimedOut, true)
	add("reset", h.ResetByClient+h.ResetByServer, false)
	add("unreachable", h.Unreachable, false)
	add("ttl", h.TimeExceeded, false)
	add("zerowin", h.ZeroWindows, false)
	add("rto", h.RTOs, false)
	if n := h.Dropped(); n > 0 {
		reason := strings.TrimPrefix(h.Failure, "drop:")
		if !strings.HasPrefix(h.Failure, "drop:") {
			reason = ""
			var best uint64
			for r, c := range h.Drops {
				if c > best || c == best && r < reason {
					reason, best = r, c
				}
			}
		}
		add("drop:"+reason, n, false)
	}
	if len(parts) == 0 {
		return "ok"
	}
	return strings.Join(parts, " ")
}
