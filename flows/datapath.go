package flows

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"path"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/rlimit"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/flowmap/flowmap/host"
	"github.com/flowmap/flowmap/model"
)

// Config is what the datapath attaches to and how.
type Config struct {
	// Interfaces are name globs (path.Match) of the interfaces to watch.
	// Empty means the default: every veth whose peer is in another
	// namespace, bridge (through its ports), vxlan and geneve device, and
	// the interfaces of the default routes (see host.DefaultLinks).
	Interfaces []string
	// XDP are globs of interfaces whose ingress is counted by XDP instead
	// of TC (for NICs with a native XDP driver). They must also be watched.
	XDP []string
	// XDPMode is where the XDP program runs; "" is XDPAuto.
	XDPMode XDPMode
	// Attach is how TC programs are attached; "" is AttachAuto.
	Attach AttachMode
	// Interval is how often the flow map is drained; 0 is DefaultInterval.
	Interval time.Duration
	// MaxFlows bounds the flow map (each half of it) in flow directions;
	// 0 is DefaultMaxFlows.
	MaxFlows int
	// MaxL7Flows bounds the L7 maps (each half of each family) and the
	// L7 pending maps in client-to-server flows; 0 is MaxFlows/4. A flow's
	// messages past it are counted as lost (map full).
	MaxL7Flows int
	// Logger receives lifecycle logs; nil discards them.
	Logger *slog.Logger
	// DNSPort is the port of DNS servers whose messages the L7 parsers
	// read, over UDP and TCP; 0 is 53.
	DNSPort uint16
	// HealthOff turns off connection outcomes, ICMP errors, drops and RTT
	// samples (Record.Health): the TC programs skip them and the kfree_skb
	// and tcp_probe tracepoints are not attached.
	HealthOff bool
}

// The defaults of Config.
const (
	DefaultInterval = 5 * time.Second
	DefaultMaxFlows = 65536
)

// Datapath is flowmap's loaded BPF programs, their attachments to
// interfaces, and the maps they count in. Its methods are safe for
// concurrent use, and only Drain and Close wait for a drain in progress:
// Stats, Attached, Ready and link events do not. Close detaches
// everything.
type Datapath struct {
	cfg    Config
	log    *slog.Logger
	objs   bpfObjects
	retran link.Link
	health []link.Link // kfree_skb and tcp_probe
	clock  *clock
	// tcIngress and tcEgress are the TC programs' kernel ids: what tells
	// flowmap's filters and TCX programs from others'.
	tcIngress, tcEgress ebpf.ProgramID
	// conntrack lists conntrack's connections for the NAT join; tests
	// replace it.
	conntrack func(keys []bpfFlowKey, fn func(*netlink.ConntrackFlow)) (int, error)
	ctKeys    []bpfFlowKey // the drain's candidates for conntrack, reused
	// subscribe and routes are the host's link and route events and its
	// routes (see events.go); tests replace them.
	subscribe func(done <-chan struct{}) (events, error)
	routes    func() ([]netlink.Route, error)
	// afterIngress, if set, runs when attachLocked attached an
	// interface's ingress program and not yet its egress one (tests).
	afterIngress func(model.Interface)

	// Each lock guards its own part. Where two are held, they are taken
	// in this order: drainMu, regMu, namesMu, statsMu; statsMu, held only
	// to copy counters in or out, is taken last and never waits on more.

	// drainMu serialises drains (the drainer's state) and keeps objs open
	// through one: Close takes it.
	drainMu sync.Mutex
	drain   *drainer

	// regMu guards the registry of attachments, which link events change.
	regMu    sync.Mutex
	attached map[int]*attachment     // by ifindex
	known    map[int]model.Interface // every interface that was attached since the last drain
	running  bool                    // Run has attached to the interfaces there were
	// defRoutes are the links of the default routes, which the default
	// config watches; replaced, never changed.
	defRoutes map[int]bool
	// closed is set by Close holding drainMu and regMu, so either is
	// enough to read it.
	closed bool

	// namesMu guards the names the reader of l7_names adds.
	namesMu sync.Mutex
	names   []model.Name // read since the last drain

	statsMu sync.Mutex
	stats   Stats
	// bypassed are the hooks where another program runs first, as
	// checkBypass last found them; guarded by statsMu.
	bypassed []Bypass
}

