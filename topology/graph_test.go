package topology

import (
	"maps"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/flowmap/flowmap/model"
)

// t0 is the fixed graph's now.
var t0 = time.Date(2026, 11, 25, 9, 0, 0, 0, time.UTC)

func container(name, ns, workload, node, addr string) model.Endpoint {
	return model.Endpoint{Kind: model.KindContainer, ID: "c-" + name, Name: name, Namespace: ns,
		Workload: workload, WorkloadKind: "Deployment", Node: node, Addrs: []netip.Addr{netip.MustParseAddr(addr)},
		Labels: map[string]string{labelPodUID: "uid-" + name, labelPodName: name + "-pod", labelPodNamespace: ns, "app": workload},
		Image:  "registry.example/" + workload + ":1"}
}

// The fixed graph's endpoints: a shop on two machines, a monitoring pod, a
// machine itself, a service outside and an address no one knows.
var (
	web1     = container("web-1", "shop", "web", "n1", "198.51.100.11")
	web1side = func() model.Endpoint { // a sidecar in web-1's pod
		e := container("web-1-proxy", "shop", "web", "n1", "198.51.100.11")
		e.Labels = map[string]string{labelPodUID: "uid-web-1", labelPodName: "web-1-pod", labelPodNamespace: "shop", "app": "web"}
		e.Image = "registry.example/proxy:1"
		return e
	}()
	web2 = container("web-2", "shop", "web", "n2", "198.51.100.12")
	api1 = container("api-1", "shop", "api", "n1", "198.51.100.13")
	db0  = container("db-0", "shop", "db", "n2", "198.51.100.14")
	prom = container("prometheus-0", "monitoring", "prometheus", "n1", "198.51.100.15")
	n1   = model.Endpoint{Kind: model.KindHost, ID: "n1", Name: "n1", Node: "n1", Addrs: []netip.Addr{netip.MustParseAddr("198.51.100.1")},
		Labels: map[string]string{labelZone: "zone-a", "kubernetes.io/hostname": "n1"}}
	payments = model.Endpoint{Kind: model.KindExternal, ID: "203.0.113.10", Name: "payments.example", Addrs: []netip.Addr{netip.MustParseAddr("203.0.113.10")}}
	stranger = model.Endpoint{Kind: model.KindUnknown, ID: "198.51.100.77"}
)

// flow is a flow of one connection (for TCP, opened in the interval, with
// a handshake of rtt).
func flow(src, dst model.Endpoint, proto model.Proto, port uint16, fwd, rev uint64, rtt time.Duration) model.Flow {
	f := model.Flow{SrcEndpoint: src, DstEndpoint: dst}
	f.Proto, f.SrcPort, f.DstPort = proto, 40000, port
	f.Forward = model.Direction{Bytes: fwd, Packets: fwd/1000 + 1}
	f.Reverse = model.Direction{Bytes: rev, Packets: rev/1000 + 1}
	if proto == model.ProtoTCP {
		f.Forward.TCPFlags = model.FlagSYNOnly | 0x18
		f.Reverse.TCPFlags = model.FlagSYNACK | 0x18
		f.HandshakeRTT = rtt
	}
	return f
}

type batch struct {
	at    time.Time
	flows []model.Flow
}

// fixtureFlows are the fixed graph's flows, in batches. Their health:
// web-2 → db-0 and the first api-1 → payments are well; web-1-sidecar →
// api-1 is refused; the last api-1 → payments times out behind a DROP
// rule, with drops of four reasons; web-1's DNS query finds no socket.
func fixtureFlows() []batch {
	at := func(ago time.Duration, fs ...model.Flow) batch { return batch{t0.Add(-ago), fs} }
	return []batch{
		at(50*time.Minute, flow(prom, web1, model.ProtoTCP, 9090, 300, 20000, 80*time.Microsecond)),
		at(10*time.Minute,
			flow(web1, api1, model.ProtoTCP, 8080, 2000, 50000, 40*time.Microsecond),
			flow(prom, web1, model.ProtoTCP, 9090, 300, 21000, 90*time.Microsecond)),
		at(3*time.Minute,
			withHealth(flow(web2, db0, model.ProtoTCP, 5432, 500, 120000, 300*time.Microsecond),
				&model.Health{Attempts: 1, Established: 1, Closed: 1, RTTSum: 600 * time.Microsecond, RTTSamples: 2}),
			withHealth(flow(api1, payments, model.ProtoTCP, 443, 1500, 6000, 12*time.Millisecond),
				&model.Health{Attempts: 1, Established: 1, RTTSum: 36 * time.Millisecond, RTTSamples: 3})),
		at(30*time.Second,
			flow(web1, api1, model.ProtoTCP, 8080, 2100, 52000, 50*time.Microsecond),
			withHealth(flow(web1side, api1, model.ProtoTCP, 8080, 700, 9000, 0),
				&model.Health{Attempts: 2, Refused: 2}),
			flow(web2, db0, model.ProtoTCP, 5432, 400, 100000, 250*time.Microsecond),
			flow(n1, web1, model.ProtoTCP, 8080, 150, 300, 20*time.Microsecond),
			flow(stranger, web2, model.ProtoTCP, 22, 60, 0, 0),
			withHealth(flow(api1, payments, model.ProtoTCP, 443, 1400, 5000, 11*time.Millisecond),
				&model.Health{Attempts: 3, SYNRetries: 6, Established: 1, TimedOut: 2,
					Drops: map[string]uint64{"NETFILTER_DROP": 8, "OTHERHOST": 2, "TCP_CSUM": 1, "QDISC_DROP": 1}}),
			withHealth(flow(web1, db0, model.ProtoUDP, 53, 80, 160, 0),
				&model.Health{Unreachable: 1, Drops: map[string]uint64{"NO_SOCKET": 1}})),
	}
}

