package flows

import (
	"errors"
	"fmt"
	"time"

	"github.com/cilium/ebpf"

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
	// Four buckets a word, 16 bits each, and the wraps of 32,768 (see
	// count_latency in bpf/headers/l7/stats.h). A bucket's 16 bits are
	// its count: the guard bit, set while a wrap is on its way, is worth
	// the wrap.
	for i, w := range s.Latency {
		for j := range 4 {
			l.Latency.Counts[4*i+j] += w >> (16 * j) & 0xffff
		}
	}
	for _, w := range s.LatencyWraps {
		if b := int(w>>56) - 1; b >= 0 && b < len(l.Latency.Counts) {
			l.Latency.Counts[b] += (w & (1<<56 - 1)) << 15
		}
	}
	l.Latency.Sum += time.Duration(s.LatencySumNs)
}

// l7Batch is how many L7 entries one batch syscall reads.
const l7Batch = 256

// drainL7 reads and deletes every entry of the L7 maps of half, which
// the programs no longer write (the double buffer flipped), into d.l7,
// keyed client to server (IPv4 keys IPv4-mapped). The L7 maps are not
// per CPU: one value a key. The requests still waiting for a response in
// an entry are carried over to the pending maps (see carryL7).
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
	var carryErr error
	err := drainMap(h.v4, d.l7keys4, vals, 1, func(k bpfFlowKey4, v []bpfL7Stats) {
		add(k.mapped(), v)
		if w, ok := waiting(&v[0]); ok {
			carryErr = errors.Join(carryErr, carryL7(d.l7pending.v4, &bpfL7PendingKey4{Flow: k}, w))
		}
	})
	if err != nil {
		return err
	}
	err = drainMap(h.v6, d.l7keys6, d.l7vals[:len(d.l7keys6)], 1, func(k bpfFlowKey, v []bpfL7Stats) {
		add(k, v)
		if w, ok := waiting(&v[0]); ok {
			carryErr = errors.Join(carryErr, carryL7(d.l7pending.v6, &bpfL7PendingKey{Flow: k}, w))
		}
	})
	return errors.Join(err, carryErr)
}

// waiting returns the requests of an L7 entry that wait for a response
// (every protocol's but DNS's, which wait in the pending maps), as the
// pending maps hold them; false if none waits.
func waiting(s *bpfL7Stats) (bpfL7Pending, bool) {
	if s.WaitHead == s.WaitTail {
		return bpfL7Pending{}, false
	}
	return bpfL7Pending{Ts: s.WaitTs, Head: s.WaitHead, Tail: s.WaitTail}, true
}

// carryL7 puts the requests w of a drained L7 entry, which still wait for
// their responses, into the pending map m under key k, where a response
// that finds no request in its flow's new entry looks (see entry_msg in
// bpf/headers/l7/l7.h). A response that came between the drain's read of
// the entry and this finds neither and counts as unmatched: microseconds
// after a flip, once an interval.
func carryL7(m *ebpf.Map, k any, w bpfL7Pending) error {
	if err := m.Update(k, &w, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("carry waiting L7 requests over to %s: %w", m, err)
	}
	return nil
}