// Stats are the datapath's own counters, for /metrics. What a drain
// counts changes at once, when it ends.
type Stats struct {
	Attached        int           // interfaces with programs
	Bridges         int           // bridges watched through their ports
	AttachErrors    uint64        // attaches that failed
	Drains          uint64        // drains done
	DrainErrors     uint64        // drains that failed
	DrainKept       uint64        // flow directions a failed drain kept for the next
	GraceWaits      uint64        // drains that slept instead of waiting for the programs
	LastDrain       time.Duration // how long the last drain took
	DrainSeconds    float64       // all drains' time
	LastEntries     int           // flow directions in the last drain
	MaxFlows        int           // the flow map's size
	Flows           uint64        // records handed out
	MapFullPackets  uint64        // packets not counted: the flow map was full
	MapFullBytes    uint64
	NonIP           uint64 // frames neither IPv4 nor IPv6
	Malformed       uint64 // truncated or bad IP frames
	Truncated       uint64 // IPv6 frames with more extension headers than the programs walk
	LeftoversPurged int    // clsact filters of a dead agent removed at start
	Bypassable      int    // interfaces where another TC program runs before flowmap's (see Bypassed)
	NATJoined       uint64 // directions of NATed connections joined by conntrack
	ConntrackErrors uint64 // drains that could not read conntrack
	// ConntrackLookups counts the connections looked up in conntrack (one
	// per TCP or UDP connection drained), ConntrackFound those it knew.
	// ConntrackSkipped counts the half-open connections not looked up.
	ConntrackLookups, ConntrackFound, ConntrackSkipped uint64
	// L7 (see l7.go).
	L7Lost         [bpfL7LossL7LOSS_MAX][model.NumL7Protocols]uint64 // L7 messages not counted, by reason and protocol
	NamesLost      uint64                                            // name events the ring buffer had no room for
	NamesDropped   uint64                                            // names over maxNamesPerBatch in one interval: a full batch
	NamesUndecoded uint64                                            // name events that did not decode
	NamesUnchained uint64                                            // DNS answer records not tied to the question (see DecodeDNSNames)
	// HalfOpen is what became of the TCP connection attempts held apart
	// from the flow maps until their handshake completed (see
	// halfopen.go).
	HalfOpen HalfOpenStats
	// Health (see health.go).
	HealthMapFull uint64 // health events not counted: the health map was full
	DropsMapFull  uint64 // drops not counted: the drops map was full
	// Names the programs refused (see l7.h).
	NamesUnmatched uint64 // DNS answers not sent: no query with their id, flow and question
	NamesNotClient uint64 // TLS ClientHellos not sent: not the first from a connection's client
	// MapMemory is the kernel memory of each map, read at load and after
	// each drain; replaced, never changed in place.
	MapMemory []MapMemory
	// Resubscribes counts the subscriptions to link and route events that
	// failed (a netlink socket overrun: ENOBUFS) and were made again.
	Resubscribes uint64
}

// ErrPrerequisite is returned by New when the machine cannot run the
// datapath: not root, no BTF, a kernel too old.
var ErrPrerequisite = errors.New("datapath prerequisite missing")

