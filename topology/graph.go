// Package topology holds the graph of flows between endpoints over time,
// and its exports: JSON (json.go), Graphviz (dot.go), Grafana's node graph
// (nodegraph.go) and Prometheus (prometheus.go).
//
// A [Graph] keeps each edge (client endpoint → server endpoint, protocol,
// server port) at the finest level the inventory names, in time buckets
// that cover the last hour; a [Snapshot] rolls them up to a [Level] over a
// window on demand, and every export is written from one snapshot. Memory
// is bounded: past [Options.MaxEdges] edges, new ones are counted in one
// overflow edge, and an edge leaves the graph with the last bucket it is in.
//
// # Buckets
//
// Flows are folded into the bucket of the time they are added at: 10s
// buckets for the last minute, merged into 1m buckets up to 15 minutes
// old, merged into 5m buckets up to an hour old, then dropped. A window is
// the buckets that end inside it, so it is exact to the width of its
// oldest bucket: the last 1m is 1m to 1m10s, 5m and 15m are to the
// minute, 1h is 1h to 1h05m. Snapshot.Window says the span covered.
//
// # Clock
//
// Buckets follow the monotonic clock, not the wall clock: the graph keeps
// the time of its first flow and places every later time by its distance
// from it, which [time.Time.Sub] reads off the monotonic clock when both
// times carry a reading of it (time.Now's do). A step of the wall clock
// (NTP, a VM resumed, an operator's date) then neither empties the graph
// (forward) nor piles the flows of an hour into one bucket (backward).
// Snapshots show times on the wall clock of their now. A time without a
// monotonic reading (parsed, or made with time.Date) is placed by its wall
// clock, as all times were before.
package topology

import (
	"maps"
	"sort"
	"sync"
	"time"
	"unsafe"

	"github.com/flowmap/flowmap/model"
)

// tiers are the bucket widths and how long buckets of each width are
// kept before they are merged into the next (or dropped, past the last).
var tiers = [...]struct{ width, until time.Duration }{
	{10 * time.Second, time.Minute},
	{time.Minute, 15 * time.Minute},
	{5 * time.Minute, time.Hour},
}

// DefaultMaxEdges is the edge cap of a graph whose Options leave it zero.
const DefaultMaxEdges = 50000

// DefaultMaxBytes bounds the memory of a graph whose Options leave it
// zero: 24 MiB, about 230,000 edge counts in buckets (an edge has one in
// each bucket it was added to, up to 31 over the hour).
const DefaultMaxBytes = 24 << 20

// Options configures a Graph.
type Options struct {
	// MaxEdges caps the edges kept, at the finest level; flows of new
	// edges past it are counted in one edge between two endpoints of kind
	// "overflow". Zero means DefaultMaxEdges.
	MaxEdges int
	// MaxBytes bounds the graph's estimated memory (Usage): a flow that
	// would add an edge, or an edge's counts to a bucket, past it counts
	// in the overflow edge instead. Zero means DefaultMaxBytes.
	MaxBytes int64
}

// Sizes of the graph's entries, as Go lays them out: a map slot per entry
// with its control byte, at mapLoad; an L7 (1,040 B) in the 1,152 B size
// class; a Health with its drops map's header.
var (
	countsBytes   = int64(unsafe.Sizeof(counts{}))
	edgeBytes     = withSlot(unsafe.Sizeof(edge{}), unsafe.Sizeof(edgeKey{}))
	endpointBytes = withSlot(unsafe.Sizeof(endpoint{}), unsafe.Sizeof(epKey{}))
	l7Bytes       = int64(1152)
	healthBytes   = int64(unsafe.Sizeof(model.Health{})) + 48
	// entryMost is the most a new entry may cost, and overflowReserve
	// what the overflow edge may take under the bound: its endpoint, and
	// an entry in each of the hour's buckets.
	entryMost       = countsBytes + l7Bytes + healthBytes
	overflowReserve = edgeBytes + endpointBytes + 8 + 32*entryMost
)

