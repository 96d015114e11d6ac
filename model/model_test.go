package model

import (
	"net/netip"
	"reflect"
	"testing"
	"time"
)

func rec(bytes uint64, l7 *L7) Record {
	return Record{
		Src: netip.MustParseAddr("198.51.100.2"), Dst: netip.MustParseAddr("198.51.100.3"),
		Proto: ProtoTCP, SrcPort: 40000, DstPort: 80,
		Forward: Direction{Bytes: bytes, Packets: 1, TCPFlags: FlagSYNOnly},
		Reverse: Direction{Bytes: 2 * bytes, Packets: 2, TCPFlags: FlagSYNACK, Point: PointTCEgress, Ifindex: 4},
		L7:      l7,
	}
}

func l7(gets uint64) *L7 {
	l := &L7{Protocol: L7HTTP}
	l.Methods[MethodGET] = gets
	l.Statuses[2] = gets
	l.Latency.Counts[10] = gets
	l.Latency.Sum = time.Duration(gets) * time.Millisecond
	return l
}

// deepCopy copies batches, their records' L7 included, to compare with later.
func deepCopy(bs []Batch) []Batch {
	if bs == nil {
		return nil
	}
	out := make([]Batch, len(bs))
	for i, b := range bs {
		out[i] = b
		out[i].Records = make([]Record, len(b.Records))
		for j, r := range b.Records {
			out[i].Records[j] = r.Clone()
		}
	}
	return out
}

func TestMerge(t *testing.T) {
	t0 := time.Date(2026, 12, 2, 9, 0, 0, 0, time.UTC)
	at := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }
	other := rec(7, nil)
	other.DstPort = 443
	for _, tc := range []struct {
		name    string
		in      []Batch
		records int
		bytes   uint64 // forward bytes of the port-80 flow
		gets    uint64 // its L7 GETs
	}{
		{"one", []Batch{{Start: at(0), End: at(1), Records: []Record{rec(10, l7(2))}}}, 1, 10, 2},
		{"l7 in both", []Batch{
			{Start: at(0), End: at(1), Records: []Record{rec(10, l7(2))}},
			{Start: at(1), End: at(2), Records: []Record{rec(20, l7(3)), other}},
			{Start: at(2), End: at(3), Records: []Record{rec(40, l7(5))}},
		}, 2, 70, 10},
		{"l7 in the second only", []Batch{
			{Start: at(0), End: at(1), Records: []Record{rec(10, nil)}},
			{Start: at(1), End: at(2), Records: []Record{rec(20, l7(3))}},
		}, 1, 30, 3},
		{"none", nil, 0, 0, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := deepCopy(tc.in)
			var first Batch
			for i := range 3 { // the same merge, again: it must not change its inputs
				m := Merge(tc.in...)
				if !reflect.DeepEqual(tc.in, before) {
					t.Fatalf("merge %d changed its inputs:\n got %+v\nwant %+v", i, tc.in, before)
				}
				if i == 0 {
					first = m
				} else if !reflect.DeepEqual(m, first) {
					t.Fatalf("merge %d = %+v, want %+v as the first", i, m, first)
				}
			}
			if len(first.Records) != tc.records {
				t.Fatalf("records = %d, want %d", len(first.Records), tc.records)
			}
			if tc.records == 0 {
				return
			}
			r := first.Records[0]
			if r.Forward.Bytes != tc.bytes || r.Reverse.Bytes != 2*tc.bytes {
				t.Errorf("bytes = %d/%d, want %d/%d", r.Forward.Bytes, r.Reverse.Bytes, tc.bytes, 2*tc.bytes)
			}
			if r.Forward.TCPFlags != FlagSYNOnly || r.Reverse.Point != PointTCEgress || r.Reverse.Ifindex != 4 {
				t.Errorf("flags %#x, reverse point %s/%d: want %#x, tc-egress/4", r.Forward.TCPFlags, r.Reverse.Point, r.Reverse.Ifindex, FlagSYNOnly)
			}
			if r.L7 == nil || r.L7.Methods[MethodGET] != tc.gets || r.L7.Latency.Count() != tc.gets || r.L7.Protocol != L7HTTP {
				t.Errorf("l7 = %+v, want %d GETs of http, as many samples", r.L7, tc.gets)
			}
			for _, b := range tc.in {
				for _, in := range b.Records {
					if in.L7 != nil && in.L7 == r.L7 {
						t.Error("the merged record shares its L7 with an input")
					}
				}
			}
			if !first.Start.Equal(tc.in[0].Start) || !first.End.Equal(tc.in[len(tc.in)-1].End) {
				t.Errorf("merged %s to %s, want %s to %s", first.Start, first.End, tc.in[0].Start, tc.in[len(tc.in)-1].End)
			}
		})
	}
}

