package flows

import (
	"fmt"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"

	"github.com/flowmap/flowmap/model"
)

// synTimeout is how long a SYN goes unanswered before its connection
// counts as timed out at a drain: Linux's first SYN retransmit is after
// 1 s. An attempt whose last SYN is younger waits for the next drain.
const synTimeout = time.Second

// healthHalf is one half of the double-buffered health and drops maps.
type healthHalf struct{ health, drops *ebpf.Map }

// dirHealth is what the health and drops maps held for one flow
// direction (the sender's), summed over the CPUs.
type dirHealth struct {
	bpfHealthStats
	drops   map[uint32]uint64 // by reason
	carried bool              // kept over from the drain before
}

// pendingSYN is a connection attempt (by its client key) that no answer
// reached by the last drain. Once its timeout is counted it is kept, so
// that the SYN retries to come count no other, until synForget after it
// was last seen.
type pendingSYN struct {
	counted bool      // its timeout was counted
	seen    bool      // in this drain
	last    time.Time // the last drain that saw it
}

// synForget is how long a timed-out attempt is remembered: Linux gives up
// retrying SYNs after about 130 s.
const synForget = 3 * time.Minute

// healthBatch is how many entries one batch syscall reads.
const healthBatch = 256

// drainHealth reads and deletes the health and drops maps of half into
// d.health.
func (d *drainer) drainHealth(half uint32) error {
	h := d.healths[half]
	if h.health == nil {
		return nil
	}
	get := d.dirHealth
	err := drainMap(h.health, d.hkeys, d.hvals, d.ncpu, func(k bpfFlowKey, v []bpfHealthStats) {
		x := get(k)
		for i := range v {
			s := &v[i]
			x.Syns += s.Syns
			x.SynRetries += s.SynRetries
			x.Accepts += s.Accepts
			x.Refusals += s.Refusals
			x.Resets += s.Resets
			x.Unreachable += s.Unreachable
			x.TimeExceeded += s.TimeExceeded
			x.ZeroWindows += s.ZeroWindows
			x.Rtos += s.Rtos
			x.RttSamples += s.RttSamples
			x.RttSumUs += s.RttSumUs
			x.SynNs = max(x.SynNs, s.SynNs)
		}
	})
	if err != nil {
		return err
	}
	return drainMap(h.drops, d.dkeys, d.dvals, d.ncpu, func(k bpfDropKey, v []uint64) {
		x := get(k.Flow)
		if x.drops == nil {
			x.drops = map[uint32]uint64{}
		}
		for _, n := range v {
			x.drops[k.Reason] += n
		}
	})
}

// takeHealth returns the health of the flow whose client direction is k
// and server direction rk, with fwd and back what the flow maps counted
// of them, as of the clock reading clk; nil where there is none.
func (d *drainer) takeHealth(k, rk bpfFlowKey, fwd, back *direction, clk clockReading) *model.Health {
	if d.healths[0].health == nil {
		return nil
	}
	hc, hs := d.health[k], d.health[rk]
	if hc != nil || hs != nil {
		delete(d.health, k)
		delete(d.health, rk)
	}
	var h model.Health
	c, s := hc, hs
	if c == nil {
		c = &noDirHealth
	}
	if s == nil {
		s = &noDirHealth
	}
	h.Attempts = uint64(c.Syns)
	h.SYNRetries = uint64(c.SynRetries)
	h.Established = uint64(s.Accepts)
	h.Refused = uint64(s.Refusals)
	h.ResetByClient = uint64(c.Resets)
	h.ResetByServer = uint64(s.Resets)
	h.Unreachable = uint64(c.Unreachable + s.Unreachable)
	h.TimeExceeded = uint64(c.TimeExceeded + s.TimeExceeded)
	h.ZeroWindows = uint64(c.ZeroWindows + s.ZeroWindows)
	h.RTOs = uint64(c.Rtos + s.Rtos)
	h.RTTSamples = uint64(c.RttSamples + s.RttSamples)
	h.RTTSum = time.Duration(c.RttSumUs+s.RttSumUs) * time.Microsecond
	for _, x := range []*dirHealth{c, s} {
		for r, n := range x.drops {
			name := d.reasonName(r)
			if !lost(name) {
				continue
			}
			if h.Drops == nil {
				h.Drops = map[string]uint64{}
			}
			h.Drops[name] += n
		}
	}
	if model.Proto(k.Proto) == model.ProtoTCP {
		d.outcomes(k, &h, c, fwd, back, clk)
	}
	d.freeDirHealth(hc)
	if hs != hc { // k == rk: one entry
		d.freeDirHealth(hs)
	}
	if h.IsZero() {
		return nil
	}
	// Only a flow with health allocates one.
	hp := new(model.Health)
	*hp = h
	return hp
}

