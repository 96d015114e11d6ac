package sandbox

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/flowmap/flowmap/internal/testenv"
)

// testSubnet is the sandbox subnet of these tests, away from DefaultSubnet
// which other packages' tests, running at the same time, may use.
var testSubnet = netip.MustParsePrefix("203.0.113.0/25")

// outsideAddr is an address outside testSubnet, for AddHostAddr.
var outsideAddr = netip.MustParsePrefix("203.0.113.200/25")

// newT returns a new sandbox that is closed when t ends, as
// internal/sandboxtest's New does (which imports this package).
func newT(t *testing.T, opts Options) *Net {
	t.Helper()
	testenv.MustBeRoot(t)
	n, err := New(opts)
	if err != nil {
		t.Fatalf("create sandbox: %v", err)
	}
	t.Cleanup(func() {
		if err := n.Close(); err != nil {
			t.Errorf("close sandbox %s: %v", opts.Prefix, err)
		}
	})
	return n
}

// newTestNet returns a sandbox on testSubnet with hosts a and b.
func newTestNet(t *testing.T, prefix string, ipv6 bool) (n *Net, a, b *Host) {
	t.Helper()
	n = newT(t, Options{Prefix: prefix, Subnet: testSubnet, IPv6: ipv6})
	return n, mustAddHost(t, n, "a"), mustAddHost(t, n, "b")
}

func mustAddHost(t *testing.T, n *Net, name string) *Host {
	t.Helper()
	h, err := n.AddHost(name)
	if err != nil {
		t.Fatalf("AddHost(%q): %v", name, err)
	}
	return h
}

// transfer sends size random bytes over TCP from one host to addr on
// another and checks that they arrive unchanged.
func transfer(from, to *Host, addr netip.Addr, size int) error {
	l, err := to.Listen("tcp", net.JoinHostPort(addr.String(), "0"))
	if err != nil {
		return err
	}
	defer l.Close()
	want := make([]byte, size)
	rand.Read(want)

	got := make(chan []byte, 1)
	errc := make(chan error, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			errc <- err
			return
		}
		defer c.Close()
		b, err := io.ReadAll(c)
		if err != nil {
			errc <- err
			return
		}
		got <- b
	}()

	c, err := from.Dial("tcp", l.Addr().String())
	if err != nil {
		return err
	}
	c.SetDeadline(time.Now().Add(30 * time.Second))
	_, err = c.Write(want)
	c.Close()
	if err != nil {
		return fmt.Errorf("write to %s: %w", l.Addr(), err)
	}
	select {
	case b := <-got:
		if !bytes.Equal(b, want) {
			return fmt.Errorf("received %d bytes that differ from the %d sent", len(b), len(want))
		}
		return nil
	case err := <-errc:
		return fmt.Errorf("receive on %s: %w", l.Addr(), err)
	case <-time.After(30 * time.Second):
		return fmt.Errorf("receive on %s: timed out", l.Addr())
	}
}

// ping sends one ICMP echo request from a host to addr and waits a second
// for the reply.
func ping(from *Host, addr netip.Addr) error {
	c, err := from.ListenPacket("ip4:icmp", "0.0.0.0")
	if err != nil {
		return err
	}
	defer c.Close()
	const id, seq = 0xf10f, 1
	req := []byte{8, 0, 0, 0, id >> 8, id & 0xff, 0, seq, 'f', 'l', 'o', 'w'}
	var sum uint32
	for i := 0; i < len(req); i += 2 {
		sum += uint32(req[i])<<8 | uint32(req[i+1])
	}
	sum = (sum >> 16) + sum&0xffff
	sum += sum >> 16
	req[2], req[3] = byte(^sum>>8), byte(^sum)
	if _, err := c.WriteTo(req, &net.IPAddr{IP: addr.AsSlice()}); err != nil {
		return fmt.Errorf("send echo request to %s: %w", addr, err)
	}
	c.SetReadDeadline(time.Now().Add(time.Second))
	buf := make([]byte, 1500)
	for {
		n, peer, err := c.ReadFrom(buf)
		if err != nil {
			return fmt.Errorf("wait for echo reply from %s: %w", addr, err)
		}
		// Type 0 is echo reply; the socket also sees our own requests.
		if peer.String() == addr.String() && n >= 8 && buf[0] == 0 && buf[4] == id>>8 && buf[5] == id&0xff {
			return nil
		}
	}
}

