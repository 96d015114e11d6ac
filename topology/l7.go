package topology

import (
	"fmt"
	"strconv"
	"time"

	"github.com/flowmap/flowmap/model"
)

// addL7 adds o to l, which it allocates on first use: edges without L7
// carry none.
func addL7(l, o *model.L7) *model.L7 {
	if l == nil {
		l = &model.L7{}
	}
	l.Add(o)
	return l
}

// newL7 is an edge's L7 export from its summed messages over a window of
// span ns.
func newL7(l *model.L7, span int64) *L7 {
	out := &L7{
		Protocol:  l.Protocol.String(),
		Requests:  l.Requests(),
		Errors:    l.Errors(),
		Responses: l.Responses(),
		Duration:  l.Latency.Sum,
	}
	if span > 0 {
		secs := time.Duration(span).Seconds()
		out.RequestRate = float64(out.Requests) / secs
		out.ErrorRate = float64(out.Errors) / secs
	}
	for i, n := range l.Methods {
		if n > 0 {
			if out.Methods == nil {
				out.Methods = map[string]uint64{}
			}
			out.Methods[model.Method(i).String()] = n
		}
	}
	for i, n := range l.Statuses {
		if n > 0 && i > 0 {
			if out.Statuses == nil {
				out.Statuses = map[string]uint64{}
			}
			out.Statuses[strconv.Itoa(i)+"xx"] = n
		}
	}
	for i, n := range l.Rcodes {
		if n > 0 {
			if out.Rcodes == nil {
				out.Rcodes = map[string]uint64{}
			}
			out.Rcodes[model.RcodeName(i)] = n
		}
	}
	if n := l.Latency.Count(); n > 0 {
		out.Latency = &Latency{
			Samples: n,
			P50:     l.Latency.Quantile(0.5),
			P90:     l.Latency.Quantile(0.9),
			P99:     l.Latency.Quantile(0.99),
		}
	}
	return out
}

// SuccessRatio returns the share of an edge's responses that are not
// errors, and false where it has none.
func (l *L7) SuccessRatio() (float64, bool) {
	if l == nil || l.Responses == 0 {
		return 0, false
	}
	return 1 - float64(l.Errors)/float64(l.Responses), true
}

// successColor is an edge's colour by the share of its responses that
// succeeded: green from 99%, orange from 90%, red below; "" without
// responses.
func successColor(l *L7) string {
	ok, has := l.SuccessRatio()
	switch {
	case !has:
		return ""
	case ok >= 0.99:
		return "green"
	case ok >= 0.9:
		return "orange"
	}
	return "red"
}

// l7Label is an edge's L7 line in the dot label: protocol, request rate,
// error share and median latency.
func l7Label(l *L7) string {
	s := fmt.Sprintf("%s %.3g req/s", l.Protocol, l.RequestRate)
	if ok, has := l.SuccessRatio(); has {
		s += fmt.Sprintf(" %.1f%% err", 100*(1-ok))
	}
	if l.Latency != nil {
		s += " p50 " + l.Latency.P50.Round(time.Microsecond).String()
	}
	return s
}

// l7Tip is the L7 part of an edge's dot tooltip.
func l7Tip(l *L7) string {
	s := fmt.Sprintf("%s: %d requests, %d responses, %d errors", l.Protocol, l.Requests, l.Responses, l.Errors)
	if n := l.Rcodes["NXDOMAIN"]; n > 0 {
		s += fmt.Sprintf(", %d NXDOMAIN", n)
	}
	if l.Latency != nil {
		s += fmt.Sprintf(", latency p50 %s p90 %s p99 %s", l.Latency.P50.Round(time.Microsecond),
			l.Latency.P90.Round(time.Microsecond), l.Latency.P99.Round(time.Microsecond))
	}
	return s
}