// New loads the programs and maps, and removes the clsact filters that a
// killed agent left. It attaches nothing until Run. It needs CAP_BPF,
// CAP_NET_ADMIN and CAP_PERFMON (or root); what is missing is named in an
// error that wraps ErrPrerequisite.
func New(cfg Config) (*Datapath, error) {
	if cfg.Attach == "" {
		cfg.Attach = AttachAuto
	}
	if cfg.XDPMode == "" {
		cfg.XDPMode = XDPAuto
	}
	if cfg.Interval <= 0 {
		cfg.Interval = DefaultInterval
	}
	if cfg.MaxFlows <= 0 {
		cfg.MaxFlows = DefaultMaxFlows
	}
	if cfg.MaxL7Flows <= 0 {
		cfg.MaxL7Flows = defaultMaxL7Flows(cfg.MaxFlows)
	}
	for _, g := range append(append([]string(nil), cfg.Interfaces...), cfg.XDP...) {
		if _, err := path.Match(g, ""); err != nil {
			return nil, fmt.Errorf("interface glob %q: %w", g, err)
		}
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := prerequisites(); err != nil {
		return nil, err
	}
	spec, err := loadBpf()
	if err != nil {
		return nil, fmt.Errorf("load embedded BPF: %w", err)
	}
	sizeMaps(spec, uint32(cfg.MaxFlows), uint32(cfg.MaxL7Flows))
	if cfg.DNSPort == 0 {
		cfg.DNSPort = 53
	}
	if err := spec.Variables[bpfVarDnsPort].Set(cfg.DNSPort); err != nil {
		return nil, fmt.Errorf("set dns port %d: %w", cfg.DNSPort, err)
	}
	var reasons map[uint32]string
	if cfg.HealthOff {
		if err := spec.Variables[bpfVarHealthOn].Set(uint8(0)); err != nil {
			return nil, fmt.Errorf("turn health off: %w", err)
		}
	} else {
		var first uint32
		if reasons, first, err = dropReasons(); err != nil {
			return nil, err
		}
		if err := spec.Variables[bpfVarDropReasonMin].Set(first); err != nil {
			return nil, fmt.Errorf("set first drop reason %d: %w", first, err)
		}
		// Without the cookie (kernels before 5.14) the host's own packets
		// dropped before their egress are not joined to a flow.
		if cookie, err := netnsCookie(); err != nil {
			log.Warn("the host's own packets dropped before their egress will not be shown", "err", err)
		} else if err := spec.Variables[bpfVarHostNetns].Set(cookie); err != nil {
			return nil, fmt.Errorf("set the network namespace's cookie %d: %w", cookie, err)
		}
	}
	d := &Datapath{cfg: cfg, log: log, conntrack: ctLookup, subscribe: subscribe, routes: host.Routes, attached: map[int]*attachment{}, known: map[int]model.Interface{}}
	d.stats.MaxFlows = cfg.MaxFlows
	if err := spec.LoadAndAssign(&d.objs, nil); err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return nil, fmt.Errorf("load BPF programs: %+v", ve)
		}
		return nil, fmt.Errorf("load BPF programs: %w", err)
	}
	if d.drain, err = newDrainer(&d.objs, cfg.MaxFlows, reasons); err != nil {
		d.objs.Close()
		return nil, err
	}
	if d.stats.MapMemory, err = mapMemory(d.objs.bpfMaps, d.drain.ncpu); err != nil {
		d.objs.Close()
		return nil, err
	}
	if d.clock, err = newClock(&d.objs); err != nil {
		d.drain.close()
		d.objs.Close()
		return nil, err
	}
	// Retransmits are counted by a tracepoint on local sockets; a kernel
	// without tp_btf still gets every other statistic.
	if d.retran, err = link.AttachTracing(link.TracingOptions{Program: d.objs.TcpRetransmit}); err != nil {
		log.Warn("retransmits not counted", "err", err)
	}
	if !cfg.HealthOff {
		for _, p := range []*ebpf.Program{d.objs.KfreeSkb, d.objs.TcpProbe, d.objs.TcpCongState} {
			l, err := link.AttachTracing(link.TracingOptions{Program: p})
			if err != nil {
				log.Warn("health tracepoint not attached: drops, RTT or retransmission timeouts not counted", "program", p, "err", err)
				continue
			}
			d.health = append(d.health, l)
		}
	}
	own, err := d.ownPrograms()
	if err != nil {
		d.Close()
		return nil, err
	}
	if n, err := removeLeftovers(own); err != nil {
		log.Warn("removing a dead agent's clsact filters", "err", err)
	} else if n > 0 {
		log.Info("removed a dead agent's clsact filters", "filters", n)
		d.stats.LeftoversPurged = n
	}
	return d, nil
}

// prerequisites names what the machine lacks to load the programs.
func prerequisites() error {
	if _, err := btf.LoadKernelSpec(); err != nil {
		return fmt.Errorf("%w: kernel BTF (/sys/kernel/btf/vmlinux, CONFIG_DEBUG_INFO_BTF): %v", ErrPrerequisite, err)
	}
	// Each capability the datapath needs, named with what needs it, so
	// that a container missing one says which (see README, "Capabilities").
	// CAP_SYS_ADMIN stands in for CAP_BPF and CAP_PERFMON (kernels before
	// 5.8 have only it), not for CAP_NET_ADMIN, which tc's netlink asks.
	for _, c := range []struct {
		cap      int
		name     string
		sysAdmin bool
		why      string
	}{
		{unix.CAP_BPF, "CAP_BPF", true, "load the flow programs and create their maps (bpf BPF_PROG_LOAD, BPF_MAP_CREATE)"},
		{unix.CAP_PERFMON, "CAP_PERFMON", true, "load programs that read kernel memory (the tcp_retransmit_skb tracepoint, bpf_probe_read) with the pointer arithmetic the verifier allows only with it"},
		{unix.CAP_NET_ADMIN, "CAP_NET_ADMIN", false, "load TC and XDP programs, attach them (TCX links, clsact filters over netlink, XDP), query the hooks' programs and look conntrack up"},
	} {
		if !host.HasCap(c.cap) && !(c.sysAdmin && host.HasCap(unix.CAP_SYS_ADMIN)) {
			return fmt.Errorf("%w: %s missing: it is needed to %s; run as root or with CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON", ErrPrerequisite, c.name, c.why)
		}
	}
	// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK; raising it
	// needs CAP_SYS_RESOURCE. Without the rights to load programs it fails
	// too, so the probe below names the missing rights first.
	memErr := rlimit.RemoveMemlock()
	if err := probeTC(); err != nil {
		if errors.Is(err, unix.EPERM) {
			return fmt.Errorf("%w: permission to load BPF programs: run as root or with CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON: %v", ErrPrerequisite, err)
		}
		return fmt.Errorf("%w: TC BPF programs (kernel 5.8 or newer): %v", ErrPrerequisite, err)
	}
	if memErr != nil {
		return fmt.Errorf("%w: raise RLIMIT_MEMLOCK for BPF maps (needs CAP_SYS_RESOURCE on kernels before 5.11): %v", ErrPrerequisite, memErr)
	}
	return nil
}

