package ipfix

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/flowmap/flowmap/export"
	"github.com/flowmap/flowmap/internal/nfcapd"
	"github.com/flowmap/flowmap/model"
)

func testFlows() []model.Flow {
	t0 := time.Date(2026, 12, 2, 9, 0, 0, 0, time.UTC)
	mk := func(src, dst string, proto model.Proto, sport, dport uint16, fb, fp, rb, rp uint64) model.Flow {
		var f model.Flow
		f.Src, f.Dst = netip.MustParseAddr(src), netip.MustParseAddr(dst)
		f.Proto, f.SrcPort, f.DstPort = proto, sport, dport
		f.Forward = model.Direction{Bytes: fb, Packets: fp, TCPFlags: 0x02 | 0x10 | model.FlagSYNOnly}
		f.Reverse = model.Direction{Bytes: rb, Packets: rp, TCPFlags: 0x12}
		f.FirstSeen, f.LastSeen = t0, t0.Add(1500*time.Millisecond)
		f.SrcEndpoint = model.Endpoint{Kind: model.KindPod, Name: "client-7d9", Namespace: "shop"}
		f.DstEndpoint = model.Endpoint{Kind: model.KindPod, Name: "db-0", Namespace: "shop"}
		return f
	}
	return []model.Flow{
		mk("192.0.2.10", "192.0.2.20", model.ProtoTCP, 40001, 5432, 100_000, 80, 5_000_000_000, 3_500_000),
		mk("2001:db8::1", "2001:db8::2", model.ProtoUDP, 5353, 53, 70, 1, 130, 1),
		mk("192.0.2.11", "192.0.2.20", model.ProtoTCP, 40002, 80, 1, 1, 0, 0),
	}
}

// TestNfdump sends flows to nfcapd and reads them back with nfdump: the
// tuples, times, bytes and packets of both directions are what was sent.
func TestNfdump(t *testing.T) {
	c := nfcapd.Start(t)
	e, err := New(Options{URL: "udp://" + c.Addr})
	if err != nil {
		t.Fatal(err)
	}
	fs := testFlows()
	// Many flows, to fill several messages; every other one with health,
	// in the health templates, which nfcapd is to read as well.
	for i := range 200 {
		f := fs[0]
		f.SrcPort = uint16(50000 + i)
		if i%2 == 0 {
			f.Health = &model.Health{Attempts: 1, Refused: 1, Drops: map[string]uint64{"NO_SOCKET": 1}}
		}
		fs = append(fs, f)
	}
	if err := e.Export(context.Background(), export.Batch{Flows: fs, SampleRate: 1}); err != nil {
		t.Fatalf("Export: %v", err)
	}
	e.Close(context.Background())
	recs := c.Records(t)
	if len(recs) != len(fs) {
		t.Fatalf("nfdump read %d records, want %d", len(recs), len(fs))
	}
	got := map[model.Key]nfcapd.Record{}
	for _, r := range recs {
		got[r.Key()] = r
	}
	for _, f := range fs {
		r, ok := got[f.Key()]
		if !ok {
			t.Errorf("flow %v not read back; got %v", f.Key(), recs[:3])
			continue
		}
		if r.InBytes != f.Forward.Bytes || r.InPkts != f.Forward.Packets || r.OutBytes != f.Reverse.Bytes || r.OutPkts != f.Reverse.Packets {
			t.Errorf("flow %v: nfdump bytes/packets in %d/%d out %d/%d, want %d/%d and %d/%d", f.Key(),
				r.InBytes, r.InPkts, r.OutBytes, r.OutPkts, f.Forward.Bytes, f.Forward.Packets, f.Reverse.Bytes, f.Reverse.Packets)
		}
	}
	t.Logf("first record: %+v", recs[0])
}
