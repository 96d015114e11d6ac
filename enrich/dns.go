package enrich

import (
	"net/netip"
	"strconv"
	"sync"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"

	"github.com/flowmap/flowmap/model"
)

// DefaultMaxNames is how many addresses a Names cache names by default.
const DefaultMaxNames = 65536

// Names is a bounded cache of address → name, from the DNS answers and TLS
// server names that the datapath saw ([model.Name]), each kept for its
// record's TTL. Where several names share an address (a CDN, a shared
// load balancer), the most recent wins, and Lookup says how many others
// the address had: the graph then says "one of several". Its methods are
// safe for concurrent use.
type Names struct {
	mu    sync.Mutex
	cache *lru.Cache[netip.Addr, *nameEntry]
	stats NamesStats
}

type nameEntry struct {
	name    string
	source  model.NameSource
	expires time.Time
	// others are the other names the address had, with when they expire.
	others map[string]time.Time
}

// NamesStats counts what a Names cache did.
type NamesStats struct {
	Added    uint64 // names added
	Replaced uint64 // names that took an address from another live name
	Evicted  uint64 // addresses pushed out by the bound
}

// NameInfo is what Lookup knows of an address.
type NameInfo struct {
	Name   string
	Source model.NameSource
	// Others is how many other live names the address had: the name is
	// the most recent of Others+1.
	Others int
}

// NewNames returns a cache of at most max addresses (DefaultMaxNames if
// max <= 0).
func NewNames(max int) *Names {
	if max <= 0 {
		max = DefaultMaxNames
	}
	n := &Names{}
	// lru.NewWithEvict fails only on a size <= 0.
	n.cache, _ = lru.NewWithEvict(max, func(netip.Addr, *nameEntry) { n.stats.Evicted++ })
	return n
}

// Add keeps nm's name for its address until its TTL ends, counted from
// nm.Seen (or now, if zero). A TTL of 0 is kept for a minute: the answer
// was used at least once.
func (n *Names) Add(nm model.Name, now time.Time) {
	if !nm.Addr.IsValid() || nm.Name == "" {
		return
	}
	seen := nm.Seen
	if seen.IsZero() {
		seen = now
	}
	ttl := nm.TTL
	if ttl <= 0 {
		ttl = time.Minute
	}
	exp := seen.Add(ttl)
	addr := nm.Addr.Unmap()
	n.mu.Lock()
	defer n.mu.Unlock()
	n.stats.Added++
	e, ok := n.cache.Get(addr)
	if !ok {
		n.cache.Add(addr, &nameEntry{name: nm.Name, source: nm.Source, expires: exp})
		return
	}
	if e.name == nm.Name {
		e.expires = later(e.expires, exp)
		e.source = nm.Source
		return
	}
	if e.expires.After(now) {
		n.stats.Replaced++
		if e.others == nil {
			e.others = map[string]time.Time{}
		}
		e.others[e.name] = e.expires
	}
	delete(e.others, nm.Name)
	e.name, e.source, e.expires = nm.Name, nm.Source, exp
}

// Lookup returns the name of addr, if a live one is known.
func (n *Names) Lookup(addr netip.Addr, now time.Time) (NameInfo, bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	addr = addr.Unmap()
	e, ok := n.cache.Get(addr)
	if !ok {
		return NameInfo{}, false
	}
	if !e.expires.After(now) {
		n.cache.Remove(addr)
		return NameInfo{}, false
	}
	for o, exp := range e.others {
		if !exp.After(now) {
			delete(e.others, o)
		}
	}
	return NameInfo{Name: e.name, Source: e.source, Others: len(e.others)}, true
}

// Stats returns the cache's counters.
func (n *Names) Stats() NamesStats {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.stats
}

// Len returns the addresses the cache holds, live or not yet looked at.
func (n *Names) Len() int { return n.cache.Len() }

// Name names ep, an end of a flow at addr, by its DNS or TLS name where
// nothing better named it: an unknown endpoint, or an external one known
// by its address alone, becomes model.KindExternal named by the name, with
// " (+N)" after it when N other names shared the address. Other kinds, and
// external ends that a CIDR source named, keep their names.
func (n *Names) Name(ep *model.Endpoint, addr netip.Addr, now time.Time) {
	switch {
	case ep.Kind == model.KindUnknown, ep.Kind == "":
	case ep.Kind == model.KindExternal && (ep.ID == "" || ep.ID == addr.String()):
	default:
		return
	}
	info, ok := n.Lookup(addr, now)
	if !ok {
		return
	}
	name := info.Name
	if info.Others > 0 {
		name += " (+" + strconv.Itoa(info.Others) + ")"
	}
	ep.Kind = model.KindExternal
	ep.Name = name
	if ep.ID == "" {
		ep.ID = addr.String()
	}
	ep.Source = "dns"
	if info.Source == model.NameTLS {
		ep.Source = "tls"
	}
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}
