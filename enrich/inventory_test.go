package enrich

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/flowmap/flowmap/model"
)

const (
	cidA = "3f2a9c1b7e4d5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8"
	cidB = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	uidA = "6c1f8b2e-4a5d-4e3f-9b2a-1c0d2e3f4a5b"
)

func addrs(ss ...string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}

// newTestInventory returns an inventory with no sources running and the
// given records published as each source would publish them.
func newTestInventory(t testing.TB, bySource map[string][]record) *Inventory {
	t.Helper()
	inv, err := New(Config{})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	prio := map[string]int{"kubernetes": prioKubernetes, "cri": prioCRI, "docker": prioEngine,
		"netns": prioNetNS, "host": prioHost, "cloud": prioCloud}
	for name, recs := range bySource {
		for i := range recs {
			recs[i].prio = prio[name]
			recs[i].ep.Source = name
		}
		inv.publish(name, recs)
	}
	inv.rebuild()
	return inv
}

func TestResolve(t *testing.T) {
	inv := newTestInventory(t, map[string][]record{
		"docker": {{
			ep:   model.Endpoint{Kind: model.KindContainer, ID: cidA, Name: "web", Image: "busybox", Labels: map[string]string{"app": "web"}, Addrs: addrs("198.51.100.2"), NetNS: 4026532001},
			keys: []joinKey{containerKey(cidA)},
		}},
		"netns": {
			{
				ep:    model.Endpoint{Kind: model.KindContainer, ID: cidA, Name: cidA[:12], NetNS: 4026532001, PIDNS: 4026532002, Addrs: addrs("198.51.100.2", "2001:db8::2")},
				keys:  []joinKey{containerKey(cidA)},
				nsids: []int{3},
			},
			{
				ep:    model.Endpoint{Kind: model.KindNetNS, ID: "netns:4026532009", Name: "lab", NetNS: 4026532009, Addrs: addrs("198.51.100.9")},
				nsids: []int{7},
			},
		},
		"kubernetes": {{
			ep:   model.Endpoint{Kind: model.KindPod, ID: uidA, Name: "checkout-7d9f", Namespace: "shop", Workload: "checkout", WorkloadKind: "Deployment", Node: "n1", Addrs: addrs("198.51.100.20")},
			keys: []joinKey{podKey(uidA), containerKey(cidB)},
		}},
		"cri": {{
			ep:   model.Endpoint{Kind: model.KindPod, ID: uidA, Name: "checkout-7d9f", Namespace: "shop", Image: "shop/checkout:1.2", Labels: map[string]string{"io.kubernetes.pod.name": "checkout-7d9f"}, Addrs: addrs("198.51.100.20")},
			keys: []joinKey{podKey(uidA), containerKey(cidB)},
		}},
	})
	inv.setCIDRs(newCIDRTable([]CIDR{
		{netip.MustParsePrefix("203.0.113.0/24"), "corp network"},
		{netip.MustParsePrefix("203.0.113.10/32"), "payments lb"},
	}))
	veth := func(nsid int) model.Interface {
		return model.Interface{Index: 42, Name: "vethx", Kind: "veth", PeerNetNSID: nsid}
	}
	tests := []struct {
		name  string
		addr  string
		iface model.Interface
		want  model.Endpoint
	}{
		{
			name: "container by address, docker and netns joined",
			addr: "198.51.100.2",
			want: model.Endpoint{Kind: model.KindContainer, ID: cidA, Name: "web", Image: "busybox", Labels: map[string]string{"app": "web"},
				NetNS: 4026532001, PIDNS: 4026532002, Addrs: addrs("198.51.100.2", "2001:db8::2"), Source: "docker"},
		},
		{
			name:  "container by peer namespace",
			addr:  "2001:db8::2",
			iface: veth(3),
			want: model.Endpoint{Kind: model.KindContainer, ID: cidA, Name: "web", Image: "busybox", Labels: map[string]string{"app": "web"},
				NetNS: 4026532001, PIDNS: 4026532002, Addrs: addrs("198.51.100.2", "2001:db8::2"), Source: "docker"},
		},
		{
			name: "IPv4-mapped address",
			addr: "::ffff:198.51.100.2",
			want: model.Endpoint{Kind: model.KindContainer, ID: cidA, Name: "web", Image: "busybox", Labels: map[string]string{"app": "web"},
				NetNS: 4026532001, PIDNS: 4026532002, Addrs: addrs("198.51.100.2", "2001:db8::2"), Source: "docker"},
		},
		{
			name: "pod: kubernetes names, cri adds image and labels",
			addr: "198.51.100.20",
			want: model.Endpoint{Kind: model.KindPod, ID: uidA, Name: "checkout-7d9f", Namespace: "shop", Workload: "checkout", WorkloadKind: "Deployment",
				Node: "n1", Image: "shop/checkout:1.2", Labels: map[string]string{"io.kubernetes.pod.name": "checkout-7d9f"},
				Addrs: addrs("198.51.100.20"), Source: "kubernetes"},
		},
		{
			name:  "named namespace without container",
			addr:  "198.51.100.9",
			iface: veth(7),
			want:  model.Endpoint{Kind: model.KindNetNS, ID: "netns:4026532009", Name: "lab", NetNS: 4026532009, Addrs: addrs("198.51.100.9"), Source: "netns"},
		},
		{
			name:  "address the namespace does not list is still behind its veth",
			addr:  "198.51.100.99",
			iface: veth(7),
			want:  model.Endpoint{Kind: model.KindNetNS, ID: "netns:4026532009", Name: "lab", NetNS: 4026532009, Addrs: addrs("198.51.100.9"), Source: "netns"},
		},
		{
			name:  "unknown namespace behind a veth",
			addr:  "198.51.100.50",
			iface: veth(11),
			want:  model.Endpoint{Kind: model.KindUnknown, ID: "198.51.100.50", Name: "198.51.100.50", Addrs: addrs("198.51.100.50")},
		},
		{
			name: "zero interface is not namespace id 0",
			addr: "198.51.100.51",
			want: model.Endpoint{Kind: model.KindExternal, ID: "198.51.100.51", Name: "198.51.100.51", Addrs: addrs("198.51.100.51")},
		},
		{
			name: "external, longest CIDR",
			addr: "203.0.113.10",
			want: model.Endpoint{Kind: model.KindExternal, ID: "203.0.113.10/32", Name: "payments lb", Addrs: addrs("203.0.113.10"), Source: "cidr"},
		},
		{
			name: "external, CIDR",
			addr: "203.0.113.11",
			want: model.Endpoint{Kind: model.KindExternal, ID: "203.0.113.0/24", Name: "corp network", Addrs: addrs("203.0.113.11"), Source: "cidr"},
		},
		{
			name: "external, no CIDR",
			addr: "2001:db8:ffff::1",
			want: model.Endpoint{Kind: model.KindExternal, ID: "2001:db8:ffff::1", Name: "2001:db8:ffff::1", Addrs: addrs("2001:db8:ffff::1")},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for range 2 { // the second answer comes from the cache
				got := inv.Resolve(netip.MustParseAddr(tt.addr), tt.iface)
				if diff := endpointDiff(got, tt.want); diff != "" {
					t.Fatalf("Resolve(%s, %+v):\n%s", tt.addr, tt.iface, diff)
				}
			}
		})
	}
}

