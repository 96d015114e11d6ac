package enrich

import (
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/flowmap/flowmap/model"
)

func TestCollector(t *testing.T) {
	inv := newTestInventory(t, map[string][]record{
		"docker": {{ep: model.Endpoint{Kind: model.KindContainer, ID: cidA, Name: "web", Addrs: addrs("198.51.100.2")}}},
	})
	veth := model.Interface{Index: 3, Kind: "veth", PeerNetNSID: 9}
	for _, r := range []struct {
		addr  string
		iface model.Interface
	}{
		{"198.51.100.2", model.Interface{}},
		{"198.51.100.2", model.Interface{}},
		{"198.51.100.9", veth},
		{"203.0.113.1", model.Interface{}},
	} {
		inv.Resolve(netip.MustParseAddr(r.addr), r.iface)
	}
	for _, s := range inv.sources {
		if s.name == "host" {
			s.bad("netlink", errors.New("a test error"))
			s.bad("netlink", errors.New("a test error"))
		}
	}
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(NewCollector(inv))
	want := `
# HELP flowmap_enrich_endpoints Endpoints the inventory knows, all sources joined.
# TYPE flowmap_enrich_endpoints gauge
flowmap_enrich_endpoints 1
# HELP flowmap_enrich_resolutions_total Addresses resolved, by result: known to a source, unknown behind a local veth, or external.
# TYPE flowmap_enrich_resolutions_total counter
flowmap_enrich_resolutions_total{result="external"} 1
flowmap_enrich_resolutions_total{result="known"} 2
flowmap_enrich_resolutions_total{result="unknown"} 1
# HELP flowmap_enrich_source_errors_total Errors of inventory sources and bad inputs they skipped, by source and reason.
# TYPE flowmap_enrich_source_errors_total counter
flowmap_enrich_source_errors_total{reason="netlink",source="host"} 2
# HELP flowmap_enrich_source_up Whether an inventory source reaches what it reads (1) or not (0).
# TYPE flowmap_enrich_source_up gauge
flowmap_enrich_source_up{source="host"} 0
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want),
		"flowmap_enrich_endpoints", "flowmap_enrich_resolutions_total", "flowmap_enrich_source_errors_total", "flowmap_enrich_source_up"); err != nil {
		t.Fatal(err)
	}
	problems, err := testutil.CollectAndLint(NewCollector(inv))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint %s: %s", p.Metric, p.Text)
	}
}
