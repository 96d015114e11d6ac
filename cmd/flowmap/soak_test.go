//go:build soak

package main

// The soak tests (make soak): long runs under hostile traffic and faults,
// outside make test. Each needs root, BPF and the tools it names.

import (
	"bufio"
	"bytes"
	"context"
	"debug/elf"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/flowmap/flowmap/flows"
	"github.com/flowmap/flowmap/internal/sandboxtest"
	"github.com/flowmap/flowmap/internal/testenv"
	"github.com/flowmap/flowmap/model"
	"github.com/flowmap/flowmap/sandbox"
	"github.com/flowmap/flowmap/server"
)

// soakSubnet is the soak tests' sandbox subnet, apart from the other
// packages', the demo's and the Kubernetes box's, which may be up meanwhile;
// within graphSubnet, whose tests never run in one go test with these.
var soakSubnet = netip.MustParsePrefix("198.51.100.176/28")

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

// daemonSetMemory is what deploy/kubernetes/daemonset.yaml gives the
// agent's memory: its limit, GOMEMLIMIT, and the agent flags that bound
// what it holds (the stores' bytes, the flow maps, the interval).
type daemonSetMemory struct {
	limit    int64
	goMemEnv string // GOMEMLIMIT as set, e.g. "100MiB"
	goMem    int64
	args     []string
}

// memoryFlags are the agent flags that bound its memory.
var memoryFlags = []string{"--keep-bytes", "--keep", "--graph-max-bytes", "--names-max-bytes",
	"--metrics-max-edges", "--export-queue-bytes", "--max-flows", "--max-l7-flows", "--interval"}

func readDaemonSetMemory(t *testing.T) daemonSetMemory {
	t.Helper()
	c := readDaemonSet(t).Spec.Template.Spec.Containers[0]
	var m daemonSetMemory
	m.limit = c.Resources.Limits.Memory().Value()
	for _, e := range c.Env {
		if e.Name == "GOMEMLIMIT" {
			m.goMemEnv = e.Value
			q := resource.MustParse(strings.TrimSuffix(e.Value, "B")) // Go's MiB is Kubernetes' Mi
			m.goMem = q.Value()
		}
	}
	if m.limit == 0 || m.goMem == 0 {
		t.Fatalf("daemonset.yaml: memory limit %d, GOMEMLIMIT %q: want both", m.limit, m.goMemEnv)
	}
	for _, a := range c.Args {
		for _, f := range memoryFlags {
			if strings.HasPrefix(a, f+"=") {
				m.args = append(m.args, a)
			}
		}
	}
	// The DaemonSet drains at the default interval, not the tests' 200 ms.
	if !slices.ContainsFunc(m.args, func(a string) bool { return strings.HasPrefix(a, "--interval=") }) {
		m.args = append(m.args, "--interval="+flows.DefaultInterval.String())
	}
	return m
}

// budget is the agent's memory budget under the DaemonSet's limit, in
// bytes: the BPF maps, full (kernel memory, charged to the cgroup, not in RSS),
// the Go runtime (GOMEMLIMIT: heap, stacks and the runtime's own; a soft
// limit, given 10 % over it), and the binary's text and data (file pages,
// in RSS; charged to the cgroup of whoever read them first: in a pod, the
// pod).
type budget struct {
	maps, goMem, binary uint64
}

// rss is the agent's resident memory at most: Go and the binary.
func (b budget) rss() uint64 { return b.goMem + b.goMem/10 + b.binary }

// cgroup is what the pod's cgroup holds at most: the maps besides.
func (b budget) cgroup() uint64 { return b.maps + b.rss() }

func (b budget) String() string {
	return fmt.Sprintf("maps %d MiB + GOMEMLIMIT %d MiB (+10 %%) + binary %d MiB = %d MiB (RSS %d MiB)",
		b.maps>>20, b.goMem>>20, b.binary>>20, b.cgroup()>>20, b.rss()>>20)
}