// endpointDiff says how got differs from want, field by field.
func endpointDiff(got, want model.Endpoint) string {
	var b strings.Builder
	check := func(field string, g, w any) {
		if fmt.Sprint(g) != fmt.Sprint(w) {
			fmt.Fprintf(&b, "\t%s = %v, want %v\n", field, g, w)
		}
	}
	check("model.EndpointKind", got.Kind, want.Kind)
	check("ID", got.ID, want.ID)
	check("Name", got.Name, want.Name)
	check("Namespace", got.Namespace, want.Namespace)
	check("Workload", got.Workload, want.Workload)
	check("WorkloadKind", got.WorkloadKind, want.WorkloadKind)
	check("Node", got.Node, want.Node)
	check("Image", got.Image, want.Image)
	if !maps.Equal(got.Labels, want.Labels) {
		fmt.Fprintf(&b, "\tLabels = %v, want %v\n", got.Labels, want.Labels)
	}
	check("NetNS", got.NetNS, want.NetNS)
	check("PIDNS", got.PIDNS, want.PIDNS)
	if !slices.Equal(got.Addrs, want.Addrs) {
		fmt.Fprintf(&b, "\tAddrs = %v, want %v\n", got.Addrs, want.Addrs)
	}
	check("Source", got.Source, want.Source)
	return b.String()
}

