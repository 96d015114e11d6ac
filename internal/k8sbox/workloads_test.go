//go:build k8s

package k8sbox

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/flowmap/flowmap/model"
	"github.com/flowmap/flowmap/server"
	"github.com/flowmap/flowmap/topology"
)

// toolImage is fmtool (testdata/fmtool), the workloads' one program.
const toolImage = "fmk8s-tool:1"

// podSpec is every workload's pod: fmtool serving on 8080. No probes:
// the kubelet's connections would be flows from the node of their own
// (fmtool send retries a refused connection while the server starts).
const podSpec = `
      terminationGracePeriodSeconds: 1
      containers:
        - name: main
          image: ` + toolImage + `
          imagePullPolicy: Never
          args: [serve]`

// workloads are one of each kind that owns pods, and a bare pod and a
// hostNetwork pod, in the namespace apps. The CronJob is suspended: its
// Job is made from it by hand (kubectl create job --from), owned by it as
// a scheduled one is.
var workloads = `apiVersion: v1
kind: Namespace
metadata: {name: apps}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: apps}
spec:
  replicas: 1
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:` + podSpec + `
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db, namespace: apps}
spec:
  serviceName: db
  replicas: 1
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec:` + podSpec + `
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: ds, namespace: apps}
spec:
  selector: {matchLabels: {app: ds}}
  template:
    metadata: {labels: {app: ds}}
    spec:` + podSpec + `
---
apiVersion: batch/v1
kind: Job
metadata: {name: batch, namespace: apps}
spec:
  template:
    metadata: {labels: {app: batch}}
    spec:
      restartPolicy: Never` + podSpec + `
---
apiVersion: batch/v1
kind: CronJob
metadata: {name: nightly, namespace: apps}
spec:
  schedule: "0 3 * * *"
  suspend: true
  jobTemplate:
    spec:
      template:
        metadata: {labels: {app: nightly}}
        spec:
          restartPolicy: Never` + strings.ReplaceAll(podSpec, "\n", "\n    ") + `
---
apiVersion: v1
kind: Pod
metadata: {name: lone, namespace: apps, labels: {app: lone}}
spec:` + strings.ReplaceAll(podSpec, "\n    ", "\n") + `
---
apiVersion: v1
kind: Pod
metadata: {name: hostnet, namespace: apps, labels: {app: hostnet}}
spec:
  hostNetwork: true
  terminationGracePeriodSeconds: 1
  containers:
    - name: main
      image: ` + toolImage + `
      imagePullPolicy: Never
      args: [serve, -listen, "` + NodeIP + `:18080"]
`

// exchange is what one client sent to one server, and the nodes the
// agent's graph should name them by at the workload level.
type exchange struct {
	from, to  string // the pods' app labels
	port      int
	bytes     int64
	src, dst  string // node ids at the workload level
	srcKind   string // the workload kinds, "" for none
	dstKind   string
	clientIP  netip.Addr
	serverIP  netip.Addr
	wantConns int
	retrans   uint64 // bytes the client's sockets sent again
}

// podOf returns the name, uid and IP of the one running pod labelled
// app=app in apps.
func podOf(t *testing.T, ctx context.Context, c *Cluster, app string) (name, uid string, ip netip.Addr) {
	t.Helper()
	out, err := c.Kubectl(ctx, "-n", "apps", "get", "pods", "-l", "app="+app, "--field-selector=status.phase=Running",
		"-o", `jsonpath={range .items[?(@.metadata.deletionTimestamp)]}x{end}|{range .items[*]}{.metadata.name} {.metadata.uid} {.status.podIP}{"\n"}{end}`)
	if err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	deleting, list, _ := strings.Cut(out, "|")
	lines := strings.Fields(list)
	if deleting != "" || len(lines) != 3 {
		t.Fatalf("pods of app=%s: %q, want one running and none terminating", app, out)
	}
	ip, err = netip.ParseAddr(lines[2])
	if err != nil {
		t.Fatalf("pod %s address: %v", lines[0], err)
	}
	return lines[0], lines[1], ip
}

