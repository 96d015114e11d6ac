package flows

import (
	"errors"
	"fmt"
	"log/slog"
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
// find and remove those of a dead one (with its programs' names: see
// removeLeftovers).
const filterPrefix = "flowmap_"

// filterPriority and filterHandle are flowmap's own clsact slot. Not
// priority 1, handle 1: that is where Cilium (and tc's examples) put their
// filters, replacing what is there, so a CNI's replace overwrote flowmap's
// filter and flowmap's exit deleted the CNI's. Low, so that flowmap runs
// before the priorities tc assigns by itself (49152 and down); a filter at
// a lower number still runs first, and may end classification before
// flowmap sees the packet: checkBypass reports it.
const (
	filterPriority = 16
	filterHandle   = 0xf10
)

// attachment is what flowmap attached to one interface.
type attachment struct {
	iface  model.Interface
	bridge bool        // watched through its ports: no program of its own
	links  []link.Link // TCX and XDP links
	// clsact filters, the programs they run, and whether flowmap made
	// the qdisc they hang on.
	filters []ownFilter
	qdisc   bool
	xdp     XDPMode // native or generic where XDP counts ingress
	// hooks are the TC hooks flowmap runs at, for checkBypass.
	hooks []tcHook
	log   *slog.Logger
}

// ownFilter is a clsact filter flowmap added, and its program's id: what
// close checks is still there before it deletes it.
type ownFilter struct {
	f    *netlink.BpfFilter
	prog ebpf.ProgramID
}

// tcHook is one TC hook flowmap attached to.
type tcHook struct {
	ingress bool
	clsact  bool
	prog    ebpf.ProgramID
}

// attachTC attaches prog, whose id is id, to the ingress or egress of the
// interface, by TCX or through clsact. A TCX program goes to the head of
// the hook's chain: a program before it that returns anything but
// TCX_NEXT (a CNI's redirect, a firewall's drop, even TCX_PASS) would end
// the chain before flowmap counts the packet.
func (a *attachment) attachTC(mode AttachMode, prog *ebpf.Program, id ebpf.ProgramID, ingress bool) error {
	if mode != AttachClsact {
		at := ebpf.AttachTCXEgress
		if ingress {
			at = ebpf.AttachTCXIngress
		}
		l, err := link.AttachTCX(link.TCXOptions{Interface: a.iface.Index, Program: prog, Attach: at, Anchor: link.Head()})
		if err == nil {
			a.links = append(a.links, l)
			a.hooks = append(a.hooks, tcHook{ingress: ingress, prog: id})
			return nil
		}
		if mode == AttachTCX || !errors.Is(err, link.ErrNotSupported) {
			return fmt.Errorf("attach tcx %s to %s: %w", at, a.iface.Name, err)
		}
	}
	if err := a.attachClsact(prog, id, ingress); err != nil {
		return err
	}
	a.hooks = append(a.hooks, tcHook{ingress: ingress, clsact: true, prog: id})
	return nil
}

func (a *attachment) attachClsact(prog *ebpf.Program, id ebpf.ProgramID, ingress bool) error {
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
			Handle:    filterHandle,
			Protocol:  unix.ETH_P_ALL,
			Priority:  filterPriority,
		},
		Fd:           prog.FD(),
		Name:         name,
		DirectAction: true,
	}
	// FilterAdd is exclusive: it fails rather than replace a filter in
	// flowmap's slot that is not flowmap's.
	if err := netlink.FilterAdd(f); err != nil {
		return fmt.Errorf("add clsact filter %s to %s: %w", name, a.iface.Name, err)
	}
	a.filters = append(a.filters, ownFilter{f: f, prog: id})
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
// took its programs with it: that is not an error. A clsact filter is
// deleted only while it is still flowmap's (its slot runs flowmap's
// program under flowmap's name), and the qdisc only if flowmap made it
// and no filter is left on it: a CNI's filters, added before or since,
// stay, and keep their qdisc.
func (a *attachment) close() error {
	var errs []error
	for i := len(a.links) - 1; i >= 0; i-- {
		if err := a.links[i].Close(); err != nil {
			errs = append(errs, fmt.Errorf("detach from %s: %w", a.iface.Name, err))
		}
	}
	a.links = nil
	if len(a.filters) == 0 {
		return errors.Join(errs...)
	}
	l, err := netlink.LinkByIndex(a.iface.Index)
	if err != nil {
		a.filters = nil
		if !gone(err) && !errors.As(err, new(netlink.LinkNotFoundError)) {
			errs = append(errs, fmt.Errorf("find %s to delete its clsact filters: %w", a.iface.Name, err))
		}
		return errors.Join(errs...)
	}
	for i := len(a.filters) - 1; i >= 0; i-- {
		own := a.filters[i]
		cur, err := filterAt(l, own.f.Parent)
		switch {
		case err != nil:
			if !gone(err) {
				errs = append(errs, fmt.Errorf("list clsact filters of %s: %w", a.iface.Name, err))
			}
			continue
		case cur == nil:
			continue // the qdisc went, and the filter with it
		case ebpf.ProgramID(cur.Id) != own.prog || cur.Name != own.f.Name:
			if a.log != nil {
				a.log.Warn("clsact filter in flowmap's slot is another program's: left in place",
					"ifname", a.iface.Name, "filter", own.f.Name, "prog_id", cur.Id, "name", cur.Name)
			}
			continue
		}
		if err := netlink.FilterDel(own.f); err != nil && !gone(err) {
			errs = append(errs, fmt.Errorf("delete clsact filter from %s: %w", a.iface.Name, err))
		}
	}
	a.filters = nil
	if a.qdisc {
		n, err := filterCount(l)
		switch {
		case err != nil:
			if !gone(err) {
				errs = append(errs, fmt.Errorf("list clsact filters of %s: %w", a.iface.Name, err))
			}
		case n == 0:
			if err := netlink.QdiscDel(clsact(a.iface.Index)); err != nil && !gone(err) {
				errs = append(errs, fmt.Errorf("delete clsact qdisc from %s: %w", a.iface.Name, err))
			}
		}
	}
	return errors.Join(errs...)
}

