package main

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/flowmap/flowmap/internal/cluster"
	"github.com/flowmap/flowmap/internal/testenv"
	"github.com/flowmap/flowmap/topology"
)

// clusterWindow is the window of the cluster graph in TestCluster: short,
// to see a dead agent's edges age out within the test.
const clusterWindow = 30 * time.Second

// TestCluster runs a cluster in a box (internal/cluster: three nodes with
// their own agents, an outside client) and one Prometheus scraping every
// agent over the underlay. `flowmap graph --prometheus` shows every edge
// once, at the wire bytes that were sent, with the node each end runs on;
// a restarted agent's counters do not show as a spike; a dead agent's
// edges age out with the window while the others stay exact.
func TestCluster(t *testing.T) {
	testenv.MustBeRoot(t)
	promBin := testenv.MustHaveCommand(t, "prometheus")
	testenv.MustHaveCommand(t, "ip")
	testenv.MustHaveCommand(t, "dot")
	testenv.MustHaveCommand(t, "go")
	bin := buildGraphBinary(t)
	c := cluster.NewT(t, cluster.Options{Prefix: "fmk", Nodes: []int{2, 2, 1}, Outside: true})
	n1, n2, n3 := c.Nodes[0], c.Nodes[1], c.Nodes[2]
	a, b, cc, d, e := n1.Pods[0], n1.Pods[1], n2.Pods[0], n2.Pods[1], n3.Pods[0]

	// The cluster's pods and nodes: clients there are their own node's to
	// report.
	cidrs := []string{cluster.DefaultPods.String()}
	for _, n := range c.Nodes {
		cidrs = append(cidrs, n.Addr.String()+"/32")
	}
	agents := map[*cluster.Node]*nodeAgent{}
	var targets []string
	creds := newAgentCreds(t) // on the nodes' addresses: TLS and a token
	for _, n := range c.Nodes {
		agents[n] = startNodeAgent(t, bin, n, cidrs, creds)
		targets = append(targets, n.Addr.String()+":9477")
	}
	for _, n := range c.Nodes {
		creds.waitReady(t, n.Addr.String()+":9477", 30*time.Second)
	}
	prom := startClusterPrometheus(t, promBin, targets, creds)
	eventually(t, 30*time.Second, "every agent scraped", func() (bool, string) {
		v, ok := promScalar(t, prom, `count(up{job="flowmap"} == 1)`)
		return ok && v == 3, fmt.Sprintf("%v agents up", v)
	})

	// Servers: each answers what the client sends with reply bytes.
	const up, down = 200 << 10, 20 << 10
	retrans := &retransmitted{m: map[retransKey][2]uint64{}}
	for _, s := range []*cluster.Pod{a, b, cc, d, e} {
		for _, port := range []string{"8080", "9000"} {
			servePod(t, retrans, s, port, down)
		}
	}
	type edge struct {
		client, server *cluster.NS
		port           uint16
		// clientNode and serverNode run them; reporter reports the edge.
		clientNode, serverNode string
		reporter               string
	}
	edges := []edge{
		{&a.NS, &b.NS, 8080, "n1", "n1", "client"},  // within n1
		{&cc.NS, &d.NS, 8080, "n2", "n2", "client"}, // within n2
		{&a.NS, &cc.NS, 8080, "n1", "n2", "client"}, // n1 → n2
		{&d.NS, &b.NS, 9000, "n2", "n1", "client"},  // n2 → n1
		{&e.NS, &a.NS, 8080, "n3", "n1", "client"},  // n3 → n1
		{&b.NS, &e.NS, 9000, "n1", "n3", "client"},  // n1 → n3
		{c.Out, &d.NS, 9000, "", "n2", "server"},    // outside → n2
	}
	id := func(x edge) string {
		return fmt.Sprintf("unknown:%s -> unknown:%s tcp/%d", x.client.Addr, x.server.Addr, x.port)
	}
	// round sends each edge's traffic: conns connections of up bytes up and
	// down bytes down.
	round := func(conns int, skip func(edge) bool) {
		for _, x := range edges {
			if skip != nil && skip(x) {
				continue
			}
			for range conns {
				exchange(t, retrans, x.client, x.server.Addr.String(), x.port, up)
			}
		}
	}
	graphOf := func(level string) *topology.Snapshot {
		t.Helper()
		out := graphProm(t, bin, prom, level, clusterWindow.String(), "json")
		s, err := topology.ReadJSON(bytes.NewReader(out))
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	// check waits until the graph has the edges of want, each at the
	// wire bytes of conns connections, and none of the others.
	check := func(what string, want map[string]int, conns int) *topology.Snapshot {
		t.Helper()
		var s *topology.Snapshot
		eventually(t, 20*time.Second, what, func() (bool, string) {
			s = graphOf("container")
			var msgs []string
			for _, x := range edges {
				got, ok := findEdge(s, id(x))
				n, wanted := want[id(x)]
				switch {
				case !wanted && ok:
					msgs = append(msgs, fmt.Sprintf("%s: in the graph, want it gone", id(x)))
				case wanted && !ok:
					msgs = append(msgs, fmt.Sprintf("%s: not in the graph", id(x)))
				case wanted:
					if m := wireMismatch(got, n*up, n*down, n, retrans.get(x.client.Addr, x.server.Addr, x.port)); m != "" {
						msgs = append(msgs, id(x)+": "+m)
					}
				}
			}
			return len(msgs) == 0, strings.Join(msgs, "; ")
		})
		return s
	}
	all := func(n int) map[string]int {
		m := map[string]int{}
		for _, x := range edges {
			m[id(x)] = n
		}
		return m
	}

	// Round 1: 3 connections on every edge.
	round(3, nil)
	s := check("every edge once, at the bytes sent", all(3), 3)
	nodes := map[string]topology.Node{}
	for _, n := range s.Nodes {
		nodes[n.ID] = n
	}
	for _, x := range edges {
		for _, end := range []struct {
			ns   *cluster.NS
			want string
		}{{x.client, x.clientNode}, {x.server, x.serverNode}} {
			if got := nodes["unknown:"+end.ns.Addr.String()].Host; got != end.want {
				t.Errorf("%s: %s runs on %q, want %q", id(x), end.ns.Name, got, end.want)
			}
		}
		// One series a direction: reported by one node, as the rule says.
		sel := fmt.Sprintf(`flowmap_flow_bytes_total{src=%q,dst=%q,port="%d",direction="forward"}`, x.client.Addr, x.server.Addr, x.port)
		res := promQuery(t, prom, sel)
		wantNode := x.clientNode
		if x.reporter == "server" {
			wantNode = x.serverNode
		}
		if len(res) != 1 || res[0].Metric["node"] != wantNode || res[0].Metric["reporter"] != x.reporter {
			t.Errorf("%s: series %v, want one from node %s, reporter %s", sel, res, wantNode, x.reporter)
		}
	}
	measureSeries(t, prom, len(edges))

	t.Run("formats", func(t *testing.T) {
		for _, f := range []string{"dot", "svg", "png", "table"} {
			out := graphProm(t, bin, prom, "container", clusterWindow.String(), f)
			want := map[string]string{"dot": `"unknown:` + a.Addr.String() + `"`, "svg": "<svg", "png": "\x89PNG", "table": a.Addr.String()}[f]
			if !bytes.Contains(out, []byte(want)) {
				t.Errorf("--format %s wrote %.200q…, want it to hold %q", f, out, want)
			}
		}
		// Host level: the nodes, from where each end runs.
		s := graphOf("host")
		var ids []string
		for _, e := range s.Edges {
			ids = append(ids, e.ID)
		}
		for _, want := range []string{"host:n1 -> host:n2 tcp/8080", "host:n1 -> host:n1 tcp/8080", "host:n3 -> host:n1 tcp/8080"} {
			if _, ok := findEdge(s, want); !ok {
				t.Errorf("host level: no edge %s in %q", want, ids)
			}
		}
	})

	// Restart n2's agent: its counters start again from zero, within the
	// window. Round 2 adds 2 connections an edge.
	agents[n2].stop(t)
	agents[n2] = startNodeAgent(t, bin, n2, cidrs, creds)
	creds.waitReady(t, n2.Addr.String()+":9477", 30*time.Second)
	round(2, nil)
	// increase() extrapolates the restarted series to the window's ends, by
	// up to a scrape interval at each; the others are exact.
	eventually(t, 20*time.Second, "no spike from the restarted agent", func() (bool, string) {
		s := graphOf("container")
		var msgs []string
		for _, x := range edges {
			got, ok := findEdge(s, id(x))
			if !ok {
				msgs = append(msgs, id(x)+": not in the graph")
				continue
			}
			tol := 0.01
			if x.clientNode == "n2" || x.reporter == "server" {
				tol = 0.1
			}
			if m := wireMismatchTol(got, 5*up, 5*down, 5, tol, retrans.get(x.client.Addr, x.server.Addr, x.port)); m != "" {
				msgs = append(msgs, id(x)+": "+m)
			}
		}
		return len(msgs) == 0, strings.Join(msgs, "; ")
	})

	// Kill n3's agent. Round 3, after it: 1 connection an edge. Once the
	// window is past its last scrape, its edges (clients on n3) are gone and
	// the others count round 3 alone, exactly.
	killed := time.Now()
	agents[n3].stop(t)
	time.Sleep(2 * time.Second)
	round(1, nil)
	time.Sleep(time.Until(killed.Add(clusterWindow + time.Second)))
	want := all(1)
	for _, x := range edges {
		if x.clientNode == "n3" {
			delete(want, id(x))
		}
	}
	check("n3's edges gone, the others at round 3's bytes", want, 1)
}

// nodeAgent is an agent run in a node's namespace.
type nodeAgent struct {
	cmd  *exec.Cmd
	done chan error
	out  *bytes.Buffer
}

func startNodeAgent(t *testing.T, bin string, n *cluster.Node, cidrs []string, creds *agentCreds) *nodeAgent {
	t.Helper()
	p := &nodeAgent{done: make(chan error, 1), out: &bytes.Buffer{}}
	// Ends named by address (no inventory): this test is about counting
	// and reporting once; naming has its own tests in enrich.
	args := append([]string{"agent", "--listen=" + n.Addr.String() + ":9477", "--node-name=" + n.Name,
		"--no-inventory", "--interval=500ms", "--metrics-level=container", "--cluster-cidrs=" + strings.Join(cidrs, ",")}, creds.args()...)
	p.cmd = n.Command(t.Context(), bin, args...)
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start agent on %s: %v", n.Name, err)
	}
	go func() { p.done <- p.cmd.Wait() }()
	t.Cleanup(func() {
		p.stop(t)
		if t.Failed() {
			t.Logf("agent on %s:\n%s", n.Name, p.out)
		}
	})
	return p
}