func withHealth(f model.Flow, h *model.Health) model.Flow {
	f.Health = h
	return f
}

// fixture returns the fixed graph that the golden files show, at t0.
func fixture() *Graph {
	g := New(Options{})
	for _, b := range fixtureFlows() {
		g.Add(b.at, b.flows...)
	}
	return g
}

func TestWindows(t *testing.T) {
	g := fixture()
	// web-1 → api-1 was added 10m and 30s ago, prometheus → web-1 50m and
	// 10m ago.
	for _, tc := range []struct {
		window          time.Duration
		webAPI, promWeb uint64
		edges           int
		wantStart       time.Time
	}{
		{time.Minute, 2100 + 52000, 0, 7, t0.Add(-time.Minute)},
		{5 * time.Minute, 2100 + 52000, 0, 7, t0.Add(-5 * time.Minute)},
		{15 * time.Minute, 2000 + 50000 + 2100 + 52000, 300 + 21000, 8, t0.Add(-15 * time.Minute)},
		{time.Hour, 2000 + 50000 + 2100 + 52000, 300 + 20000 + 300 + 21000, 8, t0.Add(-50 * time.Minute)},
	} {
		t.Run(windowName(tc.window), func(t *testing.T) {
			s := g.Snapshot(t0, LevelContainer, tc.window)
			if got := len(s.Edges); got != tc.edges {
				t.Errorf("%d edges, want %d", got, tc.edges)
			}
			if got := bytesOf(s, "container:c-web-1", "container:c-api-1"); got != tc.webAPI {
				t.Errorf("web-1 → api-1: %d bytes, want %d", got, tc.webAPI)
			}
			if got := bytesOf(s, "container:c-prometheus-0", "container:c-web-1"); got != tc.promWeb {
				t.Errorf("prometheus → web-1: %d bytes, want %d", got, tc.promWeb)
			}
			if !s.Window.Start.Equal(tc.wantStart) {
				t.Errorf("window starts %s, want %s", s.Window.Start, tc.wantStart)
			}
		})
	}
}

func bytesOf(s *Snapshot, src, dst string) uint64 {
	var n uint64
	for _, e := range s.Edges {
		if e.Source == src && e.Target == dst {
			n += e.Bytes()
		}
	}
	return n
}