// outcomes adds the outcomes the drain tells from both directions to h:
// timed out (SYNs that no answer reached) and closed (a FIN, once a
// connection).
func (d *drainer) outcomes(k bpfFlowKey, h *model.Health, c *dirHealth, fwd, back *direction, clk clockReading) {
	if h.Attempts > 0 {
		d.finished.Remove(k)
	}
	if fwd != nil && back != nil && (fwd.TCPFlags|back.TCPFlags)&hdrFlagFIN != 0 && !d.finished.Contains(k) {
		h.Closed = 1
		d.finished.Add(k, struct{}{})
	}
	answered := h.Established+h.Refused+h.Unreachable+h.TimeExceeded > 0 || back != nil && back.Packets > 0
	p, ok := d.pending[k]
	switch {
	case answered:
		delete(d.pending, k)
	case h.Attempts+h.SYNRetries > 0 || ok:
		fresh := h.Attempts > 0
		if fresh {
			p.counted = false
		}
		age := time.Duration(clk.ns - c.SynNs)
		if !p.counted && (ok && !fresh || c.SynNs != 0 && age >= synTimeout) {
			h.TimedOut = 1
			p.counted = true
		}
		p.seen, p.last = true, clk.wall
		if ok || len(d.pending) < d.maxPending {
			d.pending[k] = p
		}
	}
}

// noDirHealth is the health of a direction that has none; never written.
var noDirHealth dirHealth

// newDirHealth returns an empty dirHealth, one freeDirHealth kept if
// there is: a drain allocates none once the busiest interval's exist.
func (d *drainer) newDirHealth() *dirHealth {
	if n := len(d.healthFree); n > 0 {
		x := d.healthFree[n-1]
		d.healthFree = d.healthFree[:n-1]
		return x
	}
	return &dirHealth{}
}

// freeDirHealth keeps x, which nothing refers to any more, for
// newDirHealth, emptied (its drops map kept). x may be nil.
func (d *drainer) freeDirHealth(x *dirHealth) {
	if x == nil {
		return
	}
	drops := x.drops
	clear(drops)
	*x = dirHealth{drops: drops}
	d.healthFree = append(d.healthFree, x)
}

// hdrFlagFIN is FIN in Direction.TCPFlags.
const hdrFlagFIN = 0x01

// leftoverHealth ends a drain's health: attempts that were pending at the
// last drain and had neither an answer nor a packet since time out, in
// records of their own; health entries whose flow had no record wait for
// the next drain, once.
func (d *drainer) leftoverHealth(clk clockReading) []model.Record {
	var out []model.Record
	for k, p := range d.pending {
		if p.seen {
			p.seen = false
			d.pending[k] = p
			continue
		}
		if p.counted {
			if clk.wall.Sub(p.last) > synForget {
				delete(d.pending, k)
			}
			continue
		}
		p.counted = true
		d.pending[k] = p
		out = append(out, model.Record{
			Src: addr(k.Saddr), Dst: addr(k.Daddr), Proto: model.Proto(k.Proto),
			SrcPort: k.Sport, DstPort: k.Dport, VLAN: k.Vlan,
			FirstSeen: clk.wall, LastSeen: clk.wall,
			SrcIf: model.Interface{PeerNetNSID: -1}, DstIf: model.Interface{PeerNetNSID: -1},
			Health: &model.Health{TimedOut: 1},
		})
	}
	for k, x := range d.health {
		// A direction whose attempt waits in half_open keeps what it
		// had (its SYNs' drops) for the drain that takes the attempt.
		if _, waits := d.halfOpen.waitingKeys[k]; x.carried && !waits {
			delete(d.health, k)
			d.freeDirHealth(x)
		}
		x.carried = true
	}
	return out
}

// lost reports whether a drop of the reason named is a packet lost to
// its flow. QUEUE_PURGE is not: it frees what a socket's queues held as
// the socket is destroyed (a connection closed with its peer's last
// segments unread, or its own unsent), once for nearly every connection
// that closes, failed or not.
func lost(reason string) bool {
	return reason != "QUEUE_PURGE"
}

// reasonName names a drop reason by the kernel's enum skb_drop_reason.
func (d *drainer) reasonName(r uint32) string {
	if n, ok := d.reasons[r]; ok {
		return n
	}
	return fmt.Sprintf("REASON_%d", r)
}

// dropReasons reads enum skb_drop_reason from the kernel's BTF: the names
// by value, without their SKB_DROP_REASON_ prefix, and the value of
// SKB_DROP_REASON_NOT_SPECIFIED, the first that is a drop.
func dropReasons() (names map[uint32]string, first uint32, err error) {
	spec, err := btf.LoadKernelSpec()
	if err != nil {
		return nil, 0, fmt.Errorf("load kernel BTF: %w", err)
	}
	var e *btf.Enum
	if err := spec.TypeByName("skb_drop_reason", &e); err != nil {
		return nil, 0, fmt.Errorf("find enum skb_drop_reason: %w", err)
	}
	names = make(map[uint32]string, len(e.Values))
	first = ^uint32(0)
	for _, v := range e.Values {
		names[uint32(v.Value)] = strings.TrimPrefix(v.Name, "SKB_DROP_REASON_")
		if v.Name == "SKB_DROP_REASON_NOT_SPECIFIED" {
			first = uint32(v.Value)
		}
	}
	if first == ^uint32(0) {
		return nil, 0, fmt.Errorf("enum skb_drop_reason has no SKB_DROP_REASON_NOT_SPECIFIED")
	}
	return names, first, nil
}