// stop ends the agent by its PID: SIGTERM, then SIGKILL after 10s. It is
// safe to call twice.
func (p *nodeAgent) stop(t *testing.T) {
	if p.cmd.ProcessState != nil {
		return
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		p.cmd.Process.Kill()
		<-p.done
	}
}

// startClusterPrometheus starts Prometheus scraping the agents (over TLS,
// with a token) and itself every second, and returns its base URL.
func startClusterPrometheus(t *testing.T, bin string, targets []string, creds *agentCreds) string {
	t.Helper()
	dir := t.TempDir()
	addr := freeAddr(t)
	cfg := fmt.Sprintf(`global: {scrape_interval: 1s, evaluation_interval: 1s}
scrape_configs:
  - job_name: flowmap
    %s
    static_configs: [{targets: ["%s"]}]
  - job_name: prometheus
    static_configs: [{targets: [%q]}]
`, creds.promConfig(), strings.Join(targets, `", "`), addr)
	path := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	startProcess(t, "prometheus", bin, "--config.file="+path, "--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+addr)
	u := "http://" + addr
	waitHTTP(t, u+"/-/ready", 30*time.Second)
	return u
}

// servePod answers each connection to s:port: it reads until the client
// closes its side, then writes down bytes.
func servePod(t *testing.T, retrans *retransmitted, s *cluster.Pod, port string, down int) {
	t.Helper()
	ln, err := s.Listen("tcp4", s.Addr.String()+":"+port)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.Copy(io.Discard, c)
				c.Write(make([]byte, down))
				// Before the close: retransmits of the reply.
				from := c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr()
				local := c.LocalAddr().(*net.TCPAddr).AddrPort()
				retrans.add(from, local.Addr(), local.Port(), 1, testenv.TCPRetransmitted(c.(*net.TCPConn)))
			}()
		}
	}()
}

