package flows

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
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
	// Interval is how often the flow map is drained; 0 is 5s.
	Interval time.Duration
	// MaxFlows bounds the flow map (each half of it) in flow directions;
	// 0 is 65536.
	MaxFlows int
	// Logger receives lifecycle logs; nil discards them.
	Logger *slog.Logger
	// DNSPort is the port of DNS servers whose messages the L7 parsers
	// read, over UDP and TCP; 0 is 53.
	DNSPort uint16
}

// Datapath is flowmap's loaded BPF programs, their attachments to
// interfaces, and the maps they count in. Its methods are safe for
// concurrent use; Close detaches everything.
type Datapath struct {
	cfg    Config
	log    *slog.Logger
	objs   bpfObjects
	retran link.Link
	drain  *drainer
	clock  *clock

	mu       sync.Mutex
	attached map[int]*attachment     // by ifindex
	known    map[int]model.Interface // every interface that was attached since the last drain
	stats    Stats
	closed   bool
	running  bool         // Run has attached to the interfaces there were
	names    []model.Name // read from l7_names since the last drain
}

// Stats are the datapath's own counters, for /metrics.
type Stats struct {
	Attached        int           // interfaces with programs
	Bridges         int           // bridges watched through their ports
	AttachErrors    uint64        // attaches that failed
	Drains          uint64        // drains done
	DrainErrors     uint64        // drains that failed
	LastDrain       time.Duration // how long the last drain took
	DrainSeconds    float64       // all drains' time
	LastEntries     int           // flow directions in the last drain
	MaxFlows        int           // the flow map's size
	Flows           uint64        // records handed out
	MapFullPackets  uint64        // packets not counted: the flow map was full
	MapFullBytes    uint64
	NonIP           uint64 // frames neither IPv4 nor IPv6
	Malformed       uint64 // truncated or bad IP frames
	LeftoversPurged int    // clsact filters of a dead agent removed at start
	NATJoined       uint64 // directions of NATed connections joined by conntrack
	ConntrackErrors uint64 // drains that could not read conntrack
	// L7 (see l7.go).
	L7MapFull      uint64 // L7 messages not counted: the L7 map was full
	NamesLost      uint64 // name events the ring buffer had no room for
	NamesDropped   uint64 // names over maxNamesPerBatch in one interval
	NamesUndecoded uint64 // name events that did not decode
	NamesUnchained uint64 // DNS answer records not tied to the question (see DecodeDNSNames)
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
		cfg.Interval = 5 * time.Second
	}
	if cfg.MaxFlows <= 0 {
		cfg.MaxFlows = 65536
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
	sizeMaps(spec, uint32(cfg.MaxFlows))
	if cfg.DNSPort == 0 {
		cfg.DNSPort = 53
	}
	if err := spec.Variables[bpfVarDnsPort].Set(cfg.DNSPort); err != nil {
		return nil, fmt.Errorf("set dns port %d: %w", cfg.DNSPort, err)
	}
	d := &Datapath{cfg: cfg, log: log, attached: map[int]*attachment{}, known: map[int]model.Interface{}}
	d.stats.MaxFlows = cfg.MaxFlows
	if err := spec.LoadAndAssign(&d.objs, nil); err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return nil, fmt.Errorf("load BPF programs: %+v", ve)
		}
		return nil, fmt.Errorf("load BPF programs: %w", err)
	}
	if d.drain, err = newDrainer(&d.objs, cfg.MaxFlows); err != nil {
		d.objs.Close()
		return nil, err
	}
	if d.clock, err = newClock(&d.objs); err != nil {
		d.objs.Close()
		return nil, err
	}
	// Retransmits are counted by a tracepoint on local sockets; a kernel
	// without tp_btf still gets every other statistic.
	if d.retran, err = link.AttachTracing(link.TracingOptions{Program: d.objs.TcpRetransmit}); err != nil {
		log.Warn("retransmits not counted", "err", err)
	}
	if n, err := removeLeftovers(); err != nil {
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
// unloads the programs and maps. It is safe to call twice.
func (d *Datapath) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil
	}
	d.closed = true
	var errs []error
	for idx := range d.attached {
		errs = append(errs, d.releaseLocked(idx))
	}
	if d.retran != nil {
		errs = append(errs, d.retran.Close())
	}
	errs = append(errs, d.objs.Close())
	return errors.Join(errs...)
}

// Ready returns nil once Run has attached to the interfaces that existed
// when it started, and says why not before.
func (d *Datapath) Ready() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	switch {
	case d.closed:
		return errors.New("datapath closed")
	case !d.running:
		return errors.New("datapath not attached yet")
	}
	return nil
}

