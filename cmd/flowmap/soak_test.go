//go:build soak

package main

// The soak tests (make soak): long runs under hostile traffic and faults,
// outside make test. Each needs root, BPF and the tools it names.

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/flowmap/flowmap/internal/sandboxtest"
	"github.com/flowmap/flowmap/internal/testenv"
	"github.com/flowmap/flowmap/model"
	"github.com/flowmap/flowmap/sandbox"
	"github.com/flowmap/flowmap/server"
)

// soakSubnet is the soak tests' sandbox subnet.
var soakSubnet = netip.MustParsePrefix("198.51.100.96/27")

// soakDuration is how long the flood runs: 60 s, or $FLOWMAP_SOAK_FLOOD.
func soakDuration(t *testing.T) time.Duration {
	if s := os.Getenv("FLOWMAP_SOAK_FLOOD"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil {
			t.Fatalf("FLOWMAP_SOAK_FLOOD=%q: %v", s, err)
		}
		return d
	}
	return 60 * time.Second
}

// Memory of the DaemonSet (deploy/kubernetes/daemonset.yaml).
const (
	daemonSetLimit = 256 << 20
	daemonSetGoMem = "120MiB"
	// rssBudget is the agent's resident memory at most: GOMEMLIMIT's
	// 120 MiB (the Go heap, stacks and runtime) and 40 MiB of the
	// binary's text and data and the C and kernel mappings. The BPF maps
	// (104.5 MiB) are kernel memory, charged to the cgroup but not in RSS.
	rssBudget = 160 << 20
)

// memCgroup is a cgroup v1 memory cgroup (this machine's hierarchy), or
// a cgroup v2 one, limited to limit bytes, removed at the end of the test.
type memCgroup struct {
	dir string
	v2  bool
}

func newMemCgroup(t *testing.T, name string, limit int64) *memCgroup {
	t.Helper()
	cg := &memCgroup{}
	if _, err := os.Stat("/sys/fs/cgroup/cgroup.controllers"); err == nil {
		cg.dir, cg.v2 = filepath.Join("/sys/fs/cgroup", name), true
	} else if _, err := os.Stat("/sys/fs/cgroup/memory/memory.limit_in_bytes"); err == nil {
		cg.dir = filepath.Join("/sys/fs/cgroup/memory", name)
	} else {
		t.Fatal("no memory cgroup: neither cgroup v2 nor v1's memory controller is mounted under /sys/fs/cgroup")
	}
	os.Remove(cg.dir) // a leftover of an earlier run
	if err := os.Mkdir(cg.dir, 0o755); err != nil {
		t.Fatalf("make cgroup: %v", err)
	}
	t.Cleanup(func() {
		// The agent was killed by then; its cgroup empties as it exits.
		deadline := time.Now().Add(10 * time.Second)
		for {
			err := os.Remove(cg.dir)
			if err == nil || os.IsNotExist(err) {
				return
			}
			if time.Now().After(deadline) {
				t.Errorf("remove cgroup %s: %v", cg.dir, err)
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
	})
	limitFile := "memory.limit_in_bytes"
	if cg.v2 {
		limitFile = "memory.max"
	}
	cg.write(t, limitFile, strconv.FormatInt(limit, 10))
	if !cg.v2 {
		// Without swap accounting, swap is not limited: the kernel
		// would swap before an OOM kill. This machine has no swap.
		if _, err := os.Stat(filepath.Join(cg.dir, "memory.memsw.limit_in_bytes")); err == nil {
			cg.write(t, "memory.memsw.limit_in_bytes", strconv.FormatInt(limit, 10))
		}
	}
	return cg
}

func (cg *memCgroup) write(t *testing.T, file, v string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(cg.dir, file), []byte(v), 0o644); err != nil {
		t.Fatalf("write %s/%s: %v", cg.dir, file, err)
	}
}

// run returns the command prefix that runs a binary in the cgroup.
func (cg *memCgroup) run(bin string) []string {
	return []string{"sh", "-c", `echo $$ > "` + filepath.Join(cg.dir, "cgroup.procs") + `" && exec "$0" "$@"`, bin}
}

// usage returns the cgroup's memory usage and its peak.
func (cg *memCgroup) usage(t *testing.T) (cur, peak uint64) {
	t.Helper()
	files := [2]string{"memory.usage_in_bytes", "memory.max_usage_in_bytes"}
	if cg.v2 {
		files = [2]string{"memory.current", "memory.peak"}
	}
	for i, f := range files {
		b, err := os.ReadFile(filepath.Join(cg.dir, f))
		if err != nil {
			t.Fatalf("read %s: %v", f, err)
		}
		v, _ := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
		if i == 0 {
			cur = v
		} else {
			peak = v
		}
	}
	return cur, peak
}

// oomKills returns the OOM kills in the cgroup (memory.oom_control's
// oom_kill, memory.events' oom_kill).
func (cg *memCgroup) oomKills(t *testing.T) uint64 {
	t.Helper()
	file := "memory.oom_control"
	if cg.v2 {
		file = "memory.events"
	}
	b, err := os.ReadFile(filepath.Join(cg.dir, file))
	if err != nil {
		t.Fatalf("read %s: %v", file, err)
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) == 2 && f[0] == "oom_kill" {
			n, _ := strconv.ParseUint(f[1], 10, 64)
			return n
		}
	}
	return 0
}

