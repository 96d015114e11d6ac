package enrich_test

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.org/x/sys/unix"

	"github.com/flowmap/flowmap/enrich"
	"github.com/flowmap/flowmap/internal/sandboxtest"
	"github.com/flowmap/flowmap/internal/testenv"
	"github.com/flowmap/flowmap/model"
	"github.com/flowmap/flowmap/sandbox"
)

// TestSpoofedSource plays a container with CAP_NET_RAW that writes its
// neighbour's address as the source of its packets: sandbox host a sends
// UDP from b's address to c through a raw socket. The flow, counted at a's
// veth, is a's, and its packets count as spoofed; b is not credited.
func TestSpoofedSource(t *testing.T) {
	testenv.MustBeRoot(t)
	testenv.MustHaveBTF(t)
	const prefix = "fmsp"
	if err := sandbox.Cleanup(prefix); err != nil {
		t.Fatalf("remove leftovers: %v", err)
	}
	sb := sandboxtest.New(t, sandbox.Options{Prefix: prefix, Subnet: netip.MustParsePrefix("198.51.100.192/29")})
	var hosts []*sandbox.Host
	for _, name := range []string{"a", "b", "c"} {
		h, err := sb.AddHost(name)
		if err != nil {
			t.Fatal(err)
		}
		hosts = append(hosts, h)
	}
	attacker, victim, server := hosts[0], hosts[1], hosts[2]
	batches := watchBridge(t, sb.BridgeName())
	inv := startInventory(t, enrich.Config{NetNS: true, Logger: testLogger(t)})
	for _, h := range hosts {
		if ep, _ := waitNamed(t, inv, h.Addr, 5*time.Second, func(ep model.Endpoint) bool { return ep.Name == h.NetNS }); ep.Name != h.NetNS {
			t.Fatalf("%s = %q after 5s, want %q", h.Addr, ep.Name, h.NetNS)
		}
	}

	const port = 9999
	stop := make(chan struct{})
	sent := make(chan error, 1)
	go func() {
		// Again and again: the datapath attaches while it starts, and a
		// packet sent before that is not counted.
		sent <- attacker.Do(func() error {
			fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_RAW)
			if err != nil {
				return err
			}
			defer unix.Close(fd)
			pkt := spoofedUDP(victim.Addr, server.Addr, port)
			to := &unix.SockaddrInet4{Addr: server.Addr.As4()}
			for {
				if err := unix.Sendto(fd, pkt, 0, to); err != nil {
					return err
				}
				select {
				case <-stop:
					return nil
				case <-time.After(100 * time.Millisecond):
				}
			}
		})
	}()
	var r model.Record
	deadline := time.After(10 * time.Second)
wait:
	for {
		select {
		case b := <-batches:
			for _, rec := range b.Records {
				if rec.Src == victim.Addr && rec.Dst == server.Addr && rec.DstPort == port && rec.SrcIf.Index != 0 {
					r = rec
					break wait
				}
			}
		case err := <-sent:
			t.Fatalf("send spoofed packets from %s: %v", attacker.NetNS, err)
		case <-deadline:
			t.Fatalf("no flow %v → %v:%d counted at a veth within 10s", victim.Addr, server.Addr, port)
		}
	}
	close(stop)
	if err := <-sent; err != nil {
		t.Fatalf("send spoofed packets from %s: %v", attacker.NetNS, err)
	}
	if r.SrcIf.Index != attacker.HostIfIndex {
		t.Fatalf("flow counted at %q, want the attacker's veth %q", r.SrcIf.Name, attacker.HostIf)
	}
	f := inv.Enrich(r)
	if f.SrcEndpoint.Name != attacker.NetNS || f.SrcEndpoint.NetNS != attacker.NetNSInode {
		t.Errorf("source = %q (netns %d), want the sender %q (%d), not the victim %q", f.SrcEndpoint.Name, f.SrcEndpoint.NetNS, attacker.NetNS, attacker.NetNSInode, victim.NetNS)
	}
	if got, want := inv.Spoofed(), r.Forward.Packets; got != want || want == 0 {
		t.Errorf("spoofed packets = %d, want the flow's %d", got, want)
	}
	want := fmt.Sprintf("# HELP flowmap_spoofed_packets_total %s\n# TYPE flowmap_spoofed_packets_total counter\nflowmap_spoofed_packets_total %d\n",
		spoofedHelp, r.Forward.Packets)
	if err := testutil.CollectAndCompare(enrich.NewCollector(inv), strings.NewReader(want), "flowmap_spoofed_packets_total"); err != nil {
		t.Errorf("flowmap_spoofed_packets_total: %v", err)
	}
}

const spoofedHelp = "Packets that entered at a container's veth with a source address neither the container's nor one it forwards for: attributed to the container, not to the address's owner."

// spoofedUDP returns an IPv4 packet, header included, of an empty UDP
// datagram from src to dst:port. The kernel fills the IP checksum; the UDP
// checksum is left out (0), as IPv4 allows.
func spoofedUDP(src, dst netip.Addr, port uint16) []byte {
	p := make([]byte, 28)
	p[0] = 0x45 // IPv4, 5 words of header
	binary.BigEndian.PutUint16(p[2:], uint16(len(p)))
	p[8] = 64 // TTL
	p[9] = unix.IPPROTO_UDP
	s, d := src.As4(), dst.As4()
	copy(p[12:], s[:])
	copy(p[16:], d[:])
	binary.BigEndian.PutUint16(p[20:], 40000)
	binary.BigEndian.PutUint16(p[22:], port)
	binary.BigEndian.PutUint16(p[24:], 8)
	return p
}