// Stats returns the datapath's counters.
func (d *Datapath) Stats() Stats {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.stats
}

// Attached returns the interfaces that have programs, and the bridges
// watched through their ports.
func (d *Datapath) Attached() []model.Interface {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]model.Interface, 0, len(d.attached))
	for _, a := range d.attached {
		out = append(out, a.iface)
	}
	return out
}

// sizeMaps sizes the flow maps for maxFlows flow directions. The L7 maps
// hold client-to-server flows that carried a message: at most as many.
// Not preallocated, they cost what they hold.
func sizeMaps(spec *ebpf.CollectionSpec, maxFlows uint32) {
	for _, m := range []string{bpfMapFlows4A, bpfMapFlows4B, bpfMapFlows6A, bpfMapFlows6B,
		bpfMapL7s4A, bpfMapL7s4B, bpfMapL7s6A, bpfMapL7s6B} {
		spec.Maps[m].MaxEntries = maxFlows
	}
}

// Run attaches to the interfaces the config names, follows netlink link
// events to attach to new ones within a second and release vanished ones,
// and sends one Batch to out every interval, until ctx is done. Then it
// sends the last batch, if out takes it, and returns ctx's error; the
// caller still owns Close.
func (d *Datapath) Run(ctx context.Context, out chan<- model.Batch) error {
	done := make(chan struct{})
	defer close(done)
	updates, subErr, err := host.SubscribeLinks(done)
	if err != nil {
		return err
	}
	routes, err := host.Routes()
	if err != nil {
		d.log.Warn("find default routes", "err", err)
	}
	defRoutes := host.DefaultLinks(routes)
	// Subscribed first, listed second: a link made in between is in both,
	// and update is idempotent.
	links, err := netlink.LinkList()
	if err != nil {
		return fmt.Errorf("list links: %w", err)
	}
	for _, l := range links {
		d.update(netlink.LinkUpdate{Header: unix.NlMsghdr{Type: unix.RTM_NEWLINK}, Link: l}, defRoutes)
	}
	d.mu.Lock()
	d.running = true
	d.mu.Unlock()
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
		case err := <-subErr:
			return fmt.Errorf("link events: %w", err)
		case u, ok := <-updates:
			if !ok {
				return errors.New("link events: subscription closed")
			}
			d.update(u, defRoutes)
		case <-tick.C:
			b, err := d.Drain(start)
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
	d.mu.Lock()
	defer d.mu.Unlock()
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
		d.stats.AttachErrors++
		d.log.Warn("attach", "ifname", attrs.Name, "err", err)
	}
}

// wants reports whether the config covers l; defRoutes are the links of
// the default routes. The caller holds d.mu.
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

// attachLocked attaches the programs to l. The caller holds d.mu.
func (d *Datapath) attachLocked(l netlink.Link) (err error) {
	attrs := l.Attrs()
	a := &attachment{iface: model.Interface{
		Index:       attrs.Index,
		Name:        attrs.Name,
		Kind:        l.Type(),
		PeerNetNSID: attrs.NetNsID,
	}}
	if l.Type() == "veth" {
		a.iface.PeerIndex = attrs.ParentIndex
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, a.close())
		}
	}()
	if l.Type() == "bridge" {
		a.bridge = true
	} else {
		if matchAny(d.cfg.XDP, attrs.Name) {
			if err := a.attachXDP(d.objs.XdpIngress, d.cfg.XDPMode); err != nil {
				return err
			}
		} else if err := a.attachTC(d.cfg.Attach, d.objs.TcIngress, true); err != nil {
			return err
		}
		if err := a.attachTC(d.cfg.Attach, d.objs.TcEgress, false); err != nil {
			return err
		}
	}
	if err := d.watch(attrs.Index, true); err != nil {
		return fmt.Errorf("watch %s: %w", attrs.Name, err)
	}
	d.attached[attrs.Index] = a
	d.known[attrs.Index] = a.iface
	if a.bridge {
		d.stats.Bridges++
		d.log.Info("watching bridge through its ports", "ifname", attrs.Name, "ifindex", attrs.Index)
		d.attachPortsLocked(attrs.Index)
		return nil
	}
	d.stats.Attached++
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

// attachPortsLocked attaches the ports a bridge already had.
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
			d.stats.AttachErrors++
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

// releaseLocked detaches from one interface. The caller holds d.mu.
func (d *Datapath) releaseLocked(idx int) error {
	a := d.attached[idx]
	delete(d.attached, idx)
	if a.bridge {
		d.stats.Bridges--
	} else {
		d.stats.Attached--
	}
	err := a.close()
	if derr := d.watch(idx, false); derr != nil {
		err = errors.Join(err, fmt.Errorf("unwatch %s: %w", a.iface.Name, derr))
	}
	return err
}