func probeTC() error {
	p, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:         ebpf.SchedCLS,
		License:      "GPL",
		Instructions: probeInsns,
	})
	if err != nil {
		return err
	}
	return p.Close()
}

// Close detaches every program, filter and qdisc flowmap attached, then
// unloads the programs and maps. It waits for a drain in progress, and is
// safe to call twice.
func (d *Datapath) Close() error {
	d.drainMu.Lock()
	defer d.drainMu.Unlock()
	d.regMu.Lock()
	if d.closed {
		d.regMu.Unlock()
		return nil
	}
	d.closed = true
	var errs []error
	for idx := range d.attached {
		errs = append(errs, d.releaseLocked(idx))
	}
	d.regMu.Unlock()
	if d.retran != nil {
		errs = append(errs, d.retran.Close())
	}
	for _, l := range d.health {
		errs = append(errs, l.Close())
	}
	errs = append(errs, d.drain.close(), d.objs.Close())
	return errors.Join(errs...)
}

// Ready returns nil once Run has attached to the interfaces that existed
// when it started, and says why not before.
func (d *Datapath) Ready() error {
	d.regMu.Lock()
	defer d.regMu.Unlock()
	switch {
	case d.closed:
		return errors.New("datapath closed")
	case !d.running:
		return errors.New("datapath not attached yet")
	}
	return nil
}

// Stats returns a copy of the datapath's counters. It does not wait for a
// drain in progress.
func (d *Datapath) Stats() Stats {
	d.statsMu.Lock()
	defer d.statsMu.Unlock()
	return d.stats
}

// count changes the counters; f must only change them.
func (d *Datapath) count(f func(*Stats)) {
	d.statsMu.Lock()
	f(&d.stats)
	d.statsMu.Unlock()
}

// Attached returns the interfaces that have programs, and the bridges
// watched through their ports.
func (d *Datapath) Attached() []model.Interface {
	d.regMu.Lock()
	defer d.regMu.Unlock()
	out := make([]model.Interface, 0, len(d.attached))
	for _, a := range d.attached {
		out = append(out, a.iface)
	}
	return out
}

// defaultMaxL7Flows is the L7 maps' size for a flow map of maxFlows flow
// directions: a quarter. A connection is two flow directions and at most
// one L7 flow, and most connections carry no message that L7 counts (TLS
// and the protocols only noted take an entry too, but those are the few
// that a node's connections mostly are not); a full L7 map loses messages,
// counted, never flows.
func defaultMaxL7Flows(maxFlows int) int { return max(1, maxFlows/4) }

// minL7Pending is the least the L7 pending maps hold: LRU maps, they
// push out the oldest requests waiting, and at a few entries those would
// be requests still in flight.
const minL7Pending = 1024

// netnsCookie returns the cookie of the calling thread's network
// namespace (SO_NETNS_COOKIE, Linux 5.14).
func netnsCookie() (uint64, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, fmt.Errorf("socket for the network namespace's cookie: %w", err)
	}
	defer unix.Close(fd)
	c, err := unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_NETNS_COOKIE)
	if err != nil {
		return 0, fmt.Errorf("read the network namespace's cookie (SO_NETNS_COOKIE): %w", err)
	}
	return c, nil
}

// minEventFlows is the least the health and drop maps hold.
const minEventFlows = 1024

