package enrich

import (
	"net/netip"
	"testing"
	"time"

	"github.com/flowmap/flowmap/model"
)

func TestNames(t *testing.T) {
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	a := netip.MustParseAddr("2001:db8::10")
	b := netip.MustParseAddr("203.0.113.9")
	dns := func(addr netip.Addr, name string, ttl time.Duration, seen time.Time) model.Name {
		return model.Name{Addr: addr, Name: name, TTL: ttl, Source: model.NameDNS, Seen: seen}
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
		add     []model.Name
		lookups []lookup
	}{
		{
			name: "one name for its ttl",
			add:  []model.Name{dns(a, "api.example.com", time.Minute, t0)},
			lookups: []lookup{
				{a, t0.Add(59 * time.Second), NameInfo{Name: "api.example.com", Source: model.NameDNS}, true},
				{a, t0.Add(time.Minute), NameInfo{}, false},
				{b, t0, NameInfo{}, false},
			},
		},
		{
			name: "most recent name wins, and says so",
			add: []model.Name{dns(b, "a.example.com", time.Hour, t0), dns(b, "b.example.com", time.Minute, t0.Add(time.Second)),
				{Addr: b, Name: "c.example.com", TTL: model.NameTTLTLS, Source: model.NameTLS, Seen: t0.Add(2 * time.Second)}},
			lookups: []lookup{
				{b, t0.Add(3 * time.Second), NameInfo{Name: "c.example.com", Source: model.NameTLS, Others: 2}, true},
				// b.example.com's TTL ended: one other left.
				{b, t0.Add(2 * time.Minute), NameInfo{Name: "c.example.com", Source: model.NameTLS, Others: 1}, true},
			},
		},
		{
			name: "the same name again extends its ttl",
			add:  []model.Name{dns(a, "api.example.com", time.Minute, t0), dns(a, "api.example.com", time.Minute, t0.Add(time.Minute/2))},
			lookups: []lookup{
				{a, t0.Add(80 * time.Second), NameInfo{Name: "api.example.com", Source: model.NameDNS}, true},
			},
		},
		{
			name: "an expired name is not an other",
			add:  []model.Name{dns(a, "old.example.com", time.Second, t0), dns(a, "new.example.com", time.Minute, t0.Add(time.Minute))},
			lookups: []lookup{
				{a, t0.Add(time.Minute), NameInfo{Name: "new.example.com", Source: model.NameDNS}, true},
			},
		},
		{
			name: "bounded: the least recent address goes",
			max:  1,
			add:  []model.Name{dns(a, "a.example.com", time.Hour, t0), dns(b, "b.example.com", time.Hour, t0)},
			lookups: []lookup{
				{a, t0, NameInfo{}, false},
				{b, t0, NameInfo{Name: "b.example.com", Source: model.NameDNS}, true},
			},
		},
		{
			name: "ipv4-mapped is ipv4",
			add:  []model.Name{dns(netip.AddrFrom16(b.As16()), "b.example.com", time.Hour, t0)},
			lookups: []lookup{
				{b, t0, NameInfo{Name: "b.example.com", Source: model.NameDNS}, true},
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
	n.Add(model.Name{Addr: addr, Name: "a.example.com", TTL: time.Hour, Source: model.NameDNS}, t0)
	n.Add(model.Name{Addr: addr, Name: "b.example.com", TTL: time.Hour, Source: model.NameDNS}, t0)
	cases := []struct {
		name string
		ep   model.Endpoint
		want model.Endpoint
	}{
		{"unknown", model.Endpoint{Kind: model.KindUnknown, ID: addr.String(), Name: addr.String()},
			model.Endpoint{Kind: model.KindExternal, ID: addr.String(), Name: "b.example.com (+1)", Source: "dns"}},
		{"external by address", model.Endpoint{Kind: model.KindExternal, ID: addr.String(), Name: addr.String()},
			model.Endpoint{Kind: model.KindExternal, ID: addr.String(), Name: "b.example.com (+1)", Source: "dns"}},
		{"external by cidr keeps its name", model.Endpoint{Kind: model.KindExternal, ID: "203.0.113.0/24", Name: "partner"},
			model.Endpoint{Kind: model.KindExternal, ID: "203.0.113.0/24", Name: "partner"}},
		{"container keeps its name", model.Endpoint{Kind: model.KindContainer, ID: "c1", Name: "web"},
			model.Endpoint{Kind: model.KindContainer, ID: "c1", Name: "web"}},
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
