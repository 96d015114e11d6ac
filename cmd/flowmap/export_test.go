package main

import (
	"encoding/json"
	"syscall"
	"testing"
	"time"

	"github.com/flowmap/flowmap/internal/collector"
	"github.com/flowmap/flowmap/internal/nfcapd"
	"github.com/flowmap/flowmap/internal/sandbox"
	"github.com/flowmap/flowmap/internal/testenv"
	"github.com/flowmap/flowmap/model"
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
// agent's own JSON says of the flow.
func TestExport(t *testing.T) {
	testenv.MustBeRoot(t)
	testenv.MustHaveBTF(t)
	testenv.MustHaveCommand(t, "go")
	if err := sandbox.Cleanup("fmx"); err != nil {
		t.Fatal(err)
	}
	col := collector.Start(t)
	nf := nfcapd.Start(t)
	sb := sandbox.NewT(t, sandbox.Options{Prefix: "fmx", Subnet: cmdSubnet})
	a, b := addHost(t, sb, "a"), addHost(t, sb, "b")
	p := startAgent(t, buildFlowmap(t), "--interfaces", "fmx-*", "--keep", "100000", "--node-name", "node-x",
		"--export-otlp", "grpc://"+col.GRPC, "--export-ipfix", "udp://"+nf.Addr)

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
			t.Errorf("the collector's %d records of the flow sum to bytes/packets forward %d/%d reverse %d/%d, want the agent's %d/%d and %d/%d",
				n, got.fb, got.fp, got.rb, got.rp, wantSums.fb, wantSums.fp, wantSums.rb, wantSums.rp)
		}
	})
}
