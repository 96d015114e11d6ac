package flows_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"

	"github.com/flowmap/flowmap/flows"
	"github.com/flowmap/flowmap/internal/sandboxtest"
	"github.com/flowmap/flowmap/internal/testenv"
	"github.com/flowmap/flowmap/model"
	"github.com/flowmap/flowmap/sandbox"
)

// e2eSubnet keeps this package's sandboxes apart from other packages'
// tests, which may run at the same time.
var e2eSubnet = netip.MustParsePrefix("203.0.113.128/25")

// collector runs a datapath and keeps every batch it sends.
type collector struct {
	dp      *flows.Datapath
	mu      sync.Mutex
	batches []model.Batch
}

// runDatapath starts a datapath on the sandbox's interfaces, waits until
// it is attached, and stops and closes it when t ends.
func runDatapath(t *testing.T, cfg flows.Config) *collector {
	t.Helper()
	if cfg.Interval == 0 {
		cfg.Interval = 300 * time.Millisecond
	}
	dp, err := flows.New(cfg)
	if err != nil {
		t.Fatalf("flows.New: %v", err)
	}
	c := &collector{dp: dp}
	ctx, cancel := context.WithCancel(context.Background())
	out := make(chan model.Batch)
	done := make(chan error, 1)
	go func() { done <- dp.Run(ctx, out) }()
	go func() {
		for b := range out {
			c.mu.Lock()
			c.batches = append(c.batches, b)
			c.mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Errorf("Run = %v, want context.Canceled", err)
		}
		close(out)
		if err := dp.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	waitFor(t, 5*time.Second, "datapath ready", func() bool { return dp.Ready() == nil })
	return c
}

// flows returns every flow seen so far, merged across batches, after one
// more drain.
func (c *collector) flows(t *testing.T) []model.Record {
	t.Helper()
	c.mu.Lock()
	n := len(c.batches)
	c.mu.Unlock()
	waitFor(t, 5*time.Second, "another drain", func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		return len(c.batches) > n+1
	})
	c.mu.Lock()
	defer c.mu.Unlock()
	return model.Merge(c.batches...).Records
}

func waitFor(t *testing.T, d time.Duration, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// find returns the records between two addresses on a protocol and
// server port, in either orientation.
func find(recs []model.Record, a, b netip.Addr, proto model.Proto, port uint16) []model.Record {
	var out []model.Record
	for _, r := range recs {
		if r.Proto != proto {
			continue
		}
		if (r.Src == a && r.Dst == b && r.DstPort == port) || (r.Src == b && r.Dst == a && r.SrcPort == port) {
			out = append(out, r)
		}
	}
	return out
}

// sendTCP sends n bytes over a connection made by dial to a listener on to, and returns the server
// port once b has read them all, and the bytes the sender retransmitted
// (segments dropped on a busy machine are sent, and counted, twice).
func sendTCP(t *testing.T, dial func(network, addr string) (net.Conn, error), to *sandbox.Host, dst netip.Addr, n int) (uint16, uint64) {
	t.Helper()
	network := "tcp4"
	if dst.Is6() {
		network = "tcp6"
	}
	ln, err := to.Listen(network, net.JoinHostPort(dst.String(), "0"))
	if err != nil {
		t.Fatalf("listen on %s: %v", to.Name, err)
	}
	defer ln.Close()
	got := make(chan int64, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- -1
			return
		}
		defer c.Close()
		m, _ := io.Copy(io.Discard, c)
		got <- m
	}()
	conn, err := dial(network, ln.Addr().String())
	if err != nil {
		t.Fatalf("dial %s: %v", ln.Addr(), err)
	}
	if _, err := conn.Write(make([]byte, n)); err != nil {
		t.Fatalf("write %d bytes: %v", n, err)
	}
	if err := conn.(*net.TCPConn).CloseWrite(); err != nil {
		t.Fatalf("close write: %v", err)
	}
	if m := <-got; m != int64(n) {
		t.Fatalf("server read %d bytes, want %d", m, n)
	}
	retrans := testenv.TCPRetransmitted(conn.(*net.TCPConn))
	conn.Close()
	return uint16(ln.Addr().(*net.TCPAddr).Port), retrans
}

