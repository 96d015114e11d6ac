package sandbox

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// PeerIf is the name of a host's end of its veth pair, in its namespace.
const PeerIf = "eth0"

// readyTimeout bounds the wait for a new host's links to forward.
const readyTimeout = 5 * time.Second

// Host is a network namespace attached to a Net's bridge by a veth pair.
// Its fields are set by AddHost and must not be changed.
type Host struct {
	Name        string       // as given to AddHost
	NetNS       string       // namespace name, "<Prefix>-<Name>", under /run/netns
	NetNSInode  uint64       // inode of the namespace, as /proc/PID/ns/net shows it
	HostIf      string       // veth end on the bridge, named like the namespace
	HostIfIndex int          // its index in the calling process's namespace
	PeerIfIndex int          // index of PeerIf in the host's namespace
	Subnet      netip.Prefix // IPv4 subnet of Addr
	Addr        netip.Addr   // IPv4 address of PeerIf
	Addr6       netip.Addr   // IPv6 address of PeerIf, zero without Options.IPv6

	ns     netns.NsHandle
	nlh    *netlink.Handle // netlink in ns
	closed atomic.Bool

	// What AddHost made, and close removes: not a namespace or link of the
	// same name that was there before.
	madeNetNS, madeLink bool
}

// AddHost adds a host with the next free address of the Net's subnet: the
// namespace "<Prefix>-<name>" with eth0 up and addressed, lo up, and a default
// route through the bridge; the other end of eth0, also named
// "<Prefix>-<name>", is a port of the bridge. When AddHost returns, the host
// can reach the others.
//
// name is lower-case letters and digits, not "br", and short enough for
// "<Prefix>-<name>" to have at most 15 characters. AddHost fails with an
// error wrapping os.ErrExist if the namespace or link exists, and with
// net.ErrClosed after Close.
func (n *Net) AddHost(name string) (*Host, error) {
	return n.addHost(name, netip.Prefix{})
}

// AddHostAddr is like AddHost but gives the host addr, with its prefix
// length: 198.51.100.50/24 picks an address in the Net's subnet, 203.0.113.10/24
// puts the host in a documentation subnet of its own, as a peer "outside". The
// bridge then takes the first address of that subnet too, as this host's
// gateway, and hosts in different subnets reach each other through the bridge
// by on-link routes: the machine does not forward between subnets.
//
// AddHostAddr fails as AddHost does, and if addr is not a host address in a
// documentation range, is taken, or its subnet overlaps one in use.
func (n *Net) AddHostAddr(name string, addr netip.Prefix) (*Host, error) {
	if !addr.IsValid() {
		return nil, fmt.Errorf("add host %s: invalid address %s", name, addr)
	}
	return n.addHost(name, addr)
}

func (n *Net) addHost(name string, addr netip.Prefix) (*Host, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return nil, fmt.Errorf("add host %s: %w", name, net.ErrClosed)
	}
	full := n.opts.Prefix + "-" + name
	if !validName.MatchString(name) || name == "br" || len(full) > maxIfName {
		return nil, fmt.Errorf("add host %q: want lower-case letters and digits, not \"br\", at most %d with prefix %q",
			name, maxIfName-len(n.opts.Prefix)-1, n.opts.Prefix)
	}
	for _, h := range n.hosts {
		if h.Name == name {
			return nil, fmt.Errorf("add host %s: %w", name, os.ErrExist)
		}
	}
	subnet, a, err := n.pickAddr(addr)
	if err != nil {
		return nil, fmt.Errorf("add host %s: %w", name, err)
	}
	newSubnet := !slices.Contains(n.subnets, subnet)
	if newSubnet {
		if err := n.checkFree(subnet); err != nil {
			return nil, fmt.Errorf("add host %s: %w", name, err)
		}
	}
	h := &Host{
		Name:   name,
		NetNS:  full,
		HostIf: full,
		Subnet: subnet,
		Addr:   a,
		ns:     netns.None(),
	}
	if n.opts.IPv6 {
		h.Addr6 = addr6(subnet, a)
	}
	if err := n.setupHost(h, newSubnet); err != nil {
		return nil, fmt.Errorf("add host %s: %w", name, errors.Join(err, h.close()))
	}
	n.hosts = append(n.hosts, h)
	n.used[a] = true
	return h, nil
}