// sendFrom runs fmtool send in the pod labelled from, to addr: n bytes,
// conns times. It returns the bytes each connection's socket retransmitted,
// by the connection's local address.
func sendFrom(t *testing.T, ctx context.Context, c *Cluster, from string, addr netip.AddrPort, n int64, conns int) map[netip.AddrPort]uint64 {
	t.Helper()
	pod, _, _ := podOf(t, ctx, c, from)
	out, err := c.Kubectl(ctx, "-n", "apps", "exec", pod, "--", "/fmtool", "send", "-to", addr.String(),
		"-bytes", strconv.FormatInt(n, 10), "-conns", strconv.Itoa(conns))
	if err != nil {
		t.Fatalf("send from %s to %s: %v: %s", from, addr, err, out)
	}
	retrans := map[netip.AddrPort]uint64{}
	for _, l := range strings.Split(out, "\n") {
		// sent N recv 10000 retrans R local A
		f := strings.Fields(l)
		if len(f) != 8 || f[0] != "sent" || f[1] != strconv.FormatInt(n, 10) || f[3] != "10000" {
			continue
		}
		r, err1 := strconv.ParseUint(f[5], 10, 64)
		local, err2 := netip.ParseAddrPort(f[7])
		if err1 != nil || err2 != nil {
			t.Fatalf("send from %s: bad line %q", from, l)
		}
		retrans[local] = r
	}
	if len(retrans) != conns {
		t.Fatalf("send from %s to %s: %q, want %d connections answered", from, addr, out, conns)
	}
	return retrans
}

func sum(m map[netip.AddrPort]uint64) uint64 {
	var n uint64
	for _, v := range m {
		n += v
	}
	return n
}

// wire is the wire bytes of payload bytes sent in packets: each segment's
// Ethernet, IPv4 and TCP headers with timestamps, 66 bytes. payload counts
// what the sender's socket retransmitted: that was on the wire too.
func wire(payload, packets uint64) uint64 { return payload + 66*packets }

func within(got, want uint64, frac float64) bool {
	d := float64(got) - float64(want)
	return d <= frac*float64(want) && -d <= frac*float64(want)
}

// graph reads the agent's graph at level over the last 5 minutes.
func (a *agentAPI) graph(ctx context.Context, level topology.Level) (*topology.Snapshot, error) {
	return a.graphIn(ctx, level, "5m")
}

// graphIn reads the agent's graph at level over window (1m, 5m, 15m, 1h).
func (a *agentAPI) graphIn(ctx context.Context, level topology.Level, window string) (*topology.Snapshot, error) {
	code, body, err := a.get(ctx, "/api/v1/graph?level="+string(level)+"&window="+window+"&format=json")
	if err != nil {
		return nil, err
	}
	if code != 200 {
		return nil, fmt.Errorf("graph: %d: %s", code, body)
	}
	var s topology.Snapshot
	if err := json.Unmarshal(body, &s); err != nil {
		return nil, fmt.Errorf("decode graph: %w", err)
	}
	return &s, nil
}

// flows reads the agent's flows of the last 12 intervals.
func (a *agentAPI) flows(ctx context.Context) (*server.FlowsDoc, error) {
	code, body, err := a.get(ctx, "/api/v1/flows?last=12")
	if err != nil {
		return nil, err
	}
	if code != 200 {
		return nil, fmt.Errorf("flows: %d: %s", code, body)
	}
	var d server.FlowsDoc
	if err := json.Unmarshal(body, &d); err != nil {
		return nil, fmt.Errorf("decode flows: %w", err)
	}
	return &d, nil
}

// findEdge returns the edge from src to dst on tcp/port.
func findEdge(s *topology.Snapshot, src, dst string, port int) *topology.Edge {
	for i := range s.Edges {
		e := &s.Edges[i]
		if e.Source == src && e.Target == dst && e.Protocol == model.ProtoTCP && int(e.Port) == port {
			return e
		}
	}
	return nil
}

func findNode(s *topology.Snapshot, id string) *topology.Node {
	for i := range s.Nodes {
		if s.Nodes[i].ID == id {
			return &s.Nodes[i]
		}
	}
	return nil
}

