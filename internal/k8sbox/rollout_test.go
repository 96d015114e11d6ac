//go:build k8s

package k8sbox

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// bridgePorts returns the interfaces enslaved to the box's bridge: the
// pods' host-side veths.
func bridgePorts(t *testing.T) []net.Interface {
	t.Helper()
	br, err := net.InterfaceByName(Bridge)
	if err != nil {
		t.Fatal(err)
	}
	ifs, err := net.Interfaces()
	if err != nil {
		t.Fatal(err)
	}
	var ports []net.Interface
	for _, i := range ifs {
		if i.Index == br.Index {
			continue
		}
		if m, err := net.InterfaceByIndex(i.Index); err == nil && masterOf(m.Name) == Bridge {
			ports = append(ports, i)
		}
	}
	return ports
}

// masterOf returns the name of the interface's master ("" if none).
func masterOf(name string) string {
	l, err := os.Readlink("/sys/class/net/" + name + "/master")
	if err != nil {
		return ""
	}
	return filepath.Base(l)
}

// tcxPrograms returns the programs attached to ifindex's TCX hook at.
func tcxPrograms(ifindex int, at ebpf.AttachType) ([]ebpf.ProgramID, error) {
	res, err := link.QueryPrograms(link.QueryOptions{Target: ifindex, Attach: at})
	if err != nil {
		return nil, err
	}
	var ids []ebpf.ProgramID
	for _, p := range res.Programs {
		ids = append(ids, p.ID)
	}
	return ids, nil
}