// sizeMaps sizes the flow maps for maxFlows flow directions (the health
// and drop maps for a quarter of them, at least minEventFlows) and the L7
// maps (the stats, not preallocated, and the pending requests, at least
// minL7Pending) for maxL7Flows client-to-server flows.
func sizeMaps(spec *ebpf.CollectionSpec, maxFlows, maxL7Flows uint32) {
	for _, m := range []string{bpfMapFlows4A, bpfMapFlows4B, bpfMapFlows6A, bpfMapFlows6B} {
		spec.Maps[m].MaxEntries = maxFlows
	}
	// Health events and drops reach fewer flows than the flow maps hold
	// (a connection's SYNs and accepts are in its flow entries): a
	// quarter, not preallocated, what they refuse counted.
	for _, m := range []string{bpfMapHealthA, bpfMapHealthB, bpfMapDropsA, bpfMapDropsB} {
		spec.Maps[m].MaxEntries = max(maxFlows/4, minEventFlows)
	}
	for _, m := range []string{bpfMapL7s4A, bpfMapL7s4B, bpfMapL7s6A, bpfMapL7s6B} {
		spec.Maps[m].MaxEntries = maxL7Flows
	}
	for _, m := range []string{bpfMapL7Pending4, bpfMapL7Pending6} {
		spec.Maps[m].MaxEntries = max(maxL7Flows, minL7Pending)
	}
	// Attempts wait there a second or two (see halfopen.go).
	spec.Maps[bpfMapHalfOpen].MaxEntries = max(maxFlows/4, 1024)
}

// Run attaches to the interfaces the config names, follows netlink link
// and route events to attach to new ones (and to a link that becomes a
// default route's) within a second and release vanished ones, and sends
// one Batch to out every interval, until ctx is done. Then it sends the
// last batch, if out takes it, and returns ctx's error; the caller still
// owns Close. Link events are followed apart from the batches, so that a
// slow reader of out does not hold them up; a subscription that fails
// (an overrun) is made again and the links listed again (see follow):
// after the start, Run ends only with ctx.
func (d *Datapath) Run(ctx context.Context, out chan<- model.Batch) error {
	followCtx, stopFollow := context.WithCancel(ctx)
	followDone := make(chan struct{})
	ready := make(chan error, 1)
	go func() { defer close(followDone); d.follow(followCtx, ready) }()
	defer func() { stopFollow(); <-followDone }()
	if err := <-ready; err != nil {
		return err
	}
	d.regMu.Lock()
	d.running = true
	d.regMu.Unlock()
	d.checkBypass()
	// L7 names: read as they come, handed out with the next batch.
	namesCtx, stopNames := context.WithCancel(ctx)
	namesDone := make(chan error, 1)
	go func() { namesDone <- readNames(namesCtx, d.objs.L7Names, d.addName, d.badName, d.unchainedNames) }()
	defer func() { stopNames(); <-namesDone }()
	tick := time.NewTicker(d.cfg.Interval)
	defer tick.Stop()
	start := time.Now()
	for {
		select {
		case <-ctx.Done():
			if b, err := d.Drain(start); err == nil {
				select {
				case out <- b:
				default:
				}
			}
			return ctx.Err()
		case <-tick.C:
			b, err := d.Drain(start)
			d.checkBypass()
			if err != nil {
				d.log.Warn("drain", "err", err)
				continue
			}
			start = b.End
			select {
			case out <- b:
			case <-ctx.Done():
			}
		}
	}
}

// update attaches to or releases the interface of one link event.
func (d *Datapath) update(u netlink.LinkUpdate, defRoutes map[int]bool) {
	attrs := u.Link.Attrs()
	d.regMu.Lock()
	defer d.regMu.Unlock()
	if d.closed {
		return
	}
	if u.Header.Type == unix.RTM_DELLINK {
		if _, ok := d.attached[attrs.Index]; ok {
			if err := d.releaseLocked(attrs.Index); err != nil {
				d.log.Debug("release vanished interface", "ifname", attrs.Name, "err", err)
			}
			d.log.Info("released vanished interface", "ifname", attrs.Name, "ifindex", attrs.Index)
		}
		return
	}
	if _, ok := d.attached[attrs.Index]; ok {
		return
	}
	if !d.wants(u.Link, defRoutes) {
		return
	}
	if err := d.attachLocked(u.Link); err != nil {
		d.count(func(s *Stats) { s.AttachErrors++ })
		d.log.Warn("attach", "ifname", attrs.Name, "err", err)
	}
}

// wants reports whether the config covers l; defRoutes are the links of
// the default routes. The caller holds d.regMu.
func (d *Datapath) wants(l netlink.Link, defRoutes map[int]bool) bool {
	attrs := l.Attrs()
	if attrs.Flags&unix.IFF_LOOPBACK != 0 {
		return false
	}
	// A port of a watched bridge is watched, whatever its name.
	if a, ok := d.attached[attrs.MasterIndex]; ok && a.bridge {
		return l.Type() != "veth" || attrs.NetNsID >= 0
	}
	// Both ends of a veth pair in this namespace would count each packet.
	if l.Type() == "veth" && attrs.NetNsID < 0 {
		return false
	}
	if len(d.cfg.Interfaces) == 0 {
		switch l.Type() {
		case "veth", "bridge", "vxlan", "geneve":
			return true
		}
		return defRoutes[attrs.Index]
	}
	return matchAny(d.cfg.Interfaces, attrs.Name)
}