// mapsFull is the kernel memory of the maps of the agent's TCX programs on
// ifindex, each full (the maps allocated as they fill, the L7 ones, at
// their max entries).
func mapsFull(t *testing.T, ifindex int) uint64 {
	t.Helper()
	ncpu, err := ebpf.PossibleCPU()
	if err != nil {
		t.Fatal(err)
	}
	var progs []*ebpf.Program
	var sum uint64
	for _, at := range []ebpf.AttachType{ebpf.AttachTCXIngress, ebpf.AttachTCXEgress} {
		res, err := link.QueryPrograms(link.QueryOptions{Target: ifindex, Attach: at})
		if err != nil || len(res.Programs) != 1 {
			t.Fatalf("query %s programs on ifindex %d: %v, want the agent's one", at, ifindex, err)
		}
		prog, err := ebpf.NewProgramFromID(res.Programs[0].ID)
		if err != nil {
			t.Fatalf("open program %d: %v", res.Programs[0].ID, err)
		}
		defer prog.Close()
		progs = append(progs, prog)
	}
	mem, err := flows.MapsOf(progs...)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range mem {
		sum += m.At(ncpu)
	}
	if sum == 0 {
		t.Fatalf("no maps of the agent's programs on ifindex %d", ifindex)
	}
	return sum
}

// binarySize is the text and data of an ELF binary: what of it can be
// resident.
func binarySize(t *testing.T, bin string) uint64 {
	t.Helper()
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var n uint64
	for _, p := range f.Progs {
		if p.Type == elf.PT_LOAD {
			n += p.Filesz
		}
	}
	return n
}

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
	v, ok := procField(pid, field)
	if !ok {
		t.Fatalf("no %s in /proc/%d/status", field, pid)
	}
	return v
}

// procField returns a field of /proc/pid/status, in bytes for kB fields,
// or false if the process has none: it exited (a zombie has no memory
// fields) or is gone.
func procField(pid int, field string) (uint64, bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, false
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, field+":"); ok {
			f := strings.Fields(v)
			n, _ := strconv.ParseUint(f[0], 10, 64)
			if len(f) > 1 && f[1] == "kB" {
				n <<= 10
			}
			return n, true
		}
	}
	return 0, false
}

