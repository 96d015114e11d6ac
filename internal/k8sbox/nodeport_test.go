//go:build k8s

package k8sbox

import (
	"context"
	"fmt"
	"net/netip"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/flowmap/flowmap/model"
	"github.com/flowmap/flowmap/topology"
)

// The outside client of the NodePort tests: a network namespace on the
// node's bridge with an address of its own subnet, as a machine on the
// node's network would be. Its traffic stays on the bridge.
const (
	extNS      = "fmk8s-ext"
	extVeth    = "fmk8sx0"
	extGateway = "10.213.2.1"
	extIP      = "10.213.2.2"
	lbIP       = "203.0.113.10"
)

// nodePorts are echo's backends behind two NodePort Services, one per
// externalTrafficPolicy (the first a LoadBalancer, its load balancer's
// address lbIP, set in its status as a cloud controller would), and a
// Service whose one pod is never ready.
var nodePorts = `apiVersion: v1
kind: Service
metadata: {name: echo-cluster, namespace: apps}
spec:
  type: LoadBalancer
  externalTrafficPolicy: Cluster
  selector: {app: echo}
  ports: [{port: 80, targetPort: 8080, nodePort: 30080}]
---
apiVersion: v1
kind: Service
metadata: {name: echo-local, namespace: apps}
spec:
  type: NodePort
  externalTrafficPolicy: Local
  selector: {app: echo}
  ports: [{port: 80, targetPort: 8080, nodePort: 30081}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: dead, namespace: apps}
spec:
  replicas: 1
  selector: {matchLabels: {app: dead}}
  template:
    metadata: {labels: {app: dead}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
        - name: main
          image: ` + toolImage + `
          imagePullPolicy: Never
          args: [serve]
          # Never ready: fmtool has no command "ready".
          readinessProbe:
            exec: {command: [/fmtool, ready]}
            periodSeconds: 5
---
apiVersion: v1
kind: Service
metadata: {name: dead, namespace: apps}
spec:
  selector: {app: dead}
  ports: [{port: 80, targetPort: 8080}]
`

// outside makes the outside client's namespace and returns a function
// that runs a command in it.
func outside(t *testing.T, ctx context.Context) func(args ...string) (string, error) {
	t.Helper()
	cleanup := [][]string{}
	t.Cleanup(func() {
		for i := len(cleanup) - 1; i >= 0; i-- {
			if _, err := run(context.Background(), cleanup[i][0], cleanup[i][1:]...); err != nil {
				t.Errorf("clean up: %v", err)
			}
		}
	})
	for _, step := range []struct{ do, undo []string }{
		{[]string{"ip", "netns", "add", extNS}, []string{"ip", "netns", "del", extNS}},
		{[]string{"ip", "link", "add", extVeth, "type", "veth", "peer", "name", "eth0", "netns", extNS}, nil},
		{[]string{"ip", "link", "set", extVeth, "master", Bridge, "up"}, nil},
		{[]string{"ip", "addr", "add", extGateway + "/24", "dev", Bridge}, []string{"ip", "addr", "del", extGateway + "/24", "dev", Bridge}},
		{[]string{"ip", "-n", extNS, "addr", "add", extIP + "/24", "dev", "eth0"}, nil},
		{[]string{"ip", "-n", extNS, "link", "set", "eth0", "up"}, nil},
		{[]string{"ip", "-n", extNS, "link", "set", "lo", "up"}, nil},
		{[]string{"ip", "-n", extNS, "route", "add", "default", "via", extGateway}, nil},
		// Where FORWARD's policy is DROP (Docker's), as a node's network
		// rules would let its clients in.
		{[]string{"iptables", "-w", "-I", "FORWARD", "-s", extIP, "-j", "ACCEPT"}, []string{"iptables", "-w", "-D", "FORWARD", "-s", extIP, "-j", "ACCEPT"}},
		{[]string{"iptables", "-w", "-I", "FORWARD", "-d", extIP, "-j", "ACCEPT"}, []string{"iptables", "-w", "-D", "FORWARD", "-d", extIP, "-j", "ACCEPT"}},
	} {
		if _, err := run(ctx, step.do[0], step.do[1:]...); err != nil {
			t.Fatal(err)
		}
		if step.undo != nil {
			cleanup = append(cleanup, step.undo)
		}
	}
	return func(args ...string) (string, error) {
		return run(ctx, "ip", append([]string{"netns", "exec", extNS}, args...)...)
	}
}