// Graph is the flows of the last hour between endpoints, in time buckets.
// Its methods are safe for concurrent use.
type Graph struct {
	mu       sync.Mutex
	maxEdges int
	maxBytes int64
	// entryBytes is the estimated memory of the buckets' entries (counts,
	// and the L7 and health they point to); epBytes the endpoints'
	// strings. See size.
	entryBytes, epBytes int64
	bytesDropped        uint64 // flows folded into the overflow edge for maxBytes

	eps     []endpoint // interned endpoints, by index
	epIndex map[epKey]uint32
	epFree  []uint32

	edges    []edge
	index    map[edgeKey]uint32
	edgeFree []uint32
	overflow int32 // index of the overflow edge, -1 before there is one

	buckets []*bucket // oldest first
	cur     *bucket   // the bucket flows are folded into, nil after it was merged
	seq     uint32
	start   int64 // when the first flow was added, in graph ns (see pos)

	// The graph's clock: anchor is the time of the first flow, and a time
	// t lies since(t, anchor) after it. Buckets, edges and start are in
	// graph ns: anchor's unix ns plus that distance.
	anchor time.Time
	since  func(t, anchor time.Time) time.Duration

	flows         uint64 // flows folded
	overflowFlows uint64 // of which into the overflow edge
}

type epKey struct {
	kind model.EndpointKind
	id   string
}

type endpoint struct {
	ep   model.Endpoint
	refs int32 // edges that name it
}

type edgeKey struct {
	src, dst uint32 // endpoint indexes
	port     uint16
	proto    model.Proto
}

type edge struct {
	key         edgeKey
	seq         uint32 // the newest bucket it has an entry in
	slot        int32  // its entry in that bucket
	first, last int64  // when it was first and last added to, unix ns
}

// counts are an edge's flows in one bucket.
type counts struct {
	bytes   [2]uint64 // forward (client to server), reverse
	packets [2]uint64
	rttSum  uint64 // ns
	edge    uint32
	conns   uint32
	retrans [2]uint32
	rttN    uint32
	rttMax  uint32 // ns, saturated at 4.29s
	// l7 is the messages the L7 parsers saw; nil on most edges (l7.go).
	l7 *model.L7
	// health is the connection outcomes, drops and RTT samples; nil
	// where there were none (health.go).
	health *model.Health
}

type bucket struct {
	start, end int64 // unix ns
	seq        uint32
	tier       int
	entries    []counts
}

// New returns an empty graph.
func New(opts Options) *Graph {
	if opts.MaxEdges <= 0 {
		opts.MaxEdges = DefaultMaxEdges
	}
	if opts.MaxBytes <= 0 {
		opts.MaxBytes = DefaultMaxBytes
	}
	return &Graph{
		maxEdges: opts.MaxEdges,
		maxBytes: opts.MaxBytes,
		epIndex:  map[epKey]uint32{},
		index:    map[edgeKey]uint32{},
		overflow: -1,
		since:    time.Time.Sub,
	}
}

// pos returns t in graph ns: its distance from the first flow's time on
// the monotonic clock where both have a reading of it. Before the first
// flow, it is t's unix ns.
func (g *Graph) pos(t time.Time) int64 {
	if g.start == 0 {
		return t.UnixNano()
	}
	return g.anchor.UnixNano() + int64(g.since(t, g.anchor))
}

// Add folds flows into the graph's bucket for time t. Flows are added in
// time order: one added before the newest bucket counts in the newest.
func (g *Graph) Add(t time.Time, fs ...model.Flow) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.start == 0 {
		g.anchor = t
	}
	now := g.pos(t)
	if g.start == 0 {
		g.start = now
	}
	if g.cur == nil || now >= g.cur.end {
		g.compact(now)
		w := int64(tiers[0].width)
		g.seq++
		g.cur = &bucket{start: now - now%w, end: now - now%w + w, seq: g.seq}
		if n := len(g.buckets); n > 0 {
			// The last bucket's size is a fair guess at the next one's.
			g.cur.entries = make([]counts, 0, len(g.buckets[n-1].entries))
		}
		g.buckets = append(g.buckets, g.cur)
	}
	for i := range fs {
		g.fold(now, &fs[i])
	}
}