// exchange sends up bytes from the namespace to addr:port and reads the
// reply to the end.
func exchange(t *testing.T, retrans *retransmitted, from *cluster.NS, addr string, port uint16, up int) {
	t.Helper()
	c, err := from.Dial("tcp4", net.JoinHostPort(addr, fmt.Sprint(port)))
	if err != nil {
		t.Fatalf("%s → %s:%d: %v", from.Name, addr, port, err)
	}
	defer c.Close()
	if _, err := c.Write(make([]byte, up)); err != nil {
		t.Fatal(err)
	}
	c.(*net.TCPConn).CloseWrite()
	if _, err := io.Copy(io.Discard, c); err != nil {
		t.Fatal(err)
	}
	local := c.LocalAddr().(*net.TCPAddr).AddrPort().Addr()
	retrans.add(local, netip.MustParseAddr(addr), port, 0, testenv.TCPRetransmitted(c.(*net.TCPConn)))
}

// retransmitted counts the bytes TCP retransmitted on each edge (client,
// server, port), forward and reverse, over the whole test: a segment
// dropped on this busy machine is sent, and counted, twice. The byte
// checks allow for them, and only for them.
type retransmitted struct {
	mu sync.Mutex
	m  map[retransKey][2]uint64
}

type retransKey struct {
	client, server netip.Addr
	port           uint16
}