func TestRebuildForgets(t *testing.T) {
	inv := newTestInventory(t, map[string][]record{
		"docker": {{ep: model.Endpoint{Kind: model.KindContainer, ID: cidA, Name: "web", Addrs: addrs("198.51.100.2")}}},
	})
	a := netip.MustParseAddr("198.51.100.2")
	if got := inv.Resolve(a, model.Interface{}); got.Name != "web" {
		t.Fatalf("Resolve(%s).Name = %q, want %q", a, got.Name, "web")
	}
	inv.publish("docker", nil)
	inv.rebuild()
	if got := inv.Resolve(a, model.Interface{}); got.Kind != model.KindExternal {
		t.Fatalf("after the container went, Resolve(%s).Kind = %q, want %q", a, got.Kind, model.KindExternal)
	}
	// And back: the external answer cached before is not served.
	inv.publish("docker", []record{{ep: model.Endpoint{Kind: model.KindContainer, ID: cidB, Name: "api", Addrs: addrs("198.51.100.2")}}})
	inv.rebuild()
	if got := inv.Resolve(a, model.Interface{}); got.Name != "api" {
		t.Fatalf("after a new container took the address, Resolve(%s).Name = %q, want %q", a, got.Name, "api")
	}
}

func TestEnrich(t *testing.T) {
	inv := newTestInventory(t, map[string][]record{
		"docker": {
			{ep: model.Endpoint{Kind: model.KindContainer, ID: cidA, Name: "client", Addrs: addrs("198.51.100.2")}},
			{ep: model.Endpoint{Kind: model.KindContainer, ID: cidB, Name: "server", Addrs: addrs("198.51.100.3")}},
		},
	})
	r := model.Record{Src: netip.MustParseAddr("198.51.100.2"), Dst: netip.MustParseAddr("198.51.100.3"), Proto: model.ProtoTCP, DstPort: 80}
	f := inv.Enrich(r)
	if f.SrcEndpoint.Name != "client" || f.DstEndpoint.Name != "server" {
		t.Fatalf("Enrich: src %q, dst %q, want client, server", f.SrcEndpoint.Name, f.DstEndpoint.Name)
	}
	if f.Record != r {
		t.Fatalf("Enrich changed the record: %+v, want %+v", f.Record, r)
	}
}