// leftovers returns the namespaces and links whose names start with
// prefix and "-".
func leftovers(t *testing.T, prefix string) []string {
	t.Helper()
	ipPath := testenv.MustHaveCommand(t, "ip")
	out, err := exec.Command(ipPath, "netns", "list").CombinedOutput()
	if err != nil {
		t.Fatalf("ip netns list: %v: %s", err, out)
	}
	var names []string
	for line := range strings.Lines(string(out)) {
		if name, _, _ := strings.Cut(line, " "); strings.HasPrefix(name, prefix+"-") {
			names = append(names, "netns "+strings.TrimSpace(name))
		}
	}
	links, err := retryDump(netlink.LinkList)
	if err != nil {
		t.Fatalf("list links: %v", err)
	}
	for _, l := range links {
		if name := l.Attrs().Name; strings.HasPrefix(name, prefix+"-") {
			names = append(names, "link "+name)
		}
	}
	return names
}

func TestHosts(t *testing.T) {
	testenv.MustBeRoot(t)
	n, a, b := newTestNet(t, "sbt1", false)

	tests := []struct {
		host       *Host
		wantName   string
		wantAddr   string
		wantHostIf string
	}{
		{a, "sbt1-a", "203.0.113.2", "sbt1-a"},
		{b, "sbt1-b", "203.0.113.3", "sbt1-b"},
	}
	for _, tt := range tests {
		h := tt.host
		if h.NetNS != tt.wantName || h.Addr.String() != tt.wantAddr || h.HostIf != tt.wantHostIf {
			t.Errorf("host %s: NetNS %q, Addr %s, HostIf %q; want %q, %s, %q",
				h.Name, h.NetNS, h.Addr, h.HostIf, tt.wantName, tt.wantAddr, tt.wantHostIf)
		}
		if h.Addr6.IsValid() {
			t.Errorf("host %s: Addr6 = %s without IPv6, want none", h.Name, h.Addr6)
		}
		l, err := netlink.LinkByIndex(h.HostIfIndex)
		if err != nil {
			t.Fatalf("host %s: link %d: %v", h.Name, h.HostIfIndex, err)
		}
		if l.Attrs().Name != h.HostIf || l.Attrs().MasterIndex != n.Bridge().Attrs().Index {
			t.Errorf("host %s: link %d is %s on master %d, want %s on %s (%d)", h.Name, h.HostIfIndex,
				l.Attrs().Name, l.Attrs().MasterIndex, h.HostIf, n.BridgeName(), n.Bridge().Attrs().Index)
		}
		// Without IPv6, not even link-local addresses.
		if addrs, err := netlink.AddrList(l, netlink.FAMILY_V6); err != nil || len(addrs) != 0 {
			t.Errorf("host %s: IPv6 addresses on %s = %v (%v), want none", h.Name, h.HostIf, addrs, err)
		}
		if got := l.Attrs().ParentIndex; got != h.PeerIfIndex {
			t.Errorf("host %s: peer of %s has index %d, want PeerIfIndex %d", h.Name, h.HostIf, got, h.PeerIfIndex)
		}
	}
	if got, want := n.BridgeName(), "sbt1-br"; got != want {
		t.Errorf("BridgeName() = %q, want %q", got, want)
	}
	if got, want := n.Addr().String(), "203.0.113.1"; got != want {
		t.Errorf("Addr() = %s, want %s", got, want)
	}
}

func TestTCP(t *testing.T) {
	testenv.MustBeRoot(t)
	_, a, b := newTestNet(t, "sbt2", false)
	if err := transfer(a, b, b.Addr, 1<<20); err != nil {
		t.Fatalf("TCP %s to %s: %v", a.Addr, b.Addr, err)
	}
}

func TestUDP(t *testing.T) {
	testenv.MustBeRoot(t)
	_, a, b := newTestNet(t, "sbt3", false)
	server, err := b.ListenPacket("udp", net.JoinHostPort(b.Addr.String(), "0"))
	if err != nil {
		t.Fatal(err)
	}
	defer server.Close()
	go func() {
		// Echo, upper-cased.
		buf := make([]byte, 1500)
		for {
			n, from, err := server.ReadFrom(buf)
			if err != nil {
				return
			}
			server.WriteTo(bytes.ToUpper(buf[:n]), from)
		}
	}()

	c, err := a.Dial("udp", server.LocalAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte("flowmap")); err != nil {
		t.Fatalf("send to %s: %v", server.LocalAddr(), err)
	}
	buf := make([]byte, 1500)
	nr, err := c.Read(buf)
	if err != nil {
		t.Fatalf("receive from %s: %v", server.LocalAddr(), err)
	}
	if got, want := string(buf[:nr]), "FLOWMAP"; got != want {
		t.Fatalf("UDP reply = %q, want %q", got, want)
	}
	if got, want := c.LocalAddr().(*net.UDPAddr).IP.String(), a.Addr.String(); got != want {
		t.Fatalf("UDP source = %s, want %s", got, want)
	}
}