// filterAt returns the BPF filter in flowmap's slot (filterPriority,
// filterHandle) of parent, nil if there is none.
func filterAt(l netlink.Link, parent uint32) (*netlink.BpfFilter, error) {
	fs, err := netlink.FilterList(l, parent)
	if err != nil {
		return nil, err
	}
	for _, f := range fs {
		at := f.Attrs()
		if bf, ok := f.(*netlink.BpfFilter); ok && at.Priority == filterPriority && at.Handle == filterHandle {
			return bf, nil
		}
	}
	return nil, nil
}

// filterCount counts the filters on l's clsact ingress and egress.
func filterCount(l netlink.Link) (int, error) {
	n := 0
	for _, parent := range []uint32{netlink.HANDLE_MIN_INGRESS, netlink.HANDLE_MIN_EGRESS} {
		fs, err := netlink.FilterList(l, parent)
		if err != nil {
			return 0, err
		}
		n += len(fs)
	}
	return n, nil
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

// ownProgram tells whether a leftover filter runs one of flowmap's
// programs: by the program's name where the kernel gives it (reading a
// program by id needs CAP_SYS_ADMIN), else by its tag (a hash of its
// instructions), which a dead agent of the same build shares with ours.
type ownProgram struct {
	names map[string]bool // tc_ingress, tc_egress
	tags  map[string]bool // hex, as netlink reports them
}

func (o ownProgram) owns(f *netlink.BpfFilter) bool {
	if o.tags[f.Tag] {
		return true
	}
	p, err := ebpf.NewProgramFromID(ebpf.ProgramID(f.Id))
	if err != nil {
		return false // not readable: a tag of another build is not proof
	}
	defer p.Close()
	info, err := p.Info()
	return err == nil && o.names[info.Name]
}

// removeLeftovers deletes the clsact filters that an earlier agent, killed
// before it could clean up, left on any interface, and the clsact qdiscs
// they leave empty. A leftover is a filter of flowmap's name that runs a
// program of flowmap's (own): a CNI's filter that replaced it in its slot
// stays. It returns how many filters it removed.
func removeLeftovers(own ownProgram) (int, error) {
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
				if !ok || !strings.HasPrefix(bf.Name, filterPrefix) || !own.owns(bf) {
					remaining++
					continue
				}
				if err := netlink.FilterDel(bf); err != nil && !gone(err) {
					errs = append(errs, fmt.Errorf("delete leftover filter %s from %s: %w", bf.Name, l.Attrs().Name, err))
					remaining++
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