// pickAddr returns the subnet and address for a new host: the next free
// address in the Net's subnet if addr is zero, else addr, checked.
func (n *Net) pickAddr(addr netip.Prefix) (netip.Prefix, netip.Addr, error) {
	if addr == (netip.Prefix{}) {
		s := n.opts.Subnet
		for a := gateway(s).Next(); isHostAddr(s, a); a = a.Next() {
			if !n.used[a] {
				return s, a, nil
			}
		}
		return netip.Prefix{}, netip.Addr{}, fmt.Errorf("subnet %s: no free address", s)
	}
	s, a := addr.Masked(), addr.Addr()
	if err := checkSubnet(s); err != nil {
		return netip.Prefix{}, netip.Addr{}, err
	}
	if !isHostAddr(s, a) {
		return netip.Prefix{}, netip.Addr{}, fmt.Errorf("address %s: network, gateway or broadcast address of %s", addr, s)
	}
	if n.used[a] {
		return netip.Prefix{}, netip.Addr{}, fmt.Errorf("address %s: taken", addr)
	}
	for _, other := range n.subnets {
		if other != s && other.Overlaps(s) {
			return netip.Prefix{}, netip.Addr{}, fmt.Errorf("address %s: subnet overlaps %s: %w", addr, other, ErrSubnetInUse)
		}
	}
	return s, a, nil
}

// setupHost creates h's namespace and veth pair and waits for them to
// forward. n.mu must be held.
func (n *Net) setupHost(h *Host, newSubnet bool) error {
	if err := createNetNS(h.NetNS, nsSysctls(n.opts.IPv6)); err != nil {
		if errors.Is(err, os.ErrExist) {
			err = fmt.Errorf("%w (left by an earlier run? sandbox.Cleanup(%q) removes it)", err, n.opts.Prefix)
		}
		return err
	}
	h.madeNetNS = true
	ns, err := netns.GetFromName(h.NetNS)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", h.NetNS, err)
	}
	h.ns = ns
	var st unix.Stat_t
	if err := unix.Fstat(int(ns), &st); err != nil {
		return fmt.Errorf("stat netns %s: %w", h.NetNS, err)
	}
	h.NetNSInode = st.Ino
	if h.nlh, err = netlink.NewHandleAt(ns); err != nil {
		return fmt.Errorf("open netlink in netns %s: %w", h.NetNS, err)
	}

	// Creating the peer in the namespace, rather than moving it there, means
	// no temporary name that could clash with another sandbox's.
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: h.HostIf},
		PeerName:      PeerIf,
		PeerNamespace: netlink.NsFd(ns),
	}
	if err := netlink.LinkAdd(veth); err != nil {
		return fmt.Errorf("create veth %s: %w", h.HostIf, linkAddErr(err, n.opts.Prefix))
	}
	h.madeLink = true
	hostLink, err := netlink.LinkByName(h.HostIf)
	if err != nil {
		return fmt.Errorf("get link %s: %w", h.HostIf, err)
	}
	h.HostIfIndex = hostLink.Attrs().Index
	if err := writeSysctls(ifSysctls(h.HostIf, n.opts.IPv6)); err != nil {
		return fmt.Errorf("set up link %s: %w", h.HostIf, err)
	}
	if err := netlink.LinkSetMaster(hostLink, n.bridge); err != nil {
		return fmt.Errorf("attach %s to %s: %w", h.HostIf, n.bridgeName, err)
	}
	if err := netlink.LinkSetUp(hostLink); err != nil {
		return fmt.Errorf("set link %s up: %w", h.HostIf, err)
	}

	if err := h.setupPeer(n.opts.IPv6); err != nil {
		return err
	}
	if newSubnet {
		if err := n.addSubnet(h.Subnet); err != nil {
			return err
		}
	}
	for _, s := range n.subnets {
		if s != h.Subnet {
			if err := h.addOnLinkRoutes(s, n.opts.IPv6); err != nil {
				return err
			}
		}
	}
	return h.waitReady()
}

