package flows_test

import (
	"net"
	"net/netip"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/flowmap/flowmap/flows"
	"github.com/flowmap/flowmap/internal/testenv"
	"github.com/flowmap/flowmap/model"
)

// TestEndToEndDroppedBeforeEgress: the host's own connection attempts to
// a peer behind a watched veth, dropped by a DROP rule in the host's
// OUTPUT chain before the veth's egress program could count them, show as
// a flow from the host to the peer with one NETFILTER_DROP a SYN sent, as
// many as the rule's own counter says. Needs root and iptables; it
// changes the host's OUTPUT chain with one rule of its own, for its own
// interface, and removes it.
func TestEndToEndDroppedBeforeEgress(t *testing.T) {
	testenv.MustBeRoot(t)
	testenv.MustHaveBTF(t)
	ipt := testenv.MustHaveCommand(t, "iptables")
	ipc := testenv.MustHaveCommand(t, "ip")
	const (
		ns, hostIf, peerIf = "fmdo-ns", "fmdo-h", "fmdo-p"
		port               = 9
	)
	hostAddr, peerAddr := netip.MustParseAddr("198.51.100.5"), netip.MustParseAddr("198.51.100.6")
	sh := func(name string, args ...string) {
		t.Helper()
		if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
			t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
		}
	}
	// Leftovers of a run that was killed.
	exec.Command(ipc, "netns", "del", ns).Run()
	exec.Command(ipc, "link", "del", hostIf).Run()
	sh(ipc, "netns", "add", ns)
	t.Cleanup(func() { exec.Command(ipc, "netns", "del", ns).Run() })
	sh(ipc, "link", "add", hostIf, "type", "veth", "peer", "name", peerIf, "netns", ns)
	t.Cleanup(func() { exec.Command(ipc, "link", "del", hostIf).Run() })
	sh(ipc, "addr", "add", hostAddr.String()+"/30", "dev", hostIf)
	sh(ipc, "link", "set", hostIf, "up")
	sh(ipc, "-n", ns, "addr", "add", peerAddr.String()+"/30", "dev", peerIf)
	sh(ipc, "-n", ns, "link", "set", peerIf, "up")
	sh(ipc, "-n", ns, "link", "set", "lo", "up")
	rule := []string{"OUTPUT", "-o", hostIf, "-p", "tcp", "-d", peerAddr.String(), "--dport", strconv.Itoa(port), "-j", "DROP"}
	sh(ipt, append([]string{"-w", "-I"}, rule...)...)
	t.Cleanup(func() { exec.Command(ipt, append([]string{"-w", "-D"}, rule...)...).Run() })

	c := runDatapath(t, flows.Config{Interfaces: []string{hostIf}})
	// Two attempts of about 2 s each: a SYN and a retry or two apiece.
	for range 2 {
		d := net.Dialer{Timeout: 2 * time.Second, LocalAddr: &net.TCPAddr{IP: hostAddr.AsSlice()}}
		if conn, err := d.Dial("tcp", net.JoinHostPort(peerAddr.String(), strconv.Itoa(port))); err == nil {
			conn.Close()
			t.Fatalf("connected through a DROP rule")
		}
	}
	// What the rule dropped, by its own count.
	out, err := exec.Command(ipt, "-w", "-L", "OUTPUT", "-v", "-x", "-n").CombinedOutput()
	if err != nil {
		t.Fatalf("iptables -L OUTPUT: %v\n%s", err, out)
	}
	var dropped uint64
	line := regexp.MustCompile(`^\s*(\d+)\s+\d+\s+DROP\s+.*` + regexp.QuoteMeta(hostIf) + `\s+.*` + regexp.QuoteMeta(peerAddr.String()) + `\s+tcp dpt:` + strconv.Itoa(port))
	for _, l := range strings.Split(string(out), "\n") {
		if m := line.FindStringSubmatch(l); m != nil {
			dropped, _ = strconv.ParseUint(m[1], 10, 64)
		}
	}
	if dropped < 2 {
		t.Fatalf("the rule dropped %d packets, want a SYN of each attempt at least:\n%s", dropped, out)
	}
	recs := find(c.flows(t), hostAddr, peerAddr, model.ProtoTCP, port)
	h := health(recs)
	if got := h.Drops["NETFILTER_DROP"]; got != dropped {
		t.Errorf("NETFILTER_DROP on the host → peer flows: %d, want the rule's %d (records %+v)", got, dropped, recs)
	}
	for _, r := range recs {
		if r.Src != hostAddr || r.Forward.Packets != 0 || r.Reverse.Packets != 0 {
			t.Errorf("record %v:%d → %v:%d with %d/%d packets, want the host's, with none (none left)",
				r.Src, r.SrcPort, r.Dst, r.DstPort, r.Forward.Packets, r.Reverse.Packets)
		}
	}
	t.Logf("%d SYNs dropped in OUTPUT, %d flows, drops %v", dropped, len(recs), h.Drops)
}