func (g *Graph) fold(now int64, f *model.Flow) {
	g.flows++
	g.foldEdge(now, f)
	if h, ok := backendHop(f); ok {
		g.foldEdge(now, &h)
	}
}

// foldEdge folds f into the edge between its endpoints.
func (g *Graph) foldEdge(now int64, f *model.Flow) {
	k := edgeKey{port: f.DstPort, proto: f.Proto}
	k.src = g.intern(&f.SrcEndpoint)
	k.dst = g.intern(&f.DstEndpoint)
	i, ok := g.index[k]
	if !ok {
		i = g.newEdge(k, now)
	}
	e := &g.edges[i]
	cur := g.cur
	if e.seq != cur.seq && int32(i) != g.overflow && g.size()+entryMost > g.maxBytes-overflowReserve {
		// Past the byte bound: the flow counts in the overflow edge.
		g.bytesDropped++
		g.overflowFlows++
		i = g.overflowEdge(now)
		e = &g.edges[i]
	}
	e.last = now
	if e.seq != cur.seq {
		e.seq = cur.seq
		e.slot = int32(len(cur.entries))
		cur.entries = append(cur.entries, counts{edge: i})
		g.entryBytes += countsBytes
	}
	o := flowCounts(f)
	c := &cur.entries[e.slot]
	g.entryBytes += extraBytes(c, &o)
	c.add(&o)
}

// extraBytes is what adding o to c allocates: an L7 or a Health where c
// had none.
func extraBytes(c, o *counts) int64 {
	var n int64
	if c.l7 == nil && o.l7 != nil {
		n += l7Bytes
	}
	if c.health == nil && o.health != nil {
		n += healthBytes
	}
	return n
}

// withSlot is the size of a table entry of n bytes with its index's map
// slot (a key of k bytes and a uint32).
func withSlot(n, k uintptr) int64 {
	return int64(n) + int64(float64(k+4+1)/mapLoad)
}

// size is the graph's estimated memory: the buckets' entries, the edges
// and the endpoints.
func (g *Graph) size() int64 {
	return g.entryBytes + int64(len(g.index)+1)*edgeBytes + int64(len(g.epIndex))*endpointBytes + g.epBytes
}

// overflowEdge returns the overflow edge, adding it if there is none.
func (g *Graph) overflowEdge(now int64) uint32 {
	if g.overflow >= 0 {
		return uint32(g.overflow)
	}
	o := &model.Endpoint{Kind: KindOverflow, ID: "overflow", Name: "overflow"}
	k := edgeKey{src: g.intern(o), dst: g.intern(o)}
	return g.addEdge(k, now)
}

// Usage is the graph's estimated memory and its bound; entries are edge
// counts in buckets, and Dropped the flows that the bound sent to the
// overflow edge (the edge cap's are Stats.OverflowFlows).
func (g *Graph) Usage() model.StoreUsage {
	g.mu.Lock()
	defer g.mu.Unlock()
	var n int
	for _, b := range g.buckets {
		n += len(b.entries)
	}
	return model.StoreUsage{Entries: uint64(n), Bytes: uint64(g.size()), LimitBytes: uint64(g.maxBytes), Dropped: g.bytesDropped}
}

