// Package sandbox holds networks of network namespaces on a Linux bridge,
// built and removed from Go: hosts, each a network namespace with an eth0,
// joined by veth pairs to a bridge in the calling process's namespace. The
// demo (flowmap demo), the datapath bench (bench/datapath) and the
// end-to-end tests run their traffic in one; the tests make theirs with
// internal/sandboxtest, which closes it when the test ends. The package is
// linked into the flowmap binary, so it imports no testing code.
//
// A sandbox uses documentation addresses only (RFC 5737 and RFC 3849), never
// private or real ones, and leaves the machine's forwarding as it is, so no
// packet from a sandbox leaves the machine. Its one change outside what it
// creates is for the machine's firewall: where bridged traffic goes through
// iptables (br_netfilter with net.bridge.bridge-nf-call-iptables=1, as on
// Kubernetes nodes and Docker hosts) and a FORWARD chain could drop it, New
// inserts a rule accepting what the sandbox's bridge forwards between its own
// ports, and Close removes it (see AllowBridge). Every name it gives starts
// with a caller-chosen prefix, so sandboxes can run side by side and Cleanup
// can remove what a crashed run left behind.
//
//	n, _ := sandbox.New(sandbox.Options{Prefix: "fmt1"})
//	defer n.Close()
//	a, _ := n.AddHost("a") // netns fmt1-a, 198.51.100.2, veth fmt1-a on bridge fmt1-br
//	b, _ := n.AddHost("b") // netns fmt1-b, 198.51.100.3
//	l, _ := b.Listen("tcp", ":8080")
//	c, _ := a.Dial("tcp", b.Addr.String()+":8080")
//
// The bridge has the first address of the subnet (198.51.100.1) and is each
// host's default gateway; hosts get the following ones. With IPv6, every
// IPv4 address has a mirror that reads the same: 198.51.100.3 is
// 2001:db8:100::3.
//
// The package needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN); Host.Command
// needs the ip command of iproute2, and AllowBridge the iptables commands
// where the machine's firewall has rules.
package sandbox

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"regexp"
	"strings"
	"sync"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// maxIfName is the longest interface name Linux takes (IFNAMSIZ-1).
const maxIfName = 15

// validName matches a prefix or a host name: they are joined with "-" into
// interface and namespace names, so neither may hold one.
var validName = regexp.MustCompile(`^[a-z0-9]+$`)

// Options configures a Net.
type Options struct {
	// Prefix starts every name the sandbox gives, followed by "-": the bridge
	// is "<Prefix>-br", a host's namespace and veth "<Prefix>-<name>". It
	// tells parallel sandboxes and leftovers apart, so use one per test
	// package. Lower-case letters and digits, at most 12 of them, since
	// interface names have at most 15 characters. Required.
	Prefix string

	// Subnet holds the bridge's and hosts' IPv4 addresses. It must lie in a
	// documentation range (192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24) and
	// overlap no address on the machine, which rules out two sandboxes on
	// the same subnet: packages whose tests run at once (as go test ./...
	// runs them) need distinct subnets, for example 198.51.100.0/26 and
	// 198.51.100.64/26. Zero means DefaultSubnet.
	Subnet netip.Prefix

	// IPv6 gives the bridge and hosts IPv6 addresses mirroring the IPv4 ones,
	// in 2001:db8::/32. Without it the sandbox has no IPv6 at all, not even
	// link-local addresses, so it makes no neighbour discovery traffic.
	IPv6 bool

	// KeepFirewall leaves the machine's firewall as it is: New adds no rule
	// accepting the bridge's traffic (see AllowBridge). Where the firewall
	// drops bridged traffic, hosts then cannot reach each other, as
	// CheckTraffic reports.
	KeepFirewall bool
}

// Net is a sandbox: a bridge and the hosts attached to it. Its methods are
// safe for concurrent use; hosts can be added while others carry traffic.
type Net struct {
	opts       Options
	bridgeName string

	mu      sync.Mutex
	bridge  netlink.Link
	unallow func() error   // removes AllowBridge's rules; nil if none
	subnets []netip.Prefix // on the bridge; the first is opts.Subnet
	hosts   []*Host
	used    map[netip.Addr]bool // host addresses handed out
	closed  bool
}