func matchAny(globs []string, name string) bool {
	for _, g := range globs {
		if ok, _ := path.Match(g, name); ok {
			return true
		}
	}
	return false
}

// attachLocked attaches the programs to l. The caller holds d.regMu.
func (d *Datapath) attachLocked(l netlink.Link) (err error) {
	attrs := l.Attrs()
	a := &attachment{iface: model.Interface{
		Index:       attrs.Index,
		Name:        attrs.Name,
		Kind:        l.Type(),
		PeerNetNSID: attrs.NetNsID,
	}, log: d.log}
	if l.Type() == "veth" {
		a.iface.PeerIndex = attrs.ParentIndex
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, a.close())
		}
	}()
	// Watched before the ingress program counts: from then on the egress
	// programs leave alone what came in here. Watched after it, a packet
	// in between was counted at this ingress and again at the egress it
	// left by (a whole transfer twice, in the churn soak test, whose
	// transfers start as their veth appears). Watched first, a packet in
	// between is counted nowhere, as one before the attachment.
	if err := d.watch(attrs.Index, true); err != nil {
		return fmt.Errorf("watch %s: %w", attrs.Name, err)
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, d.watch(attrs.Index, false))
		}
	}()
	if l.Type() == "bridge" {
		a.bridge = true
	} else {
		if matchAny(d.cfg.XDP, attrs.Name) {
			if err := a.attachXDP(d.objs.XdpIngress, d.cfg.XDPMode); err != nil {
				return err
			}
		} else if err := a.attachTC(d.cfg.Attach, d.objs.TcIngress, d.tcIngress, true); err != nil {
			return err
		}
		if d.afterIngress != nil {
			d.afterIngress(a.iface)
		}
		if err := a.attachTC(d.cfg.Attach, d.objs.TcEgress, d.tcEgress, false); err != nil {
			return err
		}
	}
	d.attached[attrs.Index] = a
	d.known[attrs.Index] = a.iface
	if a.bridge {
		d.count(func(s *Stats) { s.Bridges++ })
		d.log.Info("watching bridge through its ports", "ifname", attrs.Name, "ifindex", attrs.Index)
		d.attachPortsLocked(attrs.Index)
		return nil
	}
	d.count(func(s *Stats) { s.Attached++ })
	d.log.Info("attached", "ifname", attrs.Name, "ifindex", attrs.Index, "kind", l.Type(),
		"tc", d.tcMode(a), "xdp", a.xdp)
	return nil
}

func (d *Datapath) tcMode(a *attachment) string {
	if len(a.filters) > 0 {
		return "clsact"
	}
	return "tcx"
}

// attachPortsLocked attaches the ports a bridge already had. The caller
// holds d.regMu.
func (d *Datapath) attachPortsLocked(bridge int) {
	links, err := netlink.LinkList()
	if err != nil {
		d.log.Warn("list bridge ports", "ifindex", bridge, "err", err)
		return
	}
	for _, l := range links {
		if l.Attrs().MasterIndex != bridge {
			continue
		}
		if _, ok := d.attached[l.Attrs().Index]; ok || !d.wants(l, nil) {
			continue
		}
		if err := d.attachLocked(l); err != nil {
			d.count(func(s *Stats) { s.AttachErrors++ })
			d.log.Warn("attach bridge port", "ifname", l.Attrs().Name, "err", err)
		}
	}
}

// watch adds ifindex to the kernel's set of interfaces whose ingress is
// counted, or removes it.
func (d *Datapath) watch(ifindex int, on bool) error {
	if ifindex < int(d.objs.Watched.MaxEntries()) {
		return d.objs.Watched.Put(uint32(ifindex), boolU32(on))
	}
	if on {
		return d.objs.WatchedHi.Put(uint32(ifindex), uint32(1))
	}
	if err := d.objs.WatchedHi.Delete(uint32(ifindex)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return err
	}
	return nil
}

// releaseLocked detaches from one interface. The caller holds d.regMu.
func (d *Datapath) releaseLocked(idx int) error {
	a := d.attached[idx]
	delete(d.attached, idx)
	d.count(func(s *Stats) {
		if a.bridge {
			s.Bridges--
		} else {
			s.Attached--
		}
	})
	err := a.close()
	if derr := d.watch(idx, false); derr != nil {
		err = errors.Join(err, fmt.Errorf("unwatch %s: %w", a.iface.Name, derr))
	}
	return err
}

