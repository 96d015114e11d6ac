//go:build k8s

package k8sbox

import (
	"context"
	"fmt"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/flowmap/flowmap/model"
	"github.com/flowmap/flowmap/topology"
)

// echo is a Deployment of two fmtool servers behind a ClusterIP Service,
// port 80 to their 8080.
var echo = `apiVersion: apps/v1
kind: Deployment
metadata: {name: echo, namespace: apps}
spec:
  replicas: 2
  selector: {matchLabels: {app: echo}}
  template:
    metadata: {labels: {app: echo}}
    spec:` + podSpec + `
---
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: apps}
spec:
  selector: {app: echo}
  ports: [{port: 80, targetPort: 8080}]
`

// poll calls check until it finds no problems, or a minute passed (the
// agent drains every 5 s), and fails t with its last problems.
func poll(t *testing.T, ctx context.Context, check func() []string) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		problems := check()
		if len(problems) == 0 {
			return
		}
		if time.Now().After(deadline) {
			for _, p := range problems {
				t.Error(p)
			}
			return
		}
		select {
		case <-ctx.Done():
			t.Fatal(ctx.Err())
		case <-time.After(time.Second):
		}
	}
}

// backendsProgrammed waits until kube-proxy's iptables rules send the
// Service ns/name to n endpoints.
func backendsProgrammed(t *testing.T, ctx context.Context, svc string, n int) {
	t.Helper()
	poll(t, ctx, func() []string {
		out, err := exec.CommandContext(ctx, "iptables", "-w", "-t", "nat", "-S").Output()
		if err != nil {
			return []string{fmt.Sprintf("iptables -S: %v", err)}
		}
		got := 0
		for _, l := range strings.Split(string(out), "\n") {
			if strings.HasPrefix(l, "-A KUBE-SVC-") && strings.Contains(l, `"`+svc+` -> `) && strings.Contains(l, "-j KUBE-SEP-") {
				got++
			}
		}
		if got != n {
			return []string{fmt.Sprintf("kube-proxy sends %s to %d endpoints, want %d", svc, got, n)}
		}
		return nil
	})
}