func TestIPv6(t *testing.T) {
	testenv.MustBeRoot(t)
	n, a, b := newTestNet(t, "sbt4", true)
	if got, want := b.Addr6.String(), "2001:db8:113::3"; got != want {
		t.Fatalf("host b: Addr6 = %s, want %s", got, want)
	}
	if got, want := n.Addr6().String(), "2001:db8:113::1"; got != want {
		t.Fatalf("Addr6() = %s, want %s", got, want)
	}
	if err := transfer(a, b, b.Addr6, 1<<20); err != nil {
		t.Fatalf("TCP %s to %s: %v", a.Addr6, b.Addr6, err)
	}
}

// TestPing checks that a host answers the first echo request sent right
// after AddHost returns.
func TestPing(t *testing.T) {
	testenv.MustBeRoot(t)
	n, a, _ := newTestNet(t, "sbt5", false)
	for i := range 5 {
		h := mustAddHost(t, n, fmt.Sprintf("p%d", i))
		if err := ping(a, h.Addr); err != nil {
			t.Fatalf("ping %s from %s just after AddHost: %v", h.Addr, a.Addr, err)
		}
	}
}

func TestCommand(t *testing.T) {
	testenv.MustBeRoot(t)
	testenv.MustHaveCommand(t, "ip")
	_, a, _ := newTestNet(t, "sbt6", false)
	out, err := a.Command(t.Context(), "ip", "-o", "addr", "show", "dev", "eth0").CombinedOutput()
	if err != nil {
		t.Fatalf("ip addr in %s: %v: %s", a.NetNS, err, out)
	}
	if want := "eth0    inet 203.0.113.2/25"; !strings.Contains(string(out), want) {
		t.Fatalf("ip addr in %s = %q, want it to contain %q", a.NetNS, out, want)
	}
}

// TestCommandProcess checks that Command's process is the program's own, in
// the host's namespace, so killing it leaves no orphan.
func TestCommandProcess(t *testing.T) {
	testenv.MustBeRoot(t)
	testenv.MustHaveCommand(t, "ip")
	sleep := testenv.MustHaveCommand(t, "sleep")
	_, a, _ := newTestNet(t, "sbt7", false)
	cmd := a.Command(t.Context(), sleep, "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	pid := cmd.Process.Pid

	// ip execs the program after entering the namespace; wait for that.
	var comm, ns string
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
		comm = strings.TrimSpace(string(b))
		ns, _ = os.Readlink(fmt.Sprintf("/proc/%d/ns/net", pid))
		if comm == "sleep" {
			break
		}
	}
	if comm != "sleep" {
		t.Fatalf("process %d runs %q, want %q", pid, comm, "sleep")
	}
	if want := fmt.Sprintf("net:[%d]", a.NetNSInode); ns != want {
		t.Fatalf("process %d in %s, want %s (%s)", pid, ns, want, a.NetNS)
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err == nil {
		t.Fatal("killed sleep exited 0")
	}
	if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("process %d still exists after kill: %v", pid, err)
	}
}

func TestIperf3(t *testing.T) {
	testenv.MustBeRoot(t)
	testenv.MustHaveCommand(t, "ip")
	iperf3 := testenv.MustHaveCommand(t, "iperf3")
	_, a, b := newTestNet(t, "sbt8", false)

	server := b.Command(t.Context(), iperf3, "-s", "-B", b.Addr.String(), "-p", "5201")
	if err := server.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		server.Process.Kill()
		server.Wait()
	}()
	// The server listens shortly after it starts; retry until it does.
	var (
		out []byte
		err error
	)
	for range 50 {
		out, err = a.Command(t.Context(), iperf3, "-c", b.Addr.String(), "-p", "5201", "-n", "4M").CombinedOutput()
		if err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("iperf3 from %s to %s: %v: %s", a.NetNS, b.NetNS, err, out)
	}
	if want := "receiver"; !strings.Contains(string(out), want) {
		t.Fatalf("iperf3 output %q, want it to contain %q", out, want)
	}
}

