package pipeline

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/flowmap/flowmap/model"
)

func TestStoreCollector(t *testing.T) {
	c := StoreCollector{{"graph", func() model.StoreUsage {
		return model.StoreUsage{Entries: 3, Bytes: 300, LimitBytes: 1000, Dropped: 2}
	}}}
	const want = `
# HELP flowmap_store_bytes Estimated memory the store holds: its entries times their size as Go lays them out.
# TYPE flowmap_store_bytes gauge
flowmap_store_bytes{store="graph"} 300
# HELP flowmap_store_dropped_total Entries the store refused or let go of to stay within its bound (the graph's and the series' flows counted in their overflow edge instead).
# TYPE flowmap_store_dropped_total counter
flowmap_store_dropped_total{store="graph"} 2
# HELP flowmap_store_entries Entries the store holds: records, edge counts, series, names.
# TYPE flowmap_store_entries gauge
flowmap_store_entries{store="graph"} 3
# HELP flowmap_store_limit_bytes The bound on flowmap_store_bytes.
# TYPE flowmap_store_limit_bytes gauge
flowmap_store_limit_bytes{store="graph"} 1000
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want)); err != nil {
		t.Error(err)
	}
	if n, err := testutil.CollectAndLint(c); err != nil || len(n) > 0 {
		t.Errorf("lint: %v %v", n, err)
	}
}

// TestStores: every store of the pipeline reports a bound.
func TestStores(t *testing.T) {
	p := New(Options{Node: "n1", Routes: routes, Addrs: addrs})
	for _, s := range p.Stores() {
		u := s.Usage()
		t.Logf("%s: %+v", s.Name, u)
		if u.LimitBytes == 0 || u.Bytes > u.LimitBytes {
			t.Errorf("%s: usage %+v, want a bound above the bytes", s.Name, u)
		}
	}
}