func TestRecordAdd(t *testing.T) {
	t0 := time.Date(2026, 12, 2, 9, 0, 0, 0, time.UTC)
	a := rec(1, nil)
	a.FirstSeen, a.LastSeen = t0.Add(time.Second), t0.Add(2*time.Second)
	b := rec(2, l7(1))
	b.FirstSeen, b.LastSeen = t0, t0.Add(time.Second)
	b.HandshakeRTT = time.Millisecond
	b.SrcIf = Interface{Index: 3, Name: "veth3"}
	b.Reverse.Retransmits = 2
	b.Backend = netip.MustParseAddrPort("198.51.100.7:8080")
	bl7 := *b.L7
	a.Add(&b)
	if a.Forward.Bytes != 3 || a.Forward.Packets != 2 || a.Reverse.Retransmits != 2 {
		t.Errorf("forward %+v reverse %+v: want 3 bytes, 2 packets, 2 retransmits", a.Forward, a.Reverse)
	}
	if !a.FirstSeen.Equal(t0) || !a.LastSeen.Equal(t0.Add(2*time.Second)) {
		t.Errorf("seen %s to %s, want the widest", a.FirstSeen, a.LastSeen)
	}
	if a.HandshakeRTT != time.Millisecond || a.SrcIf.Index != 3 {
		t.Errorf("handshake %s, src if %+v: want b's", a.HandshakeRTT, a.SrcIf)
	}
	if a.L7 == b.L7 || !reflect.DeepEqual(*b.L7, bl7) {
		t.Error("Add shared or changed the added record's L7")
	}
	if a.Backend != b.Backend {
		t.Errorf("backend %s, want b's %s", a.Backend, b.Backend)
	}
	// A backend stays: a later record of the flow that lacks it (its
	// conntrack entry was gone at that drain) does not clear it, and one
	// with another (the entry was replaced) does not change it.
	c := rec(1, nil)
	c.Backend = netip.MustParseAddrPort("198.51.100.8:8080")
	a.Add(&c)
	a.Add(&Record{})
	if a.Backend != b.Backend {
		t.Errorf("backend after adding records without it and with another: %s, want %s", a.Backend, b.Backend)
	}
	if cl := a.Clone(); cl.Backend != a.Backend {
		t.Errorf("clone's backend %s, want %s", cl.Backend, a.Backend)
	}
	a.Add(&b)
	if a.L7.Methods[MethodGET] != 2 || b.L7.Methods[MethodGET] != 1 {
		t.Errorf("GETs: sum %d, added %d; want 2 and 1", a.L7.Methods[MethodGET], b.L7.Methods[MethodGET])
	}
}

func TestEnumText(t *testing.T) {
	for _, p := range []Point{PointNone, PointTCIngress, PointTCEgress, PointXDPIngress} {
		b, _ := p.MarshalText()
		var q Point
		if err := q.UnmarshalText(b); err != nil || q != p {
			t.Errorf("point %d: %q read back as %d, %v", p, b, q, err)
		}
	}
	for i := range NumL7Protocols {
		p := L7Protocol(i)
		b, _ := p.MarshalText()
		var q L7Protocol
		if err := q.UnmarshalText(b); err != nil || q != p {
			t.Errorf("l7 protocol %d: %q read back as %d, %v", p, b, q, err)
		}
	}
	for _, p := range []Proto{ProtoICMP, ProtoTCP, ProtoUDP, ProtoICMPv6, 132} {
		b, _ := p.MarshalText()
		var q Proto
		if err := q.UnmarshalText(b); err != nil || q != p {
			t.Errorf("proto %d: %q read back as %d, %v", p, b, q, err)
		}
	}
}

func TestLabelValue(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"shop", "shop"},
		{"", ""},
		{"café", "café"},
		{"corp\xff\xfenet", "corp\uFFFDnet"},
		{"\xc3", "\uFFFD"},
	} {
		if got := LabelValue(tc.in); got != tc.want {
			t.Errorf("LabelValue(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