func TestOutsideHost(t *testing.T) {
	testenv.MustBeRoot(t)
	n, a, _ := newTestNet(t, "sbt9", true)
	out, err := n.AddHostAddr("out", outsideAddr)
	if err != nil {
		t.Fatalf("AddHostAddr: %v", err)
	}
	if got, want := out.Addr6.String(), "2001:db8:113:128::200"; got != want {
		t.Fatalf("outside host: Addr6 = %s, want %s", got, want)
	}
	// Hosts added later reach the outside subnet too.
	c := mustAddHost(t, n, "c")
	tests := []struct {
		from, to *Host
		addr     netip.Addr
	}{
		{a, out, out.Addr},
		{out, a, a.Addr},
		{c, out, out.Addr},
		{a, out, out.Addr6},
		{out, c, c.Addr6},
	}
	for _, tt := range tests {
		t.Run(tt.from.Name+"-"+tt.addr.String(), func(t *testing.T) {
			if err := transfer(tt.from, tt.to, tt.addr, 64<<10); err != nil {
				t.Fatalf("TCP from %s to %s: %v", tt.from.Name, tt.addr, err)
			}
		})
	}

	bad := []struct {
		name string
		addr string
	}{
		{"private", "10.0.0.2/24"},
		{"real", "1.1.1.2/24"},
		{"gateway", "203.0.113.129/25"},
		{"broadcast", "203.0.113.255/25"},
		{"taken", "203.0.113.200/25"},
		{"overlapping subnet", "203.0.113.66/26"},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			if h, err := n.AddHostAddr("bad", netip.MustParsePrefix(tt.addr)); err == nil {
				t.Fatalf("AddHostAddr(%q, %s) = host %s, want an error", "bad", tt.addr, h.Addr)
			}
		})
	}
}