// procStatus returns a field of /proc/pid/status, in bytes for kB fields.
func procStatus(t *testing.T, pid int, field string) uint64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatalf("read status of %d: %v", pid, err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, field+":"); ok {
			f := strings.Fields(v)
			n, _ := strconv.ParseUint(f[0], 10, 64)
			if len(f) > 1 && f[1] == "kB" {
				n <<= 10
			}
			return n
		}
	}
	t.Fatalf("no %s in /proc/%d/status", field, pid)
	return 0
}

// rxPackets returns the packets that entered the host at link name.
func rxPackets(t *testing.T, name string) uint64 {
	t.Helper()
	l, err := netlink.LinkByName(name)
	if err != nil {
		t.Fatalf("link %s: %v", name, err)
	}
	return l.Attrs().Statistics.RxPackets
}

// TestSoakSYNFlood floods a namespace with SYNs from random source
// addresses and ports (hping3 --flood --rand-source) for 60 s, the agent
// in a memory cgroup limited as the DaemonSet limits it (256 MiB, with
// its GOMEMLIMIT): it is not OOM-killed, its RSS stays under rssBudget, a
// 3 MB transfer between two other namespaces during the flood is counted
// exactly (within 1 % of payload and headers, as the other end-to-end
// tests count), and the packets it could not count are counted as
// map-full.
func TestSoakSYNFlood(t *testing.T) {
	testenv.MustBeRoot(t)
	testenv.MustHaveBTF(t)
	hping := testenv.MustHaveCommand(t, "hping3")
	testenv.MustHaveCommand(t, "go")
	if err := sandbox.Cleanup("fmsoak"); err != nil {
		t.Fatal(err)
	}
	sb := sandboxtest.New(t, sandbox.Options{Prefix: "fmsoak", Subnet: soakSubnet})
	attacker, victim := addHost(t, sb, "atk"), addHost(t, sb, "vic")
	client, server := addHost(t, sb, "cli"), addHost(t, sb, "srv")
	// The victim's answers to the spoofed sources stay in its namespace:
	// without a default route they are not routed anywhere.
	if out, err := victim.Command(context.Background(), "ip", "route", "replace", "blackhole", "default").CombinedOutput(); err != nil {
		t.Fatalf("blackhole the victim's default route: %v: %s", err, out)
	}
	ln, err := victim.Listen("tcp4", victim.Addr.String()+":80")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()

	bin := buildFlowmap(t)
	cg := newMemCgroup(t, "flowmap-soak", daemonSetLimit)
	os.Setenv("GOMEMLIMIT", daemonSetGoMem)
	defer os.Unsetenv("GOMEMLIMIT")
	p := startAgentUnder(t, cg.run(bin), "--interfaces", "fmsoak-*", "--interval", "1s")
	pid := p.cmd.Process.Pid
	rx0 := rxPackets(t, attacker.HostIf)

	flood := attacker.Command(context.Background(), hping, "--flood", "--rand-source", "-S", "-p", "80", victim.Addr.String())
	var floodOut bytes.Buffer
	flood.Stdout, flood.Stderr = &floodOut, &floodOut
	if err := flood.Start(); err != nil {
		t.Fatalf("start hping3: %v", err)
	}
	floodDone := make(chan error, 1)
	go func() { floodDone <- flood.Wait() }()
	t.Cleanup(func() {
		flood.Process.Kill()
		select {
		case <-floodDone:
		case <-time.After(5 * time.Second):
		}
	})

	// Sample memory every second; the transfer goes a third of the way in.
	dur := soakDuration(t)
	var maxRSS, samples uint64
	var port uint16
	var retrans uint64
	var sentAt time.Time
	const payload = 3_000_000
	start := time.Now()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for time.Since(start) < dur {
		select {
		case err := <-p.done:
			p.done <- err // for the cleanup
			t.Fatalf("agent exited during the flood after %s: %v (OOM kills in its cgroup: %d; VmRSS before: max %d MiB)", time.Since(start), err, cg.oomKills(t), maxRSS>>20)
		case err := <-floodDone:
			t.Fatalf("hping3 exited after %s: %v\n%s", time.Since(start), err, floodOut.String())
		case <-tick.C:
		}
		rss := procStatus(t, pid, "VmRSS")
		maxRSS = max(maxRSS, rss)
		samples++
		if port == 0 && time.Since(start) > dur/3 {
			port, retrans = sendTo(t, client, server, payload)
			sentAt = time.Now()
		}
	}
	flood.Process.Signal(syscall.SIGINT)
	select {
	case <-floodDone:
	case <-time.After(10 * time.Second):
		t.Errorf("hping3 still running 10s after SIGINT")
	}
	sent := rxPackets(t, attacker.HostIf) - rx0
	hwm := procStatus(t, pid, "VmHWM")
	cur, peak := cg.usage(t)
	t.Logf("flood of %s: %d packets from the attacker; agent RSS max %d MiB (VmHWM %d MiB) over %d samples, cgroup %d MiB now, peak %d MiB of %d",
		dur, sent, maxRSS>>20, hwm>>20, samples, cur>>20, peak>>20, daemonSetLimit>>20)
	t.Logf("hping3: %s", strings.TrimSpace(floodOut.String()))
	if n := cg.oomKills(t); n > 0 {
		t.Errorf("%d OOM kills in the agent's cgroup", n)
	}
	if hwm > rssBudget {
		t.Errorf("agent VmHWM %d MiB, want at most %d MiB", hwm>>20, rssBudget>>20)
	}

	// The transfer: in the intervals after the flood, counted exactly.
	rec := findFlow(t, p, client.Addr, server.Addr, port, sentAt)
	metrics := p.get(t, "/metrics")
	full := metric(metrics, "flowmap_flow_map_full_packets_total")
	t.Logf("map-full packets %.0f; %s", full, storeLines(metrics))
	if full == 0 {
		t.Errorf("flowmap_flow_map_full_packets_total = 0 after a flood of %d packets, want what the map refused", sent)
	}
	if rec == nil {
		t.Fatalf("transfer %s → %s:%d (%d B) not in /api/v1/flows (held %d intervals)", client.Addr, server.Addr, port, payload, len(p.flowsDoc(t).Flows))
	}
	if msg := exactly(rec, payload, retrans); msg != "" {
		t.Errorf("transfer beside the flood: %s", msg)
	}
	if p.stop(t, syscall.SIGTERM) != nil {
		t.Errorf("agent did not exit cleanly after the flood")
	}
}

