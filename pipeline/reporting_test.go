package pipeline

import (
	"errors"
	"net"
	"net/netip"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/flowmap/flowmap/model"
	"github.com/flowmap/flowmap/topology"
)

var (
	hostAddr  = netip.MustParseAddr("192.0.2.1")   // this node
	podHere   = netip.MustParseAddr("10.1.0.5")    // a pod on this node
	podThere  = netip.MustParseAddr("10.2.0.5")    // a pod on node n2
	outside   = netip.MustParseAddr("203.0.113.9") // outside the cluster
	nodeThere = netip.MustParseAddr("192.0.2.2")   // node n2

	veth   = model.Interface{Index: 10, Name: "lxc1234", Kind: "veth"}
	eth0   = model.Interface{Index: 2, Name: "eth0", Kind: "device"}
	vxlan  = model.Interface{Index: 3, Name: "flannel.1", Kind: "vxlan"}
	geneve = model.Interface{Index: 4, Name: "genev_sys_6081", Kind: "geneve"}
	bond   = model.Interface{Index: 5, Name: "bond0", Kind: "bond"} // the default route's
	br     = model.Interface{Index: 6, Name: "cni0", Kind: "bridge"}
)

// routes are the host's: the default route by bond0.
func routes() ([]netlink.Route, error) {
	_, def, _ := net.ParseCIDR("0.0.0.0/0")
	_, lan, _ := net.ParseCIDR("192.0.2.0/24")
	return []netlink.Route{{Dst: def, LinkIndex: bond.Index}, {Dst: lan, LinkIndex: eth0.Index}}, nil
}

func addrs() ([]netip.Addr, error) { return []netip.Addr{hostAddr}, nil }

func newHostView(t *testing.T) *HostView {
	t.Helper()
	h := NewHostView("n1", routes, addrs)
	if err := h.Refresh(); err != nil {
		t.Fatalf("Refresh() = %v, want nil", err)
	}
	return h
}

func flow(src, dst netip.Addr, srcIf, dstIf model.Interface) model.Flow {
	return model.Flow{Record: model.Record{Src: src, Dst: dst, SrcIf: srcIf, DstIf: dstIf}}
}

func TestReportingEnds(t *testing.T) {
	pod := func(node string) model.Endpoint {
		return model.Endpoint{Kind: model.KindPod, ID: "p", Name: "p", Node: node}
	}
	cidrs := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}
	tests := []struct {
		name    string
		uplinks []string
		cidrs   []netip.Prefix
		f       model.Flow
		want    topology.Ends
		rep     string
	}{
		{"client here behind a veth", nil, nil, flow(podHere, outside, veth, eth0),
			topology.Ends{ClientHere: true}, "client"},
		{"client here and server here", nil, nil, flow(podHere, podHere, veth, veth),
			topology.Ends{ClientHere: true, ServerHere: true}, "client"},
		{"client is the host's address", nil, nil, flow(hostAddr, outside, model.Interface{}, eth0),
			topology.Ends{ClientHere: true}, "client"},
		{"server here, client outside", nil, nil, flow(outside, podHere, eth0, veth),
			topology.Ends{ServerHere: true}, "server"},
		{"server is the host's address", nil, nil, flow(outside, hostAddr, eth0, model.Interface{}),
			topology.Ends{ServerHere: true}, "server"},
		{"client elsewhere by inventory node", nil, nil, func() model.Flow {
			f := flow(podThere, podHere, vxlan, veth)
			f.SrcEndpoint = pod("n2")
			return f
		}(), topology.Ends{ServerHere: true, ClientElsewhere: true}, ""},
		{"client named on this node is not elsewhere", nil, nil, func() model.Flow {
			f := flow(podThere, podHere, vxlan, veth)
			f.SrcEndpoint = pod("n1")
			return f
		}(), topology.Ends{ServerHere: true}, "server"},
		{"client host elsewhere by inventory node", nil, nil, func() model.Flow {
			f := flow(nodeThere, podHere, eth0, veth)
			f.SrcEndpoint = model.Endpoint{Kind: model.KindHost, ID: "n2", Name: "n2", Node: "n2"}
			return f
		}(), topology.Ends{ServerHere: true, ClientElsewhere: true}, ""},
		{"service client has no node", nil, nil, func() model.Flow {
			f := flow(podThere, podHere, vxlan, veth)
			f.SrcEndpoint = model.Endpoint{Kind: model.KindService, Node: "n2"}
			return f
		}(), topology.Ends{ServerHere: true}, "server"},
		{"client elsewhere by --cluster-cidrs", nil, cidrs, flow(podThere, podHere, vxlan, veth),
			topology.Ends{ServerHere: true, ClientElsewhere: true}, ""},
		{"client outside --cluster-cidrs", nil, cidrs, flow(outside, podHere, eth0, veth),
			topology.Ends{ServerHere: true}, "server"},
		{"client here in --cluster-cidrs", nil, cidrs, flow(podHere, podThere, veth, vxlan),
			topology.Ends{ClientHere: true}, "client"},
		{"routed through", nil, nil, flow(outside, podThere, eth0, vxlan),
			topology.Ends{}, ""},
		{"uplink by kind geneve", nil, nil, flow(outside, podHere, geneve, veth),
			topology.Ends{ServerHere: true}, "server"},
		{"uplink by default route", nil, nil, flow(outside, podHere, bond, veth),
			topology.Ends{ServerHere: true}, "server"},
		{"bridge is no uplink", nil, nil, flow(podHere, outside, br, eth0),
			topology.Ends{ClientHere: true}, "client"},
		{"uplink by glob", []string{"lxc*"}, nil, flow(outside, podHere, veth, br),
			topology.Ends{ServerHere: true}, "server"},
		{"globs replace the kinds", []string{"lxc*"}, nil, flow(podThere, podHere, vxlan, br),
			topology.Ends{ClientHere: true, ServerHere: true}, "client"},
	}
	h := newHostView(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := &Reporting{Host: h, Uplinks: tt.uplinks, ClusterCIDRs: tt.cidrs}
			got := r.Ends(&tt.f)
			if got != tt.want {
				t.Errorf("Ends() = %+v, want %+v", got, tt.want)
			}
			if rep := got.Reporter(); rep != tt.rep {
				t.Errorf("Ends().Reporter() = %q, want %q", rep, tt.rep)
			}
		})
	}
}

