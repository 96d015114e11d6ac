package flows_test

import (
	"slices"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/flowmap/flowmap/flows"
	"github.com/flowmap/flowmap/internal/sandboxtest"
	"github.com/flowmap/flowmap/internal/testenv"
	"github.com/flowmap/flowmap/model"
	"github.com/flowmap/flowmap/sandbox"
)

// The verdicts of the test's own programs: TC_ACT_UNSPEC (TCX_NEXT) goes
// on to the next program; TC_ACT_OK (TCX_PASS) ends the chain and passes
// the packet to the stack, as a CNI's program does.
const (
	actUnspec = -1
	actOK     = 0
)

// cniProgram loads a TC program of the test's own, as a CNI's stands in
// for, that returns verdict; name is its kernel name.
func cniProgram(t *testing.T, name string, verdict int32) *ebpf.Program {
	t.Helper()
	p, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:    name,
		Type:    ebpf.SchedCLS,
		License: "GPL",
		Instructions: asm.Instructions{
			asm.Mov.Imm(asm.R0, verdict),
			asm.Return(),
		},
	})
	if err != nil {
		t.Fatalf("load program %s: %v", name, err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

func progID(t *testing.T, p *ebpf.Program) ebpf.ProgramID {
	t.Helper()
	info, err := p.Info()
	if err != nil {
		t.Fatalf("program info: %v", err)
	}
	id, _ := info.ID()
	return id
}

// cniFilter puts p at priority 1, handle 1 of ifindex's clsact ingress and
// egress, replacing what is there, as Cilium does (netlink.FilterReplace
// at its TCFilterPriority, 1); it adds the qdisc where there is none.
func cniFilter(t *testing.T, ifindex int, p *ebpf.Program) {
	t.Helper()
	q := &netlink.GenericQdisc{
		QdiscAttrs: netlink.QdiscAttrs{LinkIndex: ifindex, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT},
		QdiscType:  "clsact",
	}
	if err := netlink.QdiscReplace(q); err != nil {
		t.Fatalf("add clsact qdisc to %d: %v", ifindex, err)
	}
	for _, parent := range []uint32{netlink.HANDLE_MIN_INGRESS, netlink.HANDLE_MIN_EGRESS} {
		f := &netlink.BpfFilter{
			FilterAttrs: netlink.FilterAttrs{LinkIndex: ifindex, Parent: parent, Handle: 1,
				Protocol: unix.ETH_P_ALL, Priority: 1},
			Fd: p.FD(), Name: "cni", DirectAction: true,
		}
		if err := netlink.FilterReplace(f); err != nil {
			t.Fatalf("replace filter at priority 1, handle 1 on %d: %v", ifindex, err)
		}
	}
}

// bpfFilters returns the program ids of the BPF filters on ifindex's
// clsact ingress and egress, by priority.
func bpfFilters(t *testing.T, ifindex int) map[uint16][]ebpf.ProgramID {
	t.Helper()
	l, err := netlink.LinkByIndex(ifindex)
	if err != nil {
		t.Fatalf("link %d: %v", ifindex, err)
	}
	out := map[uint16][]ebpf.ProgramID{}
	for _, parent := range []uint32{netlink.HANDLE_MIN_INGRESS, netlink.HANDLE_MIN_EGRESS} {
		fs, _ := netlink.FilterList(l, parent)
		for _, f := range fs {
			if bf, ok := f.(*netlink.BpfFilter); ok {
				out[f.Attrs().Priority] = append(out[f.Attrs().Priority], ebpf.ProgramID(bf.Id))
			}
		}
	}
	return out
}

// TestClsactNeighbour runs flowmap on clsact beside a CNI's filter at
// priority 1, handle 1 (a program of the test's own, which lets packets go
// on), attached before flowmap starts and replaced while it runs: flowmap
// is not overwritten (it counts the flow), is reported as bypassable on
// that interface, and its Close leaves the CNI's filter and the qdisc it
// hangs on, where it removes its own from the other host's interface, and
// the qdisc it made there.
func TestClsactNeighbour(t *testing.T) {
	testenv.MustBeRoot(t)
	testenv.MustHaveBTF(t)
	for _, when := range []string{"before", "after"} {
		t.Run("cni "+when, func(t *testing.T) {
			const prefix = "fmnb"
			if err := sandbox.Cleanup(prefix); err != nil {
				t.Fatalf("remove leftovers: %v", err)
			}
			sb := sandboxtest.New(t, sandbox.Options{Prefix: prefix, Subnet: e2eSubnet})
			a := mustHost(t, sb, "a")
			b := mustHost(t, sb, "b")
			cni := cniProgram(t, "cni_from_ctr", actUnspec)
			cniID := progID(t, cni)
			if when == "before" {
				cniFilter(t, a.HostIfIndex, cni)
			}
			c := runDatapath(t, flows.Config{Interfaces: []string{prefix + "-*"}, Attach: flows.AttachClsact})
			if when == "after" {
				// The CNI's replace, at its slot: not flowmap's.
				cniFilter(t, a.HostIfIndex, cni)
			}
			progs := c.dp.Programs()
			ours := []ebpf.ProgramID{progID(t, progs["tc_ingress"]), progID(t, progs["tc_egress"])}
			got := bpfFilters(t, a.HostIfIndex)
			if want := []ebpf.ProgramID{cniID, cniID}; !slices.Equal(got[1], want) {
				t.Errorf("%s: programs at priority 1 = %v, want the CNI's %v", a.HostIf, got[1], want)
			}
			var flowmaps []ebpf.ProgramID
			for prio, ids := range got {
				if prio != 1 {
					flowmaps = append(flowmaps, ids...)
				}
			}
			slices.Sort(flowmaps)
			slices.Sort(ours)
			if !slices.Equal(flowmaps, ours) {
				t.Errorf("%s: flowmap's filters run %v, want its own %v (filters: %v)", a.HostIf, flowmaps, ours, got)
			}

			port, n := exchangeUDP(t, a, b, 10, 100, 100)
			r := one(t, find(c.flows(t), a.Addr, b.Addr, model.ProtoUDP, port))
			if r.Forward.Packets != uint64(n) || r.Reverse.Packets != uint64(n) {
				t.Errorf("counted %d, %d packets; want %d each way", r.Forward.Packets, r.Reverse.Packets, n)
			}
			waitFor(t, 5*time.Second, "the CNI's filter reported", func() bool { return c.dp.Stats().Bypassable == 1 })
			bs := c.dp.Bypassed()
			if len(bs) != 2 || bs[0].Ifname != a.HostIf || bs[0].Program != cniID || bs[0].Priority != 1 || bs[0].Attach != "clsact" {
				t.Errorf("Bypassed() = %+v, want %s's ingress and egress, by program %d at priority 1 on clsact", bs, a.HostIf, cniID)
			}

			if err := c.dp.Close(); err != nil {
				t.Fatalf("Close: %v", err)
			}
			if got := bpfFilters(t, a.HostIfIndex); len(got) != 1 || !slices.Equal(got[1], []ebpf.ProgramID{cniID, cniID}) {
				t.Errorf("%s after Close: filters %v, want only the CNI's (%d) at priority 1, both ways", a.HostIf, got, cniID)
			}
			if !testenv.HasClsact(t, a.HostIfIndex) {
				t.Errorf("%s after Close: clsact qdisc deleted under the CNI's filters", a.HostIf)
			}
			if n := testenv.ClsactFilters(t, b.HostIfIndex); n != 0 {
				t.Errorf("%s after Close: %d filters, want 0", b.HostIf, n)
			}
			if testenv.HasClsact(t, b.HostIfIndex) {
				t.Errorf("%s after Close: flowmap's clsact qdisc left, with no filter on it", b.HostIf)
			}
		})
	}
}

// TestTCXNeighbour runs flowmap on TCX beside a CNI's program that ends
// the chain (TCX_PASS). Attached before flowmap, it does not hide the flow:
// flowmap goes to the head of the chain and counts every packet, and
// nothing is reported. Attached at the head after flowmap, it is reported
// (Stats.Bypassable, Bypassed) on that interface's ingress.
func TestTCXNeighbour(t *testing.T) {
	testenv.MustBeRoot(t)
	testenv.MustHaveBTF(t)
	const prefix = "fmnb"
	if err := sandbox.Cleanup(prefix); err != nil {
		t.Fatalf("remove leftovers: %v", err)
	}
	sb := sandboxtest.New(t, sandbox.Options{Prefix: prefix, Subnet: e2eSubnet})
	a := mustHost(t, sb, "a")
	b := mustHost(t, sb, "b")
	before := cniProgram(t, "cni_before", actOK)
	for _, at := range []ebpf.AttachType{ebpf.AttachTCXIngress, ebpf.AttachTCXEgress} {
		l, err := link.AttachTCX(link.TCXOptions{Interface: a.HostIfIndex, Program: before, Attach: at})
		if err != nil {
			t.Fatalf("attach the CNI's program to %s %s: %v", a.HostIf, at, err)
		}
		t.Cleanup(func() { l.Close() })
	}
	c := runDatapath(t, flows.Config{Interfaces: []string{prefix + "-*"}, Attach: flows.AttachTCX})
	progs := c.dp.Programs()
	for _, h := range []struct {
		at   ebpf.AttachType
		prog string
	}{{ebpf.AttachTCXIngress, "tc_ingress"}, {ebpf.AttachTCXEgress, "tc_egress"}} {
		res, err := link.QueryPrograms(link.QueryOptions{Target: a.HostIfIndex, Attach: h.at})
		if err != nil {
			t.Fatalf("query %s: %v", h.at, err)
		}
		if want := progID(t, progs[h.prog]); len(res.Programs) != 2 || res.Programs[0].ID != want {
			t.Errorf("%s %s chain = %v, want flowmap's %d first, then the CNI's", a.HostIf, h.at, res.Programs, want)
		}
	}
	port, n := exchangeUDP(t, a, b, 10, 100, 100)
	r := one(t, find(c.flows(t), a.Addr, b.Addr, model.ProtoUDP, port))
	if r.Forward.Packets != uint64(n) || r.Reverse.Packets != uint64(n) {
		t.Errorf("counted %d, %d packets behind the CNI's program; want %d each way", r.Forward.Packets, r.Reverse.Packets, n)
	}
	if bs := c.dp.Bypassed(); len(bs) != 0 {
		t.Errorf("Bypassed() = %+v with flowmap first everywhere, want none", bs)
	}

	head := cniProgram(t, "cni_head", actOK)
	l, err := link.AttachTCX(link.TCXOptions{Interface: a.HostIfIndex, Program: head, Attach: ebpf.AttachTCXIngress, Anchor: link.Head()})
	if err != nil {
		t.Fatalf("attach at the head of %s's ingress: %v", a.HostIf, err)
	}
	t.Cleanup(func() { l.Close() })
	waitFor(t, 5*time.Second, "the program at the head reported", func() bool { return c.dp.Stats().Bypassable == 1 })
	want := []flows.Bypass{{Ifname: a.HostIf, Ifindex: a.HostIfIndex, Hook: "ingress", Attach: "tcx", Program: progID(t, head)}}
	if got := c.dp.Bypassed(); !slices.Equal(got, want) {
		t.Errorf("Bypassed() = %+v, want %+v", got, want)
	}
}