// Drain empties the flow map and returns its flows as a batch that starts
// at start. It holds d.drainMu throughout, and the other locks only to
// copy in or out: the names reader, link events and Stats go on meanwhile.
func (d *Datapath) Drain(start time.Time) (model.Batch, error) {
	d.drainMu.Lock()
	defer d.drainMu.Unlock()
	if d.closed {
		return model.Batch{}, errors.New("drain: datapath closed")
	}
	// An interface released before the flip counted nothing after it:
	// this drain is the last to name its flows. One released later, while
	// this drain runs, is kept for the next.
	gone := d.released()
	t0 := time.Now()
	dirs, err := d.drain.drain()
	if err != nil {
		// What it took out of the maps goes out with the next batch.
		d.drain.keep(dirs)
		d.count(func(s *Stats) { s.Drains++; s.DrainErrors++; s.DrainKept = uint64(dirs.len()) })
		return model.Batch{}, err
	}
	var joined, ctErrors, ctLookups, ctFound, ctSkipped uint64
	if dirs.len() > 0 {
		// Join the directions of NATed connections (see natJoin). Without
		// conntrack (no nf_conntrack_netlink, no CAP_NET_ADMIN) they stay
		// two one-way records.
		var skipped int
		d.ctKeys, skipped = ctCandidates(d.ctKeys, dirs)
		ctSkipped = uint64(skipped)
		var one [1]*netlink.ConntrackFlow
		found, err := d.conntrack(d.ctKeys, func(c *netlink.ConntrackFlow) {
			one[0] = c
			joined += uint64(natJoin(dirs, one[:]))
		})
		if err != nil {
			ctErrors = 1
			d.log.Debug("look conntrack up", "err", err)
		}
		ctLookups, ctFound = uint64(len(d.ctKeys)), uint64(found)
	}
	clk, err := d.clock.read()
	if err != nil {
		d.drain.keep(dirs)
		d.count(func(s *Stats) {
			s.Drains++
			s.DrainErrors++
			s.DrainKept = uint64(dirs.len())
			s.ConntrackErrors += ctErrors
			s.NATJoined += joined
		})
		return model.Batch{}, err
	}
	// Taken after the flip, so that it names every interface that may
	// have counted in the drained half.
	ifaces := d.interfaces()
	recs := d.drain.records(dirs, func(idx int) model.Interface {
		if i, ok := ifaces[idx]; ok {
			return i
		}
		return model.Interface{Index: idx, PeerNetNSID: -1}
	}, clk)
	counters := d.readCounters()
	l7Lost := d.readL7Lost()
	mem, err := mapMemory(d.objs.bpfMaps, d.drain.ncpu)
	if err != nil {
		d.log.Warn("read map memory", "err", err)
	}
	end := time.Now()
	took := end.Sub(t0)
	d.forget(gone)
	d.count(func(s *Stats) {
		s.Drains++
		s.ConntrackErrors += ctErrors
		s.ConntrackLookups += ctLookups
		s.ConntrackFound += ctFound
		s.ConntrackSkipped += ctSkipped
		s.NATJoined += joined
		for c, v := range counters {
			if f, ok := counterFields[c]; ok {
				*f(s) = v
			}
		}
		s.L7Lost = l7Lost
		s.LastDrain = took
		s.DrainSeconds += took.Seconds()
		s.DrainKept = 0
		s.GraceWaits = d.drain.graceWaits
		s.LastEntries = dirs.len()
		s.HalfOpen = d.drain.halfOpen.stats(counters)
		if mem != nil {
			s.MapMemory = mem
		}
		s.Flows += uint64(len(recs))
	})
	d.log.Debug("drained", "directions", dirs.len(), "flows", len(recs), "took", took)
	d.namesMu.Lock()
	names := d.names
	d.names = nil
	d.namesMu.Unlock()
	return model.Batch{Start: start, End: end, Records: recs, Names: names}, nil
}

// released returns the interfaces known but no longer attached.
func (d *Datapath) released() map[int]model.Interface {
	d.regMu.Lock()
	defer d.regMu.Unlock()
	gone := map[int]model.Interface{}
	for idx, i := range d.known {
		if _, ok := d.attached[idx]; !ok {
			gone[idx] = i
		}
	}
	return gone
}

// forget removes the interfaces released returned from the known ones,
// unless one was attached again since.
func (d *Datapath) forget(gone map[int]model.Interface) {
	d.regMu.Lock()
	defer d.regMu.Unlock()
	for idx, i := range gone {
		if _, ok := d.attached[idx]; !ok && d.known[idx] == i {
			delete(d.known, idx)
		}
	}
}

// interfaces returns a copy of the known interfaces.
func (d *Datapath) interfaces() map[int]model.Interface {
	d.regMu.Lock()
	defer d.regMu.Unlock()
	return maps.Clone(d.known)
}

