package flows

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/flowmap/flowmap/model"
)

// Collector exports a Datapath's own counters to Prometheus.
type Collector struct {
	d *Datapath
}

// NewCollector returns a collector of d's Stats.
func NewCollector(d *Datapath) *Collector { return &Collector{d: d} }

var (
	descAttached = prometheus.NewDesc("flowmap_attached_interfaces",
		"Interfaces with flowmap's programs attached.", nil, nil)
	descBridges = prometheus.NewDesc("flowmap_watched_bridges",
		"Bridges watched through their ports.", nil, nil)
	descAttachErrors = prometheus.NewDesc("flowmap_attach_errors_total",
		"Attaches to an interface that failed.", nil, nil)
	descEntries = prometheus.NewDesc("flowmap_flow_map_entries",
		"Flow directions in the flow map at the last drain.", nil, nil)
	descCapacity = prometheus.NewDesc("flowmap_flow_map_capacity",
		"Flow directions the flow map holds between two drains.", nil, nil)
	descFullPackets = prometheus.NewDesc("flowmap_flow_map_full_packets_total",
		"Packets not counted because the flow map was full.", nil, nil)
	descFullBytes = prometheus.NewDesc("flowmap_flow_map_full_bytes_total",
		"Bytes not counted because the flow map was full.", nil, nil)
	descDrain = prometheus.NewDesc("flowmap_drain_duration_seconds",
		"Time to drain the flow map, grace period included.", nil, nil)
	descDrainErrors = prometheus.NewDesc("flowmap_drain_errors_total",
		"Drains of the flow map that failed.", nil, nil)
	descDrainKept = prometheus.NewDesc("flowmap_drain_kept_directions",
		"Flow directions the last drain took out of the flow map but failed to hand out: the next batch carries them.", nil, nil)
	descGraceWaits = prometheus.NewDesc("flowmap_drain_grace_sleeps_total",
		"Drains that could not wait for the programs to leave the old half of the flow map, and slept instead.", nil, nil)
	descResubscribes = prometheus.NewDesc("flowmap_link_event_resubscribes_total",
		"Subscriptions to netlink link and route events that failed (a socket overrun) and were made again, the links listed again.", nil, nil)
	descFlows = prometheus.NewDesc("flowmap_flows_total",
		"Flow records handed out, one per flow and interval.", nil, nil)
	descFrames = prometheus.NewDesc("flowmap_frames_skipped_total",
		"Frames the programs saw but could not count as a flow, by reason.", []string{"reason"}, nil)
	descL7Lost = prometheus.NewDesc("flowmap_l7_messages_lost_total",
		"L7 messages (and payloads that tell a protocol) not counted because their flow's entry could not be inserted into the L7 map, by reason (map_full, no_memory, busy, other) and protocol.",
		[]string{"reason", "protocol"}, nil)
	descNamesLost = prometheus.NewDesc("flowmap_name_events_lost_total",
		"DNS answers and TLS server names not read, or refused as not vouched for by a query or a connection's client, by reason.", []string{"reason"}, nil)
	descNATJoined = prometheus.NewDesc("flowmap_nat_joined_total",
		"Flow directions of NATed connections moved to their connection's tuple through conntrack.", nil, nil)
	descConntrackErrors = prometheus.NewDesc("flowmap_conntrack_errors_total",
		"Drains that could not read conntrack, whose NATed connections stay two one-way flows.", nil, nil)
	descConntrackLookups = prometheus.NewDesc("flowmap_conntrack_lookups_total",
		"Connections looked up in conntrack at the drains (one per TCP or UDP connection drained), by result: found, missing, or skipped_half_open (a client that sent SYNs and no ACK, as a SYN flood's).", []string{"result"}, nil)
	descMapMemory = prometheus.NewDesc("flowmap_map_memory_bytes",
		"Kernel memory of each BPF map (fdinfo memlock); per-CPU maps grow with the possible CPUs.", []string{"map"}, nil)
	descBypassable = prometheus.NewDesc("flowmap_bypassable_interfaces",
		"Interfaces where another TC program runs before flowmap's and may hide packets from it.", nil, nil)
	descHalfOpen = prometheus.NewDesc("flowmap_tcp_half_open_total",
		"TCP connection attempts held apart from the flow maps until their handshake completed, by what became of them: held, promoted (handshake completed), taken (refused, or not completed in a second: drained as flows), evicted (pushed out by newer attempts, as in a SYN flood: counted in no flow).", []string{"result"}, nil)
	descHalfOpenEvicted = prometheus.NewDesc("flowmap_tcp_half_open_evicted_packets_total",
		"SYNs and answers of the attempts evicted from the half-open map, counted in no flow.", nil, nil)
	descHalfOpenEvictedBytes = prometheus.NewDesc("flowmap_tcp_half_open_evicted_bytes_total",
		"Bytes of the attempts evicted from the half-open map, counted in no flow.", nil, nil)
	descHealthMapFull = prometheus.NewDesc("flowmap_health_map_full_events_total",
		"Health events (resets, ICMP errors, RTT samples, zero windows, RTOs) not counted because the health map was full.", nil, nil)
	descDropMapFull = prometheus.NewDesc("flowmap_drop_map_full_packets_total",
		"Dropped packets not counted on their flow because the drop map was full.", nil, nil)
	descLeftovers = prometheus.NewDesc("flowmap_leftover_filters_removed",
		"clsact filters of a dead agent removed at start.", nil, nil)
)

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descAttached, descBridges, descAttachErrors, descEntries,
		descCapacity, descFullPackets, descFullBytes, descDrain, descDrainErrors, descDrainKept, descGraceWaits, descResubscribes, descFlows,
		descFrames, descLeftovers, descL7Lost, descNamesLost, descNATJoined, descConntrackErrors, descConntrackLookups, descMapMemory, descBypassable,
		descHalfOpen, descHalfOpenEvicted, descHalfOpenEvictedBytes, descHealthMapFull, descDropMapFull} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	s := c.d.Stats()
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		for i := range labels {
			labels[i] = model.LabelValue(labels[i])
		}
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		for i := range labels {
			labels[i] = model.LabelValue(labels[i])
		}
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge(descAttached, float64(s.Attached))
	gauge(descBridges, float64(s.Bridges))
	counter(descAttachErrors, s.AttachErrors)
	gauge(descEntries, float64(s.LastEntries))
	gauge(descCapacity, float64(s.MaxFlows))
	counter(descFullPackets, s.MapFullPackets)
	counter(descFullBytes, s.MapFullBytes)
	counter(descHealthMapFull, s.HealthMapFull)
	counter(descDropMapFull, s.DropsMapFull)
	ch <- prometheus.MustNewConstSummary(descDrain, s.Drains, s.DrainSeconds, nil)
	counter(descDrainErrors, s.DrainErrors)
	gauge(descDrainKept, float64(s.DrainKept))
	counter(descGraceWaits, s.GraceWaits)
	counter(descResubscribes, s.Resubscribes)
	counter(descFlows, s.Flows)
	counter(descFrames, s.NonIP, "non_ip")
	counter(descFrames, s.Malformed, "malformed")
	gauge(descLeftovers, float64(s.LeftoversPurged))
	gauge(descBypassable, float64(s.Bypassable))
	counter(descNATJoined, s.NATJoined)
	counter(descConntrackErrors, s.ConntrackErrors)
	counter(descConntrackLookups, s.ConntrackFound, "found")
	counter(descConntrackLookups, s.ConntrackLookups-s.ConntrackFound, "missing")
	counter(descConntrackLookups, s.ConntrackSkipped, "skipped_half_open")
	counter(descFrames, s.Truncated, "truncated")
	for reason, byProto := range s.L7Lost {
		for proto, n := range byProto[1:] {
			counter(descL7Lost, n, l7LossNames[reason], model.L7Protocol(proto+1).String())
		}
	}
	counter(descNamesLost, s.NamesLost, "ring_buffer_full")
	counter(descNamesLost, s.NamesDropped, "batch_full")
	counter(descNamesLost, s.NamesUndecoded, "undecoded")
	counter(descNamesLost, s.NamesUnchained, "not_tied_to_question")
	counter(descNamesLost, s.NamesUnmatched, "no_matching_query")
	counter(descNamesLost, s.NamesNotClient, "not_first_client_hello")
	counter(descHalfOpen, s.HalfOpen.Attempts, "held")
	counter(descHalfOpen, s.HalfOpen.Promoted, "promoted")
	counter(descHalfOpen, s.HalfOpen.Taken, "taken")
	counter(descHalfOpen, s.HalfOpen.Evicted, "evicted")
	counter(descHalfOpenEvicted, s.HalfOpen.EvictedPkts)
	counter(descHalfOpenEvictedBytes, s.HalfOpen.EvictedBytes)
	for _, m := range s.MapMemory {
		gauge(descMapMemory, float64(m.Bytes), m.Name)
	}
}
