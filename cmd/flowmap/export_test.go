package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/flowmap/flowmap/internal/collector"
	"github.com/flowmap/flowmap/internal/nfcapd"
	"github.com/flowmap/flowmap/internal/sandboxtest"
	"github.com/flowmap/flowmap/internal/testenv"
	"github.com/flowmap/flowmap/model"
	"github.com/flowmap/flowmap/sandbox"
	"github.com/flowmap/flowmap/server"
)

// flowsDoc returns the agent's /api/v1/flows over all the intervals it
// keeps.
func (p *agentProc) flowsDoc(t *testing.T) server.FlowsDoc {
	t.Helper()
	var doc server.FlowsDoc
	if err := json.Unmarshal([]byte(p.get(t, "/api/v1/flows?last=100000")), &doc); err != nil {
		t.Fatalf("decode /api/v1/flows: %v", err)
	}
	return doc
}

// TestExport runs the agent on a sandbox with both exporters, to a real
// OpenTelemetry Collector over gRPC and to Debian's nfcapd over UDP: the
// records of a TCP flow between two namespaces arrive in each with the
// flow's tuple, and their bytes and packets, each way, sum to what the
// agent's own JSON says of the flow; the collector's last edge series of
// the flow's edge (its server port is the flow's alone) count as much.
func TestExport(t *testing.T) {
	testenv.MustBeRoot(t)
	testenv.MustHaveBTF(t)
	testenv.MustHaveCommand(t, "go")
	if err := sandbox.Cleanup("fmx"); err != nil {
		t.Fatal(err)
	}
	col := collector.Start(t)
	nf := nfcapd.Start(t)
	sb := sandboxtest.New(t, sandbox.Options{Prefix: "fmx", Subnet: cmdSubnet})
	a, b := addHost(t, sb, "a"), addHost(t, sb, "b")
	p := startAgent(t, buildFlowmap(t), "--interfaces", "fmx-*", "--keep", "100000", "--node-name", "node-x",
		"--export-otlp", "grpc://"+col.GRPC, "--export-otlp-metrics-interval", "200ms", "--export-ipfix", "udp://"+nf.Addr)

	port, _ := sendTo(t, a, b, 300_000)
	key := model.Key{Src: a.Addr, Dst: b.Addr, Proto: model.ProtoTCP, DstPort: port}
	// The connection is closed: two drains later the agent has counted
	// all of it.
	n0 := p.flowsDoc(t).Intervals
	deadline := time.Now().Add(10 * time.Second)
	for p.flowsDoc(t).Intervals < n0+2 {
		if time.Now().After(deadline) {
			t.Fatal("the agent drained no two intervals in 10s")
		}
		time.Sleep(50 * time.Millisecond)
	}
	var want *model.Record
	for _, r := range p.flowsDoc(t).Flows {
		if r.Src == key.Src && r.Dst == key.Dst && r.Proto == key.Proto && r.DstPort == key.DstPort {
			want = &r
		}
	}
	if want == nil {
		t.Fatalf("flow %s → %s:%d not in /api/v1/flows", a.Addr, b.Addr, port)
	}
	key.SrcPort = want.SrcPort
	// The agent sends what its queues hold before it exits.
	if err := p.stop(t, syscall.SIGTERM); err != nil {
		t.Fatalf("agent exit after SIGTERM: %v, want 0", err)
	}
	type sums struct{ fb, fp, rb, rp uint64 }
	wantSums := sums{want.Forward.Bytes, want.Forward.Packets, want.Reverse.Bytes, want.Reverse.Packets}

	t.Run("ipfix", func(t *testing.T) {
		var got sums
		var n int
		for _, r := range nf.Records(t) {
			if r.Key() == key {
				n++
				got.fb, got.fp, got.rb, got.rp = got.fb+r.InBytes, got.fp+r.InPkts, got.rb+r.OutBytes, got.rp+r.OutPkts
			}
		}
		if n == 0 {
			t.Fatalf("nfdump read no record of %v", key)
		}
		if got != wantSums {
			t.Errorf("nfdump's %d records of the flow sum to bytes/packets forward %d/%d reverse %d/%d, want the agent's %d/%d and %d/%d",
				n, got.fb, got.fp, got.rb, got.rp, wantSums.fb, wantSums.fp, wantSums.rb, wantSums.rp)
		}
	})
	t.Run("otlp", func(t *testing.T) {
		col.Stop(t)
		var got sums
		var n int
		for _, r := range col.Logs(t) {
			if r.Attrs["source.address"] != key.Src.String() || r.Attrs["destination.address"] != key.Dst.String() ||
				r.Attrs["source.port"] != int64(key.SrcPort) || r.Attrs["destination.port"] != int64(key.DstPort) {
				continue
			}
			n++
			for k, v := range map[string]any{"network.transport": "tcp", "network.type": "ipv4", "flowmap.sampling.rate": int64(1),
				"flowmap.source.kind": "netns", "flowmap.source.name": a.NetNS, "flowmap.destination.name": b.NetNS,
				"flowmap.source.interface": a.HostIf} {
				if r.Attrs[k] != v {
					t.Errorf("record's %s = %v, want %v", k, r.Attrs[k], v)
				}
			}
			for k, v := range map[string]any{"service.name": "flowmap", "k8s.node.name": "node-x"} {
				if r.Resource[k] != v {
					t.Errorf("resource's %s = %v, want %v", k, r.Resource[k], v)
				}
			}
			add := func(s *uint64, k string) { v, _ := r.Attrs[k].(int64); *s += uint64(v) }
			add(&got.fb, "flowmap.forward.bytes")
			add(&got.fp, "flowmap.forward.packets")
			add(&got.rb, "flowmap.reverse.bytes")
			add(&got.rp, "flowmap.reverse.packets")
		}
		if n == 0 {
			t.Fatalf("the collector got no record of %v", key)
		}
		if got != wantSums {
			t.Errorf("the collector's %d log records of the flow sum to bytes/packets forward %d/%d reverse %d/%d, want the agent's %d/%d and %d/%d",
				n, got.fb, got.fp, got.rb, got.rp, wantSums.fb, wantSums.fp, wantSums.rb, wantSums.rp)
		}
	})
	t.Run("otlp metrics", func(t *testing.T) {
		lines := col.MetricsJSON(t)
		var fwd, rev int64
		var points int
		// The last request with the edge: the agent sends the series
		// once more as it stops.
		for _, line := range lines {
			var req struct {
				ResourceMetrics []struct {
					ScopeMetrics []struct {
						Metrics []struct {
							Name string `json:"name"`
							Sum  struct {
								DataPoints []struct {
									Attributes []struct {
										Key   string `json:"key"`
										Value struct {
											StringValue string `json:"stringValue"`
										} `json:"value"`
									} `json:"attributes"`
									AsInt string `json:"asInt"`
								} `json:"dataPoints"`
							} `json:"sum"`
						} `json:"metrics"`
					} `json:"scopeMetrics"`
				} `json:"resourceMetrics"`
			}
			if err := json.Unmarshal(line, &req); err != nil {
				t.Fatalf("decode the collector's metrics: %v", err)
			}
			var f, r int64
			var n int
			for _, rm := range req.ResourceMetrics {
				for _, sm := range rm.ScopeMetrics {
					for _, m := range sm.Metrics {
						if m.Name != "flowmap.flow.bytes" {
							continue
						}
						for _, p := range m.Sum.DataPoints {
							a := map[string]string{}
							for _, kv := range p.Attributes {
								a[kv.Key] = kv.Value.StringValue
							}
							if a["proto"] != "tcp" || a["port"] != strconv.Itoa(int(key.DstPort)) {
								continue
							}
							v, _ := strconv.ParseInt(p.AsInt, 10, 64)
							n++
							if a["direction"] == "forward" {
								f += v
							} else {
								r += v
							}
						}
					}
				}
			}
			if n > 0 {
				fwd, rev, points = f, r, n
			}
		}
		if points == 0 {
			t.Fatalf("no flowmap.flow.bytes point of the edge to port %d among %d requests", key.DstPort, len(lines))
		}
		if uint64(fwd) != wantSums.fb || uint64(rev) != wantSums.rb {
			t.Errorf("the edge's flowmap.flow.bytes = %d forward, %d reverse, want the agent's %d and %d", fwd, rev, wantSums.fb, wantSums.rb)
		}
	})

}