// flowCounts are the counts of one flow, of no edge.
func flowCounts(f *model.Flow) counts {
	c := counts{
		bytes:   [2]uint64{f.Forward.Bytes, f.Reverse.Bytes},
		packets: [2]uint64{f.Forward.Packets, f.Reverse.Packets},
		retrans: [2]uint32{f.Forward.Retransmits, f.Reverse.Retransmits},
		l7:      f.L7,
		health:  f.Health,
	}
	if opened(&f.Record) {
		c.conns = 1
	}
	if rtt := f.HandshakeRTT; rtt > 0 {
		c.rttN, c.rttSum, c.rttMax = 1, uint64(rtt), uint32(min(rtt, 1<<32-1))
	}
	return c
}

// add adds o's counts to c. c's L7 is a sum of its own, never o's.
func (c *counts) add(o *counts) {
	for j := range 2 {
		c.bytes[j] += o.bytes[j]
		c.packets[j] += o.packets[j]
		c.retrans[j] += o.retrans[j]
	}
	c.conns += o.conns
	c.rttN += o.rttN
	c.rttSum += o.rttSum
	c.rttMax = max(c.rttMax, o.rttMax)
	if o.l7 != nil {
		c.l7 = addL7(c.l7, o.l7)
	}
	if o.health != nil {
		c.health = addHealth(c.health, o.health)
	}
}

// traffic returns what went one way: forward (0) or reverse (1).
func (c *counts) traffic(dir int) Traffic {
	return Traffic{Bytes: c.bytes[dir], Packets: c.packets[dir], Retransmits: uint64(c.retrans[dir])}
}

// opened reports whether the record's client opened its connection in it.
func opened(r *model.Record) bool {
	return r.Proto == model.ProtoTCP && r.Forward.TCPFlags&model.FlagSYNOnly != 0
}

// newEdge adds the edge k, or returns the overflow edge past the cap.
func (g *Graph) newEdge(k edgeKey, now int64) uint32 {
	if len(g.index) >= g.maxEdges || g.size()+edgeBytes+2*endpointBytes+entryMost > g.maxBytes-overflowReserve {
		if len(g.index) < g.maxEdges {
			g.bytesDropped++
		}
		g.overflowFlows++
		g.eps[k.src].refs++ // undone by the release below
		g.eps[k.dst].refs++
		g.release(k.src)
		g.release(k.dst)
		if g.overflow >= 0 {
			return uint32(g.overflow)
		}
		o := &model.Endpoint{Kind: KindOverflow, ID: "overflow", Name: "overflow"}
		k = edgeKey{src: g.intern(o), dst: g.intern(o)}
	}
	return g.addEdge(k, now)
}

// addEdge adds the edge k, first added to at now.
func (g *Graph) addEdge(k edgeKey, now int64) uint32 {
	e := edge{key: k, seq: 0, first: now}
	var i uint32
	if n := len(g.edgeFree); n > 0 {
		i = g.edgeFree[n-1]
		g.edgeFree = g.edgeFree[:n-1]
		g.edges[i] = e
	} else {
		i = uint32(len(g.edges))
		g.edges = append(g.edges, e)
	}
	g.eps[k.src].refs++
	g.eps[k.dst].refs++
	if g.eps[k.src].ep.Kind == KindOverflow {
		g.overflow = int32(i)
	} else {
		g.index[k] = i
	}
	return i
}

// intern returns ep's index, keeping its latest version, which may name
// it better than the first.
func (g *Graph) intern(ep *model.Endpoint) uint32 {
	if i, ok := g.epIndex[epKey{ep.Kind, ep.ID}]; ok {
		if g.eps[i].ep.Name != ep.Name || g.eps[i].ep.Workload != ep.Workload || g.eps[i].ep.NameSource != ep.NameSource {
			g.eps[i].ep = *ep
		}
		return i
	}
	var i uint32
	if n := len(g.epFree); n > 0 {
		i = g.epFree[n-1]
		g.epFree = g.epFree[:n-1]
		g.eps[i] = endpoint{ep: *ep}
	} else {
		i = uint32(len(g.eps))
		g.eps = append(g.eps, endpoint{ep: *ep})
	}
	g.epIndex[epKey{ep.Kind, ep.ID}] = i
	g.epBytes += int64(len(ep.ID))
	return i
}