// nsSysctls returns the settings for a new host namespace, made before its
// eth0 exists so that eth0 takes them from "default".
func nsSysctls(ipv6 bool) []sysctl {
	if !ipv6 {
		return []sysctl{
			{"net/ipv6/conf/all/disable_ipv6", "1"},
			{"net/ipv6/conf/default/disable_ipv6", "1"},
		}
	}
	return []sysctl{
		{"net/ipv6/conf/all/accept_dad", "0"},
		{"net/ipv6/conf/default/accept_dad", "0"},
	}
}

// setupPeer addresses eth0 in h's namespace, sets it and lo up and adds the
// default routes through the bridge.
func (h *Host) setupPeer(ipv6 bool) error {
	lo, err := h.nlh.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("get link lo in netns %s: %w", h.NetNS, err)
	}
	if err := h.nlh.LinkSetUp(lo); err != nil {
		return fmt.Errorf("set link lo in netns %s up: %w", h.NetNS, err)
	}
	peer, err := h.nlh.LinkByName(PeerIf)
	if err != nil {
		return fmt.Errorf("get link %s in netns %s: %w", PeerIf, h.NetNS, err)
	}
	h.PeerIfIndex = peer.Attrs().Index
	if err := h.nlh.LinkSetUp(peer); err != nil {
		return fmt.Errorf("set link %s in netns %s up: %w", PeerIf, h.NetNS, err)
	}

	type plan struct {
		addr netip.Prefix
		gw   netip.Addr
	}
	plans := []plan{{netip.PrefixFrom(h.Addr, h.Subnet.Bits()), gateway(h.Subnet)}}
	if ipv6 {
		plans = append(plans, plan{
			netip.PrefixFrom(h.Addr6, prefix6(h.Subnet).Bits()),
			addr6(h.Subnet, gateway(h.Subnet)),
		})
	}
	for _, p := range plans {
		if err := h.nlh.AddrAdd(peer, nlAddr(p.addr)); err != nil {
			return fmt.Errorf("add address %s to %s in netns %s: %w", p.addr, PeerIf, h.NetNS, err)
		}
		r := &netlink.Route{LinkIndex: h.PeerIfIndex, Gw: p.gw.AsSlice()}
		if err := h.nlh.RouteAdd(r); err != nil {
			return fmt.Errorf("add default route via %s in netns %s: %w", p.gw, h.NetNS, err)
		}
	}
	return nil
}

// addOnLinkRoutes routes subnet, and its IPv6 mirror, directly out of eth0.
func (h *Host) addOnLinkRoutes(subnet netip.Prefix, ipv6 bool) error {
	dsts := []netip.Prefix{subnet}
	if ipv6 {
		dsts = append(dsts, prefix6(subnet))
	}
	for _, dst := range dsts {
		r := &netlink.Route{LinkIndex: h.PeerIfIndex, Dst: ipNet(dst), Scope: netlink.SCOPE_LINK}
		if err := h.nlh.RouteAdd(r); err != nil {
			return fmt.Errorf("add route to %s in netns %s: %w", dst, h.NetNS, err)
		}
	}
	return nil
}

