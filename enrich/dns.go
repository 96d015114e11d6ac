package enrich

import (
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"time"
	"unsafe"

	lru "github.com/hashicorp/golang-lru/v2"

	"github.com/flowmap/flowmap/model"
)

// Bounds of a Names cache.
const (
	// DefaultMaxNames is how many addresses a Names cache names by
	// default.
	DefaultMaxNames = 65536
	// MaxNamesPerAddr is how many names an address keeps, the most
	// recent; older ones are dropped and counted (NamesStats.Dropped). A
	// CDN's address answers for many names: the graph says "one of
	// several", it need not list them all (200,000 names on one address
	// were 51 MiB and 2 ms a lookup when all were kept).
	MaxNamesPerAddr = 16
	// DefaultMaxNameEntries bounds the names of all addresses together.
	DefaultMaxNameEntries = 4 * DefaultMaxNames
	// MaxNameTTL caps the TTL of a name: a record of a week's TTL (or
	// 68 years') still names its address for an hour at most, unless
	// answered again.
	MaxNameTTL = time.Hour
	// DefaultNamesBytes bounds the estimated memory of a Names cache:
	// 8 MiB, about 35,000 addresses of one 30-byte name, or 75,000
	// names of 30 bytes on fewer addresses.
	DefaultNamesBytes = 8 << 20
)

// Sizes in a Names cache, as Go lays them out: an address costs its LRU
// entry (list links, key, value, expiry: 96 B), its map slot (key and
// pointer, at mapLoad 0.65: 51 B), its nameEntry (32 B) and its names'
// array (at least 1 of 48 B, growing by doubling: a name's share is its
// nameRec, plus 24 B of spare room on average). TestNamesBytesEstimate
// checks them against the heap.
const (
	addrBytes    = 96 + 51 + 32
	nameRecBytes = int(unsafe.Sizeof(nameRec{})) + 24
)

// Names is a bounded cache of address → name, from the DNS answers and TLS
// server names that the datapath saw ([model.Name]), each kept for its
// record's TTL, at most MaxNameTTL. Where several names share an address
// (a CDN, a shared load balancer), the most recent DNS name wins, and
// Lookup says how many others the address had: the graph then says "one
// of several". A TLS server name is the client's claim, not an answer: it
// names an address only where no live DNS name does, and never takes the
// place of one. Its methods are safe for concurrent use.
type Names struct {
	mu         sync.Mutex
	cache      *lru.Cache[netip.Addr, *nameEntry]
	maxEntries int
	entries    int // names held, over all addresses
	maxBytes   int
	bytes      int // the estimated memory of what is held (nameEntry.size)
	stats      NamesStats
}

// nameEntry is the names of one address, the most recent last, at most
// MaxNamesPerAddr.
type nameEntry struct {
	names []nameRec
	bytes int // size when last accounted
}

// size is the estimated memory of the address and its names.
func (e *nameEntry) size() int {
	n := addrBytes + len(e.names)*nameRecBytes
	for i := range e.names {
		n += len(e.names[i].name)
	}
	return n
}

// account brings n.bytes up to date with e's size.
func (n *Names) account(e *nameEntry) {
	b := e.size()
	n.bytes += b - e.bytes
	e.bytes = b
}

type nameRec struct {
	name    string
	source  model.NameSource
	expires time.Time
}

// NamesStats counts what a Names cache did.
type NamesStats struct {
	Added    uint64 // names added
	Replaced uint64 // names that took an address from another live name
	Evicted  uint64 // addresses pushed out by the bounds, or expired
	// Dropped counts names an address let go of, live, to keep
	// MaxNamesPerAddr.
	Dropped uint64
}

// NameInfo is what Lookup knows of an address.
type NameInfo struct {
	Name   string
	Source model.NameSource
	// Others is how many other live names the address had (at most
	// MaxNamesPerAddr-1): the name is the most recent DNS name of
	// Others+1, or where none is, the most recent TLS server name.
	Others int
}

// NewNames returns a cache of at most max addresses (DefaultMaxNames if
// max <= 0) and DefaultMaxNameEntries names.
func NewNames(max int) *Names {
	return NewNamesBounded(max, 0)
}

// NewNamesBounded returns a cache of at most maxAddrs addresses and
// maxEntries names over all of them (DefaultMaxNames and
// DefaultMaxNameEntries where <= 0); the least recently used addresses go
// first.
func NewNamesBounded(maxAddrs, maxEntries int) *Names {
	if maxAddrs <= 0 {
		maxAddrs = DefaultMaxNames
	}
	if maxEntries <= 0 {
		maxEntries = DefaultMaxNameEntries
	}
	n := &Names{maxEntries: maxEntries, maxBytes: DefaultNamesBytes}
	// lru.NewWithEvict fails only on a size <= 0.
	n.cache, _ = lru.NewWithEvict(maxAddrs, func(_ netip.Addr, e *nameEntry) {
		n.stats.Evicted++
		n.entries -= len(e.names)
		n.bytes -= e.bytes
	})
	return n
}

