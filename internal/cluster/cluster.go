// Package cluster builds a cluster in a box for tests and for people to
// try flowmap across nodes: "nodes" that are network namespaces, each with
// its own bridge and "pods" (namespaces with a veth on the node's bridge),
// joined by an underlay bridge in the calling process's namespace, with
// routes on each node to the other nodes' pod subnets (plain routing, as
// Kubernetes' host-gw or Calico without encapsulation).
//
//	c, _ := cluster.New(cluster.Options{Prefix: "fmk", Nodes: []int{2, 2, 1}})
//	// underlay bridge fmk-ul, 198.51.100.97/28
//	// node n1: netns fmk-n1, eth0 198.51.100.98 on fmk-ul, br0 198.51.100.33/29
//	//   pod n1a: netns fmk-n1a, eth0 198.51.100.34, veth n1a on br0
//	// node n2: netns fmk-n2, eth0 198.51.100.99, br0 198.51.100.41/29, …
//
// Each node's default route is its eth0, through the underlay's bridge
// address, which does not forward: a pod reaches pods on other nodes and
// the underlay, never the machine's own networks. Addresses are
// documentation ones (RFC 5737): the underlay in Options.Underlay, each
// node's pods in a /29 (Options.PodBits) of Options.Pods.
//
// The package needs root and the ip command of iproute2.
package cluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"runtime"
	"strings"
	"testing"

	"github.com/flowmap/flowmap/sandbox"
	"github.com/vishvananda/netns"
)

// Default address ranges of Options.
var (
	DefaultUnderlay = netip.MustParsePrefix("198.51.100.96/28")
	DefaultPods     = netip.MustParsePrefix("198.51.100.32/27")
)

// Options configures a Cluster.
type Options struct {
	// Prefix starts every name the cluster gives: namespaces
	// "<Prefix>-<node>" and "<Prefix>-<pod>", the underlay bridge
	// "<Prefix>-ul". At most 6 characters.
	Prefix string
	// Nodes is how many pods each node has: []int{2, 2, 1} is three nodes.
	// At most 5 pods a node in a /29.
	Nodes []int
	// Underlay holds the bridge's address (its first) and the nodes'
	// (the next ones); zero is DefaultUnderlay.
	Underlay netip.Prefix
	// Pods is split in subnets of PodBits, one a node, in order; zero is
	// DefaultPods.
	Pods netip.Prefix
	// PodBits is the prefix length of each node's pod subnet, whose first
	// address is the node's; zero is 29 (5 pods).
	PodBits int
	// Outside adds a namespace "<Prefix>-out" on the underlay, with
	// routes to every pod subnet: a client from outside the cluster.
	Outside bool
}

// Cluster is nodes, their pods and the underlay between them.
type Cluster struct {
	Prefix  string
	Bridge  string     // the underlay bridge, in the calling namespace
	Gateway netip.Addr // its address
	Nodes   []*Node
	// Out is the outside namespace, nil without Options.Outside.
	Out *NS
}

// NS is a named network namespace.
type NS struct {
	Name  string     // as given: "n1", "n1a", "out"
	NetNS string     // "<Prefix>-<Name>", under /run/netns
	Addr  netip.Addr // its eth0's address
}

// Node is a namespace with an eth0 on the underlay and a bridge br0 of pods.
type Node struct {
	NS
	Subnet netip.Prefix // of its pods; br0 has the first address
	Pods   []*Pod
}

// Pod is a namespace with an eth0 on its node's br0.
type Pod struct {
	NS
	Node *Node
}