// metric returns the value of the series line of /metrics that starts
// with series (name and labels), -1 if there is none.
func metric(metrics, series string) float64 {
	for _, l := range strings.Split(metrics, "\n") {
		if v, ok := strings.CutPrefix(l, series+" "); ok {
			f, _ := strconv.ParseFloat(v, 64)
			return f
		}
	}
	return -1
}

// TestExportCollectorDown: with its collector down the agent keeps
// counting flows, its export queue stays within --export-queue and the
// flows past it are counted as dropped; when the collector comes up, what
// the queue held arrives, and every record counted as sent is there once.
func TestExportCollectorDown(t *testing.T) {
	testenv.MustBeRoot(t)
	testenv.MustHaveBTF(t)
	testenv.MustHaveCommand(t, "go")
	if err := sandbox.Cleanup("fmx"); err != nil {
		t.Fatal(err)
	}
	collector.Binary(t) // built before the agent starts counting
	sb := sandboxtest.New(t, sandbox.Options{Prefix: "fmx", Subnet: cmdSubnet})
	a, b := addHost(t, sb, "a"), addHost(t, sb, "b")
	grpcAddr := freePort(t) // nothing listens there yet
	p := startAgent(t, buildFlowmap(t), "--interfaces", "fmx-*", "--keep", "100000",
		"--export-otlp", "grpc://"+grpcAddr, "--export-queue", "3")

	const otlp = `{exporter="otlp"`
	var ports []uint16
	for range 10 {
		port, _ := sendTo(t, a, b, 10_000)
		ports = append(ports, port)
	}
	// Two drains after the last connection, the agent has counted all.
	n0 := p.flowsDoc(t).Intervals
	deadline := time.Now().Add(10 * time.Second)
	for p.flowsDoc(t).Intervals < n0+2 {
		if time.Now().After(deadline) {
			t.Fatal("the agent drained no two intervals in 10s")
		}
		time.Sleep(50 * time.Millisecond)
	}
	seen := map[uint16]bool{}
	for _, r := range p.flowsDoc(t).Flows {
		if r.Src == a.Addr && r.Dst == b.Addr {
			seen[r.DstPort] = true
		}
	}
	for _, port := range ports {
		if !seen[port] {
			t.Errorf("flow to port %d not in /api/v1/flows while the collector is down", port)
		}
	}
	m := p.get(t, "/metrics")
	if got := metric(m, "flowmap_export_queue_records"+otlp+"}"); got < 0 || got > 3 {
		t.Errorf("flowmap_export_queue_records = %v, want at most --export-queue, 3", got)
	}
	if got := metric(m, "flowmap_export_records_total"+otlp+`,result="dropped_queue_full"}`); got < 7 {
		t.Errorf("dropped_queue_full = %v, want at least 7 of the 10 flows", got)
	}
	if got := metric(m, "flowmap_export_records_total"+otlp+`,result="sent"}`); got != 0 {
		t.Errorf("sent = %v with the collector down, want 0", got)
	}
	if got := metric(m, "flowmap_export_retries_total"+otlp+"}"); got < 1 {
		t.Errorf("flowmap_export_retries_total = %v, want retries", got)
	}
	held := metric(m, "flowmap_export_queue_records"+otlp+"}")

	col := collector.StartAt(t, grpcAddr)
	deadline = time.Now().Add(60 * time.Second)
	for {
		m = p.get(t, "/metrics")
		if metric(m, "flowmap_export_queue_records"+otlp+"}") == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the export queue not empty 60s after the collector came up")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := p.stop(t, syscall.SIGTERM); err != nil {
		t.Fatalf("agent exit after SIGTERM: %v, want 0", err)
	}
	col.Stop(t)
	sent := metric(m, "flowmap_export_records_total"+otlp+`,result="sent"}`)
	recs := col.Logs(t)
	if sent < held {
		t.Errorf("sent = %v after the collector came up, want at least the %v the queue held", sent, held)
	}
	// The agent may have sent more between the scrape and its exit.
	if float64(len(recs)) < sent {
		t.Errorf("the collector got %d records, want the %v the agent counted as sent", len(recs), sent)
	}
	keys := map[string]bool{}
	for _, r := range recs {
		k := fmt.Sprint(r.Attrs["source.address"], r.Attrs["source.port"], r.Attrs["destination.address"], r.Attrs["destination.port"], r.Attrs["flowmap.flow.end_unix_nano"])
		if keys[k] {
			t.Errorf("record %s arrived twice", k)
		}
		keys[k] = true
	}
}

