package enrich

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"golang.org/x/sys/unix"

	"github.com/flowmap/flowmap/host"
	"github.com/flowmap/flowmap/model"
)

// Config selects the inventory's sources and bounds its caches. Every
// source is optional; the host source (this machine's own addresses) is
// always on.
type Config struct {
	// NetNS enables the network namespace source: the namespaces behind
	// host-side veths, their processes and the container ids in their
	// cgroups. It needs no runtime API.
	NetNS bool
	// NetNSDirs are directories of named namespaces (bind mounts), whose
	// file names name a namespace that has no container; nil is
	// ["/run/netns"].
	NetNSDirs []string
	// ProcRoot is where procfs is mounted; "" is "/proc".
	ProcRoot string

	// DockerSocket is the path of a Docker Engine API unix socket, as
	// /run/docker.sock; "" disables the Docker source.
	DockerSocket string
	// PodmanSocket is the path of Podman's Docker-compatible API socket,
	// as /run/podman/podman.sock; "" disables the Podman source.
	PodmanSocket string

	// CRISocket is the path of a CRI runtime's gRPC socket, as
	// /run/containerd/containerd.sock or /run/crio/crio.sock; "" disables
	// the CRI source.
	CRISocket string

	// Kubeconfig is the path of a kubeconfig file for the Kubernetes
	// source; KubeInCluster uses the service account of the pod the agent
	// runs in instead. Neither disables the source.
	Kubeconfig    string
	KubeInCluster bool

	// Cloud enables the cloud metadata source: "auto" tries AWS, GCP and
	// Azure, or name one of "aws", "gcp", "azure"; "" disables it.
	Cloud string
	// CloudEndpoint is the base URL of the metadata service; "" is
	// http://169.254.169.254.
	CloudEndpoint string
	// CloudTimeout bounds each metadata request; 0 is 2s.
	CloudTimeout time.Duration

	// CIDRFile is the path of a file of CIDR → name lines (see
	// ParseCIDRs); "" disables it. The file is read again when it changes.
	CIDRFile string

	// Node is this machine's name in the cluster: the name of the host
	// source's endpoint, and of the Kubernetes Node that is this machine.
	// "" is host.Name().
	Node string

	// MaxEndpoints bounds each cache (addresses, namespaces, external
	// addresses); 0 is 65536.
	MaxEndpoints int
	// MaxHistoryBytes bounds the estimated memory of the past owners of
	// addresses and namespace ids (see Enrich); 0 is DefaultHistoryBytes.
	MaxHistoryBytes int
	// Resync is how often sources that poll (network namespaces, the
	// CIDR file, the host's addresses, CRI) look again, besides the
	// events they follow; 0 is 30s.
	Resync time.Duration
	// Logger receives lifecycle logs and one line per bad input; nil
	// discards them.
	Logger *slog.Logger
}

// SourceStatus is how one source is doing, for /readyz.
type SourceStatus struct {
	Name string `json:"name"`
	// Up is true while the source reaches what it reads.
	Up bool `json:"up"`
	// LastSync is when the source last published what it knows.
	LastSync time.Time `json:"last_sync,omitzero"`
	// Endpoints is how many endpoints the source knows.
	Endpoints int `json:"endpoints"`
	// LastError is the source's last error or bad input, "" if it had
	// none; it stays after the source recovers, with Up telling.
	LastError string `json:"last_error,omitempty"`
	// Detail says more, as "not on a cloud".
	Detail string `json:"detail,omitempty"`
}

