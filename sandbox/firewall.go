package sandbox

// The machine's firewall and a sandbox's bridge.
//
// With br_netfilter loaded and net.bridge.bridge-nf-call-iptables=1, as on
// every Kubernetes node and on Docker hosts, the IPv4 frames a bridge
// forwards from one port to another also pass the FORWARD hook of iptables
// (IPv6 ones that of ip6tables with bridge-nf-call-ip6tables), with the
// bridge as both in and out interface. Docker sets the FORWARD policy of
// the filter table to DROP, so there two sandbox hosts cannot reach each
// other, though no packet is routed.
//
// AllowBridge inserts, at the head of FORWARD, a rule accepting what comes
// in and goes out of the sandbox's bridge: only frames between its own
// ports, nothing routed to or from elsewhere. It does so in every backend
// whose chain could drop them, nft and legacy both: each registers its own
// hooks and a frame must pass all of them, and the machine's `iptables` may
// be one while Docker or kube-proxy wrote to the other. A table of our own
// in nftables would not do: an accept verdict ends only its base chain, and
// the frame still meets the DROP of iptables' chain at the same hook.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"slices"
	"strings"
	"time"
)

// ruleComment marks the rules AllowBridge adds, so that Cleanup finds
// those of a crashed run.
const ruleComment = "flowmap-sandbox"

// xtablesWait is how long, in seconds, an iptables command waits for the
// xtables lock another holds.
const xtablesWait = "5"

// checkTimeout bounds CheckTraffic's wait for a connection.
const checkTimeout = 5 * time.Second

// bridgeNFCall is the switch of br_netfilter that hands bridged IPv4
// frames to iptables; it exists only while br_netfilter is loaded.
const bridgeNFCall = "/proc/sys/net/bridge/bridge-nf-call-iptables"

// ErrNoTraffic is returned by CheckTraffic when one host cannot reach
// another.
var ErrNoTraffic = errors.New("no traffic between sandbox hosts")

// backend is an iptables command of one family (iptables, ip6tables) and
// one backend (nft, legacy).
type backend struct {
	cmd string
	// tables is the list of legacy tables loaded in the namespace, for a
	// legacy command: a filter table not listed there has no rules, and
	// listing its chains would load it.
	tables string
}

// backends returns the iptables commands installed, for IPv4 and, with
// ipv6, IPv6: both backends where both are, else the plain command.
func backends(ipv6 bool) []backend {
	families := []string{"iptables"}
	if ipv6 {
		families = append(families, "ip6tables")
	}
	var bs []backend
	for _, f := range families {
		// thread-self: /proc/net is the namespace of the main thread,
		// which may be left in a host's (see createNetNS).
		tables := "/proc/thread-self/net/ip_tables_names"
		if f == "ip6tables" {
			tables = "/proc/thread-self/net/ip6_tables_names"
		}
		n := len(bs)
		for _, b := range []backend{{cmd: f + "-nft"}, {cmd: f + "-legacy", tables: tables}} {
			if _, err := exec.LookPath(b.cmd); err == nil {
				bs = append(bs, b)
			}
		}
		if _, err := exec.LookPath(f); err == nil && len(bs) == n {
			bs = append(bs, backend{cmd: f})
		}
	}
	return bs
}

