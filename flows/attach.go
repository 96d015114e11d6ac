package flows

import (
	"errors"
	"fmt"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/flowmap/flowmap/model"
)

// AttachMode chooses how TC programs are attached.
type AttachMode string

// The attach modes.
const (
	// AttachAuto uses TCX where the kernel has it (6.6+), clsact otherwise.
	AttachAuto AttachMode = "auto"
	// AttachTCX uses TCX links, which the kernel removes when flowmap exits.
	AttachTCX AttachMode = "tcx"
	// AttachClsact adds BPF filters to a clsact qdisc through netlink.
	// They outlive the process: Close removes them, and New removes those
	// that an agent killed with SIGKILL left.
	AttachClsact AttachMode = "clsact"
)

// Set parses a mode, for flag.Value.
func (m *AttachMode) Set(s string) error {
	switch AttachMode(s) {
	case AttachAuto, AttachTCX, AttachClsact:
		*m = AttachMode(s)
		return nil
	}
	return fmt.Errorf("attach mode %q: want auto, tcx or clsact", s)
}

func (m AttachMode) String() string { return string(m) }

// XDPMode chooses where the XDP program runs.
type XDPMode string

// The XDP modes.
const (
	// XDPAuto runs in the driver where it has native XDP, generic otherwise.
	XDPAuto XDPMode = "auto"
	// XDPNative runs in the driver, and fails where it has no native XDP.
	XDPNative XDPMode = "native"
	// XDPGeneric runs in the stack, after the skb is built: slower, but on
	// any interface, and it does not turn off a veth peer's TSO.
	XDPGeneric XDPMode = "generic"
)

// Set parses a mode, for flag.Value.
func (m *XDPMode) Set(s string) error {
	switch XDPMode(s) {
	case XDPAuto, XDPNative, XDPGeneric:
		*m = XDPMode(s)
		return nil
	}
	return fmt.Errorf("xdp mode %q: want auto, native or generic", s)
}

func (m XDPMode) String() string { return string(m) }

// filterPrefix names flowmap's clsact filters, so that a later agent can
// find and remove those of a dead one.
const filterPrefix = "flowmap_"

// filterPriority is the clsact filter priority: low numbers run first, and
// flowmap only reads, so it goes first to see what later filters drop.
const filterPriority = 1

// attachment is what flowmap attached to one interface.
type attachment struct {
	iface  model.Interface
	bridge bool        // watched through its ports: no program of its own
	links  []link.Link // TCX and XDP links
	// clsact filters, and whether flowmap made the qdisc they hang on.
	filters []*netlink.BpfFilter
	qdisc   bool
	xdp     XDPMode // native or generic where XDP counts ingress
}

// attachTC attaches prog to the ingress or egress of ifindex, by TCX or
// through clsact.
func (a *attachment) attachTC(mode AttachMode, prog *ebpf.Program, ingress bool) error {
	if mode != AttachClsact {
		at := ebpf.AttachTCXEgress
		if ingress {
			at = ebpf.AttachTCXIngress
		}
		l, err := link.AttachTCX(link.TCXOptions{Interface: a.iface.Index, Program: prog, Attach: at})
		if err == nil {
			a.links = append(a.links, l)
			return nil
		}
		if mode == AttachTCX || !errors.Is(err, link.ErrNotSupported) {
			return fmt.Errorf("attach tcx %s to %s: %w", at, a.iface.Name, err)
		}
	}
	return a.attachClsact(prog, ingress)
}

func (a *attachment) attachClsact(prog *ebpf.Program, ingress bool) error {
	if len(a.filters) == 0 {
		q := clsact(a.iface.Index)
		err := netlink.QdiscAdd(q)
		switch {
		case err == nil:
			a.qdisc = true
		case errors.Is(err, unix.EEXIST):
		default:
			return fmt.Errorf("add clsact qdisc to %s: %w", a.iface.Name, err)
		}
	}
	parent, name := uint32(netlink.HANDLE_MIN_EGRESS), filterPrefix+"egress"
	if ingress {
		parent, name = netlink.HANDLE_MIN_INGRESS, filterPrefix+"ingress"
	}
	f := &netlink.BpfFilter{
		FilterAttrs: netlink.FilterAttrs{
			LinkIndex: a.iface.Index,
			Parent:    parent,
			Handle:    netlink.MakeHandle(0, 1),
			Protocol:  unix.ETH_P_ALL,
			Priority:  filterPriority,
		},
		Fd:           prog.FD(),
		Name:         name,
		DirectAction: true,
	}
	if err := netlink.FilterAdd(f); err != nil {
		return fmt.Errorf("add clsact filter %s to %s: %w", name, a.iface.Name, err)
	}
	a.filters = append(a.filters, f)
	return nil
}