// New builds a cluster. It fails if a name it would take is taken (see
// Cleanup for what a crashed run left) or there are too many nodes or pods
// for the ranges; it then removes what it made.
func New(opts Options) (c *Cluster, err error) {
	if opts.Underlay == (netip.Prefix{}) {
		opts.Underlay = DefaultUnderlay
	}
	if opts.Pods == (netip.Prefix{}) {
		opts.Pods = DefaultPods
	}
	if opts.PodBits == 0 {
		opts.PodBits = 29
	}
	if len(opts.Prefix) == 0 || len(opts.Prefix) > 6 {
		return nil, fmt.Errorf("cluster prefix %q: want 1 to 6 characters", opts.Prefix)
	}
	if n := len(opts.Nodes); n == 0 || opts.PodBits > 30 || opts.PodBits < opts.Pods.Bits() || n > 1<<(opts.PodBits-opts.Pods.Bits()) || n+2 >= 1<<(32-opts.Underlay.Bits()) {
		return nil, fmt.Errorf("cluster of %d nodes in %s and %s: too many or none", n, opts.Underlay, opts.Pods)
	}
	c = &Cluster{Prefix: opts.Prefix, Bridge: opts.Prefix + "-ul", Gateway: opts.Underlay.Masked().Addr().Next()}
	defer func() {
		if err != nil {
			err = errors.Join(err, c.Close())
			c = nil
		}
	}()
	ul := fmt.Sprintf("%s/%d", c.Gateway, opts.Underlay.Bits())
	if err := ip("link", "add", c.Bridge, "type", "bridge"); err != nil {
		return c, err
	}
	if err := ipAll([][]string{{"addr", "add", ul, "dev", c.Bridge}, {"link", "set", c.Bridge, "up"}}); err != nil {
		return c, err
	}
	// Close removes the rules, with Cleanup.
	if _, err := sandbox.AllowBridge(c.Bridge, false); err != nil {
		return c, err
	}
	addr := c.Gateway
	sub := opts.Pods.Masked().Addr()
	for i, pods := range opts.Nodes {
		if pods > 1<<(32-opts.PodBits)-3 {
			return c, fmt.Errorf("node %d: %d pods, want at most %d in a /%d", i+1, pods, 1<<(32-opts.PodBits)-3, opts.PodBits)
		}
		addr = addr.Next()
		n := &Node{NS: NS{Name: fmt.Sprintf("n%d", i+1), Addr: addr}, Subnet: netip.PrefixFrom(sub, opts.PodBits)}
		n.NetNS = c.Prefix + "-" + n.Name
		for range 1 << (32 - opts.PodBits) {
			sub = sub.Next()
		}
		c.Nodes = append(c.Nodes, n)
		if err := c.attach(&n.NS, "", c.Bridge, netip.PrefixFrom(addr, opts.Underlay.Bits()), c.Gateway); err != nil {
			return c, err
		}
		gw := n.Subnet.Addr().Next()
		if err := ipAll([][]string{
			{"-n", n.NetNS, "link", "add", "br0", "type", "bridge"},
			{"-n", n.NetNS, "addr", "add", netip.PrefixFrom(gw, opts.PodBits).String(), "dev", "br0"},
			{"-n", n.NetNS, "link", "set", "br0", "up"},
		}); err != nil {
			return c, err
		}
		if err := run("ip", "netns", "exec", n.NetNS, "sysctl", "-qw", "net.ipv4.ip_forward=1"); err != nil {
			return c, err
		}
		pa := gw
		for j := range pods {
			pa = pa.Next()
			p := &Pod{NS: NS{Name: fmt.Sprintf("%s%c", n.Name, 'a'+j), Addr: pa}, Node: n}
			p.NetNS = c.Prefix + "-" + p.Name
			n.Pods = append(n.Pods, p)
			if err := c.attach(&p.NS, n.NetNS, "br0", netip.PrefixFrom(pa, opts.PodBits), gw); err != nil {
				return c, err
			}
		}
	}
	// Each node routes the others' pod subnets through their eth0.
	for _, n := range c.Nodes {
		for _, o := range c.Nodes {
			if o != n {
				if err := ip("-n", n.NetNS, "route", "add", o.Subnet.String(), "via", o.Addr.String(), "dev", "eth0"); err != nil {
					return c, err
				}
			}
		}
	}
	if opts.Outside {
		addr = addr.Next()
		c.Out = &NS{Name: "out", NetNS: c.Prefix + "-out", Addr: addr}
		if err := c.attach(c.Out, "", c.Bridge, netip.PrefixFrom(addr, opts.Underlay.Bits()), c.Gateway); err != nil {
			return c, err
		}
		for _, n := range c.Nodes {
			if err := ip("-n", c.Out.NetNS, "route", "add", n.Subnet.String(), "via", n.Addr.String(), "dev", "eth0"); err != nil {
				return c, err
			}
		}
	}
	return c, nil
}

