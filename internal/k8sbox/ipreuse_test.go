//go:build k8s

package k8sbox

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/flowmap/flowmap/topology"
)

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
	retransA := sum(sendFrom(t, ctx, c, "lone", netip.AddrPortFrom(ipA, 8080), 123_457, 1))
	// The agent names a flow when it drains it, by who has the address
	// then: reuse-a goes once its connection is drained. (An address
	// that another pod takes within the interval of the first pod's last
	// traffic is named the second pod: see docs/kubernetes.md.)
	poll(t, ctx, func() []string {
		g, err := api.graph(ctx, topology.LevelPod)
		if err != nil {
			return []string{err.Error()}
		}
		if e := findEdge(g, "pod:"+loneUID, "pod:"+uidA, 8080); e == nil || e.Forward.Bytes < 123_457 {
			return []string{"the agent has not drained lone → reuse-a yet"}
		}
		return nil
	})
	for _, args := range [][]string{
		{"delete", "pod/reuse-a", "--wait=true", "--timeout=60s"},
	} {
		if out, err := c.Kubectl(ctx, append([]string{"-n", "apps"}, args...)...); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
	}
	poll(t, ctx, func() []string {
		if n := len(allocated(t, c)); n != PodAddresses-1 {
			return []string{fmt.Sprintf("%d pod addresses allocated after reuse-a went, want %d", n, PodAddresses-1)}
		}
		return nil
	})
	if out, err := c.KubectlStdin(ctx, reusePod("reuse-b"), "apply", "-f", "-"); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if out, err := c.Kubectl(ctx, "-n", "apps", "wait", "--for=condition=Ready", "pod/reuse-b", "--timeout=60s"); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	_, uidB, ipB := podOf(t, ctx, c, "reuse-b")
	if ipB != ipA {
		t.Fatalf("reuse-b has %s, reuse-a had %s: the address was not reused", ipB, ipA)
	}
	t.Logf("reuse-a (%s) and reuse-b (%s) had %s", uidA, uidB, ipA)
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