// testServices has two clients (a pod, and the node through a hostNetwork
// pod) open connections to a ClusterIP Service with two backends, and
// checks that the agent shows client → Service → backend with each
// backend's bytes and connections as the backend itself counted them.
func testServices(t *testing.T, ctx context.Context, c *Cluster, api *agentAPI) {
	if out, err := c.KubectlStdin(ctx, echo, "apply", "-f", "-"); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if out, err := c.Kubectl(ctx, "-n", "apps", "rollout", "status", "deployment/echo", "--timeout=120s"); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	backendsProgrammed(t, ctx, "apps/echo", 2)
	out, err := c.Kubectl(ctx, "-n", "apps", "get", "service", "echo", "-o", "jsonpath={.metadata.uid} {.spec.clusterIP}")
	if err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	f := strings.Fields(out)
	svcNode, vip := "service:"+f[0], netip.MustParseAddr(f[1])
	pods, err := c.Kubectl(ctx, "-n", "apps", "get", "pods", "-l", "app=echo",
		"-o", `jsonpath={range .items[*]}{.metadata.name} {.metadata.uid} {.status.podIP}{"\n"}{end}`)
	if err != nil {
		t.Fatalf("%v: %s", err, pods)
	}
	type backend struct {
		name, uid string
		ip        netip.Addr
		conns     map[netip.Addr]int // by client, as the backend counted
		retrans   uint64             // bytes its clients' sockets sent again
	}
	var backends []*backend
	for _, l := range strings.Split(strings.TrimSpace(pods), "\n") {
		f := strings.Fields(l)
		backends = append(backends, &backend{name: f[0], uid: f[1], ip: netip.MustParseAddr(f[2]), conns: map[netip.Addr]int{}})
	}
	if len(backends) != 2 {
		t.Fatalf("echo's pods: %q, want 2", pods)
	}

	_, loneUID, loneIP := podOf(t, ctx, c, "lone")
	node := netip.MustParseAddr(NodeIP)
	clients := []struct {
		app   string
		ip    netip.Addr
		id    string // its node at the pod level
		bytes int64
		conns int
	}{
		{"lone", loneIP, "pod:" + loneUID, 100_000, 20},
		// The node's own connections: DNATed in OUTPUT, counted at the
		// backend's veth after the translation.
		{"hostnet", node, "host:" + NodeName, 60_000, 10},
	}
	// The bytes each connection's socket retransmitted, by its address.
	retrans := map[netip.AddrPort]uint64{}
	for _, cl := range clients {
		for a, r := range sendFrom(t, ctx, c, cl.app, netip.AddrPortFrom(vip, 80), cl.bytes, cl.conns) {
			retrans[a] = r
		}
	}
	// Each backend's own count of connections, by client.
	for _, b := range backends {
		logs, err := c.Kubectl(ctx, "-n", "apps", "logs", b.name)
		if err != nil {
			t.Fatalf("%v: %s", err, logs)
		}
		for _, l := range strings.Split(logs, "\n") {
			f := strings.Fields(l)
			if len(f) == 3 && f[0] == "recv" {
				if ap, err := netip.ParseAddrPort(f[1]); err == nil {
					b.conns[ap.Addr()]++
					b.retrans += retrans[ap]
				}
			}
		}
		t.Logf("backend %s (%s) served %v", b.name, b.ip, b.conns)
	}
	for _, cl := range clients {
		n := 0
		for _, b := range backends {
			n += b.conns[cl.ip]
		}
		if n != cl.conns {
			t.Fatalf("the backends served %d connections of %s, want %d", n, cl.app, cl.conns)
		}
	}

	poll(t, ctx, func() []string {
		var ps []string
		g, err := api.graph(ctx, topology.LevelPod)
		if err != nil {
			return []string{err.Error()}
		}
		if n := findNode(g, svcNode); n == nil || n.Kind != model.KindService || n.Name != "echo" || n.Namespace != "apps" {
			ps = append(ps, fmt.Sprintf("service node %s: %+v, want the Service apps/echo", svcNode, n))
		}
		for _, cl := range clients {
			e := findEdge(g, cl.id, svcNode, 80)
			if e == nil {
				ps = append(ps, fmt.Sprintf("no edge %s → %s tcp/80", cl.id, svcNode))
				continue
			}
			if e.Connections != uint64(cl.conns) {
				ps = append(ps, fmt.Sprintf("%s → %s: %d connections, want %d", cl.id, svcNode, e.Connections, cl.conns))
			}
			var again uint64
			for a, r := range retrans {
				if a.Addr() == cl.ip {
					again += r
				}
			}
			if want := wire(uint64(cl.bytes)*uint64(cl.conns)+again, e.Forward.Packets); !within(e.Forward.Bytes, want, 0.01) {
				ps = append(ps, fmt.Sprintf("%s → %s: %d bytes, want %d ±1%%", cl.id, svcNode, e.Forward.Bytes, want))
			}
		}
		for _, b := range backends {
			conns, payload := uint64(0), b.retrans
			for _, cl := range clients {
				conns += uint64(b.conns[cl.ip])
				payload += uint64(b.conns[cl.ip]) * uint64(cl.bytes)
			}
			id := "pod:" + b.uid
			e := findEdge(g, svcNode, id, 8080)
			if e == nil {
				if conns > 0 {
					ps = append(ps, fmt.Sprintf("no edge %s → %s tcp/8080 (it served %d connections)", svcNode, id, conns))
				}
				continue
			}
			if e.Connections != conns {
				ps = append(ps, fmt.Sprintf("%s → %s: %d connections, want %d as the backend counted", svcNode, b.name, e.Connections, conns))
			}
			if want := wire(payload, e.Forward.Packets); !within(e.Forward.Bytes, want, 0.01) {
				ps = append(ps, fmt.Sprintf("%s → %s: %d bytes, want %d ±1%% as the backend counted", svcNode, b.name, e.Forward.Bytes, want))
			}
			if want := wire(10000*conns, e.Reverse.Packets); !within(e.Reverse.Bytes, want, 0.01) {
				ps = append(ps, fmt.Sprintf("%s → %s: %d reply bytes, want %d ±1%%", svcNode, b.name, e.Reverse.Bytes, want))
			}
		}
		// The agent's records: the dialled address, and the backend.
		fd, err := api.flows(ctx)
		if err != nil {
			return append(ps, err.Error())
		}
		byBackend := map[netip.Addr][2]uint64{} // forward bytes, packets
		for _, r := range fd.Flows {
			if r.Dst != vip || r.Proto != model.ProtoTCP {
				continue
			}
			if r.DstPort != 80 || r.Backend.Port() != 8080 {
				ps = append(ps, fmt.Sprintf("record %s:%d → %s:%d backend %s: want port 80 to backend port 8080", r.Src, r.SrcPort, r.Dst, r.DstPort, r.Backend))
			}
			v := byBackend[r.Backend.Addr()]
			byBackend[r.Backend.Addr()] = [2]uint64{v[0] + r.Forward.Bytes, v[1] + r.Forward.Packets}
		}
		for _, b := range backends {
			payload := b.retrans
			for _, cl := range clients {
				payload += uint64(b.conns[cl.ip]) * uint64(cl.bytes)
			}
			v := byBackend[b.ip]
			if want := wire(payload, v[1]); !within(v[0], want, 0.01) {
				ps = append(ps, fmt.Sprintf("/api/v1/flows to %s with backend %s: %d bytes, want %d ±1%%", vip, b.ip, v[0], want))
			}
			delete(byBackend, b.ip)
		}
		for a, v := range byBackend {
			ps = append(ps, fmt.Sprintf("/api/v1/flows to %s with backend %v: %d bytes, want none", vip, a, v[0]))
		}
		return ps
	})
}