// Wire overheads per packet: Ethernet 14, IPv4 20 or IPv6 40, TCP 20 with
// 12 bytes of timestamp options.
const (
	tcp4Overhead = 14 + 20 + 32
	tcp6Overhead = 14 + 40 + 32
	udp4Overhead = 14 + 20 + 8
	mss4         = 1500 - 20 - 32
)

func within(got, want uint64, frac float64) bool {
	d := float64(got) - float64(want)
	return d <= frac*float64(want) && -d <= frac*float64(want)
}

// TestEndToEnd runs the datapath on a sandbox of namespaces on a bridge
// and checks that flows between them are reported once, oriented client to
// server, with the bytes that were sent, and with the interfaces behind
// each end.
func TestEndToEnd(t *testing.T) {
	testenv.MustBeRoot(t)
	testenv.MustHaveBTF(t)
	if err := sandbox.Cleanup("fmf"); err != nil {
		t.Fatalf("remove leftovers: %v", err)
	}
	sb := sandboxtest.New(t, sandbox.Options{Prefix: "fmf", Subnet: e2eSubnet, IPv6: true})
	a := mustHost(t, sb, "a")
	b := mustHost(t, sb, "b")
	c := runDatapath(t, flows.Config{Interfaces: []string{"fmf-*"}})

	const tcpBytes = 4<<20 + 12345
	tcpPort, tcpRetrans := sendTCP(t, a.Dial, b, b.Addr, tcpBytes)
	tcp6Port, tcp6Retrans := sendTCP(t, a.Dial, b, b.Addr6, 1<<20)
	udpPort, udpN := exchangeUDP(t, a, b, 100, 1000, 500)
	// The test process is on the host: its packets enter through no
	// watched interface and are counted at b's veth egress.
	hostPort, hostRetrans := sendTCP(t, net.Dial, b, b.Addr, 256<<10)

	// A namespace made while the datapath runs is attached and seen.
	late := mustHost(t, sb, "late")
	waitFor(t, time.Second, "the late host's veth attached", func() bool { return attached(c.dp, late.HostIfIndex) })
	latePort, _ := sendTCP(t, late.Dial, a, a.Addr, 64<<10)

	// A vanished interface is released.
	gone := mustHost(t, sb, "gone")
	waitFor(t, 2*time.Second, "the gone host's veth attached", func() bool { return attached(c.dp, gone.HostIfIndex) })
	if err := netlink.LinkDel(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: gone.HostIf}}); err != nil {
		t.Fatalf("delete %s: %v", gone.HostIf, err)
	}
	waitFor(t, 2*time.Second, "the deleted veth released", func() bool { return !attached(c.dp, gone.HostIfIndex) })

	recs := c.flows(t)

	t.Run("tcp", func(t *testing.T) {
		r := one(t, find(recs, a.Addr, b.Addr, model.ProtoTCP, tcpPort))
		checkEnds(t, r, a.Addr, b.Addr, a, b)
		sent := tcpBytes + tcpRetrans
		minPkts := sent / mss4
		if r.Forward.Packets < minPkts || r.Forward.Packets > minPkts*105/100+20 {
			t.Errorf("forward packets = %d, want about %d (wire packets, not GSO skbs)", r.Forward.Packets, minPkts)
		}
		if want := sent + r.Forward.Packets*tcp4Overhead; !within(r.Forward.Bytes, want, 0.01) {
			t.Errorf("forward bytes = %d, want %d ±1%% (%d payload, %d retransmitted, %d packets × %d)", r.Forward.Bytes, want, tcpBytes, tcpRetrans, r.Forward.Packets, tcp4Overhead)
		}
		if tcpRetrans > 0 && r.Forward.Retransmits == 0 {
			t.Errorf("forward retransmits = 0; the sender retransmitted %d bytes", tcpRetrans)
		}
		if want := r.Reverse.Packets * tcp4Overhead; r.Reverse.Packets == 0 || !within(r.Reverse.Bytes, want, 0.05) {
			t.Errorf("reverse = %d bytes in %d packets, want ACKs of about %d bytes each", r.Reverse.Bytes, r.Reverse.Packets, tcp4Overhead)
		}
		if r.Forward.TCPFlags&0x03 != 0x03 || r.Reverse.TCPFlags&0x12 != 0x12 {
			t.Errorf("tcp flags = %#x forward, %#x reverse; want SYN and FIN forward, SYN-ACK reverse", r.Forward.TCPFlags, r.Reverse.TCPFlags)
		}
		if r.HandshakeRTT <= 0 || r.HandshakeRTT > time.Second {
			t.Errorf("handshake RTT = %s, want between 0 and 1s", r.HandshakeRTT)
		}
		if r.FirstSeen.IsZero() || r.LastSeen.Before(r.FirstSeen) || time.Since(r.FirstSeen) > time.Minute {
			t.Errorf("first, last seen = %s, %s: want recent and ordered", r.FirstSeen, r.LastSeen)
		}
	})
	t.Run("tcp6", func(t *testing.T) {
		r := one(t, find(recs, a.Addr6, b.Addr6, model.ProtoTCP, tcp6Port))
		checkEnds(t, r, a.Addr6, b.Addr6, a, b)
		if want := 1<<20 + tcp6Retrans + r.Forward.Packets*tcp6Overhead; !within(r.Forward.Bytes, want, 0.01) {
			t.Errorf("forward bytes = %d, want %d ±1%%", r.Forward.Bytes, want)
		}
	})
	t.Run("udp", func(t *testing.T) {
		r := one(t, find(recs, a.Addr, b.Addr, model.ProtoUDP, udpPort))
		checkEnds(t, r, a.Addr, b.Addr, a, b)
		if r.Forward.Packets != uint64(udpN) || r.Forward.Bytes != uint64(udpN*(1000+udp4Overhead)) {
			t.Errorf("forward = %d packets, %d bytes; want %d, %d", r.Forward.Packets, r.Forward.Bytes, udpN, udpN*(1000+udp4Overhead))
		}
		if r.Reverse.Packets != uint64(udpN) || r.Reverse.Bytes != uint64(udpN*(500+udp4Overhead)) {
			t.Errorf("reverse = %d packets, %d bytes; want %d, %d", r.Reverse.Packets, r.Reverse.Bytes, udpN, udpN*(500+udp4Overhead))
		}
	})
	t.Run("host to namespace", func(t *testing.T) {
		r := one(t, find(recs, sb.Addr(), b.Addr, model.ProtoTCP, hostPort))
		if r.Src != sb.Addr() || r.Dst != b.Addr {
			t.Fatalf("flow %s → %s, want %s → %s", r.Src, r.Dst, sb.Addr(), b.Addr)
		}
		if r.Forward.Point != model.PointTCEgress || r.DstIf.Name != b.HostIf || r.SrcIf.Index != 0 {
			t.Errorf("counted at %s, src if %q, dst if %q; want tc-egress, none, %q", r.Forward.Point, r.SrcIf.Name, r.DstIf.Name, b.HostIf)
		}
		if want := 256<<10 + hostRetrans + r.Forward.Packets*tcp4Overhead; !within(r.Forward.Bytes, want, 0.01) {
			t.Errorf("forward bytes = %d, want %d ±1%%", r.Forward.Bytes, want)
		}
	})
	t.Run("late namespace", func(t *testing.T) {
		r := one(t, find(recs, late.Addr, a.Addr, model.ProtoTCP, latePort))
		checkEnds(t, r, late.Addr, a.Addr, late, a)
	})
}

