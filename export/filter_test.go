package export

import (
	"reflect"
	"slices"
	"testing"

	"github.com/flowmap/flowmap/model"
)

func TestParsePorts(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []Port
		err  bool
	}{
		{in: "", want: nil},
		{in: "tcp/443, 53,udp/5353,icmp,132", want: []Port{{model.ProtoTCP, 443}, {0, 53}, {model.ProtoUDP, 5353}, {model.ProtoICMP, 0}, {0, 132}}},
		{in: "sctp/1", err: true},
		{in: "tcp/0", err: true},
		{in: "tcp/70000", err: true},
	} {
		got, err := ParsePorts(tc.in)
		if (err != nil) != tc.err {
			t.Errorf("ParsePorts(%q) error = %v, want error %v", tc.in, err, tc.err)
			continue
		}
		if !tc.err && !reflect.DeepEqual(got, tc.want) {
			t.Errorf("ParsePorts(%q) = %v, want %v", tc.in, got, tc.want)
		}
	}
}

func TestFilter(t *testing.T) {
	flow := func(proto model.Proto, port uint16, srcNS, dstNS string) model.Flow {
		var f model.Flow
		f.Proto, f.DstPort, f.SrcPort = proto, port, 40000
		f.SrcEndpoint.Namespace, f.DstEndpoint.Namespace = srcNS, dstNS
		return f
	}
	for _, tc := range []struct {
		name   string
		filter Filter
		flow   model.Flow
		want   string // "" kept
	}{
		{"zero keeps all", Filter{}, flow(model.ProtoICMP, 0, "", ""), ""},
		{"namespace of src", Filter{Namespaces: []string{"shop"}}, flow(model.ProtoTCP, 80, "shop", "db"), ""},
		{"namespace of dst", Filter{Namespaces: []string{"db"}}, flow(model.ProtoTCP, 80, "shop", "db"), ""},
		{"other namespace", Filter{Namespaces: []string{"kube-system"}}, flow(model.ProtoTCP, 80, "shop", "db"), ResultFiltered},
		{"port any proto", Filter{Ports: []Port{{0, 53}}}, flow(model.ProtoUDP, 53, "", ""), ""},
		{"port not icmp", Filter{Ports: []Port{{0, 0}}}, flow(model.ProtoICMP, 0, "", ""), ResultFiltered},
		{"proto/port", Filter{Ports: []Port{{model.ProtoTCP, 53}}}, flow(model.ProtoUDP, 53, "", ""), ResultFiltered},
		{"proto only", Filter{Ports: []Port{{model.ProtoICMP, 0}}}, flow(model.ProtoICMP, 0, "", ""), ""},
		{"client port not matched", Filter{Ports: []Port{{0, 40000}}}, flow(model.ProtoTCP, 80, "", ""), ResultFiltered},
		{"both", Filter{Namespaces: []string{"shop"}, Ports: []Port{{0, 80}}}, flow(model.ProtoTCP, 80, "other", ""), ResultFiltered},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ok, why := tc.filter.keep(&tc.flow)
			if ok != (tc.want == "") || why != tc.want {
				t.Errorf("keep() = %v, %q, want %v, %q", ok, why, tc.want == "", tc.want)
			}
		})
	}
}

// TestSample: 1-in-N keeps about 1/N of the flows, and the same flows each
// time.
func TestSample(t *testing.T) {
	f := Filter{Sample: 4}
	fs := flowsN(1000, 4000)
	var kept []uint16
	for i := range fs {
		if ok, why := f.keep(&fs[i]); ok {
			kept = append(kept, fs[i].SrcPort)
		} else if why != ResultSampledOut {
			t.Fatalf("keep() reason %q, want %q", why, ResultSampledOut)
		}
	}
	if n := len(kept); n < 800 || n > 1200 {
		t.Errorf("kept %d of 4000 at 1 in 4, want about 1000", n)
	}
	for i := range fs {
		ok, _ := f.keep(&fs[i])
		if ok != slices.Contains(kept, fs[i].SrcPort) {
			t.Fatalf("flow %d kept %v the second time, not the first", fs[i].SrcPort, ok)
		}
	}
	if got := f.SampleRate(); got != 4 {
		t.Errorf("SampleRate() = %d, want 4", got)
	}
	if got := (&Filter{}).SampleRate(); got != 1 {
		t.Errorf("SampleRate() of none = %d, want 1", got)
	}
}
