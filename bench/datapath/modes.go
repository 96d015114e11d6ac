package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"

	"github.com/flowmap/flowmap/flows"
	"github.com/flowmap/flowmap/model"
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
	hook  hook
	agent bool // flowmap's programs; otherwise the floor's
}

func (m mode) String() string {
	switch {
	case m.hook == hookNone:
		return "none"
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
// for their run-time statistics, and how to take it down.
type attached struct {
	ingress, egress *ebpf.Program
	// counted returns the packets the agent counted, once closed.
	counted func() uint64
	close   func() error
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

// attachAgent runs flowmap's datapath on the veths as the agent does: it
// attaches, drains every interval, and detaches when closed.
func (b *bench) attachAgent(ctx context.Context, m mode, ifindexes []int) (_ *attached, err error) {
	cfg := flows.Config{
		Interfaces: []string{b.prefix + "-*"},
		Attach:     flows.AttachTCX,
		Interval:   b.interval,
		Logger:     b.dpLog,
	}
	switch m.hook {
	case hookXDPNative:
		cfg.XDP, cfg.XDPMode = cfg.Interfaces, flows.XDPNative
	case hookXDPGeneric:
		cfg.XDP, cfg.XDPMode = cfg.Interfaces, flows.XDPGeneric
	}
	d, err := flows.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("load datapath: %w", err)
	}
	ctx, cancel := context.WithCancel(ctx)
	out := make(chan model.Batch)
	runErr := make(chan error, 1)
	countedc := make(chan uint64, 1)
	go func() { runErr <- d.Run(ctx, out) }()
	go func() {
		var n uint64
		for batch := range out {
			for _, r := range batch.Records {
				n += r.Forward.Packets + r.Reverse.Packets
			}
		}
		countedc <- n
	}()
	var counted uint64
	stop := func() error {
		cancel()
		var errs []error
		if err := <-runErr; !errors.Is(err, context.Canceled) {
			errs = append(errs, fmt.Errorf("run datapath: %w", err))
		}
		errs = append(errs, d.Close())
		close(out)
		counted = <-countedc
		return errors.Join(errs...)
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, stop())
		}
	}()

	progs := d.Programs()
	a := &attached{
		ingress: progs["tc_ingress"],
		egress:  progs["tc_egress"],
		counted: func() uint64 { return counted },
		close:   stop,
	}
	if m.hook != hookTC {
		a.ingress = progs["xdp_ingress"]
	}
	if err := waitAttached(ctx, d, ifindexes); err != nil {
		return nil, err
	}
	if err := checkXDP(m.hook, ifindexes); err != nil {
		return nil, err
	}
	return a, nil
}

// waitAttached waits until the datapath has programs on every veth.
func waitAttached(ctx context.Context, d *flows.Datapath, ifindexes []int) error {
	deadline := time.Now().Add(5 * time.Second)
	for {
		have := map[int]bool{}
		for _, i := range d.Attached() {
			have[i.Index] = true
		}
		missing := 0
		for _, idx := range ifindexes {
			if !have[idx] {
				missing++
			}
		}
		if d.Ready() == nil && missing == 0 {
			if n := d.Stats().AttachErrors; n > 0 {
				return fmt.Errorf("datapath: %d attach errors (see the log)", n)
			}
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("datapath attached to %d of %d veths after 5s", len(ifindexes)-missing, len(ifindexes))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
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