// testNodePorts has the outside client send to echo's backends through
// both NodePort Services, and a pod try a Service with no ready backend.
// The map shows client → Service → backend for each NodePort Service,
// each backend's bytes as the backend counted them; and the pod's failed
// attempts on its edge to the Service without backends.
func testNodePorts(t *testing.T, ctx context.Context, c *Cluster, api *agentAPI) {
	if out, err := c.KubectlStdin(ctx, nodePorts, "apply", "-f", "-"); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	backendsProgrammed(t, ctx, "apps/echo-cluster", 2)
	backendsProgrammed(t, ctx, "apps/echo-local", 2)
	tool := filepath.Join(t.TempDir(), "fmtool")
	build := exec.CommandContext(ctx, "go", "build", "-o", tool, "./internal/k8sbox/testdata/fmtool")
	build.Dir = "../.."
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build fmtool: %v: %s", err, out)
	}
	if out, err := c.Kubectl(ctx, "-n", "apps", "patch", "service", "echo-cluster", "--subresource=status", "--type=merge",
		"-p", `{"status":{"loadBalancer":{"ingress":[{"ip":"`+lbIP+`"}]}}}`); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	poll(t, ctx, func() []string {
		out, err := exec.CommandContext(ctx, "iptables", "-w", "-t", "nat", "-S").Output()
		if err != nil || !strings.Contains(string(out), "-d "+lbIP+"/32") {
			return []string{fmt.Sprintf("kube-proxy has no rule for the load balancer's address %s (%v)", lbIP, err)}
		}
		return nil
	})
	ext := outside(t, ctx)
	client := netip.MustParseAddr(extIP)
	node := netip.MustParseAddr(NodeIP)

	type backend struct {
		name, uid string
		ip        netip.Addr
	}
	pods, err := c.Kubectl(ctx, "-n", "apps", "get", "pods", "-l", "app=echo",
		"-o", `jsonpath={range .items[*]}{.metadata.name} {.metadata.uid} {.status.podIP}{"\n"}{end}`)
	if err != nil {
		t.Fatalf("%v: %s", err, pods)
	}
	var backends []backend
	for _, l := range strings.Split(strings.TrimSpace(pods), "\n") {
		f := strings.Fields(l)
		backends = append(backends, backend{name: f[0], uid: f[1], ip: netip.MustParseAddr(f[2])})
	}
	// What each backend served of each Service, over the subtests: the
	// Service's edge to a backend sums them.
	type count struct{ conns, payload uint64 }
	served := map[string]map[string]count{} // Service, backend uid
	for _, svc := range []struct {
		name     string
		dial     netip.Addr
		nodePort int   // the port dialled
		bytes    int64 // odd sizes: the backends' logs tell these connections by them
		// seen is the client address the backends see: the node's under
		// Cluster (kube-proxy masquerades), the client's own under Local.
		seen netip.Addr
	}{
		{"echo-cluster", node, 30080, 200_001, node},
		{"echo-local", node, 30081, 150_001, client},
		// Through the load balancer's address, which the node
		// translates as the load balancer would hand it on.
		{"echo-cluster", netip.MustParseAddr(lbIP), 80, 170_001, node},
	} {
		t.Run(fmt.Sprintf("%s %s:%d", svc.name, svc.dial, svc.nodePort), func(t *testing.T) {
			const conns = 6
			out, err := ext(tool, "send", "-to", netip.AddrPortFrom(svc.dial, uint16(svc.nodePort)).String(),
				"-bytes", strconv.FormatInt(svc.bytes, 10), "-conns", strconv.Itoa(conns))
			if err != nil {
				t.Fatal(err)
			}
			var retrans uint64
			for _, l := range strings.Split(out, "\n") {
				if f := strings.Fields(l); len(f) == 8 && f[0] == "sent" {
					r, _ := strconv.ParseUint(f[5], 10, 64)
					retrans += r
				}
			}
			uid, err := c.Kubectl(ctx, "-n", "apps", "get", "service", svc.name, "-o", "jsonpath={.metadata.uid}")
			if err != nil {
				t.Fatalf("%v: %s", err, uid)
			}
			svcNode := "service:" + strings.TrimSpace(uid)
			// Each backend's own count of these connections, and the
			// client address it saw.
			if served[svc.name] == nil {
				served[svc.name] = map[string]count{}
			}
			total := served[svc.name]
			mine := map[string]uint64{}
			for _, b := range backends {
				logs, err := c.Kubectl(ctx, "-n", "apps", "logs", b.name)
				if err != nil {
					t.Fatalf("%v: %s", err, logs)
				}
				for _, l := range strings.Split(logs, "\n") {
					f := strings.Fields(l)
					if len(f) != 3 || f[0] != "recv" || f[2] != strconv.FormatInt(svc.bytes, 10) {
						continue
					}
					mine[b.uid]++
					if ap, err := netip.ParseAddrPort(f[1]); err != nil || ap.Addr() != svc.seen {
						t.Errorf("backend %s saw a connection from %s, want from %s", b.name, f[1], svc.seen)
					}
				}
				t.Logf("backend %s (%s) served %d of these connections", b.name, b.ip, mine[b.uid])
				total[b.uid] = count{total[b.uid].conns + mine[b.uid], total[b.uid].payload + mine[b.uid]*uint64(svc.bytes)}
			}
			if n := mine[backends[0].uid] + mine[backends[1].uid]; n != conns {
				t.Fatalf("the backends served %d connections, want %d", n, conns)
			}
			poll(t, ctx, func() []string {
				var ps []string
				g, err := api.graph(ctx, topology.LevelPod)
				if err != nil {
					return []string{err.Error()}
				}
				if n := findNode(g, svcNode); n == nil || n.Kind != model.KindService || n.Name != svc.name {
					ps = append(ps, fmt.Sprintf("service node %s: %+v, want the Service apps/%s", svcNode, n, svc.name))
				}
				var in *topology.Edge
				for i := range g.Edges {
					e := &g.Edges[i]
					if src := findNode(g, e.Source); e.Target == svcNode && int(e.Port) == svc.nodePort && src != nil && (src.Name == extIP || src.Name == extNS) {
						in = e
					}
				}
				if in == nil {
					ps = append(ps, fmt.Sprintf("no edge %s → %s tcp/%d", extIP, svcNode, svc.nodePort))
				} else {
					if in.Connections != conns {
						ps = append(ps, fmt.Sprintf("%s → %s: %d connections, want %d", extIP, svcNode, in.Connections, conns))
					}
					if want := wire(uint64(svc.bytes)*conns+retrans, in.Forward.Packets); !within(in.Forward.Bytes, want, 0.01) {
						ps = append(ps, fmt.Sprintf("%s → %s: %d bytes, want %d ±1%%", extIP, svcNode, in.Forward.Bytes, want))
					}
				}
				for _, b := range backends {
					n := total[b.uid].conns
					e := findEdge(g, svcNode, "pod:"+b.uid, 8080)
					if e == nil {
						if n > 0 {
							ps = append(ps, fmt.Sprintf("no edge %s → %s tcp/8080 (it served %d connections)", svcNode, b.name, n))
						}
						continue
					}
					if e.Connections != n {
						ps = append(ps, fmt.Sprintf("%s → %s: %d connections, want %d as the backend counted", svcNode, b.name, e.Connections, n))
					}
					// The retransmissions are the client's, not split by
					// backend: within 1 % of the backend's share.
					if want := wire(total[b.uid].payload, e.Forward.Packets); !within(e.Forward.Bytes, want, 0.01) {
						ps = append(ps, fmt.Sprintf("%s → %s: %d bytes, want %d ±1%% as the backend counted", svcNode, b.name, e.Forward.Bytes, want))
					}
				}
				// The records: the node's address and port dialled, the
				// backend that answered.
				fd, err := api.flows(ctx)
				if err != nil {
					return append(ps, err.Error())
				}
				byBackend := map[netip.Addr]uint64{}
				for _, r := range fd.Flows {
					if r.Src == client && r.Dst == svc.dial && int(r.DstPort) == svc.nodePort {
						if r.Backend.Port() != 8080 {
							ps = append(ps, fmt.Sprintf("record %s:%d → %s:%d: backend %s, want port 8080", r.Src, r.SrcPort, r.Dst, r.DstPort, r.Backend))
						}
						byBackend[r.Backend.Addr()] += r.Forward.Bytes
					}
				}
				for _, b := range backends {
					if n := mine[b.uid]; n > 0 && byBackend[b.ip] < uint64(svc.bytes)*n {
						ps = append(ps, fmt.Sprintf("/api/v1/flows %s → %s:%d with backend %s: %d bytes, want %d and headers", client, svc.dial, svc.nodePort, b.ip, byBackend[b.ip], uint64(svc.bytes)*n))
					}
				}
				return ps
			})
		})
	}

	t.Run("no ready backend", func(t *testing.T) {
		if out, err := c.Kubectl(ctx, "-n", "apps", "wait", "--for=jsonpath={.status.phase}=Running", "pod", "-l", "app=dead", "--timeout=60s"); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		ready, err := c.Kubectl(ctx, "-n", "apps", "get", "pods", "-l", "app=dead", "-o", `jsonpath={.items[*].status.conditions[?(@.type=="Ready")].status}`)
		if err != nil || strings.TrimSpace(ready) != "False" {
			t.Fatalf("dead's pod ready %q, %v; want False", ready, err)
		}
		out, err := c.Kubectl(ctx, "-n", "apps", "get", "service", "dead", "-o", "jsonpath={.metadata.uid} {.spec.clusterIP}")
		if err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		f := strings.Fields(out)
		svcNode, vip := "service:"+f[0], netip.MustParseAddr(f[1])
		lone, _, _ := podOf(t, ctx, c, "lone")
		const attempts = 4
		// kube-proxy rejects what is sent to a Service without ready
		// endpoints (an ICMP port unreachable: refused) in FORWARD; in
		// the box the CNI firewall plugin's rules come first there and
		// accept what pods send, so the SYNs go on to no one and the
		// attempts time out. Either way each attempt fails.
		out, err = c.Kubectl(ctx, "-n", "apps", "exec", lone, "--", "/fmtool", "dial", "-to", netip.AddrPortFrom(vip, 80).String(),
			"-n", strconv.Itoa(attempts), "-timeout", "2s")
		if err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		refused, timedOut := uint64(strings.Count(out, "refused")), uint64(strings.Count(out, "timeout"))
		if refused+timedOut != attempts {
			t.Fatalf("dial the Service without backends: %q, want %d refused or timed out", out, attempts)
		}
		t.Logf("dial the Service without backends: %d refused, %d timed out", refused, timedOut)
		_, loneUID, _ := podOf(t, ctx, c, "lone")
		poll(t, ctx, func() []string {
			g, err := api.graph(ctx, topology.LevelPod)
			if err != nil {
				return []string{err.Error()}
			}
			e := findEdge(g, "pod:"+loneUID, svcNode, 80)
			if e == nil {
				return []string{fmt.Sprintf("no edge lone → %s tcp/80", svcNode)}
			}
			if e.Health == nil {
				return []string{fmt.Sprintf("lone → %s: no health", svcNode)}
			}
			h := e.Health
			var ps []string
			if h.Attempts != attempts || h.Established != 0 || h.Failure == "" ||
				max(h.Refused, h.Unreachable) != refused || h.TimedOut != timedOut {
				ps = append(ps, fmt.Sprintf("lone → %s: health %+v (failure %q), want %d attempts, %d refused (or ICMP unreachable), %d timed out, none established",
					svcNode, h.Health, h.Failure, attempts, refused, timedOut))
			}
			for _, oe := range g.Edges {
				if oe.Source == svcNode {
					ps = append(ps, fmt.Sprintf("edge %s: the Service without ready backends has a backend", oe.ID))
				}
			}
			if len(ps) == 0 {
				t.Logf("lone → dead: %+v, failure %q", h.Health, h.Failure)
			}
			return ps
		})
	})
}