// Inventory knows who is behind the addresses of flows. Sources publish
// what they know; the inventory joins their records of one endpoint (by
// container id, pod UID, network namespace and address) into one Endpoint
// and indexes it in bounded caches, from which Resolve answers without a
// call to any runtime. Its methods are safe for concurrent use.
type Inventory struct {
	cfg     Config
	log     *slog.Logger
	sources []*sourceState

	// The caches Resolve reads. Only the merger writes to them.
	// Keyed by the address's 16 bytes: netip.Addr hashes (zone handle
	// and all) at twice the cost.
	byAddr *lru.Cache[[16]byte, *model.Endpoint]
	byNSID *lru.Cache[int, *model.Endpoint]
	// routed are the prefixes each namespace forwards for, by namespace
	// id, where it forwards for any (see routedFor); replaced whole by
	// each merge.
	routed atomic.Pointer[map[int][]netip.Prefix]
	// ext caches the answers for addresses that no source owns, with the
	// generation of the index they were made from.
	ext *lru.Cache[extKey, *extEntry]
	gen atomic.Uint64

	cidrs atomic.Pointer[cidrTable]
	// nodePorts are the Services by NodePort; replaced whole by each
	// merge.
	nodePorts atomic.Pointer[map[portKey]*model.Endpoint]

	mu      sync.Mutex
	records map[string][]record // by source
	dirty   chan struct{}
	running bool

	// history is who held an address or a namespace id before its
	// current owner: flows are named by who held it when they were seen.
	history *ownerHistory

	// Merger state: the keys written to the caches by the last merge,
	// and their owners.
	prevAddr map[[16]byte]*model.Endpoint
	prevNSID map[int]*model.Endpoint
	known    atomic.Int64
	// claimsRefused is how many address claims the last merge refused
	// (see grantClaims).
	claimsRefused atomic.Int64

	resolved [resolvedKinds]atomic.Uint64
	// spoofed counts the packets that entered at a container's veth with
	// a source that is not the container's (see Enrich).
	spoofed atomic.Uint64
}

type extKey struct {
	addr [16]byte
	// local is set for an address behind a host-side veth: it is in a
	// namespace of this host, not outside.
	local bool
}

type extEntry struct {
	gen uint64
	ep  model.Endpoint
}

// source is one origin of endpoints. run publishes through s until ctx is
// done, retrying what fails, and returns only then or on a configuration
// error.
type source interface {
	run(ctx context.Context, s *sourceState) error
}

// The sources' priorities: when two sources name one endpoint, the lower
// number's name, kind and id win.
const (
	prioKubernetes = iota
	prioCRI
	prioEngine
	prioNetNS
	prioHost
	prioCloud
	prioCIDR
)