// addName keeps a name for the next batch, up to maxNamesPerBatch; more
// are counted in Stats.NamesDropped.
func (d *Datapath) addName(n model.Name) {
	d.namesMu.Lock()
	full := len(d.names) >= maxNamesPerBatch
	if !full {
		d.names = append(d.names, n)
	}
	d.namesMu.Unlock()
	if full {
		d.count(func(s *Stats) { s.NamesDropped++ })
	}
}

func (d *Datapath) badName() {
	d.count(func(s *Stats) { s.NamesUndecoded++ })
}

func (d *Datapath) unchainedNames(n uint64) {
	d.count(func(s *Stats) { s.NamesUnchained += n })
}

// counterFields are the Stats fields of the programs' counters.
var counterFields = map[bpfCounter]func(*Stats) *uint64{
	bpfCounterCOUNTER_MAP_FULL_PACKETS: func(s *Stats) *uint64 { return &s.MapFullPackets },
	bpfCounterCOUNTER_MAP_FULL_BYTES:   func(s *Stats) *uint64 { return &s.MapFullBytes },
	bpfCounterCOUNTER_NON_IP:           func(s *Stats) *uint64 { return &s.NonIP },
	bpfCounterCOUNTER_MALFORMED:        func(s *Stats) *uint64 { return &s.Malformed },
	bpfCounterCOUNTER_NAMES_LOST:       func(s *Stats) *uint64 { return &s.NamesLost },
	bpfCounterCOUNTER_TRUNCATED:        func(s *Stats) *uint64 { return &s.Truncated },
	bpfCounterCOUNTER_HEALTH_MAP_FULL:  func(s *Stats) *uint64 { return &s.HealthMapFull },
	bpfCounterCOUNTER_DROPS_MAP_FULL:   func(s *Stats) *uint64 { return &s.DropsMapFull },
	bpfCounterCOUNTER_NAMES_UNMATCHED:  func(s *Stats) *uint64 { return &s.NamesUnmatched },
	bpfCounterCOUNTER_NAMES_NOT_CLIENT: func(s *Stats) *uint64 { return &s.NamesNotClient },
}

// readCounters returns the per-CPU counters, summed; one it cannot read
// is logged and left out. The caller holds d.drainMu, which keeps the map
// open.
func (d *Datapath) readCounters() map[bpfCounter]uint64 {
	out := make(map[bpfCounter]uint64, bpfCounterCOUNTER_MAX)
	for idx := range bpfCounterCOUNTER_MAX {
		var percpu []uint64
		if err := d.objs.Counters.Lookup(uint32(idx), &percpu); err != nil {
			d.log.Warn("read counter", "counter", idx, "err", err)
			continue
		}
		var sum uint64
		for _, v := range percpu {
			sum += v
		}
		out[idx] = sum
	}
	return out
}

// readL7Lost returns the l7_lost map's counts by reason and protocol,
// summed over the CPUs; one it cannot read is logged and left 0. The
// caller holds d.drainMu, which keeps the map open.
func (d *Datapath) readL7Lost() (lost [bpfL7LossL7LOSS_MAX][model.NumL7Protocols]uint64) {
	for reason := range bpfL7LossL7LOSS_MAX {
		for proto := range model.NumL7Protocols {
			var percpu []uint64
			idx := uint32(reason)*l7Protos + uint32(proto)
			if err := d.objs.L7Lost.Lookup(idx, &percpu); err != nil {
				d.log.Warn("read l7_lost", "index", idx, "err", err)
				continue
			}
			for _, v := range percpu {
				lost[reason][proto] += v
			}
		}
	}
	return lost
}

// probeInsns is the smallest TC program: return TC_ACT_UNSPEC.
var probeInsns = asm.Instructions{
	asm.Mov.Imm(asm.R0, -1),
	asm.Return(),
}

// Programs returns the loaded programs by their C names (tc_ingress,
// tc_egress, xdp_ingress, tcp_retransmit, kfree_skb, tcp_probe, tcp_cong_state), for benchmarks that read their
// run-time statistics.
func (d *Datapath) Programs() map[string]*ebpf.Program {
	return map[string]*ebpf.Program{
		bpfProgTcIngress:     d.objs.TcIngress,
		bpfProgTcEgress:      d.objs.TcEgress,
		bpfProgXdpIngress:    d.objs.XdpIngress,
		bpfProgTcpRetransmit: d.objs.TcpRetransmit,
		bpfProgKfreeSkb:      d.objs.KfreeSkb,
		bpfProgTcpProbe:      d.objs.TcpProbe,
		bpfProgTcpCongState:  d.objs.TcpCongState,
	}
}

func boolU32(b bool) uint32 {
	if b {
		return 1
	}
	return 0
}
