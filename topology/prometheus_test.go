package topology

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/flowmap/flowmap/model"
)

// TestMetricsReportOnce runs the reporting rule over the two agents that
// see a cross-node flow, and others: each flow is in the series of one
// node, labelled with the side that reports it.
func TestMetricsReportOnce(t *testing.T) {
	a := model.Endpoint{Kind: model.KindUnknown, ID: "198.51.100.34", Name: "198.51.100.34"}
	b := model.Endpoint{Kind: model.KindUnknown, ID: "198.51.100.42", Name: "198.51.100.42"}
	f := flow(a, b, model.ProtoTCP, 8080, 1000, 2000, 0)
	for _, tc := range []struct {
		name string
		ends Ends
		// want is the reporter label of the series, "" for none.
		want string
		// wantLocal are the endpoint_info names.
		wantLocal []string
	}{
		{"client's node", Ends{ClientHere: true}, "client", []string{"198.51.100.34"}},
		{"client's node, both here", Ends{ClientHere: true, ServerHere: true}, "client", []string{"198.51.100.34", "198.51.100.42"}},
		{"server's node, client watched elsewhere", Ends{ServerHere: true, ClientElsewhere: true}, "", nil},
		{"server's node, client outside", Ends{ServerHere: true}, "server", []string{"198.51.100.42"}},
		{"routed through", Ends{}, "", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := NewMetrics(MetricsOptions{Level: LevelContainer, Node: "n1", Ends: func(*model.Flow) Ends { return tc.ends }})
			m.Add(t0, f)
			reg := prometheus.NewPedanticRegistry()
			reg.MustRegister(m)
			reg.Gather() // new series are first collected at zero
			mfs, err := reg.Gather()
			if err != nil {
				t.Fatal(err)
			}
			var reporters, local []string
			var bytes float64
			for _, mf := range mfs {
				for _, mt := range mf.Metric {
					l := map[string]string{}
					for _, lp := range mt.Label {
						l[lp.GetName()] = lp.GetValue()
					}
					switch mf.GetName() {
					case "flowmap_flow_bytes_total":
						if l["node"] != "n1" {
							t.Errorf("series node = %q, want n1", l["node"])
						}
						if l["direction"] == "forward" {
							reporters = append(reporters, l["reporter"])
						}
						bytes += mt.Counter.GetValue()
					case "flowmap_endpoint_info":
						local = append(local, l["name"])
					}
				}
			}
			wantBytes := 3000.0
			if tc.want == "" {
				wantBytes = 0
				if reporters != nil {
					t.Errorf("reporters %q, want no series", reporters)
				}
				if got := m.skipped; got != 1 {
					t.Errorf("flows left to another node = %v, want 1", got)
				}
			} else if len(reporters) != 1 || reporters[0] != tc.want {
				t.Errorf("reporters %q, want [%q]", reporters, tc.want)
			}
			if bytes != wantBytes {
				t.Errorf("bytes in the series = %v, want %v", bytes, wantBytes)
			}
			if strings.Join(sorted(local), ",") != strings.Join(tc.wantLocal, ",") {
				t.Errorf("endpoint_info names %q, want %q", local, tc.wantLocal)
			}
		})
	}
}

// TestMetricsLocalIdle checks that endpoint_info forgets endpoints idle for
// longer than Idle.
func TestMetricsLocalIdle(t *testing.T) {
	a := model.Endpoint{Kind: model.KindUnknown, ID: "198.51.100.34", Name: "198.51.100.34"}
	b := model.Endpoint{Kind: model.KindUnknown, ID: "198.51.100.42", Name: "198.51.100.42"}
	m := NewMetrics(MetricsOptions{Level: LevelContainer, Node: "n1", Idle: 5 * time.Minute,
		Ends: func(*model.Flow) Ends { return Ends{ClientHere: true} }})
	m.Add(t0, flow(a, b, model.ProtoTCP, 80, 1, 1, 0))
	m.Add(t0.Add(10*time.Minute), flow(b, a, model.ProtoTCP, 80, 1, 1, 0))
	if got, want := len(m.local.rows), 1; got != want {
		t.Errorf("%d local endpoints after a's idle time, want %d", got, want)
	}
}