// waitReady waits until the bridge forwards on h's port and eth0 is up. The
// kernel finishes bringing a link up asynchronously (linkwatch): until then
// the bridge drops frames to the port and eth0 has no queue to send on.
func (h *Host) waitReady() error {
	brState := "/sys/class/net/" + h.HostIf + "/brport/state"
	deadline := time.Now().Add(readyTimeout)
	for {
		var (
			forwarding, up bool
			err            error
		)
		// 3 is BR_STATE_FORWARDING.
		b, err := os.ReadFile(brState)
		forwarding = err == nil && strings.TrimSpace(string(b)) == "3"
		if forwarding {
			var l netlink.Link
			l, err = h.nlh.LinkByIndex(h.PeerIfIndex)
			up = err == nil && l.Attrs().OperState == netlink.OperUp
		}
		if forwarding && up {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("wait for %s to forward (bridge port forwarding %t, %s up %t): timed out after %v (last error: %v)",
				h.HostIf, forwarding, PeerIf, up, readyTimeout, err)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// close removes h's veth pair and namespace.
func (h *Host) close() error {
	if h.closed.Swap(true) {
		return nil
	}
	// The veth goes first: sockets may keep the namespace, and with it eth0,
	// alive after its name is gone.
	var errs []error
	if h.madeLink {
		errs = append(errs, deleteLink(h.HostIf))
	}
	if h.nlh != nil {
		h.nlh.Close()
	}
	if h.ns.IsOpen() {
		h.ns.Close()
	}
	if h.madeNetNS {
		errs = append(errs, deleteNetNS(h.NetNS))
	}
	return errors.Join(errs...)
}

// Command returns a command that runs the program name in h's namespace,
// through `ip netns exec`, which execs it: the process started is the
// program's, so killing it, or cancelling ctx, ends the program. Its Path and
// Args[0:4] are those of ip.
func (h *Host) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", h.NetNS, name}, args...)...)
}

// Do calls f on the calling goroutine, locked to its thread and switched to
// h's namespace, then switches back. Sockets and links f creates are in h's
// namespace and stay there; goroutines f starts are not. Do returns f's
// error, or the error entering or leaving the namespace. If leaving fails,
// the thread stays locked, so the runtime ends it with the goroutine rather
// than reuse it.
func (h *Host) Do(f func() error) (err error) {
	if h.closed.Load() {
		return fmt.Errorf("enter netns %s: %w", h.NetNS, net.ErrClosed)
	}
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("get current netns: %w", err)
	}
	if err := netns.Set(h.ns); err != nil {
		orig.Close()
		runtime.UnlockOSThread()
		return fmt.Errorf("enter netns %s: %w", h.NetNS, err)
	}
	defer func() {
		// Deferred, to switch back even if f panics or calls t.Fatal.
		if serr := netns.Set(orig); serr != nil {
			err = errors.Join(err, fmt.Errorf("leave netns %s: %w", h.NetNS, serr))
		} else {
			runtime.UnlockOSThread()
		}
		orig.Close()
	}()
	return f()
}

// Listen is net.Listen in h's namespace. The host part of address must be
// empty or an IP address: resolving a name may dial from another thread,
// outside the namespace.
func (h *Host) Listen(network, address string) (net.Listener, error) {
	if err := checkLiteral(network, address); err != nil {
		return nil, err
	}
	var l net.Listener
	err := h.Do(func() error {
		var err error
		l, err = net.Listen(network, address)
		return err
	})
	return l, err
}

// ListenPacket is net.ListenPacket in h's namespace; see Listen for address.
func (h *Host) ListenPacket(network, address string) (net.PacketConn, error) {
	if err := checkLiteral(network, address); err != nil {
		return nil, err
	}
	var c net.PacketConn
	err := h.Do(func() error {
		var err error
		c, err = net.ListenPacket(network, address)
		return err
	})
	return c, err
}

// Dial is net.Dial in h's namespace; see Listen for address.
func (h *Host) Dial(network, address string) (net.Conn, error) {
	return h.DialContext(context.Background(), network, address)
}

// DialContext is net.Dialer.DialContext in h's namespace; see Listen for
// address.
func (h *Host) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	if err := checkLiteral(network, address); err != nil {
		return nil, err
	}
	var c net.Conn
	err := h.Do(func() error {
		var (
			d   net.Dialer
			err error
		)
		c, err = d.DialContext(ctx, network, address)
		return err
	})
	return c, err
}

// checkLiteral returns an error unless the host in address is empty or an IP
// address. The socket is then made on the calling goroutine: with a name
// that resolves to several addresses, net dials from other goroutines, on
// threads outside the namespace.
func checkLiteral(network, address string) error {
	host := address
	switch {
	case strings.HasPrefix(network, "unix"):
		return nil
	case strings.HasPrefix(network, "ip"): // "ip4:icmp": no port
	default:
		var err error
		if host, _, err = net.SplitHostPort(address); err != nil {
			return fmt.Errorf("%s address %s: %w", network, address, err)
		}
	}
	if host == "" {
		return nil
	}
	if _, err := netip.ParseAddr(host); err != nil {
		return fmt.Errorf("%s address %s: want an IP address, not a name", network, address)
	}
	return nil
}

// nlAddr returns p as a netlink address. IPv6 addresses skip duplicate
// address detection, so they are usable at once.
func nlAddr(p netip.Prefix) *netlink.Addr {
	a := &netlink.Addr{IPNet: ipNet(p)}
	if p.Addr().Is6() {
		a.Flags = unix.IFA_F_NODAD
	}
	return a
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// netipPrefix converts n, keeping its address bits.
func netipPrefix(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), ones), true
}