// New creates a sandbox: the bridge "<Prefix>-br", up, with the first address
// of opts.Subnet (and its IPv6 mirror). Close removes it.
//
// New fails with an error wrapping os.ErrExist if the bridge exists, as after
// a crashed run (see Cleanup), and with one wrapping ErrSubnetInUse if the
// subnet overlaps an address on the machine.
func New(opts Options) (*Net, error) {
	if opts.Subnet == (netip.Prefix{}) {
		opts.Subnet = DefaultSubnet
	}
	if err := checkPrefix(opts.Prefix); err != nil {
		return nil, err
	}
	if err := checkSubnet(opts.Subnet); err != nil {
		return nil, err
	}
	n := &Net{
		opts:       opts,
		bridgeName: opts.Prefix + "-br",
		used:       make(map[netip.Addr]bool),
	}
	// Checked first: a leftover bridge also holds the subnet.
	if _, err := netlink.LinkByName(n.bridgeName); err == nil {
		return nil, fmt.Errorf("create bridge %s: %w", n.bridgeName, linkAddErr(unix.EEXIST, opts.Prefix))
	}
	if err := n.checkFree(opts.Subnet); err != nil {
		return nil, err
	}

	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: n.bridgeName}}
	if err := netlink.LinkAdd(br); err != nil {
		return nil, fmt.Errorf("create bridge %s: %w", n.bridgeName, linkAddErr(err, opts.Prefix))
	}
	if err := n.setupBridge(); err != nil {
		return nil, errors.Join(err, n.Close())
	}
	return n, nil
}

func (n *Net) setupBridge() error {
	link, err := netlink.LinkByName(n.bridgeName)
	if err != nil {
		return fmt.Errorf("get bridge %s: %w", n.bridgeName, err)
	}
	n.bridge = link
	if err := writeSysctls(ifSysctls(n.bridgeName, n.opts.IPv6)); err != nil {
		return fmt.Errorf("set up bridge %s: %w", n.bridgeName, err)
	}
	if err := n.addSubnet(n.opts.Subnet); err != nil {
		return err
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("set bridge %s up: %w", n.bridgeName, err)
	}
	if !n.opts.KeepFirewall {
		if n.unallow, err = AllowBridge(n.bridgeName, n.opts.IPv6); err != nil {
			return err
		}
	}
	return nil
}

// ifSysctls returns the settings for an interface in the calling process's
// namespace, made before it is set up.
func ifSysctls(ifname string, ipv6 bool) []sysctl {
	if !ipv6 {
		return []sysctl{{"net/ipv6/conf/" + ifname + "/disable_ipv6", "1"}}
	}
	// Without duplicate address detection addresses are usable at once.
	return []sysctl{{"net/ipv6/conf/" + ifname + "/accept_dad", "0"}}
}

// addSubnet gives the bridge the gateway address of subnet, and each host
// outside it an on-link route to it. Hosts reach other subnets on the
// bridge directly rather than through the bridge's addresses, so nothing
// needs the machine to forward. n.mu must be held.
func (n *Net) addSubnet(subnet netip.Prefix) error {
	gw := netip.PrefixFrom(gateway(subnet), subnet.Bits())
	if err := netlink.AddrAdd(n.bridge, nlAddr(gw)); err != nil {
		return fmt.Errorf("add address %s to %s: %w", gw, n.bridgeName, err)
	}
	if n.opts.IPv6 {
		p6 := prefix6(subnet)
		gw6 := netip.PrefixFrom(addr6(subnet, gateway(subnet)), p6.Bits())
		if err := netlink.AddrAdd(n.bridge, nlAddr(gw6)); err != nil {
			return fmt.Errorf("add address %s to %s: %w", gw6, n.bridgeName, err)
		}
	}
	for _, h := range n.hosts {
		if err := h.addOnLinkRoutes(subnet, n.opts.IPv6); err != nil {
			return err
		}
	}
	n.subnets = append(n.subnets, subnet)
	return nil
}

// checkFree returns an error wrapping ErrSubnetInUse if subnet, or its IPv6
// mirror, overlaps an address on the machine.
func (n *Net) checkFree(subnet netip.Prefix) error {
	addrs, err := retryDump(func() ([]netlink.Addr, error) { return netlink.AddrList(nil, netlink.FAMILY_ALL) })
	if err != nil {
		return fmt.Errorf("list addresses: %w", err)
	}
	p6 := prefix6(subnet)
	for _, a := range addrs {
		p, ok := netipPrefix(a.IPNet)
		if !ok || !(p.Overlaps(subnet) || p.Overlaps(p6)) {
			continue
		}
		ifname := fmt.Sprint(a.LinkIndex)
		if l, err := netlink.LinkByIndex(a.LinkIndex); err == nil {
			ifname = l.Attrs().Name
		}
		return fmt.Errorf("subnet %s: overlaps %s on %s: %w", subnet, p, ifname, ErrSubnetInUse)
	}
	return nil
}