func (r *retransmitted) add(client, server netip.Addr, port uint16, dir int, n uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	k := retransKey{client, server, port}
	v := r.m[k]
	v[dir] += n
	r.m[k] = v
}

func (r *retransmitted) get(client, server netip.Addr, port uint16) [2]uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.m[retransKey{client, server, port}]
}

// tcpHeaders is the bytes each packet adds on the wire: Ethernet, IPv4 and
// TCP with timestamps (the SYN's more options are within the tolerance).
const tcpHeaders = 14 + 20 + 32

func wireMismatch(e topology.Edge, up, down, conns int, extra [2]uint64) string {
	return wireMismatchTol(e, up, down, conns, 0.01, extra)
}

// wireMismatchTol says how the edge's counts differ from conns connections
// of up and down payload bytes, as wire bytes (payload and each packet's
// headers) within tol, or "". extra is what TCP retransmitted each way in
// the whole test: the bytes may exceed the payload by up to that much.
func wireMismatchTol(e topology.Edge, up, down, conns int, tol float64, extra [2]uint64) string {
	var msgs []string
	for i, d := range []struct {
		name    string
		got     topology.Traffic
		payload int
	}{{"forward", e.Forward, up}, {"reverse", e.Reverse, down}} {
		want := float64(d.payload) + float64(d.got.Packets)*tcpHeaders
		// At least the payload in full-sized segments, and a handshake.
		if d.got.Packets < uint64(d.payload/65536+2*conns) {
			msgs = append(msgs, fmt.Sprintf("%s %d packets, too few for %d B", d.name, d.got.Packets, d.payload))
		}
		if diff := float64(d.got.Bytes) - want; diff < -tol*want || diff > tol*want+float64(extra[i]) {
			msgs = append(msgs, fmt.Sprintf("%s %d B, want %.0f (%d B payload + %d packets × %d) ±%.0f%% (+ up to %d B retransmitted)",
				d.name, d.got.Bytes, want, d.payload, d.got.Packets, tcpHeaders, tol*100, extra[i]))
		}
	}
	if e.Connections != uint64(conns) && tol <= 0.01 {
		msgs = append(msgs, fmt.Sprintf("%d connections, want %d", e.Connections, conns))
	}
	return strings.Join(msgs, ", ")
}

// graphProm runs flowmap graph --prometheus and returns what it wrote.
func graphProm(t *testing.T, bin, prom, level, window, format string) []byte {
	t.Helper()
	cmd := exec.Command(bin, "graph", "--prometheus", prom, "--selector", `job="flowmap"`,
		"--level", level, "--window", window, "--format", format)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("flowmap graph --prometheus --format %s: %v\n%s", format, err, errb.String())
	}
	return out.Bytes()
}

// measureSeries logs what the scale estimate (docs/scale.md) is made of:
// the series each edge has, and Prometheus' series and memory.
func measureSeries(t *testing.T, prom string, edges int) {
	t.Helper()
	time.Sleep(3 * time.Second) // a scrape of Prometheus itself after the flows
	flowSeries, _ := promScalar(t, prom, `count({job="flowmap",__name__=~"flowmap_flow_.*_total|flowmap_tcp_.*",src!=""})`)
	agentSeries, _ := promScalar(t, prom, `count({job="flowmap"})`)
	perAgent, _ := promScalar(t, prom, `count({job="flowmap"}) / count(up{job="flowmap"})`)
	head, _ := promScalar(t, prom, `prometheus_tsdb_head_series`)
	rss, _ := promScalar(t, prom, `process_resident_memory_bytes{job="prometheus"}`)
	samples, _ := promScalar(t, prom, `rate(prometheus_tsdb_head_samples_appended_total[10s])`)
	t.Logf("scale: %d edges, %.0f flow series (%.1f an edge); %.0f series from agents (%.0f an agent); Prometheus: %.0f head series, %.1f MiB resident, %.0f samples/s",
		edges, flowSeries, flowSeries/float64(edges), agentSeries, perAgent, head, rss/(1<<20), samples)
}