// release drops an endpoint's reference, and the endpoint with its last.
// A newly interned endpoint has no references until an edge takes one.
func (g *Graph) release(i uint32) {
	p := &g.eps[i]
	if p.refs--; p.refs > 0 {
		return
	}
	delete(g.epIndex, epKey{p.ep.Kind, p.ep.ID})
	g.epBytes -= int64(len(p.ep.ID))
	*p = endpoint{}
	g.epFree = append(g.epFree, i)
}

// compact merges and drops the buckets that aged out of their tier by now.
func (g *Graph) compact(now int64) {
	out := g.buckets[:0]
	for _, b := range g.buckets {
		for b != nil && b.end <= now-int64(tiers[b.tier].until) {
			if b == g.cur {
				g.cur = nil
			}
			if b.tier == len(tiers)-1 {
				g.drop(b)
				b = nil
				break
			}
			// Merge into the next tier's bucket that holds its start: the
			// last one kept, if it is that one.
			w := int64(tiers[b.tier+1].width)
			start := b.start - b.start%w
			if n := len(out); n > 0 && out[n-1].tier == b.tier+1 && out[n-1].start == start {
				merge(out[n-1], b)
				b = nil
				break
			}
			b.tier++
			b.start, b.end = start, start+w
		}
		if b != nil {
			out = append(out, b)
		}
	}
	clear(g.buckets[len(out):])
	g.buckets = out
	g.entryBytes = 0
	for _, b := range g.buckets {
		for i := range b.entries {
			c := &b.entries[i]
			g.entryBytes += countsBytes + extraBytes(&counts{}, c)
		}
	}
}

// merge adds the entries of src into dst, which is older.
func merge(dst, src *bucket) {
	slots := make(map[uint32]int, len(dst.entries))
	for i := range dst.entries {
		slots[dst.entries[i].edge] = i
	}
	for _, c := range src.entries {
		i, ok := slots[c.edge]
		if !ok {
			dst.entries = append(dst.entries, c)
			continue
		}
		dst.entries[i].add(&c)
	}
	dst.seq = max(dst.seq, src.seq)
}

// drop forgets a bucket, and the edges that are in no newer one.
func (g *Graph) drop(b *bucket) {
	for _, c := range b.entries {
		e := &g.edges[c.edge]
		if e.seq > b.seq {
			continue
		}
		if int32(c.edge) == g.overflow {
			g.overflow = -1
		} else {
			delete(g.index, e.key)
		}
		g.release(e.key.src)
		g.release(e.key.dst)
		*e = edge{}
		g.edgeFree = append(g.edgeFree, c.edge)
	}
}

// Stats are a graph's size.
type Stats struct {
	Endpoints int `json:"endpoints"`
	Edges     int `json:"edges"`
	Buckets   int `json:"buckets"`
	// Entries are the edges' counts in buckets: an edge has one in each
	// bucket it was added to.
	Entries int `json:"entries"`
	// Bytes estimates the memory the graph holds: its tables at their
	// capacity, without what endpoints share with the inventory.
	Bytes         int64  `json:"bytes"`
	Flows         uint64 `json:"flows"`
	OverflowFlows uint64 `json:"overflow_flows"`
}

// Map sizes: a Swiss table slot per entry, with its control byte, at a
// load of 7/8 just after growing and 7/16 just before.
const mapLoad = 0.65

