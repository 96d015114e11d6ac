package enrich_test

import (
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/flowmap/flowmap/enrich"
	"github.com/flowmap/flowmap/model"
	"github.com/flowmap/flowmap/topology"
)

// TestCIDRFileInvalidUTF8Scraped plays a CIDR file whose name is not
// UTF-8, and a namespace read from a file that is not either: scraping the
// series that carry them does not panic (MustNewConstMetric did), and the
// label values are the names with U+FFFD for the bad bytes.
func TestCIDRFileInvalidUTF8Scraped(t *testing.T) {
	path := filepath.Join(t.TempDir(), "cidrs")
	if err := os.WriteFile(path, []byte("203.0.113.0/24 corp\xff\xfenet\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	inv := startInventory(t, enrich.Config{CIDRFile: path, Resync: 100 * time.Millisecond, Logger: testLogger(t)})
	dst := netip.MustParseAddr("203.0.113.9")
	ep, _ := waitNamed(t, inv, dst, 2*time.Second, func(ep model.Endpoint) bool { return ep.Source == "cidr" })
	if ep.Name != "corp\xff\xfenet" {
		t.Fatalf("Resolve(%v).Name = %q, want the file's %q", dst, ep.Name, "corp\xff\xfenet")
	}
	src := model.Endpoint{Kind: model.KindContainer, ID: "c1", Name: "web", Namespace: "shop\xc3"}
	m := topology.NewMetrics(topology.MetricsOptions{Level: topology.LevelContainer, MaxEdges: 10, Node: "n1"})
	now := time.Now()
	m.Add(now, model.Flow{
		Record:      model.Record{Src: netip.MustParseAddr("10.1.0.5"), Dst: dst, Proto: model.ProtoTCP, SrcPort: 40000, DstPort: 443, Forward: model.Direction{Bytes: 100, Packets: 1}},
		SrcEndpoint: src, DstEndpoint: ep,
	})
	reg := prometheus.NewRegistry()
	reg.MustRegister(m, enrich.NewCollector(inv))
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	got := map[string]string{}
	for _, mf := range mfs {
		if mf.GetName() != "flowmap_flow_bytes_total" {
			continue
		}
		for _, l := range mf.GetMetric()[0].GetLabel() {
			got[l.GetName()] = l.GetValue()
		}
	}
	for name, want := range map[string]string{"dst": "corp\uFFFDnet", "src_namespace": "shop\uFFFD"} {
		if got[name] != want {
			t.Errorf("flowmap_flow_bytes_total{%s} = %q, want %q", name, got[name], want)
		}
	}
}
