package flows

import (
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/flowmap/flowmap/internal/testenv"
)

// TestRemoveLeftovers: at start, flowmap removes the filters a killed agent
// left (flowmap's name, flowmap's program) and no other: not a CNI's
// filter that took flowmap's name or slot, nor its qdisc.
func TestRemoveLeftovers(t *testing.T) {
	testenv.MustBeRoot(t)
	testenv.MustHaveBTF(t)
	d := newTestDatapath(t)
	other, err := ebpf.NewProgram(&ebpf.ProgramSpec{Name: "cni_prog", Type: ebpf.SchedCLS, License: "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, -1), asm.Return()}})
	if err != nil {
		t.Fatalf("load the CNI's program: %v", err)
	}
	defer other.Close()
	withClsact := func(name string) netlink.Link {
		netlink.LinkDel(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}})
		l := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}}
		if err := netlink.LinkAdd(l); err != nil {
			t.Fatalf("add %s: %v", name, err)
		}
		t.Cleanup(func() { netlink.LinkDel(l) })
		got, err := netlink.LinkByName(name)
		if err != nil {
			t.Fatalf("find %s: %v", name, err)
		}
		if err := netlink.QdiscAdd(clsact(got.Attrs().Index)); err != nil {
			t.Fatalf("add clsact to %s: %v", name, err)
		}
		return got
	}
	filter := func(l netlink.Link, prog *ebpf.Program, name string, prio uint16, handle uint32) {
		f := &netlink.BpfFilter{
			FilterAttrs: netlink.FilterAttrs{LinkIndex: l.Attrs().Index, Parent: netlink.HANDLE_MIN_INGRESS,
				Handle: handle, Protocol: unix.ETH_P_ALL, Priority: prio},
			Fd: prog.FD(), Name: name, DirectAction: true,
		}
		if err := netlink.FilterAdd(f); err != nil {
			t.Fatalf("add filter %s to %s: %v", name, l.Attrs().Name, err)
		}
	}
	dead := withClsact("fmnb-dead0")   // a killed agent's filter alone
	mixed := withClsact("fmnb-mixed0") // a killed agent's, beside the CNI's
	forged := withClsact("fmnb-cni0")  // the CNI's filter, in flowmap's slot and name
	filter(dead, d.objs.TcIngress, filterPrefix+"ingress", filterPriority, filterHandle)
	filter(mixed, d.objs.TcIngress, filterPrefix+"ingress", filterPriority, filterHandle)
	filter(mixed, other, "cni", 1, 1)
	filter(forged, other, filterPrefix+"ingress", filterPriority, filterHandle)

	own, err := d.ownPrograms()
	if err != nil {
		t.Fatalf("ownPrograms: %v", err)
	}
	n, err := removeLeftovers(own)
	if err != nil {
		t.Fatalf("removeLeftovers: %v", err)
	}
	if n != 2 {
		t.Errorf("removeLeftovers removed %d filters, want 2 (the dead agent's)", n)
	}
	for _, c := range []struct {
		l       netlink.Link
		filters int
		qdisc   bool
	}{{dead, 0, false}, {mixed, 1, true}, {forged, 1, true}} {
		if got := testenv.ClsactFilters(t, c.l.Attrs().Index); got != c.filters {
			t.Errorf("%s: %d filters left, want %d", c.l.Attrs().Name, got, c.filters)
		}
		if got := testenv.HasClsact(t, c.l.Attrs().Index); got != c.qdisc {
			t.Errorf("%s: clsact qdisc %v, want %v", c.l.Attrs().Name, got, c.qdisc)
		}
	}
}