func sorted(s []string) []string {
	s = append([]string(nil), s...)
	for i := range s {
		for j := i + 1; j < len(s); j++ {
			if s[j] < s[i] {
				s[i], s[j] = s[j], s[i]
			}
		}
	}
	return s
}

// TestMetricsHealth: an edge's failing outcomes and drops have series
// from their first events, at zero at their first scrape; its drop reasons
// past MaxDropReasons, in any interval, sum as reason="other".
func TestMetricsHealth(t *testing.T) {
	a := model.Endpoint{Kind: model.KindUnknown, ID: "198.51.100.34", Name: "198.51.100.34"}
	b := model.Endpoint{Kind: model.KindUnknown, ID: "198.51.100.42", Name: "198.51.100.42"}
	m := NewMetrics(MetricsOptions{Level: LevelContainer, Node: "n1"})
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(m)
	with := func(h *model.Health) model.Flow {
		f := flow(a, b, model.ProtoTCP, 5432, 100, 100, 0)
		f.Health = h
		return f
	}
	gather := func() map[string]float64 {
		t.Helper()
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]float64{}
		for _, mf := range mfs {
			for _, mt := range mf.Metric {
				for _, lp := range mt.Label {
					if n := lp.GetName(); n == "outcome" || n == "reason" {
						got[mf.GetName()+"/"+lp.GetValue()] = mt.Counter.GetValue()
					}
				}
				if mf.GetName() == "flowmap_tcp_rtt_seconds" {
					got["srtt_count"] = float64(mt.Histogram.GetSampleCount())
				}
			}
		}
		return got
	}
	for _, step := range []struct {
		add  *model.Health
		want map[string]float64
	}{
		{&model.Health{Attempts: 2, Established: 1, Refused: 1, Drops: map[string]uint64{"NO_SOCKET": 1, "NETFILTER_DROP": 3}},
			map[string]float64{"flowmap_tcp_connections_total/attempted": 0, "flowmap_tcp_connections_total/established": 0,
				"flowmap_tcp_connections_total/refused": 0, "flowmap_drops_total/NETFILTER_DROP": 0, "flowmap_drops_total/NO_SOCKET": 0}},
		{&model.Health{Attempts: 1, TimedOut: 1, RTTSum: 3 * time.Millisecond, RTTSamples: 3,
			Drops: map[string]uint64{"NETFILTER_DROP": 1, "TCP_CSUM": 2, "OTHERHOST": 5}},
			map[string]float64{"flowmap_tcp_connections_total/attempted": 2, "flowmap_tcp_connections_total/established": 1,
				"flowmap_tcp_connections_total/refused": 1, "flowmap_tcp_connections_total/timed_out": 0,
				"flowmap_drops_total/NETFILTER_DROP": 4, "flowmap_drops_total/NO_SOCKET": 1, "flowmap_drops_total/OTHERHOST": 0,
				"flowmap_drops_total/other": 0, "srtt_count": 0}},
		{&model.Health{Drops: map[string]uint64{"QDISC_DROP": 1}},
			map[string]float64{"flowmap_tcp_connections_total/attempted": 3, "flowmap_tcp_connections_total/established": 1,
				"flowmap_tcp_connections_total/refused": 1, "flowmap_tcp_connections_total/timed_out": 1,
				"flowmap_drops_total/NETFILTER_DROP": 4, "flowmap_drops_total/NO_SOCKET": 1, "flowmap_drops_total/OTHERHOST": 5,
				"flowmap_drops_total/other": 3, "srtt_count": 3}},
	} {
		m.Add(t0, with(step.add))
		if got := gather(); fmt.Sprint(got) != fmt.Sprint(step.want) {
			t.Errorf("series %v, want %v", got, step.want)
		}
	}
}
