package k8sbox

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
)

// sysctls are the host's settings the kubelet (kernel defaults it
// "protects"), kube-proxy and the CNI bridge plugin (isGateway turns on
// forwarding) may change: saved at start, restored at Close.
var sysctls = []string{
	"net/ipv4/ip_forward",
	"net/ipv4/conf/all/route_localnet",
	"net/bridge/bridge-nf-call-iptables",
	"kernel/panic",
	"kernel/panic_on_oops",
	"kernel/keys/root_maxkeys",
	"kernel/keys/root_maxbytes",
	"vm/overcommit_memory",
	"vm/panic_on_oom",
	"net/netfilter/nf_conntrack_max",
	"net/netfilter/nf_conntrack_tcp_timeout_established",
	"net/netfilter/nf_conntrack_tcp_timeout_close_wait",
	"net/netfilter/nf_conntrack_tcp_be_liberal",
}

// hostState is what the box may change on the host, as it was before.
type hostState struct {
	sysctls map[string]string
	// chains are the iptables and ip6tables chains, "iptables nat
	// POSTROUTING", that existed.
	chains map[string]bool
}

var tables = []string{"filter", "nat", "mangle", "raw"}

func saveHost(ctx context.Context) (*hostState, error) {
	h := &hostState{sysctls: map[string]string{}, chains: map[string]bool{}}
	for _, s := range sysctls {
		if b, err := os.ReadFile("/proc/sys/" + s); err == nil {
			h.sysctls[s] = strings.TrimSpace(string(b))
		}
	}
	chains, err := listChains(ctx)
	if err != nil {
		return nil, err
	}
	for _, c := range chains {
		h.chains[c] = true
	}
	return h, nil
}

// listChains returns every chain of both families' tables.
func listChains(ctx context.Context) ([]string, error) {
	var chains []string
	for _, cmd := range []string{"iptables", "ip6tables"} {
		for _, t := range tables {
			out, err := run(ctx, cmd, "-w", "-t", t, "-S")
			if err != nil {
				return nil, err
			}
			for _, line := range strings.Split(out, "\n") {
				if f := strings.Fields(line); len(f) >= 2 && (f[0] == "-N" || f[0] == "-P") {
					chains = append(chains, cmd+" "+t+" "+f[1])
				}
			}
		}
	}
	return chains, nil
}

// restoreChains removes the chains that did not exist before, and the
// rules of other chains that jump to them.
func (h *hostState) restoreChains(ctx context.Context) error {
	now, err := listChains(ctx)
	if err != nil {
		return err
	}
	var errs []error
	byTable := map[string][]string{}
	for _, c := range now {
		if !h.chains[c] {
			f := strings.Fields(c)
			byTable[f[0]+" "+f[1]] = append(byTable[f[0]+" "+f[1]], f[2])
		}
	}
	for tk, added := range byTable {
		cmd, table, _ := strings.Cut(tk, " ")
		out, err := run(ctx, cmd, "-w", "-t", table, "-S")
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, line := range strings.Split(out, "\n") {
			f := strings.Fields(line)
			if len(f) < 2 || f[0] != "-A" || slices.Contains(added, f[1]) {
				continue
			}
			if i := slices.Index(f, "-j"); i > 0 && i+1 < len(f) && slices.Contains(added, f[i+1]) {
				// iptables -S quotes what needs it; the rules
				// kube-proxy, the kubelet and CNI add to the
				// built-in chains have quoted comments.
				args := append([]string{"-w", "-t", table, "-D"}, splitRule(line)[1:]...)
				if _, err := run(ctx, cmd, args...); err != nil {
					errs = append(errs, err)
				}
			}
		}
		for _, c := range added {
			if _, err := run(ctx, cmd, "-w", "-t", table, "-F", c); err != nil {
				errs = append(errs, err)
			}
		}
		for _, c := range added {
			if _, err := run(ctx, cmd, "-w", "-t", table, "-X", c); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// splitRule splits a line of iptables -S into its words, a quoted one as
// one.
func splitRule(line string) []string {
	var words []string
	var cur strings.Builder
	quoted, any := false, false
	for i := 0; i < len(line); i++ {
		c := line[i]
		switch {
		case c == '\\' && quoted && i+1 < len(line):
			i++
			cur.WriteByte(line[i])
		case c == '"':
			quoted, any = !quoted, true
		case c == ' ' && !quoted:
			if cur.Len() > 0 || any {
				words = append(words, cur.String())
			}
			cur.Reset()
			any = false
		default:
			cur.WriteByte(c)
		}
	}
	if cur.Len() > 0 || any {
		words = append(words, cur.String())
	}
	return words
}

func (h *hostState) restoreSysctls() error {
	var errs []error
	for s, v := range h.sysctls {
		b, err := os.ReadFile("/proc/sys/" + s)
		if err != nil || strings.TrimSpace(string(b)) == v {
			continue
		}
		if err := os.WriteFile("/proc/sys/"+s, []byte(v), 0o644); err != nil {
			errs = append(errs, fmt.Errorf("restore %s: %w", s, err))
		}
	}
	return errors.Join(errs...)
}

// cgroupRoots returns <hierarchy>/<name> for each cgroup v1 hierarchy
// (and the v2 one) mounted under /sys/fs/cgroup.
func cgroupRoots(name string) []string {
	entries, _ := os.ReadDir("/sys/fs/cgroup")
	var dirs []string
	for _, e := range entries {
		if e.IsDir() {
			dirs = append(dirs, filepath.Join("/sys/fs/cgroup", e.Name(), name))
		}
	}
	return dirs
}

// removeCgroups removes the cgroup directories under each root, deepest
// first (a cgroup is removed with rmdir once it has no processes).
func removeCgroups(roots []string) error {
	var errs []error
	for _, root := range roots {
		var dirs []string
		filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		for i := len(dirs) - 1; i >= 0; i-- {
			if err := syscall.Rmdir(dirs[i]); err != nil && !errors.Is(err, syscall.ENOENT) {
				errs = append(errs, fmt.Errorf("remove cgroup %s: %w", dirs[i], err))
			}
		}
	}
	return errors.Join(errs...)
}

// mountsUnder counts the mount points under dir.
func mountsUnder(dir string) int {
	b, _ := os.ReadFile("/proc/self/mountinfo")
	n := 0
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) > 4 && strings.HasPrefix(f[4], dir+"/") {
			n++
		}
	}
	return n
}

// removeLogLinks removes the kubelet's links in /var/log/containers that
// point under dir (it makes them there whatever its own directories).
func removeLogLinks(dir string) {
	entries, _ := os.ReadDir("/var/log/containers")
	for _, e := range entries {
		p := filepath.Join("/var/log/containers", e.Name())
		if target, err := os.Readlink(p); err == nil && strings.HasPrefix(target, dir+"/") {
			os.Remove(p)
		}
	}
}