// run runs the command with args, waiting for the xtables lock, and
// returns its standard output.
func (b backend) run(args ...string) (string, error) {
	cmd := exec.Command(b.cmd, append([]string{"-w", xtablesWait}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("%s %s: %w: %s", b.cmd, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return string(out), nil
}

// chain is the FORWARD chain of a backend's filter table.
type chain struct {
	loaded bool       // false: a legacy filter table not loaded
	policy string     // "ACCEPT", "DROP"
	rules  [][]string // as `iptables -S` lists them: "-A", "FORWARD", …
}

// mayDrop reports whether the chain could drop a frame: a policy other
// than ACCEPT, or any rule, which may drop or jump to one that does.
func (c chain) mayDrop() bool {
	return c.loaded && (c.policy != "ACCEPT" || len(c.rules) > 0)
}

// forward reads the FORWARD chain of b's filter table.
func (b backend) forward() (chain, error) {
	if b.tables != "" {
		names, err := os.ReadFile(b.tables)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return chain{}, fmt.Errorf("list legacy tables: %w", err)
		}
		if !slices.Contains(strings.Fields(string(names)), "filter") {
			return chain{}, nil
		}
	}
	out, err := b.run("-t", "filter", "-S", "FORWARD")
	if err != nil {
		return chain{}, err
	}
	c := chain{loaded: true}
	for line := range strings.Lines(out) {
		f := strings.Fields(line)
		switch {
		case len(f) == 3 && f[0] == "-P" && f[1] == "FORWARD":
			c.policy = f[2]
		case len(f) > 2 && f[0] == "-A" && f[1] == "FORWARD":
			c.rules = append(c.rules, f)
		}
	}
	return c, nil
}

// ruleArgs is the rule AllowBridge adds for bridge, after the chain name.
func ruleArgs(bridge string) []string {
	return []string{"-i", bridge, "-o", bridge, "-m", "comment", "--comment", ruleComment, "-j", "ACCEPT"}
}

// allowedBridge returns the bridge a rule of AllowBridge's is for, as
// `iptables -S` lists it, or "" for any other rule.
func allowedBridge(rule []string) string {
	if len(rule) != 2+len(ruleArgs("")) || rule[2] != "-i" || !slices.Equal(rule[2:], ruleArgs(rule[3])) {
		return ""
	}
	return rule[3]
}

// AllowBridge lets the frames the bridge forwards between its own ports
// through the machine's firewall: in each iptables backend (nft, legacy)
// whose FORWARD chain of the filter table could drop them (its policy is
// not ACCEPT or it has rules), it inserts first a rule accepting what comes
// in and goes out of bridge, for IPv4 and, with ipv6, IPv6. Frames between
// the bridge's ports meet those chains when br_netfilter hands them to
// iptables (net.bridge.bridge-nf-call-iptables=1), as on Kubernetes nodes
// and Docker hosts. It skips a backend whose command is not installed or
// cannot list its chain (as iptables-nft on a kernel without nf_tables):
// such a backend has no rules.
//
// It returns a function that removes the rules it inserted, and only
// those; Cleanup removes those of a crashed run. If inserting one fails,
// AllowBridge removes those it inserted and returns the error.
func AllowBridge(bridge string, ipv6 bool) (remove func() error, err error) {
	var added []backend
	remove = func() error {
		var errs []error
		for _, b := range added {
			if _, err := b.run(append([]string{"-D", "FORWARD"}, ruleArgs(bridge)...)...); err != nil {
				errs = append(errs, fmt.Errorf("remove firewall rule for %s: %w", bridge, err))
			}
		}
		added = nil
		return errors.Join(errs...)
	}
	for _, b := range backends(ipv6) {
		// A backend whose chain cannot be listed, as iptables-nft on a
		// kernel without nf_tables, has no rules either.
		if c, err := b.forward(); err != nil || !c.mayDrop() {
			continue
		}
		if _, err := b.run(append([]string{"-I", "FORWARD", "1"}, ruleArgs(bridge)...)...); err != nil {
			return nil, errors.Join(fmt.Errorf("allow bridge %s through the firewall: %w", bridge, err), remove())
		}
		added = append(added, b)
	}
	return remove, nil
}

// removeAllowed removes the rules AllowBridge added for bridges whose
// names start with start.
func removeAllowed(start string) error {
	var errs []error
	for _, b := range backends(true) {
		c, err := b.forward()
		if err != nil {
			continue // no rules (see AllowBridge)
		}
		for _, r := range c.rules {
			if br := allowedBridge(r); strings.HasPrefix(br, start) {
				if _, err := b.run(append([]string{"-D", "FORWARD"}, r[2:]...)...); err != nil {
					errs = append(errs, fmt.Errorf("remove firewall rule for %s: %w", br, err))
				}
			}
		}
	}
	return errors.Join(errs...)
}

// CheckTraffic opens a TCP connection from one host to the other, waiting
// at most a few seconds, as a check that the machine passes the sandbox's
// traffic. If it cannot, it returns an error wrapping ErrNoTraffic that
// says what of the machine's firewall sees the bridge's frames and how to
// let them through.
func (n *Net) CheckTraffic(ctx context.Context, from, to *Host) error {
	l, err := to.Listen("tcp4", net.JoinHostPort(to.Addr.String(), "0"))
	if err != nil {
		return fmt.Errorf("check traffic: %w", err)
	}
	defer l.Close()
	dctx, cancel := context.WithTimeout(ctx, checkTimeout)
	defer cancel()
	// The kernel completes the handshake without Accept.
	c, err := from.DialContext(dctx, "tcp4", l.Addr().String())
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("check traffic from %s to %s: %w (%v): %s",
			from.NetNS, l.Addr(), ErrNoTraffic, err, firewallReport(n.bridgeName))
	}
	c.Close()
	return nil
}

// firewallReport says what of the machine's firewall sees the frames
// bridge forwards, for CheckTraffic's error.
func firewallReport(bridge string) string {
	b, err := os.ReadFile(bridgeNFCall)
	if err != nil || strings.TrimSpace(string(b)) != "1" {
		why := "br_netfilter is not loaded"
		if err == nil {
			why = "net.bridge.bridge-nf-call-iptables=" + strings.TrimSpace(string(b))
		}
		return fmt.Sprintf("iptables does not see bridged frames (%s); look for what else drops them on %s (nft list ruleset, tc filter show dev %s)",
			why, bridge, bridge)
	}
	var chains []string
	for _, be := range backends(false) {
		c, err := be.forward()
		if err != nil {
			chains = append(chains, err.Error())
			continue
		}
		if !c.loaded {
			continue
		}
		ours := "without"
		if slices.ContainsFunc(c.rules, func(r []string) bool { return allowedBridge(r) == bridge }) {
			ours = "with"
		}
		chains = append(chains, fmt.Sprintf("%s: FORWARD policy %s, %d rules, %s the sandbox's ACCEPT rule for %s",
			be.cmd, c.policy, len(c.rules), ours, bridge))
	}
	if len(chains) == 0 {
		chains = append(chains, "no iptables command to inspect them (apt-get install iptables)")
	}
	return fmt.Sprintf("br_netfilter passes bridged frames through iptables' FORWARD chains "+
		"(net.bridge.bridge-nf-call-iptables=1, as on Docker hosts and Kubernetes nodes), "+
		"where a DROP policy, as Docker sets, drops them: %s; let the bridge through with "+
		"`iptables -I FORWARD -i %s -o %s -j ACCEPT` in the backend that drops, "+
		"or look for another table that drops them (nft list ruleset)",
		strings.Join(chains, "; "), bridge, bridge)
}