func TestLevels(t *testing.T) {
	g := fixture()
	for _, tc := range []struct {
		level Level
		nodes []string
		edge  [2]string // one edge that must be there
		bytes uint64
	}{
		{LevelContainer, []string{"container:c-api-1", "container:c-db-0", "container:c-web-1", "container:c-web-1-proxy",
			"container:c-web-2", "external:203.0.113.10", "host:n1", "unknown:198.51.100.77"},
			[2]string{"container:c-web-1-proxy", "container:c-api-1"}, 9700},
		{LevelPod, []string{"external:203.0.113.10", "host:n1", "pod:uid-api-1", "pod:uid-db-0", "pod:uid-web-1",
			"pod:uid-web-2", "unknown:198.51.100.77"},
			[2]string{"pod:uid-web-1", "pod:uid-api-1"}, 2100 + 52000 + 9700},
		{LevelWorkload, []string{"external:203.0.113.10", "host:n1", "unknown:198.51.100.77", "workload:shop/api",
			"workload:shop/db", "workload:shop/web"},
			[2]string{"workload:shop/web", "workload:shop/db"}, 100400 + 240},
		{LevelNamespace, []string{"external:203.0.113.10", "host:n1", "namespace:shop", "unknown:198.51.100.77"},
			[2]string{"namespace:shop", "namespace:shop"}, 2100 + 52000 + 9700 + 100400 + 240},
		{LevelHost, []string{"external:203.0.113.10", "host:n1", "host:n2", "unknown:198.51.100.77"},
			[2]string{"host:n1", "host:n2"}, 240},
	} {
		t.Run(string(tc.level), func(t *testing.T) {
			s := g.Snapshot(t0, tc.level, time.Minute)
			var got []string
			for _, n := range s.Nodes {
				got = append(got, n.ID)
			}
			if !slices.Equal(got, tc.nodes) {
				t.Errorf("nodes %q, want %q", got, tc.nodes)
			}
			if got := bytesOf(s, tc.edge[0], tc.edge[1]); got != tc.bytes {
				t.Errorf("%s → %s: %d bytes, want %d", tc.edge[0], tc.edge[1], got, tc.bytes)
			}
			for _, e := range s.Edges {
				if _, ok := slices.BinarySearch(got, e.Source); !ok {
					t.Errorf("edge %s: source is no node", e.ID)
				}
				if _, ok := slices.BinarySearch(got, e.Target); !ok {
					t.Errorf("edge %s: target is no node", e.ID)
				}
			}
		})
	}
}

func TestEdgeStats(t *testing.T) {
	g := New(Options{})
	for i, rtt := range []time.Duration{100 * time.Microsecond, 300 * time.Microsecond, 0} {
		f := flow(web1, api1, model.ProtoTCP, 8080, 1000, 2000, rtt)
		f.Forward.Retransmits = uint32(i)
		if rtt == 0 {
			f.Forward.TCPFlags = 0x18 // a connection opened earlier
		}
		g.Add(t0.Add(time.Duration(i)*20*time.Second), f)
	}
	s := g.Snapshot(t0.Add(time.Minute), LevelContainer, 5*time.Minute)
	if len(s.Edges) != 1 {
		t.Fatalf("%d edges, want 1", len(s.Edges))
	}
	e := s.Edges[0]
	for _, c := range []struct {
		name      string
		got, want any
	}{
		{"forward bytes", e.Forward.Bytes, uint64(3000)},
		{"reverse bytes", e.Reverse.Bytes, uint64(6000)},
		{"forward packets", e.Forward.Packets, uint64(6)},
		{"retransmits", e.Forward.Retransmits, uint64(3)},
		{"connections", e.Connections, uint64(2)},
		{"rtt samples", e.RTT.Samples, uint64(2)},
		{"rtt mean", e.RTT.Mean, 200 * time.Microsecond},
		{"rtt max", e.RTT.Max, 300 * time.Microsecond},
		{"first seen", e.FirstSeen, t0},
		{"last seen", e.LastSeen, t0.Add(40 * time.Second)},
	} {
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
		}
	}
}

// TestAging: an edge leaves the graph, with its endpoints, an hour after
// its last flow, and buckets merge as they age.
func TestAging(t *testing.T) {
	g := New(Options{})
	g.Add(t0, flow(web1, api1, model.ProtoTCP, 8080, 1, 1, 0), flow(web2, db0, model.ProtoTCP, 5432, 1, 1, 0))
	for m := range 70 {
		// web-2 → db-0 goes on; web-1 → api-1 stopped.
		g.Add(t0.Add(time.Duration(m)*time.Minute), flow(web2, db0, model.ProtoTCP, 5432, 1, 1, 0))
		for s := 10; s < 60; s += 10 {
			g.Add(t0.Add(time.Duration(m)*time.Minute+time.Duration(s)*time.Second), flow(web2, db0, model.ProtoTCP, 5432, 1, 1, 0))
		}
	}
	now := t0.Add(70 * time.Minute)
	g.Snapshot(now, LevelContainer, time.Hour)
	st := g.Stats()
	if st.Edges != 1 || st.Endpoints != 2 {
		t.Errorf("after 70m: %d edges, %d endpoints, want 1 and 2", st.Edges, st.Endpoints)
	}
	// 10s buckets for a minute, 1m ones to 15m, 5m ones to 1h.
	if st.Buckets > 7+15+10 {
		t.Errorf("%d buckets, want at most %d", st.Buckets, 7+15+10)
	}
	s := g.Snapshot(now, LevelContainer, time.Hour)
	// 6 flows a minute (2 bytes each); the window covers 60 to 65 minutes.
	if got := bytesOf(s, "container:c-web-2", "container:c-db-0"); got < 60*12 || got > 65*12 {
		t.Errorf("web-2 → db-0 in the last hour: %d bytes, want %d to %d", got, 60*12, 65*12)
	}
	g.Snapshot(now.Add(time.Hour+5*time.Minute), LevelContainer, time.Hour)
	if st := g.Stats(); st.Edges != 0 || st.Endpoints != 0 || st.Entries != 0 {
		t.Errorf("an hour after the last flow: %+v, want no edges, endpoints or entries", st)
	}
}