func attached(dp *flows.Datapath, ifindex int) bool {
	for _, i := range dp.Attached() {
		if i.Index == ifindex {
			return true
		}
	}
	return false
}

func mustHost(t *testing.T, sb *sandbox.Net, name string) *sandbox.Host {
	t.Helper()
	h, err := sb.AddHost(name)
	if err != nil {
		t.Fatalf("add host %s: %v", name, err)
	}
	return h
}

func one(t *testing.T, recs []model.Record) model.Record {
	t.Helper()
	if len(recs) != 1 {
		t.Fatalf("got %d records of the flow, want exactly 1: %+v", len(recs), recs)
	}
	return recs[0]
}

// checkEnds checks the orientation and the interfaces behind each end.
func checkEnds(t *testing.T, r model.Record, src, dst netip.Addr, client, server *sandbox.Host) {
	t.Helper()
	if r.Src != src || r.Dst != dst {
		t.Errorf("flow %s → %s, want %s → %s (client to server)", r.Src, r.Dst, src, dst)
	}
	if r.SrcIf.Name != client.HostIf || r.DstIf.Name != server.HostIf {
		t.Errorf("interfaces %q → %q, want %q → %q", r.SrcIf.Name, r.DstIf.Name, client.HostIf, server.HostIf)
	}
	if r.SrcIf.PeerNetNSID < 0 || r.SrcIf.PeerIndex != client.PeerIfIndex {
		t.Errorf("src peer netnsid %d, ifindex %d; want a namespace id and %d", r.SrcIf.PeerNetNSID, r.SrcIf.PeerIndex, client.PeerIfIndex)
	}
	if r.Forward.Point != model.PointTCIngress || r.Reverse.Point != model.PointTCIngress {
		t.Errorf("counted at %s, %s; want tc-ingress both ways (where each packet entered the host)", r.Forward.Point, r.Reverse.Point)
	}
}

