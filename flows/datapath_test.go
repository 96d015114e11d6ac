package flows

import (
	"context"
	"errors"
	"maps"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/google/gopacket/layers"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/flowmap/flowmap/internal/testenv"
	"github.com/flowmap/flowmap/model"
)

// TestNotBlockedByDrain checks that /metrics, the names reader and the
// attachment registry answer while a drain is in progress: the drain is
// held inside its conntrack dump, the slowest step of a drain on a busy
// host.
func TestNotBlockedByDrain(t *testing.T) {
	testenv.MustBeRoot(t)
	testenv.MustHaveBTF(t)
	d := newTestDatapath(t)
	inDump := make(chan struct{})
	release := make(chan struct{})
	var releaseOnce sync.Once
	// Cleanups run last first: the drain is released before Close.
	t.Cleanup(func() { releaseOnce.Do(func() { close(release) }) })
	d.conntrack = func([]bpfFlowKey, func(*netlink.ConntrackFlow)) (int, error) {
		close(inDump)
		<-release
		return 0, nil
	}
	// A flow, so that the drain reads conntrack to join NATed directions.
	putFlow(t, d, "192.0.2.1", 0)

	drained := make(chan error, 1)
	go func() {
		_, err := d.Drain(time.Now())
		drained <- err
	}()
	select {
	case <-inDump:
	case <-time.After(5 * time.Second):
		t.Fatal("drain did not read conntrack within 5s")
	}

	// Every call starts at once and has 5s in all, so that the old
	// single lock fails in 5s, not in 5s a call.
	calls := []struct {
		name string
		call func()
	}{
		{"Stats", func() {
			if got := d.Stats().Drains; got != 0 {
				t.Errorf("Stats().Drains = %d during the first drain, want 0: a drain counts when it ends", got)
			}
		}},
		{"Collect", func() { testutil.CollectAndCount(NewCollector(d)) }},
		{"Gather", func() {
			reg := prometheus.NewPedanticRegistry()
			reg.MustRegister(NewCollector(d))
			if _, err := reg.Gather(); err != nil {
				t.Errorf("Gather: %v", err)
			}
		}},
		{"Attached", func() { d.Attached() }},
		{"Ready", func() { d.Ready() }},
		{"addName", func() { d.addName(model.Name{Name: "example.com"}) }},
		{"badName", func() { d.badName() }},
		{"update", func() {
			l := &netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Name: "gone0", Index: 1 << 30}}
			d.update(netlink.LinkUpdate{Header: unix.NlMsghdr{Type: unix.RTM_DELLINK}, Link: l}, nil)
		}},
	}
	done := make([]chan struct{}, len(calls))
	for i, c := range calls {
		done[i] = make(chan struct{})
		go func() {
			defer close(done[i])
			c.call()
		}()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for i, c := range calls {
		select {
		case <-done[i]:
		case <-ctx.Done():
			t.Errorf("%s did not return within 5s while a drain was blocked in its conntrack dump, want it not to wait for the drain", c.name)
		}
	}
	if t.Failed() {
		return
	}

	releaseOnce.Do(func() { close(release) })
	select {
	case err := <-drained:
		if err != nil {
			t.Fatalf("Drain: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("drain did not end within 5s of conntrack's answer")
	}
	s := d.Stats()
	if s.Drains != 1 || s.NamesUndecoded != 1 || s.LastEntries != 1 {
		t.Errorf("Stats after the drain: Drains %d, NamesUndecoded %d, LastEntries %d; want 1, 1, 1", s.Drains, s.NamesUndecoded, s.LastEntries)
	}
}

// newTestDatapath loads a datapath that attaches nothing, and closes it
// when t ends.
func newTestDatapath(t *testing.T) *Datapath {
	t.Helper()
	d, err := New(Config{})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() {
		if err := d.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return d
}

// putFlow adds a TCP flow from src:40000 to 192.0.2.200:80, counted at the
// TC ingress of ifindex, to the half the programs write.
func putFlow(t *testing.T, d *Datapath, src string, ifindex uint32) {
	t.Helper()
	k, _ := flowKey(src, "192.0.2.200", 40000, 80, 6, 0).v4()
	v := bpfFlowStats{Bytes: 100, Packets: 1, Ifindex: ifindex, Point: uint8(bpfPointPOINT_TC_INGRESS)}
	if err := d.drain.halves[d.drain.cur].v4.Put(k, v); err != nil {
		t.Fatalf("put flow from %s: %v", src, err)
	}
}

// TestDrainNamesReleased checks that a drain names the flows of interfaces
// released since the last one, then forgets those released before it
// began, but not one released while it ran, which may have counted in the
// half the next drain reads.
func TestDrainNamesReleased(t *testing.T) {
	testenv.MustBeRoot(t)
	testenv.MustHaveBTF(t)
	d := newTestDatapath(t)
	before := model.Interface{Index: 1<<30 + 1, Name: "before0", Kind: "veth", PeerNetNSID: 3}
	during := model.Interface{Index: 1<<30 + 2, Name: "during0", Kind: "veth", PeerNetNSID: 4}
	d.regMu.Lock()
	d.known[before.Index] = before // attached, then released before the drain
	d.known[during.Index] = during
	d.attached[during.Index] = &attachment{iface: during}
	d.regMu.Unlock()
	release := true
	d.conntrack = func([]bpfFlowKey, func(*netlink.ConntrackFlow)) (int, error) {
		if release {
			d.regMu.Lock()
			if err := d.releaseLocked(during.Index); err != nil {
				t.Errorf("release %s: %v", during.Name, err)
			}
			d.regMu.Unlock()
			release = false
		}
		return 0, nil
	}
	srcIfs := func(b model.Batch) map[string]string {
		out := map[string]string{}
		for _, r := range b.Records {
			out[r.Src.String()] = r.SrcIf.Name
		}
		return out
	}
	known := func() map[string]bool {
		d.regMu.Lock()
		defer d.regMu.Unlock()
		out := map[string]bool{}
		for _, i := range d.known {
			out[i.Name] = true
		}
		return out
	}

	putFlow(t, d, "192.0.2.1", uint32(before.Index))
	putFlow(t, d, "192.0.2.2", uint32(during.Index))
	b, err := d.Drain(time.Now())
	if err != nil {
		t.Fatalf("first Drain: %v", err)
	}
	if got, want := srcIfs(b), map[string]string{"192.0.2.1": "before0", "192.0.2.2": "during0"}; !maps.Equal(got, want) {
		t.Errorf("first drain's source interfaces = %v, want %v", got, want)
	}
	if got, want := known(), map[string]bool{"during0": true}; !maps.Equal(got, want) {
		t.Errorf("known after the first drain = %v, want %v", got, want)
	}

	// What during0 counted after the first flip, before its release.
	putFlow(t, d, "192.0.2.3", uint32(during.Index))
	b, err = d.Drain(time.Now())
	if err != nil {
		t.Fatalf("second Drain: %v", err)
	}
	if got, want := srcIfs(b), map[string]string{"192.0.2.3": "during0"}; !maps.Equal(got, want) {
		t.Errorf("second drain's source interfaces = %v, want %v", got, want)
	}
	if got := known(); len(got) != 0 {
		t.Errorf("known after the second drain = %v, want none", got)
	}
}

// TestDrainFailureKeeps checks that a drain that fails after it emptied
// the IPv4 map hands what it took out with the next batch, and that the
// IPv6 map it did not reach is drained later: nothing is lost.
func TestDrainFailureKeeps(t *testing.T) {
	testenv.MustBeRoot(t)
	testenv.MustHaveBTF(t)
	d := newTestDatapath(t)
	d.conntrack = func([]bpfFlowKey, func(*netlink.ConntrackFlow)) (int, error) { return 0, nil }
	putFlow(t, d, "192.0.2.1", 0)
	k6 := flowKey("2001:db8::1", "2001:db8::2", 40000, 80, 6, 0)
	v := bpfFlowStats{Bytes: 200, Packets: 2, Point: uint8(bpfPointPOINT_TC_INGRESS)}
	if err := d.drain.halves[d.drain.cur].v6.Put(k6, v); err != nil {
		t.Fatalf("put IPv6 flow: %v", err)
	}
	injected := errors.New("injected after the IPv4 map")
	d.drain.fault = func(step string) error {
		if step == "v4" {
			return injected
		}
		return nil
	}
	if _, err := d.Drain(time.Now()); !errors.Is(err, injected) {
		t.Fatalf("first Drain: err %v, want the injected error", err)
	}
	if s := d.Stats(); s.DrainErrors != 1 || s.DrainKept != 1 {
		t.Errorf("after the failed drain: DrainErrors %d, DrainKept %d; want 1, 1", s.DrainErrors, s.DrainKept)
	}
	d.drain.fault = nil
	got := map[string]uint64{}
	for i := range 2 {
		b, err := d.Drain(time.Now())
		if err != nil {
			t.Fatalf("drain %d after the failure: %v", i+1, err)
		}
		for _, r := range b.Records {
			got[r.Src.String()] += r.Forward.Bytes
		}
	}
	if want := map[string]uint64{"192.0.2.1": 100, "2001:db8::1": 200}; !maps.Equal(got, want) {
		t.Errorf("bytes by source in the two drains after a failed one = %v, want %v", got, want)
	}
	if s := d.Stats(); s.DrainKept != 0 {
		t.Errorf("DrainKept after a good drain = %d, want 0", s.DrainKept)
	}
}

// TestDrainFlipExact runs the ingress program on every CPU while drains
// flip the buffer under it, and checks that the drains' batches hold
// every packet: none lands in a half after it was read, none is counted
// in a cache slot after it was emptied.
//
// One packet a BPF_PROG_TEST_RUN call: with a repeat above one, a signal
// (Go's SIGURG preemption, more often under load) ends the call with
// EINTR after some runs, and cilium/ebpf's Program.Run then runs it again
// from the start, repeat times: the runs before the signal count twice.
// That was the over-count CI saw (800,084 of 800,000, and 800,122 once
// before). With repeat 1 the kernel checks that it is done before it
// looks for a signal, and Run takes EINTR for success.
//
// One worker a CPU, each pinned to its own: BPF_PROG_TEST_RUN runs a TC
// program with migration disabled but preemption enabled (the kernel's
// bpf_test_run, NO_MIGRATE), so two workers on one CPU could preempt each
// other inside the program and race on that CPU's cache slot. Real TC and
// XDP programs run in softirq or with bottom halves disabled: never
// preempted on their CPU.
func TestDrainFlipExact(t *testing.T) {
	testenv.MustBeRoot(t)
	testenv.MustHaveBTF(t)
	d := newTestDatapath(t)
	d.conntrack = func([]bpfFlowKey, func(*netlink.ConntrackFlow)) (int, error) { return 0, nil }
	frame := buildFrame(t, ethL(layers.EthernetTypeIPv4), ip4L("198.51.100.2", "198.51.100.3", layers.IPProtocolUDP),
		udpL(7000, 7001), payloadL(30))
	const total = 400_000 // packets
	var allowed unix.CPUSet
	if err := unix.SchedGetaffinity(0, &allowed); err != nil {
		t.Fatalf("CPUs allowed: %v", err)
	}
	var cpuIDs []int
	for c := 0; len(cpuIDs) < allowed.Count(); c++ {
		if allowed.IsSet(c) {
			cpuIDs = append(cpuIDs, c)
		}
	}
	workers := len(cpuIDs)
	runs := total / workers // Program.Run calls a worker
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for _, cpu := range cpuIDs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// The thread ends with the goroutine: it is left pinned.
			runtime.LockOSThread()
			var cpus unix.CPUSet
			cpus.Set(cpu)
			if err := unix.SchedSetaffinity(0, &cpus); err != nil {
				t.Errorf("pin worker to CPU %d: %v", cpu, err)
				return
			}
			for range runs {
				if _, err := d.objs.TcIngress.Run(&ebpf.RunOptions{Data: frame}); err != nil {
					t.Errorf("run tc_ingress: %v", err)
					return
				}
			}
		}()
	}
	go func() { wg.Wait(); close(stop) }()
	var packets uint64
	var drains int
	sum := func() {
		b, err := d.Drain(time.Now())
		if err != nil {
			t.Fatalf("Drain: %v", err)
		}
		drains++
		for _, r := range b.Records {
			packets += r.Forward.Packets + r.Reverse.Packets
		}
	}
	for done := false; !done; {
		select {
		case <-stop:
			done = true
		default:
		}
		sum()
	}
	// The last two drains read both halves after the programs stopped.
	sum()
	sum()
	s := d.Stats()
	if want := uint64(workers * runs); packets != want {
		t.Errorf("%d drains counted %d packets, want %d (%d lost)", drains, packets, want, int64(want)-int64(packets))
	}
	if s.GraceWaits != 0 {
		t.Errorf("%d drains slept instead of waiting for the programs, want 0", s.GraceWaits)
	}
	t.Logf("%d drains, %.2f ms each on average (the wait for the programs included)", drains, 1e3*s.DrainSeconds/float64(s.Drains))
}