// TestEdgeCap: past MaxEdges, flows of new edges count in the overflow
// edge, and none is lost.
func TestEdgeCap(t *testing.T) {
	g := New(Options{MaxEdges: 3})
	var want uint64
	for i := range 10 {
		g.Add(t0, flow(web1, api1, model.ProtoTCP, uint16(8000+i), 100, 0, 0))
		want += 100
	}
	st := g.Stats()
	if st.Edges != 4 || st.OverflowFlows != 7 || st.Endpoints != 3 {
		t.Errorf("stats %+v, want 4 edges (3 and the overflow), 7 overflow flows, 3 endpoints", st)
	}
	s := g.Snapshot(t0, LevelContainer, time.Minute)
	var got uint64
	for _, e := range s.Edges {
		got += e.Bytes()
	}
	if got != want {
		t.Errorf("%d bytes in all edges, want %d", got, want)
	}
	if o := bytesOf(s, "overflow:overflow", "overflow:overflow"); o != 700 {
		t.Errorf("overflow edge: %d bytes, want 700", o)
	}
}

func TestParse(t *testing.T) {
	for _, s := range []string{"container", "pod", "workload", "namespace", "host"} {
		if l, err := ParseLevel(s); err != nil || string(l) != s {
			t.Errorf("ParseLevel(%q) = %q, %v, want %q, nil", s, l, err, s)
		}
	}
	for i, s := range []string{"1m", "5m", "15m", "1h"} {
		if w, err := ParseWindow(s); err != nil || w != Windows[i] {
			t.Errorf("ParseWindow(%q) = %v, %v, want %v, nil", s, w, err, Windows[i])
		}
	}
	for _, bad := range []string{"", "cluster", "2m"} {
		if _, err := ParseLevel(bad); err == nil {
			t.Errorf("ParseLevel(%q): no error, want one", bad)
		}
		if _, err := ParseWindow(bad); err == nil {
			t.Errorf("ParseWindow(%q): no error, want one", bad)
		}
	}
}

// TestSnapshotNodeLabels checks what a rolled-up node says of its
// endpoints' images, zones and labels: what all that say one share, and
// the endpoints' own label maps untouched.
func TestSnapshotNodeLabels(t *testing.T) {
	ep := func(name, image string, labels map[string]string) model.Endpoint {
		e := container(name, "shop", "web", "n9", "198.51.100.99")
		e.ID, e.Image, e.Labels = "c-"+name, image, labels
		return e
	}
	a := ep("a", "web:1", map[string]string{"app": "web", "tier": "front", labelZone: "z1"})
	b := ep("b", "web:2", map[string]string{"app": "web", "tier": "back", labelZone: "z1"})
	c := ep("c", "web:1", nil) // says nothing of labels nor zone
	d := ep("d", "", map[string]string{"app": "web", labelZone: "z2"})
	for _, tc := range []struct {
		name       string
		eps        []model.Endpoint
		wantImage  string
		wantZone   string
		wantLabels map[string]string
	}{
		{"one", []model.Endpoint{a}, "web:1", "z1", map[string]string{"app": "web", "tier": "front", labelZone: "z1"}},
		{"same image, one without labels", []model.Endpoint{a, c}, "web:1", "z1", map[string]string{"app": "web", "tier": "front", labelZone: "z1"}},
		{"two images", []model.Endpoint{a, b}, "", "z1", map[string]string{"app": "web", labelZone: "z1"}},
		// Once two differ, a third that agrees with the first does not
		// bring the image back.
		{"two images then the first again", []model.Endpoint{a, b, c}, "", "z1", map[string]string{"app": "web", labelZone: "z1"}},
		{"two zones", []model.Endpoint{a, d}, "web:1", "", map[string]string{"app": "web"}},
		{"no labels", []model.Endpoint{c}, "web:1", "", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := New(Options{})
			for _, e := range tc.eps {
				g.Add(t0, flow(e, payments, model.ProtoTCP, 443, 100, 100, 0))
			}
			s := g.Snapshot(t0, LevelWorkload, time.Minute)
			i := slices.IndexFunc(s.Nodes, func(n Node) bool { return n.ID == "workload:shop/web" })
			if i < 0 {
				t.Fatalf("no node workload:shop/web in %+v", s.Nodes)
			}
			n := s.Nodes[i]
			if n.Image != tc.wantImage || n.Zone != tc.wantZone || !maps.Equal(n.Labels, tc.wantLabels) {
				t.Errorf("node: image %q, zone %q, labels %v; want %q, %q, %v", n.Image, n.Zone, n.Labels, tc.wantImage, tc.wantZone, tc.wantLabels)
			}
		})
	}
	if a.Labels["tier"] != "front" || b.Labels["tier"] != "back" || len(a.Labels) != 3 {
		t.Errorf("the endpoints' labels changed: %v, %v", a.Labels, b.Labels)
	}
}

