package main

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/netip"
	"strconv"
	"testing"
	"time"

	"github.com/flowmap/flowmap/internal/cluster"
	"github.com/flowmap/flowmap/internal/testenv"
	"github.com/flowmap/flowmap/model"
	"github.com/flowmap/flowmap/server"
)

// TestAgentNAT: a pod masqueraded to the outside by its node. Its request
// is counted at its veth before the translation, the reply at the node's
// uplink before the reverse one; conntrack joins them: one flow, pod to
// outside, with the bytes of both ways.
func TestAgentNAT(t *testing.T) {
	testenv.MustBeRoot(t)
	testenv.MustHaveBTF(t)
	testenv.MustHaveCommand(t, "go")
	iptables := testenv.MustHaveCommand(t, "iptables")
	if err := cluster.Cleanup("fmn"); err != nil {
		t.Fatal(err)
	}
	c := cluster.NewT(t, cluster.Options{Prefix: "fmn", Nodes: []int{1}, Outside: true})
	node, pod, out := c.Nodes[0], c.Nodes[0].Pods[0], c.Out
	// In the node's namespace only: removed with it.
	if b, err := node.Command(t.Context(), iptables, "-t", "nat", "-A", "POSTROUTING", "-s", node.Subnet.String(),
		"-d", out.Addr.String(), "-j", "MASQUERADE").CombinedOutput(); err != nil {
		t.Fatalf("masquerade in %s: %v\n%s", node.NetNS, err, b)
	}
	creds := newAgentCreds(t) // on the node's address: TLS and a token
	startNodeAgent(t, buildFlowmap(t), node, nil, creds)
	creds.waitReady(t, net.JoinHostPort(node.Addr.String(), "9477"), 30*time.Second)
	api := "https://" + net.JoinHostPort(node.Addr.String(), "9477")

	const up, down = 200_000, 30_000
	ln, err := out.Listen("tcp4", out.Addr.String()+":0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	seen := make(chan netip.AddrPort, 1)
	downRetrans := make(chan uint64, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		seen <- c.RemoteAddr().(*net.TCPAddr).AddrPort()
		io.CopyN(io.Discard, c, up)
		c.Write(make([]byte, down))
		io.Copy(io.Discard, c) // until the client closes: the reply is all acknowledged
		downRetrans <- testenv.TCPRetransmitted(c.(*net.TCPConn))
	}()
	port := ln.Addr().(*net.TCPAddr).Port
	conn, err := pod.Dial("tcp4", out.Addr.String()+":"+strconv.Itoa(port))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Write(make([]byte, up)); err != nil {
		t.Fatal(err)
	}
	if n, err := io.CopyN(io.Discard, conn, down); err != nil || n != down {
		t.Fatalf("read %d of %d reply bytes: %v", n, down, err)
	}
	// A segment dropped on a busy machine is sent, and counted, twice.
	upRetrans := testenv.TCPRetransmitted(conn.(*net.TCPConn))
	conn.Close()
	if from := <-seen; from.Addr() != node.Addr {
		t.Fatalf("the outside saw the client at %s, want the node's %s: no masquerade", from.Addr(), node.Addr)
	}
	downRe := <-downRetrans

	// The agent keeps 12 intervals of 500ms: look for 5s, and keep what
	// was last seen.
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	var recs []model.Record
	for ctx.Err() == nil {
		var doc server.FlowsDoc
		resp, err := creds.client.Get(api + "/api/v1/flows?last=12")
		if err == nil {
			err = json.NewDecoder(resp.Body).Decode(&doc)
			resp.Body.Close()
		}
		if err != nil {
			t.Fatalf("get flows: %v", err)
		}
		var now []model.Record
		for _, r := range doc.Flows {
			if r.Proto == model.ProtoTCP && (r.DstPort == uint16(port) || r.SrcPort == uint16(port)) {
				now = append(now, r)
			}
		}
		if len(now) > 0 {
			recs = now
		}
		if len(recs) == 1 && recs[0].Reverse.Bytes >= down && recs[0].Forward.Bytes >= up {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if len(recs) != 1 {
		t.Fatalf("%d records of the connection, want 1 (both directions joined): %+v", len(recs), recs)
	}
	r := recs[0]
	if r.Src != pod.Addr || r.Dst != out.Addr || r.DstPort != uint16(port) {
		t.Errorf("flow %s:%d → %s:%d, want %s → %s:%d (the pod's own tuple)", r.Src, r.SrcPort, r.Dst, r.DstPort, pod.Addr, out.Addr, port)
	}
	// Payload, retransmitted bytes, and 66 bytes of headers a packet.
	if want := up + upRetrans + r.Forward.Packets*66; !within(r.Forward.Bytes, want, 0.01) {
		t.Errorf("forward bytes = %d, want %d ±1%% (%d retransmitted)", r.Forward.Bytes, want, upRetrans)
	}
	if want := down + downRe + r.Reverse.Packets*66; !within(r.Reverse.Bytes, want, 0.01) {
		t.Errorf("reverse bytes = %d, want %d ±1%% (%d retransmitted)", r.Reverse.Bytes, want, downRe)
	}
}

func within(got, want uint64, frac float64) bool {
	d := float64(got) - float64(want)
	return d <= frac*float64(want) && -d <= frac*float64(want)
}
