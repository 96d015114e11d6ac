package enrich

import (
	"net/netip"
	"testing"
	"time"

	"github.com/flowmap/flowmap/flows"
)

func TestNames(t *testing.T) {
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	a := netip.MustParseAddr("2001:db8::10")
	b := netip.MustParseAddr("203.0.113.9")
	dns := func(addr netip.Addr, name string, ttl time.Duration, seen time.Time) flows.Name {
		return flows.Name{Addr: addr, Name: name, TTL: ttl, Source: flows.NameDNS, Seen: seen}
	}
	type lookup struct {
		addr   netip.Addr
		at     time.Time
		want   NameInfo
		wantOK bool
	}
	cases := []struct {
		name    string
		max     int
		add     []flows.Name
		lookups []lookup
	}{
		{
			name: "one name for its ttl",
			add:  []flows.Name{dns(a, "api.example.com", time.Minute, t0)},
			lookups: []lookup{
				{a, t0.Add(59 * time.Second), NameInfo{Name: "api.example.com", Source: flows.NameDNS}, true},
				{a, t0.Add(time.Minute), NameInfo{}, false},
				{b, t0, NameInfo{}, false},
			},
		},
		{
			name: "most recent name wins, and says so",
			add: []flows.Name{dns(b, "a.example.com", time.Hour, t0), dns(b, "b.example.com", time.Minute, t0.Add(time.Second)),
				{Addr: b, Name: "c.example.com", TTL: flows.NameTTLTLS, Source: flows.NameTLS, Seen: t0.Add(2 * time.Second)}},
			lookups: []lookup{
				{b, t0.Add(3 * time.Second), NameInfo{Name: "c.example.com", Source: flows.NameTLS, Others: 2}, true},
				// b.example.com's TTL ended: one other left.
				{b, t0.Add(2 * time.Minute), NameInfo{Name: "c.example.com", Source: flows.NameTLS, Others: 1}, true},
			},
		},
		{
			name: "the same name again extends its ttl",
			add:  []flows.Name{dns(a, "api.example.com", time.Minute, t0), dns(a, "api.example.com", time.Minute, t0.Add(time.Minute/2))},
			lookups: []lookup{
				{a, t0.Add(80 * time.Second), NameInfo{Name: "api.example.com", Source: flows.NameDNS}, true},
			},
		},
		{
			name: "an expired name is not an other",
			add:  []flows.Name{dns(a, "old.example.com", time.Second, t0), dns(a, "new.example.com", time.Minute, t0.Add(time.Minute))},
			lookups: []lookup{
				{a, t0.Add(time.Minute), NameInfo{Name: "new.example.com", Source: flows.NameDNS}, true},
			},
		},
		{
			name: "bounded: the least recent address goes",
			max:  1,
			add:  []flows.Name{dns(a, "a.example.com", time.Hour, t0), dns(b, "b.example.com", time.Hour, t0)},
			lookups: []lookup{
				{a, t0, NameInfo{}, false},
				{b, t0, NameInfo{Name: "b.example.com", Source: flows.NameDNS}, true},
			},
		},
		{
			name: "ipv4-mapped is ipv4",
			add:  []flows.Name{dns(netip.AddrFrom16(b.As16()), "b.example.com", time.Hour, t0)},
			lookups: []lookup{
				{b, t0, NameInfo{Name: "b.example.com", Source: flows.NameDNS}, true},
			},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			n := NewNames(tc.max)
			for _, nm := range tc.add {
				n.Add(nm, nm.Seen)
			}
			for _, l := range tc.lookups {
				got, ok := n.Lookup(l.addr, l.at)
				if got != l.want || ok != l.wantOK {
					t.Errorf("Lookup(%v, %v) = %+v, %v; want %+v, %v", l.addr, l.at, got, ok, l.want, l.wantOK)
				}
			}
		})
	}
}

func TestNamesName(t *testing.T) {
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	addr := netip.MustParseAddr("203.0.113.9")
	n := NewNames(0)
	n.Add(flows.Name{Addr: addr, Name: "a.example.com", TTL: time.Hour, Source: flows.NameDNS}, t0)
	n.Add(flows.Name{Addr: addr, Name: "b.example.com", TTL: time.Hour, Source: flows.NameDNS}, t0)
	cases := []struct {
		name string
		ep   Endpoint
		want Endpoint
	}{
		{"unknown", Endpoint{Kind: KindUnknown, ID: addr.String(), Name: addr.String()},
			Endpoint{Kind: KindExternal, ID: addr.String(), Name: "b.example.com (+1)", Source: "dns"}},
		{"external by address", Endpoint{Kind: KindExternal, ID: addr.String(), Name: addr.String()},
			Endpoint{Kind: KindExternal, ID: addr.String(), Name: "b.example.com (+1)", Source: "dns"}},
		{"external by cidr keeps its name", Endpoint{Kind: KindExternal, ID: "203.0.113.0/24", Name: "partner"},
			Endpoint{Kind: KindExternal, ID: "203.0.113.0/24", Name: "partner"}},
		{"container keeps its name", Endpoint{Kind: KindContainer, ID: "c1", Name: "web"},
			Endpoint{Kind: KindContainer, ID: "c1", Name: "web"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ep := tc.ep
			n.Name(&ep, addr, t0)
			if ep.Kind != tc.want.Kind || ep.ID != tc.want.ID || ep.Name != tc.want.Name || ep.Source != tc.want.Source {
				t.Errorf("Name(%+v) = %+v, want %+v", tc.ep, ep, tc.want)
			}
		})
	}
}