// TestSnapshotMachineZone checks that an endpoint without a zone label is
// in its machine's zone, at every level.
func TestSnapshotMachineZone(t *testing.T) {
	g := New(Options{})
	g.Add(t0, flow(web1, api1, model.ProtoTCP, 8080, 100, 100, 0), flow(n1, web1, model.ProtoTCP, 8080, 100, 100, 0))
	for _, l := range Levels {
		s := g.Snapshot(t0, l, time.Minute)
		for _, n := range s.Nodes {
			if n.Zone != "zone-a" {
				t.Errorf("level %s: node %s in zone %q, want n1's zone-a", l, n.ID, n.Zone)
			}
		}
	}
}

// steppingClock is a wall clock that an operator or NTP steps, beside a
// monotonic clock that only advances: the times it makes are wall-clock
// times, and since reads the monotonic distance between two of them, as
// time.Time.Sub does between two readings of time.Now.
type steppingClock struct {
	wall time.Time
	mono time.Duration
	at   map[time.Time]time.Duration
}

func newSteppingClock() *steppingClock {
	return &steppingClock{wall: t0, at: map[time.Time]time.Duration{}}
}

func (c *steppingClock) now() time.Time {
	c.at[c.wall] = c.mono
	return c.wall
}

func (c *steppingClock) advance(d time.Duration) { c.wall, c.mono = c.wall.Add(d), c.mono+d }
func (c *steppingClock) step(d time.Duration)    { c.wall = c.wall.Add(d) }

func (c *steppingClock) since(t, anchor time.Time) time.Duration {
	m, ok1 := c.at[t]
	a, ok2 := c.at[anchor]
	if !ok1 || !ok2 {
		panic("steppingClock: a time it did not make")
	}
	return m - a
}

// TestClockStep checks that the graph's buckets follow the monotonic
// clock: a step of the wall clock forward does not age the graph out, and
// one backward does not pile later flows into the newest bucket.
func TestClockStep(t *testing.T) {
	for _, tc := range []struct {
		name string
		step time.Duration
	}{
		{"forward 2h", 2 * time.Hour},
		{"backward 1h", -time.Hour},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newSteppingClock()
			g := New(Options{})
			g.since = c.since
			// A flow of 1 byte each way every 10s for 2 minutes, the step,
			// then 2 more minutes of them.
			add := func() {
				for range 12 {
					g.Add(c.now(), flow(web1, api1, model.ProtoTCP, 8080, 1, 1, 0))
					c.advance(10 * time.Second)
				}
			}
			add()
			c.step(tc.step)
			add()
			s := g.Snapshot(c.now(), LevelContainer, 5*time.Minute)
			if got, want := bytesOf(s, "container:c-web-1", "container:c-api-1"), uint64(2*24); got != want {
				t.Errorf("web-1 → api-1 over the last 5m after a step of %v: %d bytes, want %d (every flow)", tc.step, got, want)
			}
			// 24 flows 10s apart: 4 minutes, in 10s buckets for the last
			// minute and 1m ones before.
			if got := g.Stats().Buckets; got < 6 {
				t.Errorf("after a step of %v: %d buckets, want at least 6 (4 minutes of flows)", tc.step, got)
			}
			if got, want := s.Window.End, c.wall.UTC(); !got.Equal(want) {
				t.Errorf("window end = %v, want now on the stepped wall clock %v", got, want)
			}
			if len(s.Edges) == 1 {
				if got, want := s.Edges[0].LastSeen, c.wall.Add(-10*time.Second).UTC(); !got.Equal(want) {
					t.Errorf("last seen = %v, want %v: the last flow's time on the stepped wall clock", got, want)
				}
			}
		})
	}
}