// checkExchanges waits (polling the agent, up to a minute: it drains
// every 5 s) until its graph at level and its flows hold each exchange,
// and fails t with what differs if they do not. Bytes: the payload the
// client sent (and the server's 10,000-byte answers) plus 66 header bytes
// a packet, within 1 %.
func checkExchanges(t *testing.T, ctx context.Context, api *agentAPI, level topology.Level, xs []exchange) {
	t.Helper()
	var problems []string
	var g *topology.Snapshot
	deadline := time.Now().Add(time.Minute)
	for {
		problems = problems[:0]
		var err error
		g, err = api.graph(ctx, level)
		if err != nil {
			t.Fatal(err)
		}
		fd, err := api.flows(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, x := range xs {
			problems = append(problems, checkExchange(g, fd, x)...)
		}
		if len(problems) == 0 || time.Now().After(deadline) {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatal(ctx.Err())
		case <-time.After(time.Second): // the next drain
		}
	}
	for _, p := range problems {
		t.Error(p)
	}
	if len(problems) > 0 {
		for _, n := range g.Nodes {
			t.Logf("node %s %s %q %s/%s", n.ID, n.Kind, n.Name, n.WorkloadKind, n.Workload)
		}
		for _, e := range g.Edges {
			t.Logf("edge %s: %d bytes, %d conns", e.ID, e.Forward.Bytes, e.Connections)
		}
	}
}

func checkExchange(g *topology.Snapshot, fd *server.FlowsDoc, x exchange) []string {
	var ps []string
	name := fmt.Sprintf("%s → %s:%d", x.from, x.to, x.port)
	for _, n := range []struct{ id, kind string }{{x.src, x.srcKind}, {x.dst, x.dstKind}} {
		node := findNode(g, n.id)
		if node == nil {
			ps = append(ps, fmt.Sprintf("%s: no node %s in the graph", name, n.id))
		} else if node.WorkloadKind != n.kind {
			ps = append(ps, fmt.Sprintf("%s: node %s is a %q, want %q", name, n.id, node.WorkloadKind, n.kind))
		}
	}
	e := findEdge(g, x.src, x.dst, x.port)
	if e == nil {
		return append(ps, fmt.Sprintf("%s: no edge %s → %s tcp/%d in the graph", name, x.src, x.dst, x.port))
	}
	conns := uint64(max(x.wantConns, 1))
	sent := uint64(x.bytes)*conns + x.retrans
	if want := wire(sent, e.Forward.Packets); !within(e.Forward.Bytes, want, 0.01) {
		ps = append(ps, fmt.Sprintf("%s: graph forward bytes %d, want %d ±1%% (%d sent, %d of them again, in %d packets)", name, e.Forward.Bytes, want, sent, x.retrans, e.Forward.Packets))
	}
	if want := wire(10000*conns, e.Reverse.Packets); !within(e.Reverse.Bytes, want, 0.01) {
		ps = append(ps, fmt.Sprintf("%s: graph reverse bytes %d, want %d ±1%%", name, e.Reverse.Bytes, want))
	}
	if e.Connections != conns {
		ps = append(ps, fmt.Sprintf("%s: %d connections, want %d", name, e.Connections, conns))
	}
	// The agent's own records, by address.
	var fwd, fwdPkts uint64
	for _, r := range fd.Flows {
		if r.Src == x.clientIP && r.Dst == x.serverIP && int(r.DstPort) == x.port && r.Proto == model.ProtoTCP {
			fwd += r.Forward.Bytes
			fwdPkts += r.Forward.Packets
		}
	}
	if want := wire(sent, fwdPkts); !within(fwd, want, 0.01) {
		ps = append(ps, fmt.Sprintf("%s: /api/v1/flows %s → %s:%d forward bytes %d, want %d ±1%%", name, x.clientIP, x.serverIP, x.port, fwd, want))
	}
	return ps
}

// testWorkloads runs the workloads, has them talk, and checks that the
// agent names each end and counts what each client sent; then a rollout
// and a scale to zero and back, named as the new pods.
func testWorkloads(t *testing.T, ctx context.Context, c *Cluster, api *agentAPI) {
	importProgram(t, ctx, c, "./internal/k8sbox/testdata/fmtool", toolImage, "/fmtool", "65534:65534")
	if out, err := c.KubectlStdin(ctx, workloads, "apply", "-f", "-"); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if out, err := c.Kubectl(ctx, "-n", "apps", "create", "job", "nightly-manual", "--from=cronjob/nightly"); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if out, err := c.Kubectl(ctx, "-n", "apps", "wait", "--for=condition=Ready", "pod", "--all", "--timeout=120s"); err != nil {
		pods, _ := c.Kubectl(ctx, "-n", "apps", "get", "pods", "-o", "wide")
		t.Fatalf("workloads not ready: %v: %s\n%s", err, out, pods)
	}
	ip := func(app string) netip.Addr { _, _, a := podOf(t, ctx, c, app); return a }
	node := netip.MustParseAddr(NodeIP)
	wl := func(name string) string { return "workload:apps/" + name }
	_, loneUID, _ := podOf(t, ctx, c, "lone")
	host := "host:" + NodeName
	xs := []exchange{
		{from: "ds", to: "web", port: 8080, bytes: 1_000_000, src: wl("ds"), srcKind: "DaemonSet", dst: wl("web"), dstKind: "Deployment"},
		{from: "batch", to: "db", port: 8080, bytes: 700_000, src: wl("batch"), srcKind: "Job", dst: wl("db"), dstKind: "StatefulSet"},
		{from: "nightly", to: "web", port: 8080, bytes: 300_000, src: wl("nightly"), srcKind: "CronJob", dst: wl("web"), dstKind: "Deployment"},
		{from: "lone", to: "db", port: 8080, bytes: 500_000, wantConns: 3, src: "pod:" + loneUID, dst: wl("db"), dstKind: "StatefulSet"},
		// The hostNetwork pod has the node's address: it is the node.
		{from: "hostnet", to: "lone", port: 8080, bytes: 400_000, src: host, dst: "pod:" + loneUID},
		{from: "web", to: "hostnet", port: 18080, bytes: 200_000, src: wl("web"), srcKind: "Deployment", dst: host},
	}
	for i := range xs {
		x := &xs[i]
		x.clientIP, x.serverIP = ip(x.from), ip(x.to)
		if x.from == "hostnet" {
			x.clientIP = node
		}
		if x.to == "hostnet" {
			x.serverIP = node
		}
		x.retrans = sum(sendFrom(t, ctx, c, x.from, netip.AddrPortFrom(x.serverIP, uint16(x.port)), x.bytes, max(x.wantConns, 1)))
		if x.retrans > 0 {
			t.Logf("%s → %s: %d bytes retransmitted", x.from, x.to, x.retrans)
		}
	}
	checkExchanges(t, ctx, api, topology.LevelWorkload, xs)

	// Churn: a rollout replaces web's pod, a scale to zero and back
	// replaces it again; each new pod is named web's, at the pod level.
	for i, step := range []struct {
		name string
		do   [][]string
	}{
		{"rollout", [][]string{{"rollout", "restart", "deployment/web"}, {"rollout", "status", "deployment/web", "--timeout=120s"}}},
		{"scale to zero and back", [][]string{
			{"scale", "deployment/web", "--replicas=0"},
			{"wait", "--for=delete", "pod", "-l", "app=web", "--timeout=60s"},
			{"scale", "deployment/web", "--replicas=1"},
			{"rollout", "status", "deployment/web", "--timeout=120s"}}},
	} {
		t.Run(step.name, func(t *testing.T) {
			oldName, oldUID, oldIP := podOf(t, ctx, c, "web")
			for _, args := range step.do {
				if out, err := c.Kubectl(ctx, append([]string{"-n", "apps"}, args...)...); err != nil {
					t.Fatalf("%v: %s", err, out)
				}
			}
			// The old pod gone, not only terminating.
			if out, err := c.Kubectl(ctx, "-n", "apps", "wait", "--for=delete", "pod/"+oldName, "--timeout=60s"); err != nil {
				t.Fatalf("%v: %s", err, out)
			}
			_, uid, webIP := podOf(t, ctx, c, "web")
			if uid == oldUID {
				t.Fatalf("web's pod %s was not replaced", uid)
			}
			t.Logf("web's pod %s (%s) replaced by %s (%s)", oldUID, oldIP, uid, webIP)
			_, dsUID, dsIP := podOf(t, ctx, c, "ds")
			x := exchange{from: "ds", to: "web", port: 8080, bytes: int64(250_000 + 50_000*i), src: "pod:" + dsUID, srcKind: "DaemonSet",
				dst: "pod:" + uid, dstKind: "Deployment", clientIP: dsIP, serverIP: webIP}
			x.retrans = sum(sendFrom(t, ctx, c, "ds", netip.AddrPortFrom(webIP, 8080), x.bytes, 1))
			checkExchanges(t, ctx, api, topology.LevelPod, []exchange{x})
			g, err := api.graph(ctx, topology.LevelPod)
			if err != nil {
				t.Fatal(err)
			}
			if n := findNode(g, "pod:"+uid); n == nil || n.Workload != "web" || n.Namespace != "apps" {
				t.Errorf("web's new pod is %+v, want workload web in apps", n)
			}
		})
	}
}