// NewT returns a new cluster that is closed when t ends, or fails t.
func NewT(t testing.TB, opts Options) *Cluster {
	t.Helper()
	c, err := New(opts)
	if err != nil {
		t.Fatalf("cluster: %v", err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Errorf("close cluster: %v", err)
		}
	})
	return c
}

// attach adds the namespace ns with an eth0 whose peer is a port of bridge
// in namespace in ("": the calling one), with address a and a default
// route through gw.
func (c *Cluster) attach(ns *NS, in, bridge string, a netip.Prefix, gw netip.Addr) error {
	if err := ip("netns", "add", ns.NetNS); err != nil {
		return err
	}
	// The peer is named for the namespace: with the prefix where it is in
	// the calling namespace.
	var at []string
	peer := ns.NetNS
	if in != "" {
		at = []string{"-n", in}
		peer = ns.Name
	}
	in2 := func(args ...string) []string { return append(append([]string(nil), at...), args...) }
	return ipAll([][]string{
		in2("link", "add", peer, "type", "veth", "peer", "name", "eth0", "netns", ns.NetNS),
		in2("link", "set", peer, "master", bridge, "up"),
		{"-n", ns.NetNS, "addr", "add", a.String(), "dev", "eth0"},
		{"-n", ns.NetNS, "link", "set", "eth0", "up"},
		{"-n", ns.NetNS, "link", "set", "lo", "up"},
		{"-n", ns.NetNS, "route", "add", "default", "via", gw.String(), "dev", "eth0"},
	})
}

// Close removes the cluster's namespaces and bridge, and the firewall
// rules New added for the bridge (see sandbox.AllowBridge); the links go
// with them. It is safe to call twice.
func (c *Cluster) Close() error { return Cleanup(c.Prefix) }

// Cleanup removes the namespaces and links whose names start with prefix
// and "-", as a crashed run left them, and the firewall rules for its
// bridge: as sandbox.Cleanup does, links first, so that the host ends of
// the veths are gone when it returns (a deleted namespace takes its links
// with it only later, and a cluster made again at once would find them).
func Cleanup(prefix string) error { return sandbox.Cleanup(prefix) }

// Command returns a command that runs name in the namespace, through
// `ip netns exec`, which execs it: killing the process ends the program.
func (ns *NS) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns.NetNS, name}, args...)...)
}

// Do calls f on the calling goroutine, locked to its thread and switched
// to the namespace; sockets f opens stay in it.
func (ns *NS) Do(f func() error) (err error) {
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("get current netns: %w", err)
	}
	defer orig.Close()
	h, err := netns.GetFromName(ns.NetNS)
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("open netns %s: %w", ns.NetNS, err)
	}
	defer h.Close()
	if err := netns.Set(h); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("enter netns %s: %w", ns.NetNS, err)
	}
	defer func() {
		if serr := netns.Set(orig); serr != nil {
			// The thread stays locked, so the runtime ends it.
			err = errors.Join(err, fmt.Errorf("leave netns %s: %w", ns.NetNS, serr))
		} else {
			runtime.UnlockOSThread()
		}
	}()
	return f()
}

// Listen is net.Listen in the namespace; address is an IP literal and port.
func (ns *NS) Listen(network, address string) (l net.Listener, err error) {
	err = ns.Do(func() error { l, err = net.Listen(network, address); return err })
	return l, err
}

// Dial is net.Dial in the namespace; address is an IP literal and port.
func (ns *NS) Dial(network, address string) (c net.Conn, err error) {
	err = ns.Do(func() error { c, err = net.Dial(network, address); return err })
	return c, err
}

func ip(args ...string) error { return run("ip", args...) }

func ipAll(cmds [][]string) error {
	for _, a := range cmds {
		if err := ip(a...); err != nil {
			return err
		}
	}
	return nil
}

func run(name string, args ...string) error {
	var out bytes.Buffer
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(out.Bytes()))
	}
	return nil
}