// New returns an inventory of the sources cfg selects. It fails if a
// source's configuration is unusable (an unreadable kubeconfig, an unknown
// cloud); a socket that is not there yet is not an error. Run starts the
// sources.
func New(cfg Config) (*Inventory, error) {
	if cfg.MaxEndpoints <= 0 {
		cfg.MaxEndpoints = 65536
	}
	if cfg.Resync <= 0 {
		cfg.Resync = 30 * time.Second
	}
	if cfg.Node == "" {
		cfg.Node = host.Name()
	}
	if cfg.ProcRoot == "" {
		cfg.ProcRoot = "/proc"
	}
	if cfg.NetNSDirs == nil {
		cfg.NetNSDirs = []string{"/run/netns"}
	}
	if cfg.CloudTimeout <= 0 {
		cfg.CloudTimeout = 2 * time.Second
	}
	if cfg.CloudEndpoint == "" {
		cfg.CloudEndpoint = "http://169.254.169.254"
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	inv := &Inventory{
		cfg:     cfg,
		log:     log,
		records: make(map[string][]record),
		dirty:   make(chan struct{}, 1),
		history: newOwnerHistory(cfg.MaxHistoryBytes),
	}
	var err error
	if inv.byAddr, err = lru.New[[16]byte, *model.Endpoint](cfg.MaxEndpoints); err != nil {
		return nil, fmt.Errorf("make address cache: %w", err)
	}
	if inv.byNSID, err = lru.New[int, *model.Endpoint](cfg.MaxEndpoints); err != nil {
		return nil, fmt.Errorf("make namespace id cache: %w", err)
	}
	if inv.ext, err = lru.New[extKey, *extEntry](cfg.MaxEndpoints); err != nil {
		return nil, fmt.Errorf("make external cache: %w", err)
	}
	inv.cidrs.Store(&cidrTable{})

	add := func(name string, prio int, src source) {
		inv.sources = append(inv.sources, &sourceState{
			inv:    inv,
			name:   name,
			prio:   prio,
			src:    src,
			log:    log.With("component", "enrich", "source", name),
			status: SourceStatus{Name: name},
			errs:   make(map[string]uint64),
		})
	}
	add("host", prioHost, &hostSource{})
	if cfg.NetNS {
		// Opening /proc/PID/ns/net of a process with other capabilities
		// than ours, or another user's, is a ptrace read check.
		if !host.HasCap(unix.CAP_SYS_PTRACE) {
			return nil, errors.New("netns source: CAP_SYS_PTRACE missing: it is needed to open /proc/PID/ns/net of containers' processes (a ptrace read check); add it, or turn the source off (--netns=false)")
		}
		add("netns", prioNetNS, &netnsSource{procRoot: cfg.ProcRoot, dirs: cfg.NetNSDirs, resync: cfg.Resync})
	}
	if cfg.DockerSocket != "" {
		add("docker", prioEngine, newEngineSource(cfg.DockerSocket, cfg.ProcRoot))
	}
	if cfg.PodmanSocket != "" {
		add("podman", prioEngine, newEngineSource(cfg.PodmanSocket, cfg.ProcRoot))
	}
	if cfg.CRISocket != "" {
		add("cri", prioCRI, &criSource{socket: cfg.CRISocket, resync: cfg.Resync})
	}
	if cfg.Kubeconfig != "" || cfg.KubeInCluster {
		ks, err := newKubeSource(cfg.Kubeconfig, cfg.KubeInCluster)
		if err != nil {
			return nil, err
		}
		add("kubernetes", prioKubernetes, ks)
	}
	if cfg.Cloud != "" {
		cs, err := newCloudSource(cfg.Cloud, cfg.CloudEndpoint, cfg.CloudTimeout)
		if err != nil {
			return nil, err
		}
		add("cloud", prioCloud, cs)
	}
	if cfg.CIDRFile != "" {
		add("cidr", prioCIDR, &cidrSource{path: cfg.CIDRFile, resync: cfg.Resync})
	}
	return inv, nil
}

// Run starts the sources and keeps the caches up to date with what they
// publish, until ctx is done; then it returns ctx's error. A source that
// fails is retried by itself, reported down in Status and counted, and
// the others go on. Run may be called once.
func (inv *Inventory) Run(ctx context.Context) error {
	inv.mu.Lock()
	if inv.running {
		inv.mu.Unlock()
		return errors.New("inventory already running")
	}
	inv.running = true
	inv.mu.Unlock()

	var wg sync.WaitGroup
	for _, s := range inv.sources {
		wg.Go(func() {
			s.log.Info("source started")
			err := s.src.run(ctx, s)
			if err != nil && ctx.Err() == nil {
				s.fail("stopped", err)
			}
			s.log.Info("source stopped")
		})
	}
	inv.merge(ctx)
	wg.Wait()
	return ctx.Err()
}

// merge rebuilds the caches whenever a source publishes, at most every
// mergeDelay, until ctx is done.
func (inv *Inventory) merge(ctx context.Context) {
	const mergeDelay = 20 * time.Millisecond
	for {
		select {
		case <-ctx.Done():
			return
		case <-inv.dirty:
		}
		// Let a burst of publishes (a source's first sync, several
		// containers started at once) land in one rebuild.
		select {
		case <-ctx.Done():
			return
		case <-time.After(mergeDelay):
		}
		inv.rebuild()
	}
}

// publish replaces what source name knows with recs.
func (inv *Inventory) publish(name string, recs []record) {
	inv.mu.Lock()
	inv.records[name] = recs
	inv.mu.Unlock()
	select {
	case inv.dirty <- struct{}{}:
	default:
	}
}

// rebuild joins the sources' records and writes the result to the caches.
func (inv *Inventory) rebuild() {
	inv.mu.Lock()
	n := 0
	names := make([]string, 0, len(inv.records))
	for name, recs := range inv.records {
		names = append(names, name)
		n += len(recs)
	}
	all := make([]record, 0, n)
	sort.Strings(names) // for a merge that does not depend on map order
	for _, name := range names {
		all = append(all, inv.records[name]...)
	}
	inv.mu.Unlock()
	// The owners that this merge replaces went by now: the sources saw
	// them go (or another come) before it.
	now := time.Now()

	groups := join(all)
	eps := make([]*model.Endpoint, len(groups))
	for i, g := range groups {
		eps[i] = new(g.endpoint())
	}
	granted, refused := grantClaims(groups, eps)
	inv.claimsRefused.Store(int64(refused))
	addrs := make(map[[16]byte]*model.Endpoint, len(inv.prevAddr))
	nsids := make(map[int]*model.Endpoint, len(inv.prevNSID))
	routed := make(map[int][]netip.Prefix)
	nodePorts := make(map[portKey]*model.Endpoint)
	for i, g := range groups {
		ep := eps[i]
		if granted != nil && len(granted[i]) > 0 {
			// A new slice: Addrs may be a record's.
			ep.Addrs = slices.Concat(ep.Addrs, granted[i])
			slices.SortFunc(ep.Addrs, func(a, b netip.Addr) int { return a.Compare(b) })
		}
		for _, a := range ep.Addrs {
			inv.byAddr.Add(a.As16(), ep)
			addrs[a.As16()] = ep
		}
		for _, r := range g {
			for _, k := range r.nodePorts {
				nodePorts[k] = ep
			}
			for _, id := range r.nsids {
				inv.byNSID.Add(id, ep)
				nsids[id] = ep
				if len(r.routed) > 0 {
					routed[id] = r.routed
				}
			}
		}
	}
	inv.routed.Store(&routed)
	inv.nodePorts.Store(&nodePorts)
	inv.history.expire(now)
	for a, old := range inv.prevAddr {
		cur, ok := addrs[a]
		if !ok {
			inv.byAddr.Remove(a)
		}
		if !ok || !sameHolder(old, cur) {
			inv.history.add(ownerKey{addr: a}, old, now)
		}
	}
	for id, old := range inv.prevNSID {
		cur, ok := nsids[id]
		if !ok {
			inv.byNSID.Remove(id)
		}
		if !ok || !sameHolder(old, cur) {
			inv.history.add(ownerKey{nsid: id, ns: true}, old, now)
		}
	}
	inv.prevAddr, inv.prevNSID = addrs, nsids
	inv.known.Store(int64(len(groups)))
	// Answers cached for addresses no source owned may be stale now.
	inv.gen.Add(1)
}

// The kinds of answer Resolve counts.
const (
	resolvedKnown = iota
	resolvedLocal
	resolvedExternal
	resolvedKinds
)

// Resolve returns the endpoint behind addr, seen behind the host-side
// interface iface (the zero Interface where there is none). It reads only
// the caches: an address in a namespace that a source knows (through
// iface's peer namespace, or the address itself) is that namespace's
// endpoint; an address behind a veth that no source knows is model.KindUnknown;
// any other address is model.KindExternal, named by the CIDR file where a line
// covers it, else by itself.
func (inv *Inventory) Resolve(addr netip.Addr, iface model.Interface) model.Endpoint {
	ep, _ := inv.resolve(addr, iface, false, time.Time{})
	return ep
}

// resolve is Resolve, by who held addr and iface's namespace id at t
// (now, where t is zero); sent says that addr is the source of packets
// counted as they entered at iface, which the namespace behind it sent.
// Such an address, where it is neither the namespace's own nor one it
// forwards for, is spoofed: resolve returns the namespace's endpoint, not
// the address's owner, and true.
func (inv *Inventory) resolve(addr netip.Addr, iface model.Interface, sent bool, t time.Time) (model.Endpoint, bool) {
	addr = addr.Unmap()
	behindVeth := iface.Index != 0 && iface.PeerNetNSID >= 0
	var nsEP *model.Endpoint
	var haveNS bool
	if behindVeth {
		nsEP, haveNS = inv.history.at(ownerKey{nsid: iface.PeerNetNSID, ns: true}, t)
		if !haveNS {
			nsEP, haveNS = inv.byNSID.Get(iface.PeerNetNSID)
		}
		if haveNS && (len(nsEP.Addrs) == 0 || containsAddr(nsEP.Addrs, addr)) {
			inv.resolved[resolvedKnown].Add(1)
			return *nsEP, false
		}
		if haveNS && sent && !inv.forwards(iface.PeerNetNSID, addr) {
			inv.resolved[resolvedKnown].Add(1)
			return *nsEP, !addr.IsLinkLocalUnicast() && !addr.IsUnspecified()
		}
	}
	a16 := addr.As16()
	if ep, ok := inv.history.at(ownerKey{addr: a16}, t); ok {
		inv.resolved[resolvedKnown].Add(1)
		return *ep, false
	}
	if ep, ok := inv.byAddr.Get(a16); ok {
		inv.resolved[resolvedKnown].Add(1)
		return *ep, false
	}
	if haveNS {
		// An address the namespace's endpoint does not list (it routes for
		// others, or took the address after the last sync): still who is
		// behind the veth.
		inv.resolved[resolvedKnown].Add(1)
		return *nsEP, false
	}
	key := extKey{addr: a16, local: behindVeth}
	gen := inv.gen.Load()
	if e, ok := inv.ext.Get(key); ok && e.gen == gen {
		inv.count(e.ep.Kind)
		return e.ep, false
	}
	ep := inv.unowned(addr, behindVeth)
	inv.ext.Add(key, &extEntry{gen: gen, ep: ep})
	inv.count(ep.Kind)
	return ep, false
}

// forwards reports whether the namespace of id routes addr out of an
// interface of its own: it forwards for addr (see routedFor).
func (inv *Inventory) forwards(id int, addr netip.Addr) bool {
	m := inv.routed.Load()
	if m == nil {
		return false
	}
	for _, p := range (*m)[id] {
		if p.Contains(addr) {
			return true
		}
	}
	return false
}

func (inv *Inventory) count(k model.EndpointKind) {
	if k == model.KindUnknown {
		inv.resolved[resolvedLocal].Add(1)
	} else {
		inv.resolved[resolvedExternal].Add(1)
	}
}

// unowned makes the endpoint of an address that no source owns.
func (inv *Inventory) unowned(addr netip.Addr, local bool) model.Endpoint {
	if !addr.IsValid() {
		return model.Endpoint{Kind: model.KindUnknown, ID: "invalid", Name: "invalid"}
	}
	s := addr.String()
	addrs := []netip.Addr{addr}
	if local {
		return model.Endpoint{Kind: model.KindUnknown, ID: s, Name: s, Addrs: addrs}
	}
	if c, ok := inv.cidrs.Load().lookup(addr); ok {
		return model.Endpoint{Kind: model.KindExternal, ID: c.Prefix.String(), Name: c.Name, Addrs: addrs, Source: "cidr"}
	}
	return model.Endpoint{Kind: model.KindExternal, ID: s, Name: s, Addrs: addrs}
}

func containsAddr(addrs []netip.Addr, a netip.Addr) bool {
	for _, b := range addrs {
		if a == b {
			return true
		}
	}
	return false
}

// Enrich returns r with both ends resolved. An end whose packets were
// counted as they entered at a container's veth (the ingress of its
// host-side end) is that container, whatever their source address says: a
// container with CAP_NET_RAW (a runtime's default) can write any source.
// The packets of an end whose address is neither the container's nor one
// it forwards for are counted as spoofed (Spoofed), not credited to the
// address's owner.
//
// Where the host translated the address the client dialled (r.Backend),
// the server's interface is the backend's: the backend is resolved behind
// it, the dialled address (a Service's, a node's) by itself. A node's
// address dialled on a Service's NodePort is that Service: the client
// reached the Service through the node.
//
// Each end is who held its address (and the namespace behind its
// interface) when the flow was last seen, not when it is drained: a pod's
// address, or its namespace's id, may pass to another pod in between. A
// record has one last-seen time, its directions' latest; the first-seen
// time where it has none.
func (inv *Inventory) Enrich(r model.Record) model.Flow {
	t := r.LastSeen
	if t.IsZero() {
		t = r.FirstSeen
	}
	src, spoofed := inv.resolve(r.Src, r.SrcIf, sentAt(r.Forward, r.SrcIf), t)
	if spoofed {
		inv.spoofed.Add(r.Forward.Packets)
	}
	if r.Backend.IsValid() {
		backend, spoofed := inv.resolve(r.Backend.Addr(), r.DstIf, sentAt(r.Reverse, r.DstIf), t)
		if spoofed {
			inv.spoofed.Add(r.Reverse.Packets)
		}
		dst, _ := inv.resolve(r.Dst, model.Interface{}, false, t)
		if dst.Kind == model.KindHost {
			if np := inv.nodePorts.Load(); np != nil {
				if svc, ok := (*np)[portKey{proto: r.Proto, port: r.DstPort}]; ok {
					dst = *svc
				}
			}
		}
		return model.Flow{
			Record:          r,
			SrcEndpoint:     src,
			DstEndpoint:     dst,
			BackendEndpoint: backend,
		}
	}
	dst, spoofed := inv.resolve(r.Dst, r.DstIf, sentAt(r.Reverse, r.DstIf), t)
	if spoofed {
		inv.spoofed.Add(r.Reverse.Packets)
	}
	return model.Flow{Record: r, SrcEndpoint: src, DstEndpoint: dst}
}

// sentAt reports whether d's packets were counted entering at iface: sent
// by what is behind it.
func sentAt(d model.Direction, iface model.Interface) bool {
	return iface.Index != 0 && d.Packets > 0 && d.Point.Ingress() && d.Ifindex == iface.Index
}

// Spoofed returns how many packets entered at a container's veth with a
// source address that is not the container's (see Enrich).
func (inv *Inventory) Spoofed() uint64 { return inv.spoofed.Load() }

// Status returns each source's status, in the order they were configured.
func (inv *Inventory) Status() []SourceStatus {
	out := make([]SourceStatus, len(inv.sources))
	for i, s := range inv.sources {
		s.mu.Lock()
		out[i] = s.status
		s.mu.Unlock()
	}
	return out
}

// HistoryUsage is the estimated memory of the past owners of addresses
// and namespace ids, and its bound (Config.MaxHistoryBytes).
func (inv *Inventory) HistoryUsage() model.StoreUsage { return inv.history.usage() }

// Known returns how many endpoints the inventory knows, all sources joined.
func (inv *Inventory) Known() int { return int(inv.known.Load()) }

// sourceState is a source's handle on the inventory: where it publishes
// and reports how it is doing.
type sourceState struct {
	inv  *Inventory
	name string
	prio int
	src  source
	log  *slog.Logger

	mu     sync.Mutex
	status SourceStatus
	errs   map[string]uint64 // by reason
	// warned is set once a failure is logged at Warn, until the source
	// syncs again: a source that stays down logs once, not every retry.
	warned bool
}

// publish replaces what the source knows and marks it up.
func (s *sourceState) publish(recs []record) {
	for i := range recs {
		recs[i].prio = s.prio
		recs[i].ep.Source = s.name
	}
	s.synced(len(recs))
	s.inv.publish(s.name, recs)
}

// synced marks the source up, knowing n endpoints.
func (s *sourceState) synced(n int) {
	s.mu.Lock()
	first := s.status.LastSync.IsZero()
	s.status.Up = true
	s.status.LastSync = time.Now()
	s.status.Endpoints = n
	s.warned = false
	s.mu.Unlock()
	if first {
		s.log.Info("source synced", "endpoints", n)
	}
}

// fail marks the source down: it lost what it reads. It logs err and
// counts it under reason. What the source published stays: the endpoints
// it knew are likely still there.
func (s *sourceState) fail(reason string, err error) {
	s.mu.Lock()
	warn := !s.warned
	s.warned = true
	s.status.Up = false
	s.status.LastError = err.Error()
	s.errs[reason]++
	s.mu.Unlock()
	if warn {
		s.log.Warn("source down", "reason", reason, "err", err)
	} else {
		s.log.Debug("source still down", "reason", reason, "err", err)
	}
}

// bad counts and logs a bad input that the source skipped, without
// marking it down.
func (s *sourceState) bad(reason string, err error) {
	s.mu.Lock()
	s.errs[reason]++
	s.status.LastError = err.Error()
	s.mu.Unlock()
	s.log.Warn("bad input skipped", "reason", reason, "err", err)
}

// setDetail sets the source's status detail.
func (s *sourceState) setDetail(d string) {
	s.mu.Lock()
	s.status.Detail = d
	s.mu.Unlock()
}

// errors returns a copy of the source's error counts.
func (s *sourceState) errors() map[string]uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := make(map[string]uint64, len(s.errs))
	for k, v := range s.errs {
		m[k] = v
	}
	return m
}

// backoff waits before retry number n (from 0) of a failed source: 250ms
// doubling to maxBackoff. It returns false if ctx ended first.
func backoff(ctx context.Context, n int) bool {
	d := 250 * time.Millisecond << min(n, 6)
	return sleep(ctx, min(d, maxBackoff))
}

// maxBackoff is the longest wait between a source's retries. Every source
// is local (a runtime's unix socket, /proc, netlink), where a failed try
// costs microseconds, and a runtime that restarts (an upgrade of dockerd
// or containerd takes it away for seconds) should be named again within
// seconds of its return, not after a doubling that has grown to 10 s
// while it was away.
const maxBackoff = 2 * time.Second

// sleep waits for d; it returns false if ctx ended first.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