// exchangeUDP sends n datagrams of size req from a to b, each answered
// with one of size resp, and returns b's port and how many round trips
// completed.
func exchangeUDP(t *testing.T, a, b *sandbox.Host, n, req, resp int) (uint16, int) {
	t.Helper()
	srv, err := b.ListenPacket("udp4", net.JoinHostPort(b.Addr.String(), "0"))
	if err != nil {
		t.Fatalf("listen udp on b: %v", err)
	}
	defer srv.Close()
	go func() {
		buf := make([]byte, 2048)
		for {
			_, from, err := srv.ReadFrom(buf)
			if err != nil {
				return
			}
			srv.WriteTo(make([]byte, resp), from)
		}
	}()
	conn, err := a.Dial("udp4", srv.LocalAddr().String())
	if err != nil {
		t.Fatalf("dial udp from a: %v", err)
	}
	defer conn.Close()
	buf := make([]byte, 2048)
	for i := range n {
		if _, err := conn.Write(make([]byte, req)); err != nil {
			t.Fatalf("udp write %d: %v", i, err)
		}
		conn.SetReadDeadline(time.Now().Add(time.Second))
		if m, err := conn.Read(buf); err != nil || m != resp {
			t.Fatalf("udp reply %d: %d bytes, %v; want %d", i, m, err, resp)
		}
	}
	return uint16(srv.LocalAddr().(*net.UDPAddr).Port), n
}

