//go:build k8s

// The cluster tests: `make k8s-test` (root; builds the cluster's binaries
// on the first run, about 10 minutes, then takes them from the cache).
package k8sbox

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/flowmap/flowmap/internal/ociimage"
	"github.com/flowmap/flowmap/internal/testenv"
)

// agentCaps are the capabilities deploy/kubernetes/daemonset.yaml adds,
// by number: NET_ADMIN 12, SYS_PTRACE 19, PERFMON 38, BPF 39.
var agentCaps = map[int]string{12: "NET_ADMIN", 19: "SYS_PTRACE", 38: "PERFMON", 39: "BPF"}

// flowmapImage builds flowmap statically and loads it as name (flowmap:dev,
// as `make image` does), and returns the binary.
func flowmapImage(t *testing.T, ctx context.Context, c *Cluster, name string) string {
	t.Helper()
	return importProgram(t, ctx, c, "./cmd/flowmap", name, "/flowmap", "65534:65534")
}

// importProgram builds the Go program pkg statically and loads it into
// the node as the image name, its entrypoint the program at path, and
// returns the binary.
func importProgram(t *testing.T, ctx context.Context, c *Cluster, pkg, name, path, user string) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "prog")
	build := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags", "-s -w", "-o", bin, pkg)
	build.Dir = "../.."
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build %s: %v: %s", pkg, err, out)
	}
	importBinary(t, ctx, c, bin, name, path, user)
	return bin
}

// importBinary loads the static binary bin into the node as the image
// name, its entrypoint the program at path.
func importBinary(t *testing.T, ctx context.Context, c *Cluster, bin, name, path, user string) {
	t.Helper()
	body, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	im := &ociimage.Image{Name: name, Arch: "amd64", Entrypoint: []string{path}, User: user,
		Files: []ociimage.File{{Path: path, Mode: 0o755, Body: body}}, Created: time.Unix(0, 0)}
	var buf bytes.Buffer
	if err := im.WriteArchive(&buf); err != nil {
		t.Fatal(err)
	}
	if err := c.ImportImage(ctx, bytes.NewReader(buf.Bytes())); err != nil {
		t.Fatal(err)
	}
}

// overlay writes a kustomization over deploy/kubernetes that only points
// the containerd volume at the box's socket, and returns its directory.
// A strategic merge patch: volumes merge by name, so the patch holds
// whatever the DaemonSet's other volumes and their order become.
func overlay(t *testing.T, c *Cluster) string {
	t.Helper()
	dir, err := os.MkdirTemp("..", ".k8s-overlay-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	abs, _ := filepath.Abs("../../deploy/kubernetes")
	absDir, _ := filepath.Abs(dir)
	rel, err := filepath.Rel(absDir, abs)
	if err != nil {
		t.Fatal(err)
	}
	k := fmt.Sprintf(`resources: [%s]
patches:
  - target: {kind: DaemonSet, name: flowmap}
    patch: |
      apiVersion: apps/v1
      kind: DaemonSet
      metadata: {name: flowmap, namespace: flowmap}
      spec:
        template:
          spec:
            volumes:
              - name: containerd
                hostPath: {path: %q, type: Socket}
`, rel, c.CRISocket)
	if err := os.WriteFile(filepath.Join(dir, "kustomization.yaml"), []byte(k), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

// agentPID finds the agent's process on the host: /flowmap agent, in the
// box's cgroups.
func agentPID(t *testing.T) int {
	t.Helper()
	pid, ok := boxPID(func(pid int) bool {
		cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		return bytes.HasPrefix(cmdline, []byte("/flowmap\x00agent\x00"))
	})
	if !ok {
		t.Fatal("no agent process (/flowmap agent) in the box's cgroups")
	}
	return pid
}

// boxPID returns the first process in the box's cgroups (the pods') for
// which match is true.
func boxPID(match func(pid int) bool) (int, bool) {
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cgroup, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
		if bytes.Contains(cgroup, []byte(cgroupRoot)) && match(pid) {
			return pid, true
		}
	}
	return 0, false
}

// caps returns the capability numbers of a /proc/<pid>/status mask line.
func caps(t *testing.T, status, field string) []int {
	t.Helper()
	for _, line := range strings.Split(status, "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			mask, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			if err != nil {
				t.Fatal(err)
			}
			var got []int
			for i := 0; i < 64; i++ {
				if mask&(1<<i) != 0 {
					got = append(got, i)
				}
			}
			return got
		}
	}
	t.Fatalf("no %s in status", field)
	return nil
}