func TestReportingUplink(t *testing.T) {
	tests := []struct {
		name    string
		uplinks []string
		i       model.Interface
		want    bool
	}{
		{"veth", nil, veth, false},
		{"bridge", nil, br, false},
		{"physical device", nil, eth0, true},
		{"vxlan", nil, vxlan, true},
		{"geneve", nil, geneve, true},
		{"default route's link", nil, bond, true},
		{"glob match", []string{"eth*", "bond?"}, bond, true},
		{"glob match, second glob", []string{"eth*", "bond?"}, eth0, true},
		{"glob miss on vxlan", []string{"eth*"}, vxlan, false},
		{"glob miss on default route's link", []string{"eth*"}, bond, false},
	}
	h := newHostView(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := &Reporting{Host: h, Uplinks: tt.uplinks}
			if got := r.Uplink(tt.i); got != tt.want {
				t.Errorf("Uplink(%s) = %v, want %v", tt.i.Name, got, tt.want)
			}
		})
	}
}

// TestHostViewRefresh feeds the view routes and addresses that change and
// fail: it sees each change on Refresh only, and keeps the last look of
// what fails.
func TestHostViewRefresh(t *testing.T) {
	_, def, _ := net.ParseCIDR("0.0.0.0/0")
	_, def6, _ := net.ParseCIDR("::/0")
	type look struct {
		routes    []netlink.Route
		routesErr error
		addrs     []netip.Addr
		addrsErr  error
	}
	var now look
	h := NewHostView("n1",
		func() ([]netlink.Route, error) { return now.routes, now.routesErr },
		func() ([]netip.Addr, error) { return now.addrs, now.addrsErr })
	steps := []struct {
		name     string
		look     look
		wantErr  bool
		defaults []int // links 1 to 4: which are default
		own      []netip.Addr
	}{
		{"first look", look{routes: []netlink.Route{{Dst: def, LinkIndex: 1}}, addrs: []netip.Addr{hostAddr}},
			false, []int{1}, []netip.Addr{hostAddr}},
		{"default route moves, address added", look{routes: []netlink.Route{{Dst: def, LinkIndex: 2}, {Dst: def6, LinkIndex: 3}}, addrs: []netip.Addr{hostAddr, nodeThere}},
			false, []int{2, 3}, []netip.Addr{hostAddr, nodeThere}},
		{"routes fail: the last ones stay", look{routesErr: errors.New("netlink"), addrs: []netip.Addr{nodeThere}},
			true, []int{2, 3}, []netip.Addr{nodeThere}},
		{"addresses fail: the last ones stay", look{routes: []netlink.Route{{Dst: def, LinkIndex: 4}}, addrsErr: errors.New("netlink")},
			true, []int{4}, []netip.Addr{nodeThere}},
	}
	for _, s := range steps {
		now = s.look
		err := h.Refresh()
		if (err != nil) != s.wantErr {
			t.Fatalf("%s: Refresh() = %v, want error %v", s.name, err, s.wantErr)
		}
		for i := 1; i <= 4; i++ {
			want := false
			for _, d := range s.defaults {
				want = want || d == i
			}
			if got := h.DefaultLink(i); got != want {
				t.Errorf("%s: DefaultLink(%d) = %v, want %v", s.name, i, got, want)
			}
		}
		for _, a := range []netip.Addr{hostAddr, nodeThere} {
			want := false
			for _, o := range s.own {
				want = want || o == a
			}
			if got := h.Own(a); got != want {
				t.Errorf("%s: Own(%s) = %v, want %v", s.name, a, got, want)
			}
		}
	}
}

func TestHostViewNamer(t *testing.T) {
	name := newHostView(t).Namer()
	r := model.Record{Src: hostAddr, Dst: outside}
	f := name(&r)
	if f.SrcEndpoint.Kind != model.KindHost || f.SrcEndpoint.Name != "n1" || f.SrcEndpoint.Node != "n1" {
		t.Errorf("source endpoint = %+v, want host n1 on node n1", f.SrcEndpoint)
	}
	if want := (model.Endpoint{Kind: model.KindUnknown, ID: outside.String(), Name: outside.String()}); f.DstEndpoint.Kind != want.Kind || f.DstEndpoint.ID != want.ID || f.DstEndpoint.Name != want.Name {
		t.Errorf("destination endpoint = %+v, want %+v", f.DstEndpoint, want)
	}
	if f.Src != r.Src || f.Dst != r.Dst {
		t.Errorf("flow's record = %v -> %v, want %v -> %v", f.Src, f.Dst, r.Src, r.Dst)
	}
}