// Stats returns the graph's size.
func (g *Graph) Stats() Stats {
	g.mu.Lock()
	defer g.mu.Unlock()
	s := Stats{
		Endpoints:     len(g.epIndex),
		Edges:         len(g.index),
		Buckets:       len(g.buckets),
		Flows:         g.flows,
		OverflowFlows: g.overflowFlows,
	}
	if g.overflow >= 0 {
		s.Edges++
	}
	b := float64(cap(g.eps))*float64(unsafe.Sizeof(endpoint{})) +
		float64(len(g.epIndex))*float64(unsafe.Sizeof(epKey{})+4+1)/mapLoad +
		float64(cap(g.edges))*float64(unsafe.Sizeof(edge{})) +
		float64(len(g.index))*float64(unsafe.Sizeof(edgeKey{})+4+1)/mapLoad +
		float64(cap(g.epFree)+cap(g.edgeFree))*4
	for _, bk := range g.buckets {
		s.Entries += len(bk.entries)
		b += float64(cap(bk.entries))*float64(unsafe.Sizeof(counts{})) + float64(unsafe.Sizeof(bucket{}))
	}
	for i := range g.eps {
		b += float64(len(g.eps[i].ep.ID))
	}
	s.Bytes = int64(b)
	return s
}

// Snapshot rolls the graph up to level over the window that ends at now:
// the buckets that end after now-window and start before now. A now in the
// past (a diff's baseline) is exact to the width of the bucket it falls in.
func (g *Graph) Snapshot(now time.Time, level Level, window time.Duration) *Snapshot {
	g.mu.Lock()
	defer g.mu.Unlock()
	end := g.pos(now)
	g.compact(end)
	// Times are shown on now's wall clock, which may have stepped since
	// the first flow.
	wall := func(ns int64) time.Time { return time.Unix(0, ns+now.UnixNano()-end).UTC() }
	s := &Snapshot{Version: Version, Level: level, Window: Window{Name: windowName(window), End: now.UTC()}}
	cutoff := end - int64(window)
	start := cutoff
	type rollKey struct {
		src, dst int32
		port     uint16
		proto    model.Proto
	}
	nodes := map[string]int32{}
	nodeOfEP := make([]int32, len(g.eps))
	for i := range nodeOfEP {
		nodeOfEP[i] = -1
	}
	// An endpoint without a zone of its own is in its machine's.
	var machineZone map[string]string
	for i := range g.eps {
		if ep := &g.eps[i].ep; ep.Kind == model.KindHost && ep.Node != "" {
			if z := zoneOf(ep.Labels); z != "" {
				if machineZone == nil {
					machineZone = map[string]string{}
				}
				machineZone[ep.Node] = z
			}
		}
	}
	node := func(ep uint32) int32 {
		if n := nodeOfEP[ep]; n >= 0 {
			return n
		}
		e := &g.eps[ep].ep
		n := nodeOf(e, level)
		if n.Zone == "" {
			n.Zone = machineZone[e.Node]
		}
		i, ok := nodes[n.ID]
		if !ok {
			i = int32(len(s.Nodes))
			nodes[n.ID] = i
			s.Nodes = append(s.Nodes, n)
		} else {
			s.Nodes[i].join(&n)
		}
		nodeOfEP[ep] = i
		return i
	}
	type rolled struct {
		Edge
		rttSum uint64
		l7     *model.L7
		health *model.Health
	}
	var edges []rolled
	idx := map[rollKey]int{}
	first := true
	for _, b := range g.buckets {
		if b.end <= cutoff || b.start > end {
			// Outside the window; a bucket after its end is there only
			// in a snapshot of the past (a diff's baseline).
			continue
		}
		if first {
			start, first = b.start, false
		}
		for _, c := range b.entries {
			e := &g.edges[c.edge]
			k := rollKey{src: node(e.key.src), dst: node(e.key.dst), port: e.key.port, proto: e.key.proto}
			i, ok := idx[k]
			if !ok {
				i = len(edges)
				idx[k] = i
				edges = append(edges, rolled{Edge: Edge{
					Source: s.Nodes[k.src].ID, Target: s.Nodes[k.dst].ID, Protocol: k.proto, Port: k.port,
					FirstSeen: wall(e.first), LastSeen: wall(e.last),
				}})
			}
			r := &edges[i]
			r.Forward.Add(c.traffic(0))
			r.Reverse.Add(c.traffic(1))
			r.Connections += uint64(c.conns)
			if c.rttN > 0 {
				if r.RTT == nil {
					r.RTT = &RTT{}
				}
				r.RTT.Samples += uint64(c.rttN)
				r.rttSum += c.rttSum
				r.RTT.Max = max(r.RTT.Max, time.Duration(c.rttMax))
			}
			if c.l7 != nil {
				r.l7 = addL7(r.l7, c.l7)
			}
			if c.health != nil {
				r.health = addHealth(r.health, c.health)
			}
			if t := wall(e.first); t.Before(r.FirstSeen) {
				r.FirstSeen = t
			}
			if t := wall(e.last); t.After(r.LastSeen) {
				r.LastSeen = t
			}
		}
	}
	// The span starts at the bucket boundary before the cutoff, in the
	// tier that buckets of the window's age are in.
	w := int64(tiers[len(tiers)-1].width)
	for _, t := range tiers {
		if window <= t.until {
			w = int64(t.width)
			break
		}
	}
	start = min(start, cutoff-cutoff%w)
	if g.start != 0 && g.start <= end {
		start = max(start, g.start)
	}
	s.Window.Start = wall(start)
	s.Edges = make([]Edge, len(edges))
	for i := range edges {
		s.Edges[i] = edges[i].Edge
		if r := s.Edges[i].RTT; r != nil {
			r.Mean = time.Duration(edges[i].rttSum / r.Samples)
		}
		if l := edges[i].l7; l != nil {
			s.Edges[i].L7 = newL7(l, end-start)
		}
		if h := edges[i].health; h != nil {
			s.Edges[i].Health = newHealth(h)
		}
		s.Edges[i].ID = edgeID(&s.Edges[i])
	}
	if s.Nodes == nil {
		s.Nodes = []Node{}
	}
	sort.Slice(s.Nodes, func(i, j int) bool { return s.Nodes[i].ID < s.Nodes[j].ID })
	sort.Slice(s.Edges, func(i, j int) bool { return s.Edges[i].ID < s.Edges[j].ID })
	return s
}