// TestCluster starts the box, applies deploy/kubernetes with the local
// image and checks the agent's privileges and RBAC; then that Close leaves
// nothing behind. Root; the lock of the root tests for its whole run.
func TestCluster(t *testing.T) {
	testenv.MustBeRoot(t)
	for _, cmd := range []string{"containerd", "containerd-shim-runc-v2", "ctr", "runc", "iptables", "ip", "busybox", "/usr/lib/cni/bridge", "/usr/lib/cni/portmap", "/usr/lib/cni/firewall"} {
		testenv.MustHaveCommand(t, cmd)
	}
	// Cold: the cluster's binaries and Prometheus built first (about 15
	// minutes on two cores), then the tests (about 5).
	ctx, cancel := context.WithTimeout(context.Background(), 35*time.Minute)
	defer cancel()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	promBin, err := BuildPrometheus(ctx, log, os.Stderr)
	if err != nil {
		t.Fatal(err)
	}
	before, err := saveHost(ctx)
	if err != nil {
		t.Fatal(err)
	}
	c, err := Start(ctx, log)
	if err != nil {
		t.Fatalf("start cluster: %v", err)
	}
	dir := c.Dir
	defer func() {
		if err := c.Close(); err != nil {
			t.Errorf("close cluster: %v", err)
		}
		checkLeftovers(t, ctx, before, dir)
	}()
	defer func() {
		if t.Failed() {
			for _, name := range []string{"kubelet", "kube-apiserver", "containerd"} {
				l := c.Log(name)
				if len(l) > 4000 {
					l = l[len(l)-4000:]
				}
				t.Logf("%s log:\n%s", name, l)
			}
		}
	}()

	// The agent's CA and a reader's token: what every test that reads the
	// agent's API uses.
	var caPEM []byte
	var reader string
	t.Run("agent", func(t *testing.T) {
		flowmapImage(t, ctx, c, "flowmap:dev")
		caPEM = agentTLS(t, ctx, c)
		if _, err := c.Kubectl(ctx, "apply", "-f", "testdata/servicemonitor-crd.yaml"); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Kubectl(ctx, "wait", "--for=condition=Established", "crd/servicemonitors.monitoring.coreos.com", "--timeout=60s"); err != nil {
			t.Fatal(err)
		}
		if out, err := c.Kubectl(ctx, "apply", "-k", overlay(t, c)); err != nil {
			t.Fatalf("apply: %v\n%s", err, out)
		}
		if out, err := c.Kubectl(ctx, "-n", "flowmap", "rollout", "status", "daemonset/flowmap", "--timeout=120s"); err != nil {
			pods, _ := c.Kubectl(ctx, "-n", "flowmap", "describe", "pods")
			logs, _ := c.Kubectl(ctx, "-n", "flowmap", "logs", "daemonset/flowmap", "--tail=50")
			t.Fatalf("agent not ready: %v\n%s\n%s\n%s", err, out, pods, logs)
		}
		pid := agentPID(t)
		status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		if err != nil {
			t.Fatal(err)
		}
		var want []int
		for n := range agentCaps {
			want = append(want, n)
		}
		slices.Sort(want)
		for _, field := range []string{"CapEff", "CapPrm", "CapBnd"} {
			if got := caps(t, string(status), field); !slices.Equal(got, want) {
				t.Errorf("agent %s %v, want %v (%v)", field, got, want, agentCaps)
			}
		}
		for _, want := range []string{"NoNewPrivs:\t1", "Seccomp:\t2", "Uid:\t0\t"} {
			if !strings.Contains(string(status), want) {
				t.Errorf("agent status has no %q", want)
			}
		}
		priv, err := c.Kubectl(ctx, "-n", "flowmap", "get", "pods", "-o", "jsonpath={.items[*].spec.containers[*].securityContext.privileged}")
		if err != nil || strings.TrimSpace(priv) != "false" {
			t.Errorf("privileged %q, %v; want false", priv, err)
		}
	})

	// The API over HTTPS, to a ServiceAccount bound to flowmap-reader:
	// TokenReview and SubjectAccessReview against the real API server.
	t.Run("api", func(t *testing.T) {
		if caPEM == nil {
			t.Fatal("the agent did not start")
		}
		reader = serviceAccountToken(t, ctx, c, "flowmap-graph", "flowmap-reader")
		stranger := serviceAccountToken(t, ctx, c, "stranger", "")
		checkAgentAuth(t, ctx, caPEM, reader, stranger)
	})

	// The tests of what the agent shows, in order: each reads the agent's
	// API as the reader; the rollout replaces the agent, so it is last.
	for _, tc := range []struct {
		name string
		test func(*testing.T, context.Context, *Cluster, *agentAPI)
	}{
		{"workloads", testWorkloads},
		{"services", testServices},
		{"nodeports", testNodePorts},
		// The address reuse before Prometheus: its pods take network
		// namespaces anew, whose ids may be the outside client's of the
		// NodePort test, gone by then; the agent names each flow by who
		// held the address and namespace id when it was seen, so the
		// agent's map and the series name that client alike (failed once
		// when flows were named when drained: the map cni-…, the series
		// fmk8s-ext).
		{"ip reuse", testIPReuse},
		{"prometheus", func(t *testing.T, ctx context.Context, c *Cluster, api *agentAPI) {
			testPrometheus(t, ctx, c, api, promBin, caPEM)
		}},
		{"rollout", testRollout},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if reader == "" {
				t.Fatal("no reader's token")
			}
			tc.test(t, ctx, c, newAgentAPI(caPEM, reader))
		})
	}

	t.Run("rbac", func(t *testing.T) {
		as := "--as=system:serviceaccount:flowmap:flowmap"
		for _, tc := range []struct {
			args []string
			want string
		}{
			{[]string{"get", "secrets", "-A"}, "no"},
			{[]string{"get", "secrets", "-n", "flowmap"}, "no"},
			{[]string{"create", "pods"}, "no"},
			{[]string{"list", "pods", "-A"}, "yes"},
			{[]string{"watch", "endpointslices.discovery.k8s.io", "-A"}, "yes"},
			{[]string{"list", "replicasets.apps", "-A"}, "yes"},
		} {
			out, _ := c.Kubectl(ctx, append([]string{"auth", "can-i", as}, tc.args...)...)
			if got := strings.TrimSpace(out); got != tc.want {
				t.Errorf("can-i %v as the agent: %q, want %q", tc.args, got, tc.want)
			}
		}
		logs, err := c.Kubectl(ctx, "-n", "flowmap", "logs", "daemonset/flowmap")
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(strings.ToLower(logs), "forbidden") {
			t.Errorf("the agent's log has forbidden errors:\n%s", logs)
		}
	})
}

