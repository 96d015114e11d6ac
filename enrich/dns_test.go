package enrich

import (
	"fmt"
	"net/netip"
	"runtime"
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
			name: "most recent dns name wins, and says so; a tls server name does not override it",
			add: []model.Name{dns(b, "a.example.com", time.Hour, t0), dns(b, "b.example.com", time.Minute, t0.Add(time.Second)),
				{Addr: b, Name: "c.example.com", TTL: model.NameTTLTLS, Source: model.NameTLS, Seen: t0.Add(2 * time.Second)}},
			lookups: []lookup{
				{b, t0.Add(3 * time.Second), NameInfo{Name: "b.example.com", Source: model.NameDNS, Others: 2}, true},
				// b.example.com's TTL ended: one other left.
				{b, t0.Add(2 * time.Minute), NameInfo{Name: "a.example.com", Source: model.NameDNS, Others: 1}, true},
				// a.example.com's hour ended too: the claim is all there is.
				{b, t0.Add(61 * time.Minute), NameInfo{}, false},
			},
		},
		{
			name: "a tls server name names an address only while no dns name does",
			add: []model.Name{{Addr: b, Name: "claimed.example", TTL: model.NameTTLTLS, Source: model.NameTLS, Seen: t0},
				dns(b, "answered.example", time.Minute, t0.Add(time.Second))},
			lookups: []lookup{
				{b, t0.Add(2 * time.Second), NameInfo{Name: "answered.example", Source: model.NameDNS, Others: 1}, true},
				{b, t0.Add(2 * time.Minute), NameInfo{Name: "claimed.example", Source: model.NameTLS}, true},
			},
		},
		{
			name: "a claim of a dns name leaves it a dns name",
			add: []model.Name{dns(b, "api.example", time.Minute, t0),
				{Addr: b, Name: "api.example", TTL: model.NameTTLTLS, Source: model.NameTLS, Seen: t0}},
			lookups: []lookup{
				{b, t0.Add(2 * time.Minute), NameInfo{Name: "api.example", Source: model.NameDNS}, true},
			},
		},
		{
			name: "ttls capped at MaxNameTTL",
			add:  []model.Name{dns(a, "api.example.com", 7*24*time.Hour, t0)},
			lookups: []lookup{
				{a, t0.Add(MaxNameTTL - time.Second), NameInfo{Name: "api.example.com", Source: model.NameDNS}, true},
				{a, t0.Add(MaxNameTTL), NameInfo{}, false},
			},
		},
		{
			name: "MaxNamesPerAddr names an address, the most recent",
			add: func() []model.Name {
				var out []model.Name
				for i := range MaxNamesPerAddr + 5 {
					out = append(out, dns(a, fmt.Sprintf("n%d.example", i), time.Hour, t0.Add(time.Duration(i)*time.Second)))
				}
				return out
			}(),
			lookups: []lookup{
				{a, t0.Add(time.Minute), NameInfo{Name: fmt.Sprintf("n%d.example", MaxNamesPerAddr+4), Source: model.NameDNS, Others: MaxNamesPerAddr - 1}, true},
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
			model.Endpoint{Kind: model.KindExternal, ID: addr.String(), Name: "b.example.com (+1)", Source: "dns", NameSource: model.NameSourceDNS}},
		{"external by address", model.Endpoint{Kind: model.KindExternal, ID: addr.String(), Name: addr.String()},
			model.Endpoint{Kind: model.KindExternal, ID: addr.String(), Name: "b.example.com (+1)", Source: "dns", NameSource: model.NameSourceDNS}},
		{"external by cidr keeps its name", model.Endpoint{Kind: model.KindExternal, ID: "203.0.113.0/24", Name: "partner"},
			model.Endpoint{Kind: model.KindExternal, ID: "203.0.113.0/24", Name: "partner"}},
		{"container keeps its name", model.Endpoint{Kind: model.KindContainer, ID: "c1", Name: "web"},
			model.Endpoint{Kind: model.KindContainer, ID: "c1", Name: "web"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ep := tc.ep
			n.Name(&ep, addr, t0)
			if ep.Kind != tc.want.Kind || ep.ID != tc.want.ID || ep.Name != tc.want.Name || ep.Source != tc.want.Source || ep.NameSource != tc.want.NameSource {
				t.Errorf("Name(%+v) = %+v, want %+v", tc.ep, ep, tc.want)
			}
		})
	}
}