// exited reports how the agent ended, once it did (within 5 s of its
// memory fields going), with the OOM kills in its cgroup.
func exited(t *testing.T, p *agentProc, cg *memCgroup) string {
	t.Helper()
	select {
	case err := <-p.done:
		p.done <- err // for the cleanup
		return fmt.Sprintf("agent exited: %v; OOM kills in its cgroup: %d", err, cg.oomKills(t))
	case <-time.After(5 * time.Second):
		return fmt.Sprintf("agent has no memory fields but did not exit in 5s; OOM kills in its cgroup: %d", cg.oomKills(t))
	}
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
// in a memory cgroup limited as the DaemonSet limits it, with the
// DaemonSet's GOMEMLIMIT and memory flags: it is not OOM-killed, its RSS
// stays under the budget (see budget), every packet the hosts sent is
// counted in a flow, as map-full or as an evicted half-open attempt, and a
// 3 MB transfer between two other namespaces during the flood (while the
// flow map is full, if the flood fills it) is counted exactly.
func TestSoakSYNFlood(t *testing.T) {
	testenv.MustBeRoot(t)
	testenv.MustHaveBTF(t)
	hping := testenv.MustHaveCommand(t, "hping3")
	testenv.MustHaveCommand(t, "go")
	if err := sandbox.Cleanup("fmsoak"); err != nil {
		t.Fatal(err)
	}
	ds := readDaemonSetMemory(t)
	sb := sandboxtest.New(t, sandbox.Options{Prefix: "fmsoak", Subnet: soakSubnet})
	attacker, victim := addHost(t, sb, "atk"), addHost(t, sb, "vic")
	client, server := addHost(t, sb, "cli"), addHost(t, sb, "srv")
	hosts := []*sandbox.Host{attacker, victim, client, server}
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
	// The transfer's segments one skb each, so that the veths' packet
	// counters count what flowmap counts (a GSO skb is one there, its
	// segments in flowmap).
	for _, h := range []*sandbox.Host{client, server} {
		if out, err := h.Command(context.Background(), "ip", "link", "set", "dev", sandbox.PeerIf, "gso_max_segs", "1").CombinedOutput(); err != nil {
			t.Fatalf("%s: GSO of one segment at most: %v: %s", h.HostIf, err, out)
		}
	}

	bin := buildFlowmap(t)
	limit := ds.limit
	if v := os.Getenv("FLOWMAP_SOAK_LIMIT"); v != "" { // to watch the agent unlimited
		limit, _ = strconv.ParseInt(v, 10, 64)
	}
	cg := newMemCgroup(t, "flowmap-soak", limit)
	os.Setenv("GOMEMLIMIT", ds.goMemEnv)
	defer os.Unsetenv("GOMEMLIMIT")
	p := startAgentUnder(t, cg.run(bin), append([]string{"--interfaces", "fmsoak-*"}, ds.args...)...)
	pid := p.cmd.Process.Pid
	for _, h := range hosts {
		waitAttached(t, h)
	}
	m0 := p.get(t, "/metrics")
	b := budget{maps: mapsFull(t, attacker.HostIfIndex), goMem: uint64(ds.goMem), binary: binarySize(t, bin)}
	t.Logf("DaemonSet: limit %d MiB, GOMEMLIMIT %s, %v; budget: %v", ds.limit>>20, ds.goMemEnv, ds.args, b)
	if b.cgroup() > uint64(ds.limit) {
		t.Errorf("budget %v over the DaemonSet's limit of %d MiB", b, ds.limit>>20)
	}
	rx0 := make([]uint64, len(hosts))
	for i, h := range hosts {
		rx0[i] = rxPackets(t, h.HostIf)
	}

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

	// Sample memory every second; the transfer goes a third of the way
	// in, and is looked up two drains later, while the flood goes on (the
	// history keeps few of the flood's intervals).
	dur := soakDuration(t)
	logEvery := uint64(10)
	if v := os.Getenv("FLOWMAP_SOAK_LOG_EVERY"); v != "" {
		logEvery, _ = strconv.ParseUint(v, 10, 64)
	}
	var maxRSS, samples uint64
	var rec *model.Record
	var port uint16
	var retrans uint64
	const payload = 3_000_000
	start := time.Now()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for time.Since(start) < dur {
		select {
		case err := <-p.done:
			p.done <- err // for the cleanup
			t.Fatalf("agent exited after %s of flood: %v (OOM kills in its cgroup: %d; VmRSS before: max %d MiB)", time.Since(start).Round(time.Second), err, cg.oomKills(t), maxRSS>>20)
		case err := <-floodDone:
			t.Fatalf("hping3 exited after %s: %v\n%s", time.Since(start), err, floodOut.String())
		case <-tick.C:
		}
		rss, ok := procField(pid, "VmRSS")
		if !ok {
			t.Fatalf("after %s of flood: %s (VmRSS before: max %d MiB)", time.Since(start).Round(time.Second), exited(t, p, cg), maxRSS>>20)
		}
		maxRSS = max(maxRSS, rss)
		samples++
		if samples%logEvery == 0 {
			cur, _ := cg.usage(t)
			anon, _ := procField(pid, "RssAnon")
			m := p.get(t, "/metrics")
			t.Logf("%s of flood: agent RSS %d MiB (anon %d), cgroup %d MiB; Go heap in use %.0f MiB, next GC %.0f MiB, sys %.0f MiB",
				time.Since(start).Round(time.Second), rss>>20, anon>>20, cur>>20,
				metric(m, "go_memstats_heap_inuse_bytes")/(1<<20), metric(m, "go_memstats_next_gc_bytes")/(1<<20), metric(m, "go_memstats_sys_bytes")/(1<<20))
		}
		if port == 0 && time.Since(start) > dur/3 {
			// While the flood holds the flow map full, if it fills it:
			// the map-full count grows.
			t.Logf("transfer while the flow map is full: %v", waitMapFull(t, p))
			port, retrans = sendTo(t, client, server, payload)
			rec = findFlow(t, p, client.Addr, server.Addr, port, time.Now())
		}
	}
	flood.Process.Signal(syscall.SIGINT)
	select {
	case <-floodDone:
	case <-time.After(10 * time.Second):
		t.Errorf("hping3 still running 10s after SIGINT")
	}
	hwm, ok := procField(pid, "VmHWM")
	if !ok {
		t.Fatalf("after the flood: %s (VmRSS before: max %d MiB)", exited(t, p, cg), maxRSS>>20)
	}
	cur, peak := cg.usage(t)
	t.Logf("flood of %s: agent RSS max %d MiB (VmHWM %d MiB, budget %d MiB) over %d samples; cgroup %d MiB now, peak %d MiB of %d (budget %d MiB)",
		dur, maxRSS>>20, hwm>>20, b.rss()>>20, samples, cur>>20, peak>>20, limit>>20, b.cgroup()>>20)
	t.Logf("hping3: %s", strings.TrimSpace(floodOut.String()))
	if n := cg.oomKills(t); n > 0 {
		t.Errorf("%d OOM kills in the agent's cgroup", n)
	}
	if hwm > b.rss() {
		t.Errorf("agent VmHWM %d MiB, over its RSS budget of %d MiB", hwm>>20, b.rss()>>20)
	}

	// Every packet the hosts sent into the host went through a watched
	// ingress: counted in a flow (both directions of each), refused as
	// map-full, held as a half-open attempt and evicted by newer ones
	// (flowmap_tcp_half_open_evicted_packets_total), or skipped (ARP).
	// Until a drain changes no count: the flow series may take a batch
	// after /api/v1/flows has it, and held attempts leave as flows when
	// they time out.
	account := func(m string) (counted, refused, evicted, skipped float64) {
		return metricSum(m, "flowmap_flow_packets_total"), metricSum(m, "flowmap_flow_map_full_packets_total"),
			metricSum(m, "flowmap_tcp_half_open_evicted_packets_total"), metricSum(m, "flowmap_frames_skipped_total")
	}
	total := func(m string) float64 { c, r, e, s := account(m); return c + r + e + s }
	doc := waitDrains(t, p, 1, time.Now())
	m := p.get(t, "/metrics")
	for range 10 {
		doc = waitDrains(t, p, 1, doc.End)
		next := p.get(t, "/metrics")
		if total(next) == total(m) {
			break
		}
		m = next
	}
	var sent uint64
	for i, h := range hosts {
		sent += rxPackets(t, h.HostIf) - rx0[i]
	}
	c0, r0, e0, s0 := account(m0)
	c, r, e, sk := account(m)
	counted, refused, evicted, skipped := c-c0, r-r0, e-e0, sk-s0
	t.Logf("packets into the host %d: counted in flows %.0f, refused as map-full %.0f, half-open evicted %.0f, skipped %.0f; %s", sent, counted, refused, evicted, skipped, storeLines(m))
	if got := counted + refused + evicted + skipped; got != float64(sent) {
		t.Errorf("counted + map-full + half-open evicted + skipped = %.0f packets, want the %d the hosts sent (%+.0f)", got, sent, got-float64(sent))
	}
	// The transfer beside the flood, started while the flood held the
	// map full. A flow whose first packet meets a full map is refused
	// whole: until half-open connections are kept out of the flow maps
	// (issue 12), this fails.
	switch {
	case rec == nil:
		t.Errorf("transfer %s → %s:%d (%d B), started while the flood held the flow map full, not counted (map-full packets: %.0f): needs the half-open SYNs kept out of the flow maps", client.Addr, server.Addr, port, payload, refused)
	default:
		if msg := exactly(rec, payload, retrans); msg != "" {
			t.Errorf("transfer beside the flood: %s", msg)
		}
	}
	if p.stop(t, syscall.SIGTERM) != nil {
		t.Errorf("agent did not exit cleanly after the flood")
	}
}

// waitMapFull waits up to 10 s until the agent refuses packets for a
// full flow map, and reports whether it did: with half-open connections
// kept apart, a SYN flood may never fill it.
func waitMapFull(t *testing.T, p *agentProc) bool {
	t.Helper()
	full0 := metricSum(p.get(t, "/metrics"), "flowmap_flow_map_full_packets_total")
	deadline := time.Now().Add(10 * time.Second)
	for metricSum(p.get(t, "/metrics"), "flowmap_flow_map_full_packets_total") == full0 {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
	return true
}

// metricSum is the sum of every series of a metric in metrics.
func metricSum(metrics, name string) float64 {
	var sum float64
	for _, l := range strings.Split(metrics, "\n") {
		rest, ok := strings.CutPrefix(l, name)
		if !ok || (rest != "" && rest[0] != '{' && rest[0] != ' ') {
			continue
		}
		f := strings.Fields(rest[strings.LastIndexByte(rest, '}')+1:])
		if len(f) == 0 {
			continue
		}
		v, _ := strconv.ParseFloat(f[0], 64)
		sum += v
	}
	return sum
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
	doc := waitDrains(t, p, 2, sent)
	for i, r := range doc.Flows {
		if r.Src == src && r.Dst == dst && r.DstPort == port {
			return &doc.Flows[i]
		}
	}
	return nil
}

// waitDrains waits until n drains ended after since and returns the
// agent's /api/v1/flows then.
func waitDrains(t *testing.T, p *agentProc, n int, since time.Time) server.FlowsDoc {
	t.Helper()
	// Two of the DaemonSet's 5 s intervals and their processing, under a
	// flood, on a busy machine.
	deadline := time.Now().Add(15 * time.Duration(n) * time.Second)
	var doc server.FlowsDoc
	for drains, end := 0, since; drains < n; {
		if time.Now().After(deadline) {
			t.Fatalf("the agent drained no %d intervals in %s", n, 15*time.Duration(n)*time.Second)
		}
		if doc = p.flowsDoc(t); doc.End.After(end) {
			drains, end = drains+1, doc.End
			continue
		}
		time.Sleep(20 * time.Millisecond)
	}
	return doc
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

// TestSoakKill kills the agent with SIGKILL at moments spread over its
// drains (every 100 ms) while traffic runs, 5 times in each attach mode,
// and starts it again. With TCX nothing is left attached after a kill (the
// links die with the process); with clsact the dead agent's filters stay,
// and the next agent removes them (flowmap_leftover_filters_removed) and
// attaches its own, two an interface, not more. Each new agent counts a
// transfer exactly, and the last, stopped, leaves no filter and no qdisc.
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
			c.SetDeadline(time.Now().Add(5 * time.Second))
			c.Write(make([]byte, 50_000))
			c.Close()
		}
	}()
	hosts := []*sandbox.Host{a, b}
	for _, mode := range []string{"tcx", "clsact"} {
		t.Run(mode, func(t *testing.T) {
			programs := func(h *sandbox.Host) int {
				if mode == "clsact" {
					return testenv.ClsactFilters(t, h.HostIfIndex)
				}
				return testenv.TCXPrograms(t, h.HostIfIndex)
			}
			start := func(run int) *agentProc {
				p := startAgent(t, bin, "--interfaces", "fmkl-*", "--interval", "100ms", "--no-inventory", "--attach", mode)
				deadline := time.Now().Add(10 * time.Second)
				for _, h := range hosts {
					for programs(h) != 2 {
						if time.Now().After(deadline) {
							t.Fatalf("run %d: %s: %d programs after the restart, want 2 (ingress and egress)", run, h.HostIf, programs(h))
						}
						time.Sleep(10 * time.Millisecond)
					}
				}
				return p
			}
			const runs = 5
			for i := range runs {
				p := start(i)
				if mode == "clsact" && i > 0 {
					// The dead agent's two filters on each interface.
					if n := metric(p.get(t, "/metrics"), "flowmap_leftover_filters_removed"); n != 4 {
						t.Errorf("run %d: flowmap_leftover_filters_removed = %v, want 4", i, n)
					}
				}
				port, retrans := sendTo(t, a, b, 200_000)
				r := findFlow(t, p, a.Addr, b.Addr, port, time.Now())
				if r == nil {
					t.Fatalf("run %d: transfer not counted", i)
				}
				if msg := exactly(r, 200_000, retrans); msg != "" {
					t.Errorf("run %d: %s", i, msg)
				}
				// A moment spread over the interval, after the next
				// drain began.
				time.Sleep(time.Duration(10+i*19) * time.Millisecond)
				p.cmd.Process.Kill()
				<-p.done
				p.done <- nil
				if mode == "tcx" {
					for _, h := range hosts {
						if n := programs(h); n != 0 {
							t.Errorf("run %d: %s: %d TCX programs left after SIGKILL", i, h.HostIf, n)
						}
					}
				}
			}
			// The last: cleans up the dead agent's, and its own on SIGTERM.
			p := start(runs)
			if err := p.stop(t, syscall.SIGTERM); err != nil {
				t.Errorf("agent exit after SIGTERM: %v", err)
			}
			for _, h := range hosts {
				if n := programs(h); n != 0 {
					t.Errorf("%s: %d programs left after SIGTERM", h.HostIf, n)
				}
				if testenv.HasClsact(t, h.HostIfIndex) {
					t.Errorf("%s: clsact qdisc left after SIGTERM", h.HostIf)
				}
			}
		})
	}
}