// testRollout rolls the agent's DaemonSet out to a new image while a
// client sends at a steady rate, and watches the node's interfaces every
// 10 ms: the old agent's programs are gone after the rollout, the two
// agents never counted at once (never two programs on an interface), and
// the new agent counts no more than the client sent. It logs how long an
// interface went without a program (traffic then is not counted).
func testRollout(t *testing.T, ctx context.Context, c *Cluster, api *agentAPI) {
	flowmapImage(t, ctx, c, "flowmap:rollout")
	ports := bridgePorts(t)
	if len(ports) == 0 {
		t.Fatal("no pods on the bridge")
	}
	before := map[ebpf.ProgramID]bool{}
	for _, p := range ports {
		for _, at := range []ebpf.AttachType{ebpf.AttachTCXIngress, ebpf.AttachTCXEgress} {
			ids, err := tcxPrograms(p.Index, at)
			if err != nil {
				t.Fatalf("query %s %s: %v", p.Name, at, err)
			}
			if len(ids) != 1 {
				t.Fatalf("%s %s has programs %v, want the agent's one", p.Name, at, ids)
			}
			before[ids[0]] = true
		}
	}

	// The watch: the longest time an interface had no program, and the
	// most it had at once.
	var (
		mu       sync.Mutex
		maxGap   time.Duration
		gapPort  string
		maxProgs int
	)
	watchCtx, stopWatch := context.WithCancel(ctx)
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		empty := map[string]time.Time{}
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for {
			now := time.Now()
			for _, p := range ports {
				ids, err := tcxPrograms(p.Index, ebpf.AttachTCXIngress)
				if err != nil {
					continue // the pod went
				}
				mu.Lock()
				maxProgs = max(maxProgs, len(ids))
				if len(ids) == 0 {
					if _, ok := empty[p.Name]; !ok {
						empty[p.Name] = now
					}
				} else if since, ok := empty[p.Name]; ok {
					if d := now.Sub(since); d > maxGap {
						maxGap, gapPort = d, p.Name
					}
					delete(empty, p.Name)
				}
				mu.Unlock()
			}
			select {
			case <-watchCtx.Done():
				mu.Lock()
				for name, since := range empty {
					if d := time.Since(since); d > maxGap {
						maxGap, gapPort = d, name+" (still without one)"
					}
				}
				mu.Unlock()
				return
			case <-tick.C:
			}
		}
	}()

	// The steady client: 4 MB at 200 kB/s, 20 s, across the rollout.
	const total, rate = 4_000_000, 200_000
	_, _, webIP := podOf(t, ctx, c, "web")
	dsPod, _, dsIP := podOf(t, ctx, c, "ds")
	type result struct {
		out string
		err error
	}
	// The client's connection is the one from ds to web whose port the
	// agent has not seen before.
	seen := map[uint16]bool{}
	fd, err := api.flows(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range fd.Flows {
		if r.Src == dsIP && r.Dst == webIP {
			seen[r.SrcPort] = true
		}
	}
	sent := make(chan result, 1)
	start := time.Now()
	go func() {
		out, err := c.Kubectl(ctx, "-n", "apps", "exec", dsPod, "--", "/fmtool", "send", "-to", netip.AddrPortFrom(webIP, 8080).String(),
			"-bytes", strconv.Itoa(total), "-rate", strconv.Itoa(rate))
		sent <- result{out, err}
	}()
	// The rollout starts once the old agent has counted some of it.
	poll(t, ctx, func() []string {
		fd, err := api.flows(ctx)
		if err != nil {
			return []string{err.Error()}
		}
		for _, r := range fd.Flows {
			if r.Src == dsIP && r.Dst == webIP && r.DstPort == 8080 && !seen[r.SrcPort] && r.Forward.Bytes > 0 {
				return nil
			}
		}
		return []string{"the agent has not counted the client's connection yet"}
	})
	if t.Failed() {
		t.FailNow()
	}
	if out, err := c.Kubectl(ctx, "-n", "flowmap", "set", "image", "daemonset/flowmap", "agent=flowmap:rollout"); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if out, err := c.Kubectl(ctx, "-n", "flowmap", "rollout", "status", "daemonset/flowmap", "--timeout=120s"); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	rolled := time.Since(start)
	res := <-sent
	if res.err != nil {
		t.Fatalf("send: %v: %s", res.err, res.out)
	}
	stopWatch()
	<-watched
	var local netip.AddrPort
	for _, l := range strings.Split(res.out, "\n") {
		if f := strings.Fields(l); len(f) == 8 && f[0] == "sent" {
			local, _ = netip.ParseAddrPort(f[7])
		}
	}
	if local.Addr() != dsIP {
		t.Fatalf("send: %q, want a line from %s", res.out, dsIP)
	}
	t.Logf("rollout done %v after the client started, client done after %v", rolled.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
	mu.Lock()
	t.Logf("longest time an interface had no program: %v (%s); most programs on one at once: %d", maxGap.Round(time.Millisecond), gapPort, maxProgs)
	if maxProgs > 1 {
		t.Errorf("an interface had %d programs at once: both agents counted", maxProgs)
	}
	// Not asserted: the gap is the old pod's exit, the new pod's
	// creation and start and its agent's load and attach (9 s measured
	// on two loaded cores), and the traffic in it is not counted. The
	// DaemonSet replaces the pod in place (maxUnavailable; a surge pod
	// cannot run beside it, on the node's address and port); no gap
	// needs the new agent to take over the old one's programs and maps
	// (pinned in bpffs): docs/kubernetes.md, "Rolling out the agent".
	if maxGap > 5*time.Second {
		t.Logf("%s had no program for %v, longer than an interval (5 s)", gapPort, maxGap)
	}
	mu.Unlock()

	// No program of the old agent left, one of the new on every hook.
	for _, p := range bridgePorts(t) {
		for _, at := range []ebpf.AttachType{ebpf.AttachTCXIngress, ebpf.AttachTCXEgress} {
			ids, err := tcxPrograms(p.Index, at)
			if err != nil {
				t.Fatalf("query %s %s: %v", p.Name, at, err)
			}
			if len(ids) != 1 || before[ids[0]] {
				t.Errorf("%s %s has programs %v after the rollout, want one that is not the old agent's (%v)", p.Name, at, ids, before)
			}
		}
	}
	image, err := c.Kubectl(ctx, "-n", "flowmap", "get", "pods", "-l", "app.kubernetes.io/name=flowmap", "-o", "jsonpath={.items[*].spec.containers[0].image}")
	if err != nil || strings.TrimSpace(image) != "flowmap:rollout" {
		t.Errorf("agent pods' images %q, %v; want flowmap:rollout alone", image, err)
	}

	// The new agent counted the connection once: no more than was sent,
	// and all that was sent after it attached.
	poll(t, ctx, func() []string {
		fd, err := api.flows(ctx)
		if err != nil {
			return []string{err.Error()}
		}
		var bytes, packets uint64
		for _, r := range fd.Flows {
			if r.Src == local.Addr() && r.SrcPort == local.Port() && r.Dst == webIP && r.DstPort == 8080 {
				bytes += r.Forward.Bytes
				packets += r.Forward.Packets
			}
		}
		if packets == 0 {
			return []string{"the new agent has no record of the client's connection"}
		}
		t.Logf("the new agent counted %d bytes in %d packets of the client's %d (payload %d)", bytes, packets, wire(total, packets), total)
		if float64(bytes) > 1.01*float64(wire(total, packets)) {
			return []string{fmt.Sprintf("the new agent counted %d bytes, more than the %d sent", bytes, wire(total, packets))}
		}
		return nil
	})
}