// stallProxy forwards TCP connections to a backend. While stalled it reads
// nothing more from its clients, as a collector too slow to take what it
// is sent: their requests wait in the sockets' buffers, and go on when it
// is released.
type stallProxy struct {
	ln      net.Listener
	backend string
	mu      sync.Mutex
	open    chan struct{} // closed while the proxy forwards
}

func startStallProxy(t *testing.T, backend string) *stallProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &stallProxy{ln: ln, backend: backend, open: make(chan struct{})}
	close(p.open)
	var conns sync.WaitGroup
	t.Cleanup(func() { ln.Close(); p.release(); conns.Wait() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			b, err := net.Dial("tcp", backend)
			if err != nil {
				c.Close()
				continue
			}
			conns.Add(2)
			go func() { // client to backend, held while stalled
				defer conns.Done()
				defer b.Close()
				buf := make([]byte, 32<<10)
				for {
					p.wait()
					n, err := c.Read(buf)
					if n > 0 {
						p.wait()
						if _, err := b.Write(buf[:n]); err != nil {
							return
						}
					}
					if err != nil {
						return
					}
				}
			}()
			go func() { defer conns.Done(); defer c.Close(); io.Copy(c, b) }()
		}
	}()
	return p
}

func (p *stallProxy) addr() string { return p.ln.Addr().String() }