// TestNamesSNIDoesNotOverrideDNS plays a client that claims a name in its
// ClientHello for an address a DNS answer named: the endpoint keeps the
// DNS name, and one the claim alone names says it is a claim.
func TestNamesSNIDoesNotOverrideDNS(t *testing.T) {
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	answered, claimed := netip.MustParseAddr("203.0.113.9"), netip.MustParseAddr("203.0.113.10")
	n := NewNames(0)
	n.Add(model.Name{Addr: answered, Name: "s3.amazonaws.com", TTL: time.Minute, Source: model.NameDNS}, t0)
	n.Add(model.Name{Addr: answered, Name: "evil.example", TTL: model.NameTTLTLS, Source: model.NameTLS}, t0.Add(time.Second))
	n.Add(model.Name{Addr: claimed, Name: "bank.example", TTL: model.NameTTLTLS, Source: model.NameTLS}, t0.Add(time.Second))
	cases := []struct {
		addr                  netip.Addr
		wantName, wantNameSrc string
	}{
		{answered, "s3.amazonaws.com (+1)", model.NameSourceDNS},
		{claimed, "bank.example", model.NameSourceTLSSNI},
	}
	for _, tc := range cases {
		ep := model.Endpoint{Kind: model.KindExternal, ID: tc.addr.String(), Name: tc.addr.String()}
		n.Name(&ep, tc.addr, t0.Add(2*time.Second))
		if ep.Name != tc.wantName || ep.NameSource != tc.wantNameSrc {
			t.Errorf("Name(%v) = %q from %q, want %q from %q", tc.addr, ep.Name, ep.NameSource, tc.wantName, tc.wantNameSrc)
		}
	}
}

// TestNamesManyOnOneAddr plays 200,000 names answered for one address:
// the address keeps MaxNamesPerAddr, the rest are counted, and the heap
// does not grow with them.
func TestNamesManyOnOneAddr(t *testing.T) {
	const many = 200_000
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	addr := netip.MustParseAddr("203.0.113.9")
	names := make([]model.Name, many)
	for i := range names {
		names[i] = model.Name{Addr: addr, Name: fmt.Sprintf("n%d.cdn.example", i), TTL: time.Hour, Source: model.NameDNS, Seen: t0}
	}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	n := NewNames(0)
	for _, nm := range names {
		n.Add(nm, t0)
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	grown := int64(after.HeapAlloc) - int64(before.HeapAlloc)
	t.Logf("%d names on one address: heap grew %d bytes", many, grown)
	if got := n.Entries(); got != MaxNamesPerAddr {
		t.Errorf("Entries() = %d, want %d", got, MaxNamesPerAddr)
	}
	if got, want := n.Stats().Dropped, uint64(many-MaxNamesPerAddr); got != want {
		t.Errorf("Stats().Dropped = %d, want %d", got, want)
	}
	// The 200,000 names' strings were 51 MiB when kept; 16 of them and
	// the cache's empty table are well under 1 MiB.
	if grown > 1<<20 {
		t.Errorf("heap grew %d bytes for one address, want under 1 MiB", grown)
	}
	got, ok := n.Lookup(addr, t0)
	want := NameInfo{Name: names[many-1].Name, Source: model.NameDNS, Others: MaxNamesPerAddr - 1}
	if !ok || got != want {
		t.Errorf("Lookup = %+v, %v; want %+v, true", got, ok, want)
	}
	runtime.KeepAlive(names)
}

// TestNamesEntriesBound: the names of all addresses together stay within
// the total bound, the least recent addresses going first.
func TestNamesEntriesBound(t *testing.T) {
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	n := NewNamesBounded(1000, 40)
	for i := range 10 {
		addr := netip.AddrFrom4([4]byte{203, 0, 113, byte(i)})
		for j := range MaxNamesPerAddr {
			n.Add(model.Name{Addr: addr, Name: fmt.Sprintf("n%d-%d.example", i, j), TTL: time.Hour, Source: model.NameDNS}, t0)
		}
		if got := n.Entries(); got > 40 {
			t.Fatalf("after address %d: Entries() = %d, want at most 40", i, got)
		}
	}
	if _, ok := n.Lookup(netip.AddrFrom4([4]byte{203, 0, 113, 0}), t0); ok {
		t.Errorf("the least recent address is still named, want it evicted")
	}
	if _, ok := n.Lookup(netip.AddrFrom4([4]byte{203, 0, 113, 9}), t0); !ok {
		t.Errorf("the most recent address is not named")
	}
}

func BenchmarkNamesLookupManyOnOneAddr(b *testing.B) {
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	addr := netip.MustParseAddr("203.0.113.9")
	n := NewNames(0)
	for i := range 200_000 {
		n.Add(model.Name{Addr: addr, Name: fmt.Sprintf("n%d.cdn.example", i), TTL: time.Hour, Source: model.NameDNS}, t0)
	}
	b.ReportAllocs()
	for b.Loop() {
		n.Lookup(addr, t0)
	}
}