// Add keeps nm's name for its address until its TTL ends (at most
// MaxNameTTL), counted from nm.Seen (or now, if zero). A TTL of 0 is kept
// for a minute: the answer was used at least once.
func (n *Names) Add(nm model.Name, now time.Time) {
	if !nm.Addr.IsValid() || nm.Name == "" {
		return
	}
	seen := nm.Seen
	if seen.IsZero() {
		seen = now
	}
	ttl := min(nm.TTL, MaxNameTTL)
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
		e = &nameEntry{}
		n.cache.Add(addr, e)
	}
	rec := nameRec{name: nm.Name, source: nm.Source, expires: exp}
	if i := slices.IndexFunc(e.names, func(r nameRec) bool { return r.name == nm.Name }); i >= 0 {
		// The same name again: it lives on, and an answer makes a claim
		// an answer (a claim never makes an answer a claim).
		old := e.names[i]
		rec.expires = later(old.expires, exp)
		if old.source == model.NameDNS {
			rec.source = model.NameDNS
		}
		e.names = slices.Delete(e.names, i, i+1)
		n.entries--
	} else if cur, ok := e.primary(now); ok && (nm.Source == model.NameDNS || cur.source == model.NameTLS) {
		n.stats.Replaced++
	}
	e.names = append(e.names, rec)
	n.entries++
	if len(e.names) > MaxNamesPerAddr {
		e.prune(now)
		if len(e.names) > MaxNamesPerAddr {
			// The least recent; a DNS name before a claim would be
			// fairer to DNS, but a flood of answers ages a claim out too.
			e.names = slices.Delete(e.names, 0, 1)
			n.stats.Dropped++
		}
		n.entries = n.entries - MaxNamesPerAddr - 1 + len(e.names)
	}
	n.account(e)
	for (n.entries > n.maxEntries || n.bytes > n.maxBytes) && n.cache.Len() > 1 {
		n.cache.RemoveOldest()
	}
}

// SetMaxBytes bounds the cache's estimated memory to max bytes
// (DefaultNamesBytes where <= 0): past it, the least recently used
// addresses go first, counted in NamesStats.Evicted.
func (n *Names) SetMaxBytes(max int) {
	if max <= 0 {
		max = DefaultNamesBytes
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	n.maxBytes = max
	for n.bytes > n.maxBytes && n.cache.Len() > 1 {
		n.cache.RemoveOldest()
	}
}

// Usage is the cache's estimated memory and its bound: entries are names,
// and Dropped the addresses evicted (by the bounds, or expired) and the
// names an address let go of.
func (n *Names) Usage() model.StoreUsage {
	n.mu.Lock()
	defer n.mu.Unlock()
	return model.StoreUsage{Entries: uint64(n.entries), Bytes: uint64(n.bytes), LimitBytes: uint64(n.maxBytes),
		Dropped: n.stats.Evicted + n.stats.Dropped}
}

// prune drops the names of e that expired by now.
func (e *nameEntry) prune(now time.Time) {
	e.names = slices.DeleteFunc(e.names, func(r nameRec) bool { return !r.expires.After(now) })
}

// primary returns the name that names e's address at now: the most recent
// live DNS name, or if none, the most recent live TLS server name.
func (e *nameEntry) primary(now time.Time) (nameRec, bool) {
	var claim nameRec
	found := false
	for i := len(e.names) - 1; i >= 0; i-- {
		r := e.names[i]
		if !r.expires.After(now) {
			continue
		}
		if r.source == model.NameDNS {
			return r, true
		}
		if !found {
			claim, found = r, true
		}
	}
	return claim, found
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
	before := len(e.names)
	e.prune(now)
	n.entries -= before - len(e.names)
	n.account(e)
	if len(e.names) == 0 {
		n.cache.Remove(addr)
		return NameInfo{}, false
	}
	r, _ := e.primary(now)
	return NameInfo{Name: r.name, Source: r.source, Others: len(e.names) - 1}, true
}

// Stats returns the cache's counters.
func (n *Names) Stats() NamesStats {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.stats
}

// Len returns the addresses the cache holds, live or not yet looked at.
func (n *Names) Len() int { return n.cache.Len() }

// Entries returns the names the cache holds over all addresses.
func (n *Names) Entries() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.entries
}

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
	ep.NameSource = model.NameSourceDNS
	if info.Source == model.NameTLS {
		ep.Source = "tls"
		ep.NameSource = model.NameSourceTLSSNI
	}
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}