// BenchmarkResolve resolves addresses that the caches hold, among 10000
// endpoints: through the peer namespace, by address, and external ones
// answered before. None may allocate.
func BenchmarkResolve(b *testing.B) {
	var recs []record
	for i := range 10000 {
		a := netip.AddrFrom4([4]byte{198, 51, byte(i >> 8), byte(i)})
		recs = append(recs, record{
			ep:    model.Endpoint{Kind: model.KindContainer, ID: fmt.Sprintf("%064x", i), Name: fmt.Sprintf("c%d", i), NetNS: uint64(4026531000 + i), Addrs: []netip.Addr{a}},
			nsids: []int{i},
		})
	}
	inv := newTestInventory(b, map[string][]record{"netns": recs})
	inv.setCIDRs(newCIDRTable([]CIDR{{netip.MustParsePrefix("203.0.113.0/24"), "corp"}, {netip.MustParsePrefix("203.0.113.128/25"), "lab"}}))
	known := netip.AddrFrom4([4]byte{198, 51, 10, 10})
	external := netip.MustParseAddr("203.0.113.200")
	bench := func(name string, addr netip.Addr, iface model.Interface, want model.EndpointKind) {
		b.Run(name, func(b *testing.B) {
			if got := inv.Resolve(addr, iface); got.Kind != want {
				b.Fatalf("Resolve(%s).Kind = %q, want %q", addr, got.Kind, want)
			}
			b.ReportAllocs()
			for b.Loop() {
				inv.Resolve(addr, iface)
			}
		})
	}
	bench("netns", known, model.Interface{Index: 9, Kind: "veth", PeerNetNSID: 10*256 + 10}, model.KindContainer)
	bench("addr", known, model.Interface{}, model.KindContainer)
	bench("external", external, model.Interface{}, model.KindExternal)
}

func TestResolveAllocs(t *testing.T) {
	inv := newTestInventory(t, map[string][]record{
		"docker": {{ep: model.Endpoint{Kind: model.KindContainer, ID: cidA, Name: "web", Addrs: addrs("198.51.100.2")}}},
	})
	for _, a := range []string{"198.51.100.2", "203.0.113.7"} {
		addr := netip.MustParseAddr(a)
		inv.Resolve(addr, model.Interface{})
		if n := testing.AllocsPerRun(100, func() { inv.Resolve(addr, model.Interface{}) }); n != 0 {
			t.Errorf("Resolve(%s) allocates %v times, want 0", a, n)
		}
	}
}

// BenchmarkEnrich names both ends of a record between two containers.
func BenchmarkEnrich(b *testing.B) {
	inv := newTestInventory(b, map[string][]record{
		"docker": {
			{ep: model.Endpoint{Kind: model.KindContainer, ID: cidA, Name: "client", Addrs: addrs("198.51.100.2")}},
			{ep: model.Endpoint{Kind: model.KindContainer, ID: cidB, Name: "server", Addrs: addrs("198.51.100.3")}},
		},
	})
	r := model.Record{Src: netip.MustParseAddr("198.51.100.2"), Dst: netip.MustParseAddr("198.51.100.3"), Proto: model.ProtoTCP, DstPort: 80,
		SrcIf: model.Interface{Index: 7, Kind: "veth", PeerNetNSID: 1}}
	// Drained records have times: each end is named by who held its
	// address then.
	r.FirstSeen = time.Now()
	r.LastSeen = r.FirstSeen
	b.ReportAllocs()
	for b.Loop() {
		inv.Enrich(r)
	}
}

// BenchmarkRebuild joins 10000 containers known to three sources (engine,
// netns, Kubernetes-like pods by address) and fills the caches: the cost
// of one publish.
func BenchmarkRebuild(b *testing.B) {
	var engine, netns, kube []record
	for i := range 10000 {
		a := netip.AddrFrom4([4]byte{198, 51, byte(i >> 8), byte(i)})
		id := fmt.Sprintf("%064x", i)
		engine = append(engine, record{ep: model.Endpoint{Kind: model.KindContainer, ID: id, Name: fmt.Sprintf("c%d", i), Labels: map[string]string{"app": "x"}, NetNS: uint64(4026531000 + i), Addrs: []netip.Addr{a}}, keys: []joinKey{containerKey(id)}})
		netns = append(netns, record{ep: model.Endpoint{Kind: model.KindContainer, ID: id, NetNS: uint64(4026531000 + i), Addrs: []netip.Addr{a}}, keys: []joinKey{containerKey(id)}, nsids: []int{i}})
		kube = append(kube, record{ep: model.Endpoint{Kind: model.KindPod, ID: fmt.Sprint(i), Name: fmt.Sprintf("p%d", i), Labels: map[string]string{"app": "y"}, Addrs: []netip.Addr{a}}})
	}
	inv := newTestInventory(b, map[string][]record{"docker": engine, "netns": netns, "kubernetes": kube})
	b.ReportAllocs()
	for b.Loop() {
		inv.rebuild()
	}
}