// checkLeftovers fails t if Close left chains, the bridge, mounts,
// cgroups, processes or changed host settings.
func checkLeftovers(t *testing.T, ctx context.Context, before *hostState, dir string) {
	t.Helper()
	after, err := saveHost(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for c := range after.chains {
		if !before.chains[c] {
			t.Errorf("left chain %s", c)
		}
	}
	for s, v := range before.sysctls {
		if after.sysctls[s] != v {
			t.Errorf("sysctl %s is %s, was %s", s, after.sysctls[s], v)
		}
	}
	if _, err := os.Stat("/sys/class/net/" + Bridge); err == nil {
		t.Errorf("left bridge %s", Bridge)
	}
	if n := mountsUnder(dir); n > 0 {
		t.Errorf("left %d mounts under %s", n, dir)
	}
	if _, err := os.Stat(dir); err == nil {
		t.Errorf("left %s", dir)
	}
	for _, d := range cgroupRoots(cgroupRoot) {
		if _, err := os.Stat(d); err == nil {
			t.Errorf("left cgroup %s", d)
		}
	}
	out, _ := exec.Command("ps", "-eo", "pid,args").Output()
	for _, line := range strings.Split(string(out), "\n") {
		if strings.Contains(line, dir) {
			t.Errorf("left process %s", strings.TrimSpace(line))
		}
	}
	links, _ := exec.Command("ip", "-o", "link").Output()
	if n := strings.Count(string(links), "master "+Bridge); n > 0 {
		t.Errorf("left %d veths on %s", n, Bridge)
	}
}