// storeLines are the flowmap_store_bytes lines of metrics, for the log.
func storeLines(metrics string) string {
	var out []string
	for _, l := range strings.Split(metrics, "\n") {
		if strings.HasPrefix(l, "flowmap_store_bytes{") || strings.HasPrefix(l, "flowmap_store_dropped_total{") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "; ")
}

// findFlow returns the flow from src to dst's port in the agent's
// /api/v1/flows once two drains ended after sent (when the transfer was
// over), so that the record holds all of it, or nil.
func findFlow(t *testing.T, p *agentProc, src, dst netip.Addr, port uint16, sent time.Time) *model.Record {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	var doc server.FlowsDoc
	for drains, end := 0, sent; drains < 2; {
		if time.Now().After(deadline) {
			t.Fatalf("the agent drained no two intervals in 10s after the transfer to %s:%d", dst, port)
		}
		if doc = p.flowsDoc(t); doc.End.After(end) {
			drains, end = drains+1, doc.End
			continue
		}
		time.Sleep(20 * time.Millisecond)
	}
	for i, r := range doc.Flows {
		if r.Src == src && r.Dst == dst && r.DstPort == port {
			return &doc.Flows[i]
		}
	}
	return nil
}

// waitAttached waits until the agent has its two programs on h's
// host-side interface: what a host sends before that is not counted.
func waitAttached(t *testing.T, h *sandbox.Host) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for testenv.TCXPrograms(t, h.HostIfIndex) < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("%s: the agent's programs not attached after 10s", h.HostIf)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// exactly says how r's forward direction differs from payload bytes of
// TCP (payload and each packet's headers, within 1 %, plus what was
// retransmitted), or "".
func exactly(r *model.Record, payload int, retrans uint64) string {
	want := float64(payload) + float64(r.Forward.Packets)*tcpHeaders
	if diff := float64(r.Forward.Bytes) - want; diff < -0.01*want || diff > 0.01*want+float64(retrans) {
		return fmt.Sprintf("%d B in %d packets, want %.0f ±1%% (+%d retransmitted)", r.Forward.Bytes, r.Forward.Packets, want, retrans)
	}
	return ""
}

