package host

import (
	"errors"
	"net"
	"net/netip"
	"reflect"
	"slices"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/flowmap/flowmap/model"
)

func cidr(s string) *net.IPNet {
	_, n, err := net.ParseCIDR(s)
	if err != nil {
		panic(err)
	}
	return n
}

func TestDefaultLinks(t *testing.T) {
	tests := []struct {
		name   string
		routes []netlink.Route
		want   []int
	}{
		{"none", nil, nil},
		{"IPv4 default", []netlink.Route{{Dst: cidr("0.0.0.0/0"), LinkIndex: 2}, {Dst: cidr("10.0.0.0/24"), LinkIndex: 3}}, []int{2}},
		{"nil destination (netlink before v1.2)", []netlink.Route{{LinkIndex: 4}}, []int{4}},
		{"IPv4 and IPv6 on two links", []netlink.Route{{Dst: cidr("0.0.0.0/0"), LinkIndex: 2}, {Dst: cidr("::/0"), LinkIndex: 5}}, []int{2, 5}},
		{"multipath", []netlink.Route{{Dst: cidr("0.0.0.0/0"), MultiPath: []*netlink.NexthopInfo{{LinkIndex: 6}, {LinkIndex: 7}}}}, []int{6, 7}},
		{"0.0.0.0/8 is no default route", []netlink.Route{{Dst: cidr("0.0.0.0/8"), LinkIndex: 8}}, nil},
		{"more specific only", []netlink.Route{{Dst: cidr("192.0.2.0/24"), LinkIndex: 9}, {Dst: cidr("2001:db8::/32"), LinkIndex: 9}}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got []int
			for i := range DefaultLinks(tt.routes) {
				got = append(got, i)
			}
			slices.Sort(got)
			if !slices.Equal(got, tt.want) {
				t.Errorf("DefaultLinks() = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestAddrsOf(t *testing.T) {
	addr := func(s string) netlink.Addr {
		return netlink.Addr{IPNet: &net.IPNet{IP: net.ParseIP(s)}}
	}
	list := []netlink.Addr{addr("127.0.0.1"), addr("::1"), addr("192.0.2.7"), addr("fe80::1"),
		addr("169.254.1.1"), addr("2001:db8::7"), addr("224.0.0.1"), addr("0.0.0.0")}
	got := AddrsOf(list)
	want := []netip.Addr{netip.MustParseAddr("192.0.2.7"), netip.MustParseAddr("2001:db8::7")}
	if !slices.Equal(got, want) {
		t.Errorf("AddrsOf() = %v, want %v", got, want)
	}
}

func TestName(t *testing.T) {
	tests := []struct {
		name     string
		env      string
		hostname string
		err      error
		want     string
	}{
		{"NODE_NAME first", "n1", "ip-10-0-0-1", nil, "n1"},
		{"host name without NODE_NAME", "", "ip-10-0-0-1", nil, "ip-10-0-0-1"},
		{"neither", "", "", errors.New("no host name"), ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			getenv := func(k string) string {
				if k == "NODE_NAME" {
					return tt.env
				}
				return ""
			}
			if got := nameFrom(getenv, func() (string, error) { return tt.hostname, tt.err }); got != tt.want {
				t.Errorf("name = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestEndpoint(t *testing.T) {
	addrs := []netip.Addr{netip.MustParseAddr("192.0.2.7")}
	got := Endpoint("n1", addrs)
	want := model.Endpoint{Kind: model.KindHost, ID: "n1", Name: "n1", Node: "n1", Addrs: addrs}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Endpoint() = %+v, want %+v", got, want)
	}
}