func (p *stallProxy) wait() {
	p.mu.Lock()
	open := p.open
	p.mu.Unlock()
	<-open
}

func (p *stallProxy) stall() {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.open:
		p.open = make(chan struct{})
	default:
	}
}

func (p *stallProxy) release() {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.open:
	default:
		close(p.open)
	}
}

// TestExportCollectorSlow: a real collector behind a proxy that stops
// reading, as a collector too slow to keep up. The agent keeps counting
// (its /api/v1/flows advances), its queue stays within --export-queue,
// the flows past it are counted as dropped and none is counted as sent;
// when the collector reads again, every record the queue held arrives.
// A request the agent gave up on (its deadline passed while the proxy
// held it) may still reach the collector once released: a record may
// arrive twice (README), never not at all.
func TestExportCollectorSlow(t *testing.T) {
	testenv.MustBeRoot(t)
	testenv.MustHaveBTF(t)
	testenv.MustHaveCommand(t, "go")
	if err := sandbox.Cleanup("fmx"); err != nil {
		t.Fatal(err)
	}
	col := collector.Start(t)
	proxy := startStallProxy(t, col.GRPC)
	sb := sandboxtest.New(t, sandbox.Options{Prefix: "fmx", Subnet: cmdSubnet})
	a, b := addHost(t, sb, "a"), addHost(t, sb, "b")
	p := startAgent(t, buildFlowmap(t), "--interfaces", "fmx-*", "--keep", "100000",
		"--export-otlp", "grpc://"+proxy.addr(), "--export-otlp-metrics-interval", "0", "--export-queue", "3")

	const otlp = `{exporter="otlp"`
	waitFor := func(what string, ok func(metrics string) bool) string {
		t.Helper()
		deadline := time.Now().Add(60 * time.Second)
		for {
			m := p.get(t, "/metrics")
			if ok(m) {
				return m
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: not after 60s", what)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	drains := func(n int) {
		t.Helper()
		n0 := p.flowsDoc(t).Intervals
		deadline := time.Now().Add(10 * time.Second)
		for p.flowsDoc(t).Intervals < n0+n {
			if time.Now().After(deadline) {
				t.Fatalf("the agent drained no %d intervals in 10s", n)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	// While the collector keeps up, a flow goes through.
	sendTo(t, a, b, 10_000)
	drains(2)
	waitFor("a first record sent", func(m string) bool {
		return metric(m, "flowmap_export_records_total"+otlp+`,result="sent"}`) >= 1 && metric(m, "flowmap_export_queue_records"+otlp+"}") == 0
	})
	sent0 := metric(p.get(t, "/metrics"), "flowmap_export_records_total"+otlp+`,result="sent"}`)

	proxy.stall()
	var ports []uint16
	for range 10 {
		port, _ := sendTo(t, a, b, 10_000)
		ports = append(ports, port)
	}
	drains(2)
	seen := map[uint16]bool{}
	for _, r := range p.flowsDoc(t).Flows {
		if r.Src == a.Addr && r.Dst == b.Addr {
			seen[r.DstPort] = true
		}
	}
	for _, port := range ports {
		if !seen[port] {
			t.Errorf("flow to port %d not in /api/v1/flows while the collector is slow", port)
		}
	}
	m := p.get(t, "/metrics")
	held := metric(m, "flowmap_export_queue_records"+otlp+"}")
	if held < 1 || held > 3 {
		t.Errorf("flowmap_export_queue_records = %v while the collector is slow, want 1 to --export-queue, 3", held)
	}
	if got := metric(m, "flowmap_export_records_total"+otlp+`,result="dropped_queue_full"}`); got < 7 {
		t.Errorf("dropped_queue_full = %v, want at least 7 of the 10 flows", got)
	}
	if got := metric(m, "flowmap_export_records_total"+otlp+`,result="sent"}`); got != sent0 {
		t.Errorf("sent = %v while the collector is slow, want %v, as before", got, sent0)
	}

	proxy.release()
	m = waitFor("the queue emptied after the collector sped up", func(m string) bool {
		return metric(m, "flowmap_export_queue_records"+otlp+"}") == 0
	})
	sent := metric(m, "flowmap_export_records_total"+otlp+`,result="sent"}`)
	if sent < sent0+held {
		t.Errorf("sent = %v after the collector sped up, want at least %v before and the %v the queue held", sent, sent0, held)
	}
	if got := metric(m, "flowmap_export_records_total"+otlp+`,result="failed"}`); got != 0 {
		t.Errorf("failed = %v, want 0", got)
	}
	if err := p.stop(t, syscall.SIGTERM); err != nil {
		t.Fatalf("agent exit after SIGTERM: %v, want 0", err)
	}
	col.Stop(t)
	keys := map[string]int{}
	for _, r := range col.Logs(t) {
		keys[fmt.Sprint(r.Attrs["source.address"], r.Attrs["source.port"], r.Attrs["destination.address"], r.Attrs["destination.port"], r.Attrs["flowmap.flow.end_unix_nano"])]++
	}
	// The agent may have sent more between the scrape and its exit.
	if float64(len(keys)) < sent {
		t.Errorf("the collector got %d distinct records, want at least the %v the agent counted as sent", len(keys), sent)
	}
	for k, n := range keys {
		if n > 1 {
			t.Logf("record %s arrived %d times: a request given up on, then taken", k, n)
		}
	}
}
