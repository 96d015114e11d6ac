package enrich

import (
	"fmt"
	"net/netip"
	"runtime"
	"testing"
	"time"

	"github.com/flowmap/flowmap/internal/testenv"
	"github.com/flowmap/flowmap/model"
)

func nameAt(i int) model.Name {
	return model.Name{Addr: netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}),
		Name: fmt.Sprintf("host-%07d.example.com", i), Source: model.NameDNS, TTL: time.Hour}
}

// TestNamesBytes fills the cache past its byte bound: the estimate stays
// under it, the oldest addresses go, counted, and the newest are named.
func TestNamesBytes(t *testing.T) {
	n := NewNames(0)
	const limit = 1 << 20
	n.SetMaxBytes(limit)
	now := time.Now()
	const added = 20000
	for i := range added {
		n.Add(nameAt(i), now)
	}
	u := n.Usage()
	kept := uint64(n.Len())
	if u.Bytes > limit || u.LimitBytes != limit || u.Dropped != added-kept || u.Entries != kept {
		t.Errorf("usage %+v with %d addresses, want at most %d B and %d evicted", u, kept, limit, added-kept)
	}
	if _, ok := n.Lookup(nameAt(added-1).Addr, now); !ok {
		t.Errorf("the newest address is not named")
	}
	if _, ok := n.Lookup(nameAt(0).Addr, now); ok {
		t.Errorf("the oldest address is still named")
	}
}

// TestNamesBytesEstimate checks the estimate against the heap's growth:
// one name on each of 50,000 addresses, then four on each of 10,000.
func TestNamesBytesEstimate(t *testing.T) {
	for _, perAddr := range []int{1, 4} {
		t.Run(fmt.Sprint(perAddr), func(t *testing.T) {
			before := testenv.LiveHeap()
			n := NewNamesBounded(1<<20, 1<<20)
			n.SetMaxBytes(1 << 30)
			now := time.Now()
			for i := range 50000 {
				nm := nameAt(i)
				nm.Addr = nameAt(i / perAddr).Addr
				n.Add(nm, now)
			}
			grown := testenv.LiveHeap() - before
			testenv.CheckEstimate(t, fmt.Sprintf("%d names on %d addresses", n.Entries(), n.Len()), n.Usage().Bytes, grown, 0.25)
			runtime.KeepAlive(n)
		})
	}
}