// TestSoakChurn starts and stops 1,000 namespaces with veths, 10 at a
// time, while each sends a transfer of its own size to the round's
// server: every transfer is counted exactly, nothing stays attached once
// its interface is gone (flowmap_attached_interfaces back to 0), and the
// agent's RSS after the last round is within 25 % of its RSS after the
// tenth.
func TestSoakChurn(t *testing.T) {
	testenv.MustBeRoot(t)
	testenv.MustHaveBTF(t)
	testenv.MustHaveCommand(t, "go")
	if err := sandbox.Cleanup("fmch"); err != nil {
		t.Fatal(err)
	}
	bin := buildFlowmap(t)
	p := startAgent(t, bin, "--interfaces", "fmch-*", "--no-inventory")
	pid := p.cmd.Process.Pid
	rounds, perRound := soakRounds(t), 10
	var rss10 uint64
	var counted, missed int
	for round := range rounds {
		sb, err := sandbox.New(sandbox.Options{Prefix: "fmch", Subnet: soakSubnet})
		if err != nil {
			t.Fatalf("round %d: sandbox: %v", round, err)
		}
		srv := addHost(t, sb, "s")
		waitAttached(t, srv)
		type sent struct {
			src     netip.Addr
			port    uint16
			size    int
			retrans uint64
		}
		var all []sent
		for i := range perRound - 1 {
			h := addHost(t, sb, fmt.Sprintf("h%d", i))
			waitAttached(t, h)
			size := 10_000 + 1000*(round*perRound+i)
			port, retrans := sendTo(t, h, srv, size)
			all = append(all, sent{h.Addr, port, size, retrans})
		}
		sentAt := time.Now()
		for _, s := range all {
			r := findFlow(t, p, s.src, srv.Addr, s.port, sentAt)
			switch {
			case r == nil:
				missed++
				t.Errorf("round %d: transfer %s → %s:%d of %d B not counted", round, s.src, srv.Addr, s.port, s.size)
			default:
				counted++
				if msg := exactly(r, s.size, s.retrans); msg != "" {
					t.Errorf("round %d: transfer %s → %s:%d: %s; record %+v", round, s.src, srv.Addr, s.port, msg, *r)
				}
			}
		}
		if err := sb.Close(); err != nil {
			t.Fatalf("round %d: close sandbox: %v", round, err)
		}
		if round == max(rounds/10, 1)-1 {
			rss10 = procStatus(t, pid, "VmRSS")
		}
	}
	// The last interfaces' release is seen through link events.
	deadline := time.Now().Add(10 * time.Second)
	for metric(p.get(t, "/metrics"), "flowmap_attached_interfaces") != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("flowmap_attached_interfaces = %v 10s after the last namespace went, want 0", metric(p.get(t, "/metrics"), "flowmap_attached_interfaces"))
		}
		time.Sleep(100 * time.Millisecond)
	}
	rss := procStatus(t, pid, "VmRSS")
	t.Logf("%d namespaces: %d transfers counted, %d missed; RSS %d MiB after round %d, %d MiB after round %d", rounds*perRound, counted, missed, rss10>>20, max(rounds/10, 1), rss>>20, rounds)
	if float64(rss) > 1.25*float64(rss10) {
		t.Errorf("agent RSS %d MiB after %d rounds, want within 25%% of %d MiB after round %d", rss>>20, rounds, rss10>>20, max(rounds/10, 1))
	}
}

