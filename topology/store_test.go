package topology

import (
	"fmt"
	"net/netip"
	"runtime"
	"testing"
	"time"

	"github.com/flowmap/flowmap/internal/testenv"
	"github.com/flowmap/flowmap/model"
)

// manyFlows returns n flows between distinct pairs of endpoints.
func manyFlows(n int, bytes uint64) []model.Flow {
	fs := make([]model.Flow, n)
	for i := range fs {
		a := netip.AddrFrom4([4]byte{198, 51, 100, byte(i % 100)})
		src := model.Endpoint{Kind: model.KindUnknown, ID: fmt.Sprintf("c-%06d", i), Addrs: []netip.Addr{a}}
		fs[i] = flow(src, db0, model.ProtoTCP, 5432, bytes, bytes, time.Millisecond)
	}
	return fs
}

// TestGraphBytes fills the graph past its byte bound with new edges in
// every bucket: the estimate stays under the bound, the flows past it
// count in the overflow edge (and in Usage's Dropped), and no byte is
// lost.
func TestGraphBytes(t *testing.T) {
	const limit = 1 << 20
	g := New(Options{MaxBytes: limit})
	var want uint64
	at := t0
	for range 30 { // 30 buckets of 10 s
		g.Add(at, manyFlows(1000, 100)...)
		want += 1000 * 200
		at = at.Add(10 * time.Second)
	}
	u := g.Usage()
	if u.Bytes > limit || u.LimitBytes != limit || u.Dropped == 0 {
		t.Errorf("usage %+v, want at most %d B and flows dropped", u, limit)
	}
	s := g.Snapshot(at, LevelContainer, time.Hour)
	var got uint64
	for _, e := range s.Edges {
		got += e.Bytes()
	}
	if got != want {
		t.Errorf("%d bytes in all edges, want %d", got, want)
	}
	st := g.Stats()
	if st.OverflowFlows != u.Dropped {
		t.Errorf("overflow flows %d, want the %d the bound dropped", st.OverflowFlows, u.Dropped)
	}
	t.Logf("usage %+v, %d edges, %d entries", u, st.Edges, st.Entries)
}

// TestGraphBytesEstimate checks the graph's estimate against the heap's
// growth.
func TestGraphBytesEstimate(t *testing.T) {
	before := testenv.LiveHeap()
	g := New(Options{MaxBytes: 1 << 30})
	at := t0
	for range 12 {
		fs := manyFlows(5000, 100)
		for j := range fs {
			if j%10 == 0 {
				fs[j].L7 = &model.L7{}
			}
		}
		g.Add(at, fs...)
		at = at.Add(10 * time.Second)
	}
	grown := testenv.LiveHeap() - before
	testenv.CheckEstimate(t, "5,000 edges in 12 buckets, 10% with L7", g.Usage().Bytes, grown, 0.25)
	runtime.KeepAlive(g)
}
