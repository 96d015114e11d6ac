package sandbox

import (
	"net/netip"
	"testing"
)

func TestAddr6(t *testing.T) {
	tests := []struct {
		name   string
		subnet string
		addr   string
		want   string
		want64 string
	}{
		{name: "default subnet", subnet: "198.51.100.0/24", addr: "198.51.100.2", want: "2001:db8:100::2", want64: "2001:db8:100::/64"},
		{name: "last octet in decimal", subnet: "198.51.100.0/24", addr: "198.51.100.254", want: "2001:db8:100::254", want64: "2001:db8:100::/64"},
		{name: "outside", subnet: "203.0.113.0/24", addr: "203.0.113.10", want: "2001:db8:113::10", want64: "2001:db8:113::/64"},
		{name: "smaller subnet", subnet: "192.0.2.64/26", addr: "192.0.2.66", want: "2001:db8:2:64::66", want64: "2001:db8:2:64::/64"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := netip.MustParsePrefix(tt.subnet)
			if got := prefix6(s).String(); got != tt.want64 {
				t.Errorf("prefix6(%s) = %s, want %s", s, got, tt.want64)
			}
			if got := addr6(s, netip.MustParseAddr(tt.addr)).String(); got != tt.want {
				t.Errorf("addr6(%s, %s) = %s, want %s", s, tt.addr, got, tt.want)
			}
		})
	}
}

func TestCheckSubnet(t *testing.T) {
	tests := []struct {
		subnet string
		ok     bool
	}{
		{"198.51.100.0/24", true},
		{"192.0.2.0/24", true},
		{"203.0.113.0/24", true},
		{"198.51.100.64/26", true},
		{"198.51.100.0/30", true},
		{"198.51.100.0/31", false}, // no room for gateway and host
		{"198.51.100.0/23", false}, // wider than the documentation range
		{"198.51.100.1/24", false}, // host bits
		{"10.0.0.0/24", false},
		{"172.16.0.0/24", false},
		{"192.168.1.0/24", false},
		{"8.8.8.0/24", false},
		{"2001:db8::/64", false},
	}
	for _, tt := range tests {
		t.Run(tt.subnet, func(t *testing.T) {
			err := checkSubnet(netip.MustParsePrefix(tt.subnet))
			if got := err == nil; got != tt.ok {
				t.Fatalf("checkSubnet(%s) = %v, want ok %v", tt.subnet, err, tt.ok)
			}
		})
	}
}

func TestHostAddrs(t *testing.T) {
	s := netip.MustParsePrefix("192.0.2.64/26")
	tests := []struct {
		addr string
		want bool
	}{
		{"192.0.2.64", false}, // network
		{"192.0.2.65", false}, // gateway
		{"192.0.2.66", true},
		{"192.0.2.126", true},
		{"192.0.2.127", false}, // broadcast
		{"192.0.2.128", false}, // outside
	}
	for _, tt := range tests {
		if got := isHostAddr(s, netip.MustParseAddr(tt.addr)); got != tt.want {
			t.Errorf("isHostAddr(%s, %s) = %v, want %v", s, tt.addr, got, tt.want)
		}
	}
}

func TestNewInvalidOptions(t *testing.T) {
	tests := []struct {
		name string
		opts Options
	}{
		{name: "no prefix", opts: Options{}},
		{name: "long prefix", opts: Options{Prefix: "abcdefghijklm"}},
		{name: "prefix with dash", opts: Options{Prefix: "fm-t"}},
		{name: "upper-case prefix", opts: Options{Prefix: "FM"}},
		{name: "private subnet", opts: Options{Prefix: "fmt", Subnet: netip.MustParsePrefix("10.1.0.0/24")}},
		{name: "real subnet", opts: Options{Prefix: "fmt", Subnet: netip.MustParsePrefix("1.1.1.0/24")}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n, err := New(tt.opts)
			if err == nil {
				n.Close()
				t.Fatalf("New(%+v) succeeded, want an error", tt.opts)
			}
		})
	}
}