// TestEnrichSpoofed: packets counted as they entered at a container's veth
// are the container's, whatever source they carry; one that is neither the
// container's address nor one it forwards for counts as spoofed, and is not
// credited to the address's owner.
func TestEnrichSpoofed(t *testing.T) {
	inv := newTestInventory(t, map[string][]record{
		"netns": {
			{ep: model.Endpoint{Kind: model.KindNetNS, ID: "netns:1", Name: "attacker", NetNS: 1, Addrs: addrs("198.51.100.2")}, nsids: []int{3}},
			{ep: model.Endpoint{Kind: model.KindNetNS, ID: "netns:2", Name: "victim", NetNS: 2, Addrs: addrs("198.51.100.3")}, nsids: []int{4}},
			// A node in a container (kind): its pods' addresses are routed
			// to their veths inside it.
			{ep: model.Endpoint{Kind: model.KindNetNS, ID: "netns:3", Name: "kind-node", NetNS: 3, Addrs: addrs("198.51.100.5")}, nsids: []int{5},
				routed: []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24")}},
		},
		"kubernetes": {{ep: model.Endpoint{Kind: model.KindPod, ID: uidA, Name: "nested-pod", Addrs: addrs("10.244.1.7")}, keys: []joinKey{podKey(uidA)}}},
	})
	veth := func(idx, nsid int) model.Interface {
		return model.Interface{Index: idx, Name: fmt.Sprintf("veth%d", idx), Kind: "veth", PeerNetNSID: nsid}
	}
	server := netip.MustParseAddr("198.51.100.100")
	tests := []struct {
		name    string
		src     string
		srcIf   model.Interface
		point   model.Point
		want    string
		spoofed uint64
	}{
		{"own address", "198.51.100.2", veth(10, 3), model.PointTCIngress, "attacker", 0},
		{"victim's address", "198.51.100.3", veth(10, 3), model.PointTCIngress, "attacker", 7},
		{"victim's address at xdp", "198.51.100.3", veth(10, 3), model.PointXDPIngress, "attacker", 7},
		{"link-local address", "fe80::1", veth(10, 3), model.PointTCIngress, "attacker", 0},
		{"forwarded for a nested pod", "10.244.1.7", veth(12, 5), model.PointTCIngress, "nested-pod", 0},
		{"victim's address from the router", "198.51.100.3", veth(12, 5), model.PointTCIngress, "kind-node", 7},
		// Counted where the reverse left toward the source (egress): the
		// source did not come through the veth, which says nothing of it.
		{"not sent through the veth", "198.51.100.3", veth(10, 3), model.PointTCEgress, "victim", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := inv.Spoofed()
			r := model.Record{Src: netip.MustParseAddr(tt.src), Dst: server, Proto: model.ProtoUDP, DstPort: 53, SrcIf: tt.srcIf,
				Forward: model.Direction{Packets: 7, Bytes: 700, Point: tt.point, Ifindex: tt.srcIf.Index}}
			if tt.point == model.PointTCEgress {
				r.Forward = model.Direction{}
				r.Reverse = model.Direction{Packets: 7, Bytes: 700, Point: tt.point, Ifindex: tt.srcIf.Index}
			}
			f := inv.Enrich(r)
			if f.SrcEndpoint.Name != tt.want {
				t.Errorf("source = %q, want %q", f.SrcEndpoint.Name, tt.want)
			}
			if got := inv.Spoofed() - before; got != tt.spoofed {
				t.Errorf("spoofed packets = %d, want %d", got, tt.spoofed)
			}
		})
	}
}