// TestAddHostWhileBusy adds hosts while others carry traffic, and from
// several goroutines at once.
func TestAddHostWhileBusy(t *testing.T) {
	testenv.MustBeRoot(t)
	n, a, b := newTestNet(t, "sbt10", false)
	busy := make(chan error, 1)
	go func() { busy <- transfer(a, b, b.Addr, 64<<20) }()

	var wg sync.WaitGroup
	hosts := make([]*Host, 4)
	errs := make([]error, len(hosts))
	for i := range hosts {
		wg.Go(func() { hosts[i], errs[i] = n.AddHost(fmt.Sprintf("c%d", i)) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("AddHost: %v", err)
	}
	seen := make(map[netip.Addr]bool)
	for _, h := range hosts {
		if seen[h.Addr] {
			t.Fatalf("address %s handed out twice", h.Addr)
		}
		seen[h.Addr] = true
		if err := transfer(h, a, a.Addr, 64<<10); err != nil {
			t.Fatalf("TCP from new host %s to %s: %v", h.Name, a.Addr, err)
		}
	}
	if err := <-busy; err != nil {
		t.Fatalf("TCP %s to %s while adding hosts: %v", a.Addr, b.Addr, err)
	}
}

func TestClose(t *testing.T) {
	testenv.MustBeRoot(t)
	const prefix = "sbt11"
	n, err := New(Options{Prefix: prefix, Subnet: testSubnet, IPv6: true})
	if err != nil {
		t.Fatal(err)
	}
	a := mustAddHost(t, n, "a")
	mustAddHost(t, n, "b")
	if _, err := n.AddHostAddr("out", outsideAddr); err != nil {
		t.Fatal(err)
	}
	if got := leftovers(t, prefix); len(got) != 7 {
		t.Fatalf("before Close: %q, want 3 namespaces, 3 host links and 1 bridge", got)
	}
	// An open socket keeps a namespace alive, but not its name or links.
	l, err := a.Listen("tcp", ":0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()

	if err := n.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if got := leftovers(t, prefix); len(got) != 0 {
		t.Fatalf("after Close: %q, want none", got)
	}
	if err := n.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := n.AddHost("c"); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("AddHost after Close: %v, want %v", err, net.ErrClosed)
	}
	if err := a.Do(func() error { return nil }); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Do after Close: %v, want %v", err, net.ErrClosed)
	}
}

func TestCleanup(t *testing.T) {
	testenv.MustBeRoot(t)
	ipPath := testenv.MustHaveCommand(t, "ip")
	const prefix = "sbt12"

	// Should the test fail, leave nothing to fail the others.
	t.Cleanup(func() { Cleanup(prefix) })

	// A run that crashed: nothing closed, plus a namespace and links made
	// by hand.
	n, err := New(Options{Prefix: prefix, Subnet: testSubnet})
	if err != nil {
		t.Fatal(err)
	}
	mustAddHost(t, n, "a")
	for _, args := range [][]string{
		{"netns", "add", prefix + "-x"},
		{"link", "add", prefix + "-y", "type", "veth", "peer", "name", prefix + "-z"},
	} {
		if out, err := exec.Command(ipPath, args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	if _, err := New(Options{Prefix: prefix, Subnet: testSubnet}); !errors.Is(err, os.ErrExist) {
		t.Fatalf("New over leftovers: %v, want %v", err, os.ErrExist)
	}

	if err := Cleanup(prefix); err != nil {
		t.Fatalf("Cleanup(%q): %v", prefix, err)
	}
	if got := leftovers(t, prefix); len(got) != 0 {
		t.Fatalf("after Cleanup: %q, want none", got)
	}
	if err := n.Close(); err != nil {
		t.Fatalf("Close after Cleanup: %v", err)
	}
	n = newT(t, Options{Prefix: prefix, Subnet: testSubnet})
	mustAddHost(t, n, "a")
}

func TestSubnetInUse(t *testing.T) {
	testenv.MustBeRoot(t)
	newT(t, Options{Prefix: "sbt13", Subnet: testSubnet})
	overlapping := netip.MustParsePrefix("203.0.113.0/24")
	if n, err := New(Options{Prefix: "sbt14", Subnet: overlapping}); !errors.Is(err, ErrSubnetInUse) {
		if err == nil {
			n.Close()
		}
		t.Fatalf("New on %s next to a sandbox on %s: %v, want %v", overlapping, testSubnet, err, ErrSubnetInUse)
	}
	// A disjoint subnet works alongside.
	n := newT(t, Options{Prefix: "sbt14", Subnet: netip.MustParsePrefix("203.0.113.128/25")})
	mustAddHost(t, n, "a")
}

func TestDo(t *testing.T) {
	testenv.MustBeRoot(t)
	_, a, _ := newTestNet(t, "sbt15", false)
	before, err := os.Readlink("/proc/thread-self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	var inside string
	err = a.Do(func() error {
		var err error
		inside, err = os.Readlink("/proc/thread-self/ns/net")
		return err
	})
	if err != nil {
		t.Fatalf("Do: %v", err)
	}
	if want := fmt.Sprintf("net:[%d]", a.NetNSInode); inside != want {
		t.Fatalf("Do ran in %s, want %s", inside, want)
	}
	after, err := os.Readlink("/proc/thread-self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	if after != before {
		t.Fatalf("after Do, thread in %s, want %s", after, before)
	}
	wantErr := errors.New("from f")
	if err := a.Do(func() error { return wantErr }); !errors.Is(err, wantErr) {
		t.Fatalf("Do(f) = %v, want f's error %v", err, wantErr)
	}
}

func TestAddHostInvalid(t *testing.T) {
	testenv.MustBeRoot(t)
	n := newT(t, Options{Prefix: "sbt16", Subnet: testSubnet})
	mustAddHost(t, n, "a")
	tests := []struct {
		name   string
		host   string
		wantIs error
	}{
		{name: "bridge name", host: "br"},
		{name: "too long", host: "abcdefghij"},
		{name: "dash", host: "a-b"},
		{name: "empty", host: ""},
		{name: "taken", host: "a", wantIs: os.ErrExist},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, err := n.AddHost(tt.host)
			if err == nil {
				t.Fatalf("AddHost(%q) = host %s, want an error", tt.host, h.NetNS)
			}
			if tt.wantIs != nil && !errors.Is(err, tt.wantIs) {
				t.Fatalf("AddHost(%q) = %v, want %v", tt.host, err, tt.wantIs)
			}
		})
	}
	// A failed AddHost leaves nothing behind and takes no address.
	if got, want := len(leftovers(t, "sbt16")), 3; got != want {
		t.Fatalf("after failed AddHosts: %d names, want %d (bridge, a's netns and link)", got, want)
	}
	if b := mustAddHost(t, n, "b"); b.Addr.String() != "203.0.113.3" {
		t.Fatalf("host b after failed AddHosts: Addr = %s, want 203.0.113.3", b.Addr)
	}
}

func TestListenNameRefused(t *testing.T) {
	testenv.MustBeRoot(t)
	_, a, _ := newTestNet(t, "sbt17", false)
	if c, err := a.Dial("tcp", "localhost:80"); err == nil {
		c.Close()
		t.Fatal(`Dial("tcp", "localhost:80") succeeded, want an error for a name`)
	}
}