// TestDetach checks that Close leaves no program, filter or qdisc behind,
// in both attach modes.
func TestDetach(t *testing.T) {
	testenv.MustBeRoot(t)
	testenv.MustHaveBTF(t)
	for _, mode := range []flows.AttachMode{flows.AttachTCX, flows.AttachClsact} {
		t.Run(string(mode), func(t *testing.T) {
			prefix := "fmd" + string(mode[0])
			if err := sandbox.Cleanup(prefix); err != nil {
				t.Fatalf("remove leftovers: %v", err)
			}
			sb := sandboxtest.New(t, sandbox.Options{Prefix: prefix, Subnet: e2eSubnet})
			a := mustHost(t, sb, "a")
			b := mustHost(t, sb, "b")
			dp, err := flows.New(flows.Config{Interfaces: []string{prefix + "-*"}, Attach: mode, Interval: time.Hour})
			if err != nil {
				t.Fatalf("flows.New: %v", err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- dp.Run(ctx, make(chan model.Batch, 1)) }()
			waitFor(t, 5*time.Second, "datapath ready", func() bool { return dp.Ready() == nil })
			for _, h := range []*sandbox.Host{a, b} {
				if n := programsOn(t, h.HostIfIndex, mode); n != 2 {
					t.Errorf("%s: %d programs attached, want 2 (ingress and egress)", h.HostIf, n)
				}
			}
			cancel()
			<-done
			if err := dp.Close(); err != nil {
				t.Fatalf("Close: %v", err)
			}
			for _, h := range []*sandbox.Host{a, b} {
				if n := programsOn(t, h.HostIfIndex, mode); n != 0 {
					t.Errorf("%s: %d programs left after Close, want 0", h.HostIf, n)
				}
				if q := testenv.HasClsact(t, h.HostIfIndex); q {
					t.Errorf("%s: clsact qdisc left after Close", h.HostIf)
				}
			}
			if err := dp.Close(); err != nil {
				t.Errorf("second Close = %v, want nil", err)
			}
		})
	}
}

// programsOn counts the TC programs (TCX links or clsact filters) on an
// interface.
func programsOn(t *testing.T, ifindex int, mode flows.AttachMode) int {
	t.Helper()
	if mode == flows.AttachClsact {
		return testenv.ClsactFilters(t, ifindex)
	}
	return testenv.TCXPrograms(t, ifindex)
}

// TestXDP counts ingress with XDP on the sandbox's veths: the flow is
// seen once, at the XDP hook, with the same bytes as TC counts.
func TestXDP(t *testing.T) {
	testenv.MustBeRoot(t)
	testenv.MustHaveBTF(t)
	if err := sandbox.Cleanup("fmx"); err != nil {
		t.Fatalf("remove leftovers: %v", err)
	}
	sb := sandboxtest.New(t, sandbox.Options{Prefix: "fmx", Subnet: e2eSubnet})
	a := mustHost(t, sb, "a")
	b := mustHost(t, sb, "b")
	c := runDatapath(t, flows.Config{Interfaces: []string{"fmx-*"}, XDP: []string{"fmx-*"}})
	port, n := exchangeUDP(t, a, b, 50, 700, 300)
	r := one(t, find(c.flows(t), a.Addr, b.Addr, model.ProtoUDP, port))
	if r.Forward.Point != model.PointXDPIngress || r.Reverse.Point != model.PointXDPIngress {
		t.Errorf("counted at %s, %s; want xdp both ways", r.Forward.Point, r.Reverse.Point)
	}
	if r.SrcIf.Name != a.HostIf || r.DstIf.Name != b.HostIf {
		t.Errorf("interfaces %q → %q, want %q → %q", r.SrcIf.Name, r.DstIf.Name, a.HostIf, b.HostIf)
	}
	if want := uint64(n * (700 + udp4Overhead)); r.Forward.Packets != uint64(n) || r.Forward.Bytes != want {
		t.Errorf("forward = %d packets, %d bytes; want %d, %d", r.Forward.Packets, r.Forward.Bytes, n, want)
	}
	if want := uint64(n * (300 + udp4Overhead)); r.Reverse.Packets != uint64(n) || r.Reverse.Bytes != want {
		t.Errorf("reverse = %d packets, %d bytes; want %d, %d", r.Reverse.Packets, r.Reverse.Bytes, n, want)
	}
}

// TestMapFull fills a small flow map: what it cannot hold is counted in
// the map-full counters, packet for packet, and nothing is lost silently.
func TestMapFull(t *testing.T) {
	testenv.MustBeRoot(t)
	testenv.MustHaveBTF(t)
	if err := sandbox.Cleanup("fmm"); err != nil {
		t.Fatalf("remove leftovers: %v", err)
	}
	sb := sandboxtest.New(t, sandbox.Options{Prefix: "fmm", Subnet: e2eSubnet})
	a := mustHost(t, sb, "a")
	b := mustHost(t, sb, "b")
	const maxFlows, sockets, size = 8, 20, 100
	c := runDatapath(t, flows.Config{Interfaces: []string{"fmm-*"}, MaxFlows: maxFlows, Interval: time.Hour})
	srv, err := b.ListenPacket("udp4", net.JoinHostPort(b.Addr.String(), "0"))
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	got := make(chan int)
	go func() {
		buf := make([]byte, 2048)
		for i := 0; ; i++ {
			if i == sockets {
				got <- i
			}
			if _, _, err := srv.ReadFrom(buf); err != nil {
				return
			}
		}
	}()
	// Each socket is a flow direction of its own: one packet each.
	for i := range sockets {
		conn, err := a.Dial("udp4", srv.LocalAddr().String())
		if err != nil {
			t.Fatalf("dial %d: %v", i, err)
		}
		conn.Write(make([]byte, size))
		conn.Close()
	}
	<-got
	b0, err := c.dp.Drain(time.Now())
	if err != nil {
		t.Fatalf("Drain: %v", err)
	}
	var counted, bytes uint64
	// One-way flows between two ephemeral ports may be oriented either way.
	// Other directions (the host's own IGMP when the bridge comes up) take
	// entries too.
	var others uint64
	for _, r := range b0.Records {
		if r.Proto == model.ProtoUDP && (r.Dst == b.Addr || r.Src == b.Addr) {
			counted += r.Forward.Packets + r.Reverse.Packets
			bytes += r.Forward.Bytes + r.Reverse.Bytes
			continue
		}
		for _, d := range []model.Direction{r.Forward, r.Reverse} {
			if d.Packets > 0 {
				others++
			}
		}
	}
	s := c.dp.Stats()
	if counted != maxFlows-others {
		t.Errorf("counted %d packets in flows, want %d (the map's size less %d other directions); flows: %+v", counted, maxFlows-others, others, b0.Records)
	}
	if counted+s.MapFullPackets != sockets {
		t.Errorf("counted %d + map-full %d packets, want %d sent", counted, s.MapFullPackets, sockets)
	}
	if want := uint64(sockets * (size + udp4Overhead)); bytes+s.MapFullBytes != want {
		t.Errorf("counted %d + map-full %d bytes, want %d sent", bytes, s.MapFullBytes, want)
	}
}

// TestRetransmits checks that every segment a socket retransmits is
// counted on its flow direction, as TCP_INFO counts them, also when the
// direction was idle since the last drain: b drops all that it receives
// (a TC program on its eth0), so that a resends (a tail loss probe, then
// timeouts, drains apart) with nothing of its flow counted in between, as
// a's segments are counted where they enter the host, after the
// tracepoint; then b takes them again, and the rest is resent in GSO
// trains.
func TestRetransmits(t *testing.T) {
	testenv.MustBeRoot(t)
	testenv.MustHaveBTF(t)
	if err := sandbox.Cleanup("fmr"); err != nil {
		t.Fatalf("remove leftovers: %v", err)
	}
	sb := sandboxtest.New(t, sandbox.Options{Prefix: "fmr", Subnet: e2eSubnet})
	a := mustHost(t, sb, "a")
	b := mustHost(t, sb, "b")
	c := runDatapath(t, flows.Config{Interfaces: []string{"fmr-*"}})

	const n = 64 << 10
	ln, err := b.Listen("tcp4", net.JoinHostPort(b.Addr.String(), "0"))
	if err != nil {
		t.Fatalf("listen on %s: %v", b.Name, err)
	}
	defer ln.Close()
	served := make(chan error, 1)
	go func() {
		s, err := ln.Accept()
		if err != nil {
			served <- err
			return
		}
		defer s.Close()
		if _, err := io.ReadFull(s, make([]byte, n)); err != nil {
			served <- fmt.Errorf("read %d bytes: %w", n, err)
			return
		}
		// The answer acknowledges all of it: no more retransmits.
		_, err = s.Write([]byte{1})
		served <- err
	}()
	conn, err := a.Dial("tcp4", ln.Addr().String())
	if err != nil {
		t.Fatalf("dial %s: %v", ln.Addr(), err)
	}
	defer conn.Close()
	tcp := conn.(*net.TCPConn)

	timeouts0 := tcpTimeouts(t, a)
	drop := dropIngress(t, b)
	if _, err := conn.Write(make([]byte, n)); err != nil {
		t.Fatalf("write %d bytes: %v", n, err)
	}
	// A tail loss probe and three timeouts: 200, 400 and 800 ms apart at
	// least, with drains every 300 ms in between.
	waitFor(t, 10*time.Second, "four retransmits", func() bool { return testenv.TCPRetransmits(tcp) >= 4 })
	if err := drop.Close(); err != nil {
		t.Fatalf("detach the dropping program: %v", err)
	}
	if err := <-served; err != nil {
		t.Fatalf("server: %v", err)
	}
	if _, err := io.ReadFull(conn, make([]byte, 1)); err != nil {
		t.Fatalf("read the answer: %v", err)
	}
	want := testenv.TCPRetransmits(tcp)
	wantRTOs := tcpTimeouts(t, a) - timeouts0

	recs := c.flows(t)
	r := one(t, find(recs, a.Addr, b.Addr, model.ProtoTCP, uint16(ln.Addr().(*net.TCPAddr).Port)))
	if uint64(r.Forward.Retransmits) != want {
		t.Errorf("forward retransmits = %d, want %d (TCP_INFO's total retransmits)", r.Forward.Retransmits, want)
	}
	if r.Forward.Bytes < n {
		t.Errorf("forward bytes = %d, want at least %d", r.Forward.Bytes, n)
	}
	// Health: one loss recovery, begun by the first of the timeouts that
	// a's stack counted (the backed-off ones after it are in the same
	// recovery).
	var rtos uint64
	if r.Health != nil {
		rtos = r.Health.RTOs
	}
	if wantRTOs < 3 || rtos != 1 {
		t.Errorf("retransmission timeouts = %d, want 1 recovery (of %d timeouts, TcpExtTCPTimeouts in %s, want at least 3)", rtos, wantRTOs, a.NetNS)
	}
}

// dropIngress attaches a TC program that drops every packet to the ingress
// of h's eth0, in h's namespace, until the link it returns is closed (or t
// ends).
func dropIngress(t *testing.T, h *sandbox.Host) link.Link {
	t.Helper()
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.SchedCLS, License: "GPL", Instructions: asm.Instructions{
		asm.Mov.Imm(asm.R0, 2), // TC_ACT_SHOT
		asm.Return(),
	}})
	if err != nil {
		t.Fatalf("load a dropping TC program: %v", err)
	}
	defer prog.Close()
	var l link.Link
	err = h.Do(func() (err error) {
		l, err = link.AttachTCX(link.TCXOptions{Interface: h.PeerIfIndex, Program: prog, Attach: ebpf.AttachTCXIngress})
		return err
	})
	if err != nil {
		t.Fatalf("attach a dropping program to %s's %s: %v", h.Name, sandbox.PeerIf, err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}
