package main

import (
	"context"
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
)

// hook is where a mode's ingress program runs; egress is always TCX.
type hook int

const (
	hookNone hook = iota
	hookTC
	hookXDPGeneric
	hookXDPNative
)

func (h hook) String() string {
	switch h {
	case hookTC:
		return "tc"
	case hookXDPGeneric:
		return "xdp-generic"
	case hookXDPNative:
		return "xdp-native"
	}
	return "none"
}

// mode is what is attached to the veths during a run.
type mode struct {
	hook      hook
	agent     bool // flowmap's programs; otherwise the floor's
	healthOff bool // the agent with --health=off (health.go)
}

func (m mode) String() string {
	switch {
	case m.hook == hookNone:
		return "none"
	case m.agent && m.healthOff:
		return m.hook.String() + " agent health=off"
	case m.agent:
		return m.hook.String() + " agent"
	}
	return m.hook.String() + " floor"
}

// modes are measured in this order, rotated by one each round.
var modes = []mode{
	{hook: hookNone},
	{hook: hookTC},
	{hook: hookTC, agent: true},
	{hook: hookXDPGeneric},
	{hook: hookXDPGeneric, agent: true},
	{hook: hookXDPNative},
	{hook: hookXDPNative, agent: true},
}

// attached is a mode set up on the veths: its ingress and egress programs,
// for their run-time statistics, the agent's process, and how to take it
// down.
type attached struct {
	ingress, egress *ebpf.Program
	pid             int // the agent's process; 0 without
	close           func() error
}

// attach sets up m on the veths ifindexes.
func (b *bench) attach(ctx context.Context, m mode, ifindexes []int) (*attached, error) {
	switch {
	case m.hook == hookNone:
		return &attached{close: func() error { return nil }}, nil
	case !m.agent:
		return b.attachFloor(m, ifindexes)
	}
	return b.attachAgent(ctx, m, ifindexes)
}

// attachFloor attaches the floor programs as the agent's would be: TCX
// egress on each veth, and TCX or XDP ingress.
func (b *bench) attachFloor(m mode, ifindexes []int) (_ *attached, err error) {
	var ls links
	defer func() {
		if err != nil {
			err = errors.Join(err, ls.Close())
		}
	}()
	a := &attached{egress: b.floor.FloorEgress, close: ls.Close}
	for _, idx := range ifindexes {
		switch m.hook {
		case hookTC:
			a.ingress = b.floor.FloorIngress
			err = ls.attachTCX(a.ingress, idx, true)
		default:
			a.ingress = b.floor.FloorXdp
			err = ls.attachXDP(a.ingress, idx, m.hook == hookXDPNative)
		}
		if err != nil {
			return nil, err
		}
		if err := ls.attachTCX(a.egress, idx, false); err != nil {
			return nil, err
		}
	}
	if err := checkXDP(m.hook, ifindexes); err != nil {
		return nil, err
	}
	return a, nil
}

// checkXDP fails unless the veths have XDP attached in the mode h asks for:
// the datapath falls back to generic XDP where native fails.
func checkXDP(h hook, ifindexes []int) error {
	want := map[hook]uint32{hookXDPGeneric: nl.XDP_ATTACHED_SKB, hookXDPNative: nl.XDP_ATTACHED_DRV}[h]
	if want == 0 {
		return nil
	}
	for _, idx := range ifindexes {
		l, err := netlink.LinkByIndex(idx)
		if err != nil {
			return fmt.Errorf("get link %d: %w", idx, err)
		}
		var got uint32
		if x := l.Attrs().Xdp; x != nil {
			got = x.AttachMode
		}
		if got != want {
			return fmt.Errorf("xdp on %s: attach mode %d, want %d (%s)", l.Attrs().Name, got, want, h)
		}
	}
	return nil
}

// foreign returns what other processes attached to the veths: programs
// there slow every mode, the baseline too.
func foreign(ifindexes []int) ([]string, error) {
	var found []string
	for _, idx := range ifindexes {
		l, err := netlink.LinkByIndex(idx)
		if err != nil {
			return nil, fmt.Errorf("get link %d: %w", idx, err)
		}
		name := l.Attrs().Name
		for _, at := range []ebpf.AttachType{ebpf.AttachTCXIngress, ebpf.AttachTCXEgress} {
			res, err := link.QueryPrograms(link.QueryOptions{Target: idx, Attach: at})
			if err != nil {
				return nil, fmt.Errorf("query %s programs on %s: %w", at, name, err)
			}
			for _, p := range res.Programs {
				found = append(found, fmt.Sprintf("%s %s program %d", name, at, p.ID))
			}
		}
		if x := l.Attrs().Xdp; x != nil && x.Attached {
			found = append(found, fmt.Sprintf("%s xdp program %d", name, x.ProgId))
		}
		for _, parent := range []uint32{netlink.HANDLE_MIN_INGRESS, netlink.HANDLE_MIN_EGRESS} {
			fs, err := netlink.FilterList(l, parent)
			if err == nil && len(fs) > 0 {
				found = append(found, fmt.Sprintf("%s clsact filters (%d)", name, len(fs)))
			}
		}
	}
	return found, nil
}
