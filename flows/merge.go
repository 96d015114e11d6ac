package flows

import (
	"net/netip"
	"time"
)

// flowID is what makes two records the same flow.
type flowID struct {
	src, dst         netip.Addr
	proto            Proto
	srcPort, dstPort uint16
	vlan             uint16
}

// Merge sums batches (of consecutive intervals) into one: the records of
// one flow are added up, direction by direction.
func Merge(batches ...Batch) Batch {
	var out Batch
	idx := map[flowID]int{}
	for _, b := range batches {
		if out.Start.IsZero() || b.Start.Before(out.Start) {
			out.Start = b.Start
		}
		if b.End.After(out.End) {
			out.End = b.End
		}
		for _, r := range b.Records {
			id := flowID{r.Src, r.Dst, r.Proto, r.SrcPort, r.DstPort, r.VLAN}
			i, ok := idx[id]
			if !ok {
				idx[id] = len(out.Records)
				out.Records = append(out.Records, r)
				continue
			}
			m := &out.Records[i]
			m.Forward.add(r.Forward)
			m.Reverse.add(r.Reverse)
			m.FirstSeen = earliest(m.FirstSeen, r.FirstSeen)
			if r.LastSeen.After(m.LastSeen) {
				m.LastSeen = r.LastSeen
			}
			if m.HandshakeRTT == 0 {
				m.HandshakeRTT = r.HandshakeRTT
			}
			if m.SrcIf.Index == 0 {
				m.SrcIf = r.SrcIf
			}
			if m.DstIf.Index == 0 {
				m.DstIf = r.DstIf
			}
			if r.L7 != nil {
				if m.L7 == nil {
					m.L7 = &L7{}
				}
				m.L7.Add(r.L7)
			}
		}
	}
	return out
}

func (d *Direction) add(o Direction) {
	d.Bytes += o.Bytes
	d.Packets += o.Packets
	d.TCPFlags |= o.TCPFlags
	d.Retransmits += o.Retransmits
	if d.Point == PointNone {
		d.Point, d.Ifindex = o.Point, o.Ifindex
	}
}

func earliest(a, b time.Time) time.Time {
	if a.IsZero() || (!b.IsZero() && b.Before(a)) {
		return b
	}
	return a
}
