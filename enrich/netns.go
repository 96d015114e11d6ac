package enrich

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/flowmap/flowmap/host"
	"github.com/flowmap/flowmap/model"
)

// netnsSource names the network namespaces behind the host-side veths:
// the namespace id of each veth's peer (netlink), the processes in that
// namespace (/proc/*/ns/net), their cgroups, and the container id in the
// cgroup path. It needs no runtime API: with the runtime's socket gone it
// still tells containers apart by id.
type netnsSource struct {
	procRoot string
	dirs     []string
	resync   time.Duration
	// warned are the unknown cgroup paths already logged; bounded.
	warned map[string]struct{}
}

func (n *netnsSource) run(ctx context.Context, s *sourceState) error {
	n.warned = make(map[string]struct{})
	for attempt := 0; ; attempt++ {
		err := n.follow(ctx, s)
		if ctx.Err() != nil {
			return nil
		}
		s.fail("netlink", err)
		if !backoff(ctx, attempt) {
			return nil
		}
	}
}

// follow scans at start, after each burst of link events (a new veth is a
// new container) and every resync, until ctx is done or events fail.
func (n *netnsSource) follow(ctx context.Context, s *sourceState) error {
	done := make(chan struct{})
	defer close(done)
	updates, subErr, err := host.SubscribeLinks(done)
	if err != nil {
		return err
	}
	tick := time.NewTicker(n.resync)
	defer tick.Stop()
	// A veth appears before the runtime has moved it and started the
	// container's process: look again a little later, once.
	const settle, again = 100 * time.Millisecond, time.Second
	var soon, later <-chan time.Time
	if err := n.scan(s); err != nil {
		return err
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-subErr:
			return fmt.Errorf("link events: %w", err)
		case _, ok := <-updates:
			if !ok {
				return errors.New("link events: subscription closed")
			}
			if soon == nil {
				soon = time.After(settle)
			}
			continue
		case <-soon:
			soon, later = nil, time.After(again)
		case <-later:
			later = nil
		case <-tick.C:
		}
		if err := n.scan(s); err != nil {
			return err
		}
	}
}

// netnsInfo is what a scan found of one network namespace.
type netnsInfo struct {
	inode uint64
	name  string // its file name in a NetNSDirs directory
	path  string // a file to open it by
	pids  []int
}

// scan looks at every network namespace that a host-side veth leads to
// and publishes one record for each.
func (n *netnsSource) scan(s *sourceState) error {
	links, err := host.Dump(netlink.LinkList)
	if err != nil {
		return fmt.Errorf("list links: %w", err)
	}
	// The namespace ids behind veths, and the indexes of the veths' ends
	// in those namespaces.
	peers := make(map[int][]int)
	for _, l := range links {
		if l.Type() == "veth" && l.Attrs().NetNsID >= 0 {
			peers[l.Attrs().NetNsID] = append(peers[l.Attrs().NetNsID], l.Attrs().ParentIndex)
		}
	}
	if len(peers) == 0 {
		s.publish(nil)
		return nil
	}
	spaces := make(map[uint64]*netnsInfo)
	get := func(ino uint64, path string) *netnsInfo {
		ns, ok := spaces[ino]
		if !ok {
			ns = &netnsInfo{inode: ino, path: path}
			spaces[ino] = ns
		}
		return ns
	}
	for _, dir := range n.dirs {
		entries, err := os.ReadDir(dir)
		if err != nil {
			if !errors.Is(err, fs.ErrNotExist) {
				s.bad("netns_dir", fmt.Errorf("read namespace directory: %w", err))
			}
			continue
		}
		for _, e := range entries {
			p := filepath.Join(dir, e.Name())
			ino, err := nsInode(p)
			if err != nil {
				continue // not mounted, or gone
			}
			if ns := get(ino, p); ns.name == "" {
				ns.name = e.Name()
			}
		}
	}
	procs, err := os.ReadDir(n.procRoot)
	if err != nil {
		return fmt.Errorf("read %s: %w", n.procRoot, err)
	}
	for _, e := range procs {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		p := filepath.Join(n.procRoot, e.Name(), "ns/net")
		ino, err := nsInode(p)
		if err != nil {
			continue // exited, or a kernel thread
		}
		ns := get(ino, p)
		ns.pids = append(ns.pids, pid)
	}

	noSetns := false
	defer func() {
		if noSetns {
			s.setDetail(errNoSetns.Error())
		}
	}()
	// Our own namespace needs no skipping: no veth of ours has its peer
	// there with a namespace id. (Nor could we tell it by
	// /proc/self/ns/net: a thread of ours may have been switched.)
	var recs []record
	for _, ns := range spaces {
		nsid, addrs, routes, err := nsLook(ns.path)
		if errors.Is(err, errNoSetns) {
			noSetns = true
			err = nil
		}
		if err != nil {
			// The namespace went away since, most likely.
			s.log.Debug("look into network namespace", "netns", ns.inode, "path", ns.path, "err", err)
			continue
		}
		facing, ok := peers[nsid]
		if nsid < 0 || !ok {
			continue // no veth of ours leads there
		}
		rec := n.record(s, ns, nsid, addrs)
		rec.routed = routedFor(routes, facing)
		recs = append(recs, rec)
	}
	s.publish(recs)
	return nil
}