// soakRounds is TestSoakChurn's rounds: 100, or $FLOWMAP_SOAK_ROUNDS.
func soakRounds(t *testing.T) int {
	if s := os.Getenv("FLOWMAP_SOAK_ROUNDS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			t.Fatalf("FLOWMAP_SOAK_ROUNDS=%q: want a whole number, 1 or more", s)
		}
		return n
	}
	return 100
}

// TestSoakKill kills the agent with SIGKILL at random moments of its
// drains (every 100 ms) while traffic runs, 10 times, and starts it
// again: nothing is left attached after each kill (the TCX links die with
// the process), and each new agent counts a transfer exactly.
func TestSoakKill(t *testing.T) {
	testenv.MustBeRoot(t)
	testenv.MustHaveBTF(t)
	testenv.MustHaveCommand(t, "go")
	if err := sandbox.Cleanup("fmkl"); err != nil {
		t.Fatal(err)
	}
	sb := sandboxtest.New(t, sandbox.Options{Prefix: "fmkl", Subnet: soakSubnet})
	a, b := addHost(t, sb, "a"), addHost(t, sb, "b")
	bin := buildFlowmap(t)
	// Background traffic, so that every drain has flows to take: b
	// connects to a again and again, until the test ends.
	ln, err := a.Listen("tcp4", a.Addr.String()+":0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); ln.Close(); wg.Wait() })
	wg.Add(2)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(io.Discard, c); c.Close() }()
		}
	}()
	go func() {
		defer wg.Done()
		for ctx.Err() == nil {
			c, err := b.DialContext(ctx, "tcp4", ln.Addr().String())
			if err != nil {
				continue
			}
			c.Write(make([]byte, 50_000))
			c.Close()
		}
	}()
	for i := range 10 {
		p := startAgent(t, bin, "--interfaces", "fmkl-*", "--interval", "100ms", "--no-inventory")
		port, retrans := sendTo(t, a, b, 200_000)
		r := findFlow(t, p, a.Addr, b.Addr, port, time.Now())
		if r == nil {
			t.Fatalf("run %d: transfer not counted", i)
		}
		if msg := exactly(r, 200_000, retrans); msg != "" {
			t.Errorf("run %d: %s", i, msg)
		}
		// A random moment of the interval, after the next drain began.
		time.Sleep(time.Duration(10+i*9) * time.Millisecond)
		p.cmd.Process.Kill()
		<-p.done
		p.done <- nil
		for _, h := range []*sandbox.Host{a, b} {
			if n := testenv.TCXPrograms(t, h.HostIfIndex); n != 0 {
				t.Errorf("run %d: %s: %d TCX programs left after SIGKILL", i, h.HostIf, n)
			}
		}
	}
}
