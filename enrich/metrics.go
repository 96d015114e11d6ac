package enrich

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/flowmap/flowmap/model"
)

// Collector exports an Inventory's sources and resolutions to Prometheus.
type Collector struct {
	inv *Inventory
}

// NewCollector returns a collector of inv's counters.
func NewCollector(inv *Inventory) *Collector { return &Collector{inv: inv} }

var (
	descSourceUp = prometheus.NewDesc("flowmap_enrich_source_up",
		"Whether an inventory source reaches what it reads (1) or not (0).", []string{"source"}, nil)
	descSourceEndpoints = prometheus.NewDesc("flowmap_enrich_source_endpoints",
		"Endpoints an inventory source knows.", []string{"source"}, nil)
	descSourceSync = prometheus.NewDesc("flowmap_enrich_source_last_sync_timestamp_seconds",
		"When an inventory source last published what it knows, in seconds since the epoch.", []string{"source"}, nil)
	descSourceErrors = prometheus.NewDesc("flowmap_enrich_source_errors_total",
		"Errors of inventory sources and bad inputs they skipped, by source and reason.", []string{"source", "reason"}, nil)
	descEndpoints = prometheus.NewDesc("flowmap_enrich_endpoints",
		"Endpoints the inventory knows, all sources joined.", nil, nil)
	descClaimsRefused = prometheus.NewDesc("flowmap_enrich_address_claims_refused",
		"Addresses that users wrote (Service externalIPs, load-balancer ingress, selectorless EndpointSlices) and that the last merge refused because the platform assigned them to another endpoint.", nil, nil)
	descSpoofed = prometheus.NewDesc("flowmap_spoofed_packets_total",
		"Packets that entered at a container's veth with a source address neither the container's nor one it forwards for: attributed to the container, not to the address's owner.", nil, nil)
	descResolutions = prometheus.NewDesc("flowmap_enrich_resolutions_total",
		"Addresses resolved, by result: known to a source, unknown behind a local veth, or external.", []string{"result"}, nil)
)

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descSourceUp, descSourceEndpoints, descSourceSync,
		descSourceErrors, descEndpoints, descClaimsRefused, descResolutions, descSpoofed} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	for _, s := range c.inv.sources {
		name := model.LabelValue(s.name)
		s.mu.Lock()
		st := s.status
		s.mu.Unlock()
		up := 0.0
		if st.Up {
			up = 1
		}
		ch <- prometheus.MustNewConstMetric(descSourceUp, prometheus.GaugeValue, up, name)
		ch <- prometheus.MustNewConstMetric(descSourceEndpoints, prometheus.GaugeValue, float64(st.Endpoints), name)
		if !st.LastSync.IsZero() {
			ch <- prometheus.MustNewConstMetric(descSourceSync, prometheus.GaugeValue,
				float64(st.LastSync.UnixNano())/1e9, name)
		}
		for reason, n := range s.errors() {
			ch <- prometheus.MustNewConstMetric(descSourceErrors, prometheus.CounterValue, float64(n), name, model.LabelValue(reason))
		}
	}
	ch <- prometheus.MustNewConstMetric(descEndpoints, prometheus.GaugeValue, float64(c.inv.Known()))
	ch <- prometheus.MustNewConstMetric(descClaimsRefused, prometheus.GaugeValue, float64(c.inv.claimsRefused.Load()))
	ch <- prometheus.MustNewConstMetric(descSpoofed, prometheus.CounterValue, float64(c.inv.Spoofed()))
	for i, result := range [resolvedKinds]string{"known", "unknown", "external"} {
		ch <- prometheus.MustNewConstMetric(descResolutions, prometheus.CounterValue,
			float64(c.inv.resolved[i].Load()), result)
	}
}