// record names one namespace by the containers its processes are in.
func (n *netnsSource) record(s *sourceState, ns *netnsInfo, nsid int, addrs []netip.Addr) record {
	slices.Sort(ns.pids) // the lowest pid started first: the container that made the namespace
	rec := record{nsids: []int{nsid}}
	ep := model.Endpoint{NetNS: ns.inode, Addrs: addrs}
	var first CgroupContainer
	var unknown string
	for _, pid := range ns.pids {
		dir := filepath.Join(n.procRoot, strconv.Itoa(pid))
		b, err := os.ReadFile(filepath.Join(dir, "cgroup"))
		if err != nil {
			continue // exited
		}
		if ep.PIDNS == 0 {
			ep.PIDNS, _ = nsInode(filepath.Join(dir, "ns/pid"))
		}
		c, path, ok := ParseProcCgroup(b)
		if !ok {
			if unknown == "" {
				unknown = path
			}
			continue
		}
		if first.ID == "" {
			first = c
		}
		if c.PodUID != "" && first.PodUID == "" {
			first.PodUID = c.PodUID
		}
		rec.keys = append(rec.keys, containerKey(c.ID))
	}
	switch {
	case first.PodUID != "":
		ep.Kind, ep.ID, ep.Name = model.KindPod, first.PodUID, first.PodUID
		rec.keys = append(rec.keys, podKey(first.PodUID))
	case first.ID != "":
		ep.Kind, ep.ID, ep.Name = model.KindContainer, first.ID, first.ID[:12]
	default:
		ep.Kind, ep.ID = model.KindNetNS, "netns:"+strconv.FormatUint(ns.inode, 10)
		ep.Name = ns.name
		if ep.Name == "" {
			ep.Name = ep.ID
		}
		if unknown != "" {
			n.unknownCgroup(s, unknown, ns)
		}
	}
	if first.Runtime != "" {
		ep.Labels = map[string]string{"flowmap.runtime": first.Runtime}
	}
	rec.ep = ep
	return rec
}

// unknownCgroup reports, once per path, processes in a namespace behind a
// veth whose cgroup path has no container id that flowmap can read.
func (n *netnsSource) unknownCgroup(s *sourceState, path string, ns *netnsInfo) {
	if _, ok := n.warned[path]; ok {
		return
	}
	if len(n.warned) >= 1024 {
		clear(n.warned)
	}
	n.warned[path] = struct{}{}
	s.bad("cgroup_unknown", fmt.Errorf("no container id in cgroup path %q of the processes in network namespace %d", path, ns.inode))
}

// nsInode returns the inode of the namespace file at path.
func nsInode(path string) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, err
	}
	return st.Ino, nil
}

// errNoSetns is nsLook's answer where it may not enter the namespace: it
// knows the namespace's id, not its addresses or routes.
var errNoSetns = errors.New("addresses and routes inside network namespaces not read: entering them (setns) needs CAP_SYS_ADMIN; the other sources' addresses are used")

// nsLook opens the namespace at path and returns its id in the host's
// namespace (-1 if it has none), its own addresses and its main table's
// routes.
func nsLook(path string) (int, []netip.Addr, []netlink.Route, error) {
	f, err := os.Open(path)
	if err != nil {
		return -1, nil, nil, err
	}
	defer f.Close()
	nsid, err := netlink.GetNetNsIdByFd(int(f.Fd()))
	if err != nil {
		return -1, nil, nil, fmt.Errorf("get namespace id of %s: %w", path, err)
	}
	if nsid < 0 {
		return nsid, nil, nil, nil
	}
	// Entering a namespace (setns) needs CAP_SYS_ADMIN, which the agent
	// runs without where the other sources (Kubernetes, the runtime) know
	// the addresses: the namespace is still named. (netlink's error on
	// setns does not wrap EPERM: ask first.)
	if !host.HasCap(unix.CAP_SYS_ADMIN) {
		return nsid, nil, nil, errNoSetns
	}
	h, err := netlink.NewHandleAt(netns.NsHandle(int(f.Fd())))
	if err != nil {
		return nsid, nil, nil, fmt.Errorf("open netlink in %s: %w", path, err)
	}
	defer h.Close()
	list, err := host.Dump(func() ([]netlink.Addr, error) { return h.AddrList(nil, netlink.FAMILY_ALL) })
	if err != nil {
		return nsid, nil, nil, fmt.Errorf("list addresses in %s: %w", path, err)
	}
	routes, err := host.Dump(func() ([]netlink.Route, error) { return h.RouteList(nil, netlink.FAMILY_ALL) })
	if err != nil {
		return nsid, nil, nil, fmt.Errorf("list routes in %s: %w", path, err)
	}
	return nsid, host.AddrsOf(list), routes, nil
}

// routedFor returns the prefixes a namespace forwards for: those its
// routes send out of an interface other than the veths that face the host
// (facing, their indexes in the namespace), as a node-in-a-container
// (kind) routes its pods' addresses to their veths. Packets with such a
// source may leave the namespace without being spoofed; default routes
// and the facing veths' own subnets are not forwarding: a pod on a bridge
// CNI has its neighbours' subnet on its eth0.
func routedFor(routes []netlink.Route, facing []int) []netip.Prefix {
	var out []netip.Prefix
	for _, r := range routes {
		if r.Dst == nil || r.LinkIndex == 0 || slices.Contains(facing, r.LinkIndex) {
			continue
		}
		p, ok := netipPrefix(r.Dst)
		if !ok || p.Bits() == 0 {
			continue
		}
		out = append(out, p)
	}
	return out
}

func netipPrefix(n *net.IPNet) (netip.Prefix, bool) {
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, bits := n.Mask.Size()
	if a.Is4In6() && bits == 128 {
		ones -= 96
	}
	return netip.PrefixFrom(a.Unmap(), ones).Masked(), true
}
