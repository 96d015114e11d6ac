//go:build k8s

package k8sbox

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/flowmap/flowmap/topology"
)

// agentInterval is the DaemonSet's agent's --interval (its default).
const agentInterval = 5 * time.Second

// nextDrain waits for the agent's next drain and returns when it saw it:
// the end of the agent's latest interval moving on.
func nextDrain(t *testing.T, ctx context.Context, api *agentAPI) time.Time {
	t.Helper()
	end := func() time.Time {
		code, body, err := api.get(ctx, "/api/v1/flows?last=1")
		if err != nil || code != 200 {
			t.Fatalf("flows: %d %v: %s", code, err, body)
		}
		var doc struct {
			End time.Time `json:"end"`
		}
		if err := json.Unmarshal(body, &doc); err != nil {
			t.Fatal(err)
		}
		return doc.End
	}
	first := end()
	deadline := time.Now().Add(3 * agentInterval)
	for time.Now().Before(deadline) {
		select {
		case <-ctx.Done():
			t.Fatal(ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
		if e := end(); !e.Equal(first) {
			return time.Now()
		}
	}
	t.Fatalf("the agent did not drain in %v", 3*agentInterval)
	return time.Time{}
}

// forgetStaleNeighbour deletes the neighbour entry for addr in the
// namespace of the pod at client where it holds another MAC address than
// the namespace that has addr now: the pod that had addr before. Nothing
// announces a new pod's address (the bridge plugin here, 1.1.1, sends no
// gratuitous ARP), so a client that talked to the old pod within the
// entry's reachable time (15 to 45 s) sends to the old MAC address, which
// the bridge floods and the new pod drops, until the entry goes stale and
// its probes fail: outside the box, with namespaces on a bridge, a client's
// connect to an address that passed to another namespace 7 s after it
// talked to the first took 35.7 s (SYNs at 0, 1, 3, 7 and 15 s lost); in
// the box, once, 2 minutes (11 SYNs from lone, 0 bytes back, connect
// timed out). That is the network's delay, not flowmap's: the test does
// not wait for it.
func forgetStaleNeighbour(t *testing.T, ctx context.Context, client, addr netip.Addr) {
	t.Helper()
	clientPID, serverPID := pidWithAddr(t, ctx, client), pidWithAddr(t, ctx, addr)
	mac := func(pid int, args ...string) string {
		out, err := exec.CommandContext(ctx, "nsenter", append([]string{"-t", strconv.Itoa(pid), "-n", "ip", "-o"}, args...)...).Output()
		if err != nil {
			t.Fatalf("ip %v in pid %d's namespace: %v", args, pid, err)
		}
		f := strings.Fields(string(out))
		for i := range f[:max(len(f)-1, 0)] {
			if f[i] == "link/ether" || f[i] == "lladdr" {
				return f[i+1]
			}
		}
		return ""
	}
	want := mac(serverPID, "link", "show", "eth0")
	have := mac(clientPID, "neigh", "show", addr.String())
	if have == "" || have == want {
		t.Logf("the client's neighbour entry for %s: %q (the new pod's is %s)", addr, have, want)
		return
	}
	t.Logf("the client's neighbour entry for %s is %s, the old pod's, not the new pod's %s: deleting it", addr, have, want)
	if out, err := exec.CommandContext(ctx, "nsenter", "-t", strconv.Itoa(clientPID), "-n", "ip", "neigh", "del", addr.String(), "dev", "eth0").CombinedOutput(); err != nil {
		t.Fatalf("delete the neighbour entry: %v: %s", err, out)
	}
}

// pidWithAddr returns a process of the box's pods whose network namespace
// has addr.
func pidWithAddr(t *testing.T, ctx context.Context, addr netip.Addr) int {
	t.Helper()
	pid, ok := boxPID(func(pid int) bool {
		out, err := exec.CommandContext(ctx, "nsenter", "-t", strconv.Itoa(pid), "-n", "ip", "-4", "-o", "addr", "show", "dev", "eth0").Output()
		return err == nil && strings.Contains(string(out), " "+addr.String()+"/")
	})
	if !ok {
		t.Fatalf("no process of the box's pods has %s", addr)
	}
	return pid
}

// reuseDiagnostics says what the host and the pods' namespaces hold of
// addr: each namespace's ARP entry for it, conntrack's entries, the
// bridge's forwarding table and the firewall rules naming it.
func reuseDiagnostics(ctx context.Context, addr netip.Addr) string {
	var b strings.Builder
	seen := map[string]bool{}
	procs, _ := os.ReadDir("/proc")
	for _, p := range procs {
		ns, err := os.Readlink(filepath.Join("/proc", p.Name(), "ns", "net"))
		if err != nil || seen[ns] {
			continue
		}
		seen[ns] = true
		arp, err := os.ReadFile(filepath.Join("/proc", p.Name(), "net", "arp"))
		if err != nil {
			continue
		}
		for _, l := range strings.Split(string(arp), "\n") {
			if f := strings.Fields(l); len(f) > 0 && f[0] == addr.String() {
				fmt.Fprintf(&b, "arp in %s (pid %s): %s\n", ns, p.Name(), l)
			}
		}
	}
	for _, args := range [][]string{
		{"conntrack", "-L", "-d", addr.String()},
		{"conntrack", "-L", "-s", addr.String()},
		{"bridge", "fdb", "show", "br", Bridge},
		{"ip", "-o", "link", "show", "master", Bridge},
		{"sh", "-c", "iptables-save | grep -F " + addr.String()},
	} {
		out, err := exec.CommandContext(ctx, args[0], args[1:]...).CombinedOutput()
		fmt.Fprintf(&b, "$ %s (%v)\n%s", strings.Join(args, " "), err, out)
	}
	return b.String()
}

// allocated returns the pod addresses the CNI host-local allocator holds.
func allocated(t *testing.T, c *Cluster) []netip.Addr {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(c.Dir, "containerd", "ipam", "fmk8s"))
	if err != nil {
		t.Fatal(err)
	}
	var as []netip.Addr
	for _, e := range entries {
		if a, err := netip.ParseAddr(e.Name()); err == nil {
			as = append(as, a)
		}
	}
	return as
}

// reusePod is a bare fmtool pod named name.
func reusePod(name string) string {
	return `apiVersion: v1
kind: Pod
metadata: {name: ` + name + `, namespace: apps, labels: {app: ` + name + `}}
spec:` + strings.ReplaceAll(podSpec, "\n    ", "\n")
}

// testIPReuse fills the pod range but for one pod's address, deletes that
// pod, and starts another, which the allocator can only give the same
// address: the traffic to the address before is the first pod's, after
// the second's.
func testIPReuse(t *testing.T, ctx context.Context, c *Cluster, api *agentAPI) {
	free := PodAddresses - len(allocated(t, c))
	if free < 2 {
		t.Fatalf("%d pod addresses free, want at least 2", free)
	}
	if out, err := c.KubectlStdin(ctx, reusePod("reuse-a"), "apply", "-f", "-"); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if out, err := c.Kubectl(ctx, "-n", "apps", "wait", "--for=condition=Ready", "pod/reuse-a", "--timeout=60s"); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	// The rest of the range, to pods that only sleep.
	filler := fmt.Sprintf(`apiVersion: apps/v1
kind: Deployment
metadata: {name: filler, namespace: apps}
spec:
  replicas: %d
  selector: {matchLabels: {app: filler}}
  template:
    metadata: {labels: {app: filler}}
    spec:
      terminationGracePeriodSeconds: 0
      containers: [{name: main, image: %s, imagePullPolicy: Never}]
`, free-1, SandboxImage)
	if out, err := c.KubectlStdin(ctx, filler, "apply", "-f", "-"); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	defer func() {
		for _, args := range [][]string{
			{"delete", "deployment/filler", "pod/reuse-b", "--ignore-not-found", "--wait=true", "--timeout=60s"},
			{"wait", "--for=delete", "pod", "-l", "app=filler", "--timeout=60s"},
		} {
			if out, err := c.Kubectl(ctx, append([]string{"-n", "apps"}, args...)...); err != nil {
				t.Errorf("%v: %s", err, out)
			}
		}
	}()
	if out, err := c.Kubectl(ctx, "-n", "apps", "rollout", "status", "deployment/filler", "--timeout=120s"); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if n := len(allocated(t, c)); n != PodAddresses {
		t.Fatalf("%d pod addresses allocated, want all %d", n, PodAddresses)
	}
	_, loneUID, _ := podOf(t, ctx, c, "lone")
	_, uidA, ipA := podOf(t, ctx, c, "reuse-a")
	// Right after a drain, so that the address passes to reuse-b within
	// the interval of reuse-a's last traffic where the box is quick
	// enough: the agent names each flow by who held the address when it
	// was seen, not when drained (enrich's owner history).
	drainedAt := nextDrain(t, ctx, api)
	retransA := sum(sendFrom(t, ctx, c, "lone", netip.AddrPortFrom(ipA, 8080), 123_457, 1))
	sentA := time.Now()
	if out, err := c.Kubectl(ctx, "-n", "apps", "delete", "pod/reuse-a", "--wait=true", "--timeout=60s"); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	// The bridge plugin gives the address back to host-local before it
	// deletes the pod's veth: a pod started in between gets the address
	// while the old namespace still has it on a veth of the bridge, and
	// answers ARP for it. Wait for both, and measure the gap.
	var released, vethGone time.Time
	deadline := time.Now().Add(time.Minute)
	for released.IsZero() || vethGone.IsZero() {
		now := time.Now()
		if released.IsZero() && len(allocated(t, c)) == PodAddresses-1 {
			released = now
		}
		if vethGone.IsZero() && len(bridgePorts(t)) == PodAddresses-1 {
			vethGone = now
		}
		if now.After(deadline) {
			t.Fatalf("a minute after reuse-a went: its address released %v, its veth gone %v", !released.IsZero(), !vethGone.IsZero())
		}
		select {
		case <-ctx.Done():
			t.Fatal(ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
	t.Logf("reuse-a's address released %v after its last traffic, its veth gone %v after (%v later)", released.Sub(sentA).Round(time.Millisecond),
		vethGone.Sub(sentA).Round(time.Millisecond), vethGone.Sub(released).Round(time.Millisecond))
	if out, err := c.KubectlStdin(ctx, reusePod("reuse-b"), "apply", "-f", "-"); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	defer func() {
		if t.Failed() {
			t.Logf("after the reuse of %s:\n%s", ipA, reuseDiagnostics(ctx, ipA))
		}
	}()
	if out, err := c.Kubectl(ctx, "-n", "apps", "wait", "--for=condition=Ready", "pod/reuse-b", "--timeout=60s"); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	// Whether reuse-a's last traffic was drained after reuse-b took the
	// address (the case the owner history is for): the drain after it
	// came one interval after drainedAt.
	tookAt := time.Now()
	t.Logf("reuse-b took the address %v after reuse-a's last traffic; reuse-a's was drained after the handover: %v",
		tookAt.Sub(sentA).Round(time.Millisecond), tookAt.Before(drainedAt.Add(agentInterval)))
	_, uidB, ipB := podOf(t, ctx, c, "reuse-b")
	if ipB != ipA {
		t.Fatalf("reuse-b has %s, reuse-a had %s: the address was not reused", ipB, ipA)
	}
	t.Logf("reuse-a (%s) and reuse-b (%s) had %s", uidA, uidB, ipA)
	_, _, ipLone := podOf(t, ctx, c, "lone")
	forgetStaleNeighbour(t, ctx, ipLone, ipB)
	retransB := sum(sendFrom(t, ctx, c, "lone", netip.AddrPortFrom(ipB, 8080), 98_765, 1))
	poll(t, ctx, func() []string {
		g, err := api.graph(ctx, topology.LevelPod)
		if err != nil {
			return []string{err.Error()}
		}
		var ps []string
		for _, x := range []struct {
			name, uid string
			bytes     uint64
		}{{"reuse-a", uidA, 123_457 + retransA}, {"reuse-b", uidB, 98_765 + retransB}} {
			id := "pod:" + x.uid
			if n := findNode(g, id); n == nil || n.Name != x.name {
				ps = append(ps, fmt.Sprintf("node %s is %+v, want pod %s", id, n, x.name))
			}
			e := findEdge(g, "pod:"+loneUID, id, 8080)
			if e == nil {
				ps = append(ps, fmt.Sprintf("no edge lone → %s (%s)", x.name, id))
				continue
			}
			// Connections: 1, and the attempts fmtool made again while
			// the new pod's server was not listening yet (refused).
			if want := wire(x.bytes, e.Forward.Packets); !within(e.Forward.Bytes, want, 0.01) || e.Connections < 1 {
				ps = append(ps, fmt.Sprintf("lone → %s: %d bytes in %d connections, want %d ±1%% in at least 1", x.name, e.Forward.Bytes, e.Connections, want))
			}
		}
		return ps
	})
	if t.Failed() {
		return
	}
	if out, err := c.Kubectl(ctx, "-n", "apps", "delete", "pod/reuse-b", "--wait=true", "--timeout=60s"); err != nil {
		t.Errorf("%v: %s", err, strconv.Quote(out))
	}
}