// Bridge returns the sandbox's bridge, with its attributes as they were
// when New created it.
func (n *Net) Bridge() netlink.Link {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.bridge
}

// BridgeName returns the name of the sandbox's bridge, "<Prefix>-br".
func (n *Net) BridgeName() string { return n.bridgeName }

// Subnet returns the subnet hosts are added to by AddHost.
func (n *Net) Subnet() netip.Prefix { return n.opts.Subnet }

// Addr returns the bridge's address in Subnet, the default gateway of its
// hosts, through which the calling process's namespace reaches them.
func (n *Net) Addr() netip.Addr { return gateway(n.opts.Subnet) }

// Addr6 returns the IPv6 mirror of Addr, or the zero Addr without IPv6.
func (n *Net) Addr6() netip.Addr {
	if !n.opts.IPv6 {
		return netip.Addr{}
	}
	return addr6(n.opts.Subnet, n.Addr())
}

// Hosts returns the hosts added so far, in order.
func (n *Net) Hosts() []*Host {
	n.mu.Lock()
	defer n.mu.Unlock()
	return append([]*Host(nil), n.hosts...)
}

// Close removes the hosts, last first, then the bridge and the firewall
// rules New added for it. Processes and
// sockets still in a host's namespace keep it alive, without its name and
// eth0. Close is safe to call twice; it returns the errors of all removals,
// joined.
func (n *Net) Close() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return nil
	}
	n.closed = true
	var errs []error
	for i := len(n.hosts) - 1; i >= 0; i-- {
		errs = append(errs, n.hosts[i].close())
	}
	errs = append(errs, deleteLink(n.bridgeName))
	if n.unallow != nil {
		errs = append(errs, n.unallow())
	}
	return errors.Join(errs...)
}

// Cleanup removes the namespaces and links whose names start with prefix
// and "-", such as a crashed run left behind, and the firewall rules
// AllowBridge added for bridges so named. It returns the errors of all
// removals, joined.
func Cleanup(prefix string) error {
	if err := checkPrefix(prefix); err != nil {
		return err
	}
	start := prefix + "-"
	var errs []error
	links, err := retryDump(netlink.LinkList)
	if err != nil {
		errs = append(errs, fmt.Errorf("list links: %w", err))
	}
	for _, l := range links {
		if name := l.Attrs().Name; strings.HasPrefix(name, start) {
			errs = append(errs, deleteLink(name))
		}
	}
	entries, err := os.ReadDir(netnsDir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("list netns: %w", err))
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), start) {
			errs = append(errs, deleteNetNS(e.Name()))
		}
	}
	errs = append(errs, removeAllowed(start))
	return errors.Join(errs...)
}

func checkPrefix(prefix string) error {
	if !validName.MatchString(prefix) || len(prefix)+len("-br") > maxIfName {
		return fmt.Errorf("sandbox prefix %q: want 1 to %d lower-case letters and digits", prefix, maxIfName-len("-br"))
	}
	return nil
}

// deleteLink deletes the link name in the calling process's namespace, with
// its veth peer. A link that does not exist is no error.
func deleteLink(name string) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		if _, ok := err.(netlink.LinkNotFoundError); ok {
			return nil
		}
		return fmt.Errorf("delete link %s: %w", name, err)
	}
	// ENODEV: deleted meanwhile, as a veth is with its peer.
	if err := netlink.LinkDel(l); err != nil && !errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("delete link %s: %w", name, err)
	}
	return nil
}

// linkAddErr makes EEXIST from creating a link wrap os.ErrExist and point
// to Cleanup.
func linkAddErr(err error, prefix string) error {
	if errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("%w (left by an earlier run? sandbox.Cleanup(%q) removes it)", os.ErrExist, prefix)
	}
	return err
}

// retryDump calls list until the kernel's dump is not interrupted by a
// concurrent change, a few times at most.
func retryDump[T any](list func() ([]T, error)) ([]T, error) {
	var (
		v   []T
		err error
	)
	for range 5 {
		v, err = list()
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	return v, err
}