// join merges what another endpoint says of the node it shares with n:
// where they differ (a namespace on two hosts), n says nothing. An
// endpoint without an image, zone or labels says nothing of them.
func (n *Node) join(o *Node) {
	if n.Host != o.Host {
		n.Host = ""
	}
	if n.Namespace != o.Namespace {
		n.Namespace = ""
	}
	joinValue(&n.Image, o.Image, &n.mixed, mixedImage)
	joinValue(&n.Zone, o.Zone, &n.mixed, mixedZone)
	switch {
	case o.Labels == nil:
	case n.Labels == nil:
		n.Labels = o.Labels
	default:
		for k, v := range n.Labels {
			if ov, ok := o.Labels[k]; ok && ov == v {
				continue
			}
			if !n.ownLabels {
				// The endpoint's map is the inventory's: never changed.
				n.Labels, n.ownLabels = maps.Clone(n.Labels), true
			}
			delete(n.Labels, k)
		}
	}
}

// The bits of Node.mixed.
const (
	mixedImage = 1 << iota
	mixedZone
)

// joinValue merges o into *v: the value where all that say one say the
// same, else "" for good (bit set in *mixed).
func joinValue(v *string, o string, mixed *uint8, bit uint8) {
	switch {
	case *mixed&bit != 0 || o == "" || o == *v:
	case *v == "":
		*v = o
	default:
		*v = ""
		*mixed |= bit
	}
}

// Zone labels, Kubernetes' and OpenTelemetry's (enrich's cloud source).
const (
	labelZone      = "topology.kubernetes.io/zone"
	labelCloudZone = "cloud.availability_zone"
)

// zoneOf returns the zone that labels name, or "".
func zoneOf(labels map[string]string) string {
	if z := labels[labelZone]; z != "" {
		return z
	}
	return labels[labelCloudZone]
}