// attachXDP attaches prog to the interface's XDP hook, in mode: for
// XDPAuto in the driver where it has native XDP, generic otherwise.
func (a *attachment) attachXDP(prog *ebpf.Program, mode XDPMode) error {
	var nerr error
	if mode != XDPGeneric {
		l, err := link.AttachXDP(link.XDPOptions{Program: prog, Interface: a.iface.Index, Flags: link.XDPDriverMode})
		if err == nil {
			a.links, a.xdp = append(a.links, l), XDPNative
			return nil
		}
		if mode == XDPNative {
			return fmt.Errorf("attach native xdp to %s: %w", a.iface.Name, err)
		}
		nerr = fmt.Errorf("native: %w; ", err)
	}
	l, err := link.AttachXDP(link.XDPOptions{Program: prog, Interface: a.iface.Index, Flags: link.XDPGenericMode})
	if err != nil {
		return fmt.Errorf("attach xdp to %s: %wgeneric: %w", a.iface.Name, nerr, err)
	}
	a.links, a.xdp = append(a.links, l), XDPGeneric
	return nil
}

// close detaches everything, in reverse order. An interface that is gone
// took its programs with it: that is not an error.
func (a *attachment) close() error {
	var errs []error
	for i := len(a.links) - 1; i >= 0; i-- {
		if err := a.links[i].Close(); err != nil {
			errs = append(errs, fmt.Errorf("detach from %s: %w", a.iface.Name, err))
		}
	}
	a.links = nil
	for i := len(a.filters) - 1; i >= 0; i-- {
		if err := netlink.FilterDel(a.filters[i]); err != nil && !gone(err) {
			errs = append(errs, fmt.Errorf("delete clsact filter from %s: %w", a.iface.Name, err))
		}
	}
	if len(a.filters) > 0 && a.qdisc {
		if err := netlink.QdiscDel(clsact(a.iface.Index)); err != nil && !gone(err) {
			errs = append(errs, fmt.Errorf("delete clsact qdisc from %s: %w", a.iface.Name, err))
		}
	}
	a.filters = nil
	return errors.Join(errs...)
}

func clsact(ifindex int) *netlink.GenericQdisc {
	return &netlink.GenericQdisc{
		QdiscAttrs: netlink.QdiscAttrs{
			LinkIndex: ifindex,
			Handle:    netlink.MakeHandle(0xffff, 0),
			Parent:    netlink.HANDLE_CLSACT,
		},
		QdiscType: "clsact",
	}
}

// gone reports whether err says the interface or object no longer exists.
func gone(err error) bool {
	return errors.Is(err, unix.ENODEV) || errors.Is(err, unix.ENOENT) || errors.Is(err, unix.EINVAL)
}

// removeLeftovers deletes the clsact filters that an earlier agent, killed
// before it could clean up, left on any interface, and the clsact qdiscs
// they leave empty. It returns how many filters it removed.
func removeLeftovers() (int, error) {
	links, err := netlink.LinkList()
	if err != nil {
		return 0, fmt.Errorf("list links: %w", err)
	}
	var (
		n    int
		errs []error
	)
	for _, l := range links {
		idx := l.Attrs().Index
		removed, remaining := 0, 0
		for _, parent := range []uint32{netlink.HANDLE_MIN_INGRESS, netlink.HANDLE_MIN_EGRESS} {
			filters, err := netlink.FilterList(l, parent)
			if err != nil {
				continue // no clsact qdisc here
			}
			for _, f := range filters {
				bf, ok := f.(*netlink.BpfFilter)
				if !ok || !strings.HasPrefix(bf.Name, filterPrefix) {
					remaining++
					continue
				}
				if err := netlink.FilterDel(bf); err != nil && !gone(err) {
					errs = append(errs, fmt.Errorf("delete leftover filter %s from %s: %w", bf.Name, l.Attrs().Name, err))
					continue
				}
				removed++
			}
		}
		if removed > 0 && remaining == 0 {
			if err := netlink.QdiscDel(clsact(idx)); err != nil && !gone(err) {
				errs = append(errs, fmt.Errorf("delete leftover clsact qdisc from %s: %w", l.Attrs().Name, err))
			}
		}
		n += removed
	}
	return n, errors.Join(errs...)
}
