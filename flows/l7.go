package flows

import (
	"time"

	"github.com/flowmap/flowmap/model"
)

// addL7Stats adds the programs' stats of a flow (one value for all CPUs)
// to l, as L7.Add adds an L7.
func addL7Stats(l *model.L7, s *bpfL7Stats) {
	l.TakeProtocol(l7ProtocolOf(bpfL7Proto(s.Proto)))
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
// keyed client to server (IPv4 keys IPv4-mapped). The L7 maps are not
// per CPU: one value a key.
func (d *drainer) drainL7(half uint32) error {
	add := func(k bpfFlowKey, vals []bpfL7Stats) {
		l := d.l7[k]
		if l == nil {
			l = new(pendingL7)
			d.l7[k] = l
		}
		for i := range vals {
			addL7Stats(&l.L7, &vals[i])
		}
	}
	h := d.l7s[half]
	vals := d.l7vals[:len(d.l7keys4)]
	err := drainMap(h.v4, d.l7keys4, vals, 1, func(k bpfFlowKey4, v []bpfL7Stats) { add(k.mapped(), v) })
	if err != nil {
		return err
	}
	return drainMap(h.v6, d.l7keys6, d.l7vals[:len(d.l7keys6)], 1, add)
}
