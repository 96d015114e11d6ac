package pipeline

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/flowmap/flowmap/model"
)

// Store is one of the agent's stores that grow with what others send,
// named for the label store of its metrics.
type Store struct {
	Name  string
	Usage func() model.StoreUsage
}

// Stores are the pipeline's stores: the graph's edge counts, the flow and
// L7 series, and the names from traffic.
func (p *Pipeline) Stores() []Store {
	return []Store{
		{"graph", p.graph.Usage},
		{"flow_series", p.metrics.Usage},
		{"l7_series", p.l7.Usage},
		{"names", p.l7Names.Usage},
	}
}

var (
	storeBytesDesc = prometheus.NewDesc("flowmap_store_bytes",
		"Estimated memory the store holds: its entries times their size as Go lays them out.", []string{"store"}, nil)
	storeLimitDesc = prometheus.NewDesc("flowmap_store_limit_bytes",
		"The bound on flowmap_store_bytes.", []string{"store"}, nil)
	storeEntriesDesc = prometheus.NewDesc("flowmap_store_entries",
		"Entries the store holds: records, edge counts, series, names.", []string{"store"}, nil)
	storeDroppedDesc = prometheus.NewDesc("flowmap_store_dropped_total",
		"Entries the store refused or let go of to stay within its bound (the graph's and the series' flows counted in their overflow edge instead).", []string{"store"}, nil)
)

// StoreCollector reports the memory of stores.
type StoreCollector []Store

// Describe implements prometheus.Collector.
func (c StoreCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{storeBytesDesc, storeLimitDesc, storeEntriesDesc, storeDroppedDesc} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c StoreCollector) Collect(ch chan<- prometheus.Metric) {
	for _, s := range c {
		u := s.Usage()
		ch <- prometheus.MustNewConstMetric(storeBytesDesc, prometheus.GaugeValue, float64(u.Bytes), s.Name)
		ch <- prometheus.MustNewConstMetric(storeLimitDesc, prometheus.GaugeValue, float64(u.LimitBytes), s.Name)
		ch <- prometheus.MustNewConstMetric(storeEntriesDesc, prometheus.GaugeValue, float64(u.Entries), s.Name)
		ch <- prometheus.MustNewConstMetric(storeDroppedDesc, prometheus.CounterValue, float64(u.Dropped), s.Name)
	}
}