// Drain empties the flow map and returns its flows as a batch that starts
// at start.
func (d *Datapath) Drain(start time.Time) (model.Batch, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return model.Batch{}, errors.New("drain: datapath closed")
	}
	t0 := time.Now()
	dirs, err := d.drain.drain()
	d.stats.Drains++
	if err != nil {
		d.stats.DrainErrors++
		return model.Batch{}, err
	}
	if len(dirs) > 0 {
		// Join the directions of NATed connections (see natJoin). Without
		// conntrack (no nf_conntrack_netlink, no CAP_NET_ADMIN) they stay
		// two one-way records.
		conns, err := conntrack()
		if err != nil {
			d.stats.ConntrackErrors++
			d.log.Debug("read conntrack", "err", err)
		}
		d.stats.NATJoined += uint64(natJoin(dirs, conns))
	}
	clk, err := d.clock.read()
	if err != nil {
		return model.Batch{}, err
	}
	recs := d.drain.records(dirs, d.iface, clk)
	d.readCounters()
	end := time.Now()
	d.stats.LastDrain = end.Sub(t0)
	d.stats.DrainSeconds += d.stats.LastDrain.Seconds()
	d.stats.LastEntries = len(dirs)
	d.stats.Flows += uint64(len(recs))
	// Interfaces that vanished were kept to name this drain's flows.
	for idx := range d.known {
		if _, ok := d.attached[idx]; !ok {
			delete(d.known, idx)
		}
	}
	d.log.Debug("drained", "directions", len(dirs), "flows", len(recs), "took", d.stats.LastDrain)
	names := d.names
	d.names = nil
	return model.Batch{Start: start, End: end, Records: recs, Names: names}, nil
}

// addName keeps a name for the next batch, up to maxNamesPerBatch.
func (d *Datapath) addName(n model.Name) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.names) >= maxNamesPerBatch {
		d.stats.NamesDropped++
		return
	}
	d.names = append(d.names, n)
}

func (d *Datapath) badName() {
	d.mu.Lock()
	d.stats.NamesUndecoded++
	d.mu.Unlock()
}

func (d *Datapath) unchainedNames(n uint64) {
	d.mu.Lock()
	d.stats.NamesUnchained += n
	d.mu.Unlock()
}

func (d *Datapath) iface(idx int) model.Interface {
	if i, ok := d.known[idx]; ok {
		return i
	}
	return model.Interface{Index: idx, PeerNetNSID: -1}
}

// readCounters sums the per-CPU counters into stats. The caller holds d.mu.
func (d *Datapath) readCounters() {
	for idx, dst := range map[bpfCounter]*uint64{
		bpfCounterCOUNTER_MAP_FULL_PACKETS: &d.stats.MapFullPackets,
		bpfCounterCOUNTER_MAP_FULL_BYTES:   &d.stats.MapFullBytes,
		bpfCounterCOUNTER_NON_IP:           &d.stats.NonIP,
		bpfCounterCOUNTER_MALFORMED:        &d.stats.Malformed,
		bpfCounterCOUNTER_L7MAP_FULL:       &d.stats.L7MapFull,
		bpfCounterCOUNTER_NAMES_LOST:       &d.stats.NamesLost,
	} {
		var percpu []uint64
		if err := d.objs.Counters.Lookup(uint32(idx), &percpu); err != nil {
			d.log.Warn("read counter", "counter", idx, "err", err)
			continue
		}
		var sum uint64
		for _, v := range percpu {
			sum += v
		}
		*dst = sum
	}
}

// probeInsns is the smallest TC program: return TC_ACT_UNSPEC.
var probeInsns = asm.Instructions{
	asm.Mov.Imm(asm.R0, -1),
	asm.Return(),
}

// Programs returns the loaded programs by their C names (tc_ingress,
// tc_egress, xdp_ingress, tcp_retransmit), for benchmarks that read their
// run-time statistics.
func (d *Datapath) Programs() map[string]*ebpf.Program {
	return map[string]*ebpf.Program{
		bpfProgTcIngress:     d.objs.TcIngress,
		bpfProgTcEgress:      d.objs.TcEgress,
		bpfProgXdpIngress:    d.objs.XdpIngress,
		bpfProgTcpRetransmit: d.objs.TcpRetransmit,
	}
}

func boolU32(b bool) uint32 {
	if b {
		return 1
	}
	return 0
}
