package flows

import (
	"cmp"
	"fmt"
	"slices"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"

	"github.com/flowmap/flowmap/model"
)

// Bypass is a TC hook where another program runs before flowmap's: one
// that redirects or drops a packet (or, on TCX, passes it, or on clsact
// returns anything but TC_ACT_UNSPEC) ends the chain before flowmap counts
// it, so flowmap may not see what goes through the hook.
type Bypass struct {
	Ifname  string `json:"ifname"`
	Ifindex int    `json:"ifindex"`
	Hook    string `json:"hook"`   // ingress or egress
	Attach  string `json:"attach"` // tcx or clsact
	// Program is the kernel id of the first program before flowmap's, 0
	// for a clsact filter that is not BPF.
	Program ebpf.ProgramID `json:"program_id,omitempty"`
	// Priority is the clsact filter's priority, lower than flowmap's.
	Priority uint16 `json:"priority,omitempty"`
}

// ownPrograms reads the TC programs' ids and tags, for telling flowmap's
// filters and TCX programs from others'.
func (d *Datapath) ownPrograms() (ownProgram, error) {
	own := ownProgram{names: map[string]bool{}, tags: map[string]bool{}}
	for _, p := range []struct {
		prog *ebpf.Program
		id   *ebpf.ProgramID
	}{{d.objs.TcIngress, &d.tcIngress}, {d.objs.TcEgress, &d.tcEgress}} {
		info, err := p.prog.Info()
		if err != nil {
			return own, fmt.Errorf("read info of program %s: %w", p.prog, err)
		}
		id, ok := info.ID()
		if !ok {
			return own, fmt.Errorf("read id of program %s: kernel 4.13 or newer", info.Name)
		}
		*p.id = id
		own.names[info.Name] = true
		own.tags[info.Tag] = true
	}
	return own, nil
}

// Bypassed returns the hooks where another program runs before flowmap's,
// as the last check found them.
func (d *Datapath) Bypassed() []Bypass {
	d.statsMu.Lock()
	defer d.statsMu.Unlock()
	return slices.Clone(d.bypassed)
}

// checkBypass looks at the TC hooks of every interface flowmap attached
// to, counts those where another program runs first (Stats.Bypassable),
// and logs each change. Run calls it once attached and after each drain: a
// CNI may attach in front of flowmap at any time, and a drain is when its
// hiding would show (a batch short of what the hook carried). It takes d.regMu only to
// copy the attachments: the queries run without locks.
func (d *Datapath) checkBypass() {
	type target struct {
		iface model.Interface
		hooks []tcHook
	}
	d.regMu.Lock()
	if d.closed {
		d.regMu.Unlock()
		return
	}
	targets := make([]target, 0, len(d.attached))
	for _, a := range d.attached {
		if len(a.hooks) > 0 {
			targets = append(targets, target{a.iface, a.hooks})
		}
	}
	d.regMu.Unlock()
	var found []Bypass
	for _, t := range targets {
		for _, h := range t.hooks {
			b, ok, err := bypassAt(t.iface.Index, h)
			if err != nil {
				// Released meanwhile, most likely; the next check sees.
				d.log.Debug("query tc programs", "ifname", t.iface.Name, "err", err)
				continue
			}
			if ok {
				b.Ifname, b.Ifindex = t.iface.Name, t.iface.Index
				found = append(found, b)
			}
		}
	}
	slices.SortFunc(found, func(a, b Bypass) int {
		if a.Ifindex != b.Ifindex {
			return a.Ifindex - b.Ifindex
		}
		return cmp.Compare(a.Hook, b.Hook)
	})
	d.statsMu.Lock()
	prev := d.bypassed
	d.bypassed = found
	ifaces := map[int]bool{}
	for _, b := range found {
		ifaces[b.Ifindex] = true
	}
	d.stats.Bypassable = len(ifaces)
	d.statsMu.Unlock()
	for _, b := range found {
		if !slices.ContainsFunc(prev, func(p Bypass) bool { return p.Ifindex == b.Ifindex && p.Hook == b.Hook && p.Program == b.Program }) {
			d.log.Warn("another program runs before flowmap's and may hide packets from it",
				"ifname", b.Ifname, "ifindex", b.Ifindex, "hook", b.Hook, "attach", b.Attach,
				"prog_id", b.Program, "priority", b.Priority)
		}
	}
	for _, p := range prev {
		if !slices.ContainsFunc(found, func(b Bypass) bool { return p.Ifindex == b.Ifindex && p.Hook == b.Hook }) {
			d.log.Info("flowmap's program runs first again", "ifname", p.Ifname, "ifindex", p.Ifindex, "hook", p.Hook)
		}
	}
}

// bypassAt reports whether another program runs before flowmap's at one
// hook of ifindex: on TCX, a program ahead in the chain; on clsact, a
// filter of a lower priority number (direct-action filters end the chain
// with any verdict but TC_ACT_UNSPEC).
func bypassAt(ifindex int, h tcHook) (Bypass, bool, error) {
	b := Bypass{Hook: "egress", Attach: "tcx"}
	if h.ingress {
		b.Hook = "ingress"
	}
	if !h.clsact {
		at := ebpf.AttachTCXEgress
		if h.ingress {
			at = ebpf.AttachTCXIngress
		}
		res, err := link.QueryPrograms(link.QueryOptions{Target: ifindex, Attach: at})
		if err != nil {
			return b, false, err
		}
		for _, p := range res.Programs {
			if p.ID == h.prog {
				return b, false, nil
			}
			b.Program = p.ID
			return b, true, nil
		}
		return b, false, nil // flowmap's is gone: released meanwhile
	}
	b.Attach = "clsact"
	parent := uint32(netlink.HANDLE_MIN_EGRESS)
	if h.ingress {
		parent = netlink.HANDLE_MIN_INGRESS
	}
	fs, err := netlink.FilterList(&netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Index: ifindex}}, parent)
	if err != nil {
		return b, false, err
	}
	first := -1
	for i, f := range fs {
		if p := f.Attrs().Priority; p < filterPriority && (first < 0 || p < fs[first].Attrs().Priority) {
			first = i
		}
	}
	if first < 0 {
		return b, false, nil
	}
	b.Priority = fs[first].Attrs().Priority
	if bf, ok := fs[first].(*netlink.BpfFilter); ok {
		b.Program = ebpf.ProgramID(bf.Id)
	}
	return b, true, nil
}
